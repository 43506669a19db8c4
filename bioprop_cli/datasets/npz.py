"""Your own arrays: one .npz file named by `data.path`, read with numpy.load(allow_pickle=False).

It holds x_train, y_train, x_test, y_test, and optionally x_val, y_val. Images are (N, H, W, C) or (N, H, W)
(one channel), or flat vectors (N, D) (then only the MLP reads them); uint8 pixels are scaled by 1/255 like every
dataset's, floating-point values are taken as they are (float32). Labels are integers 0..K-1: K, the number of
classes, is one more than the largest label of any split. x_val, when present, is the validation split: it is
kept after the training examples, and data.validation_size must equal its length.
"""

from __future__ import annotations

import functools
import os
import zipfile
from pathlib import Path

import numpy as np

from bioprop_cli.data import BadDataFile, DataFolder, Dataset, FileCheck, one_line
from bioprop_cli.datasets.base import DatasetInfo, Facts
from bioprop_cli.errors import UserError

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL = ("x_val", "y_val")
FOLDER_CONTENTS = "an .npz file named by data.path, holding x_train, y_train, x_test, y_test (and x_val, y_val)"


def path_of(options) -> Path:
    path = getattr(options, "path", None) if options is not None else None
    if not path:
        raise UserError("config key 'data.path': the .npz file of the npz dataset (x_train, y_train, x_test, y_test), "
                        "got none")
    return Path(path).expanduser()


def open_npz(path: Path):
    if not path.is_file():
        raise UserError(f"config key 'data.path': {path} is not a file; expected {FOLDER_CONTENTS}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise BadDataFile(path, f"expected an npz file, found an unreadable one ({one_line(error)})") from None


def load_array(path: Path, npz, key: str) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as error:  # an object array: loading it would unpickle
        raise BadDataFile(path, f"array {key} is an object array (a pickle), which bioprop never loads "
                                f"({one_line(error)})") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as error:
        raise BadDataFile(path, f"array {key} is truncated or corrupt ({one_line(error)})") from None


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The file's arrays, every check passed: names, dtypes, shapes, labels."""
    with open_npz(path) as npz:
        missing = [key for key in REQUIRED if key not in npz.files]
        if missing:
            raise BadDataFile(path, f"missing {', '.join(missing)}; expected {', '.join(REQUIRED)} (and optionally "
                                    f"{', '.join(OPTIONAL)}), found {', '.join(sorted(npz.files)) or 'no arrays'}")
        keys = REQUIRED + tuple(key for key in OPTIONAL if key in npz.files)
        if ("x_val" in npz.files) != ("y_val" in npz.files):
            raise BadDataFile(path, "expected both x_val and y_val, or neither")
        arrays = {key: load_array(path, npz, key) for key in keys}
    shape = None
    for split in ("train", "val", "test"):
        if f"x_{split}" not in arrays:
            continue
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 and x.dtype.kind != "f":
            raise BadDataFile(path, f"x_{split} is {x.dtype}; expected uint8 pixels or floating-point values")
        if x.ndim not in (2, 3, 4) or len(x) == 0:
            raise BadDataFile(path, f"x_{split} has shape {'x'.join(map(str, x.shape))}; expected N x H x W x C, "
                                    "N x H x W or N x D with N >= 1")
        if y.dtype.kind not in "iu" or y.shape != (len(x),):
            raise BadDataFile(path, f"y_{split} is {y.dtype} of shape {'x'.join(map(str, y.shape))}; expected "
                                    f"{len(x)} integer labels (one per row of x_{split})")
        if y.min() < 0:
            raise BadDataFile(path, f"y_{split} holds label {int(y.min())}; expected labels 0..K-1")
        if shape is not None and example_shape(x) != shape:
            raise BadDataFile(path, f"x_{split}'s examples are {'x'.join(map(str, example_shape(x)))}, "
                                    f"x_train's {'x'.join(map(str, shape))}; expected the same shape")
        shape = example_shape(x)
    return arrays


def example_shape(x: np.ndarray) -> tuple[int, ...]:
    """(H, W, C) of images, (H, W, 1) of one-channel images, (D,) of flat vectors."""
    return x.shape[1:] if x.ndim != 3 else (*x.shape[1:], 1)


def flat(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1)
    return x if x.dtype == np.uint8 else x.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _facts(path: str, mtime_ns: int, size: int) -> Facts:
    arrays = read_arrays(Path(path))
    labels = [arrays[key] for key in arrays if key.startswith("y_")]
    return Facts(example_shape(arrays["x_train"]), int(max(y.max() for y in labels)) + 1)


def facts(options) -> Facts:
    """The file's example shape and class count (read once per version of the file)."""
    path = path_of(options)
    try:
        stat = path.stat()
    except OSError:
        raise UserError(f"config key 'data.path': {path} is not a file; expected {FOLDER_CONTENTS}") from None
    return _facts(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def read(folder: DataFolder | None, options=None) -> Dataset:
    path = path_of(options)
    arrays = read_arrays(path)
    n_classes = facts(options).num_classes
    n_val = len(arrays["x_val"]) if "x_val" in arrays else None
    x_train, y_train = arrays["x_train"], arrays["y_train"]
    if n_val is not None:
        x_train, y_train = np.concatenate([x_train, arrays["x_val"]]), np.concatenate([y_train, arrays["y_val"]])
    return Dataset("npz", flat(x_train), y_train.astype(np.int32), flat(arrays["x_test"]),
                   arrays["y_test"].astype(np.int32), source=f"file {path}", num_classes=n_classes, n_val=n_val)


def check(folder: Path) -> list:
    """`bioprop data check FILE --dataset npz`: the file's checks."""
    path = Path(folder)
    try:
        read_arrays(path)
    except BadDataFile as error:
        return [FileCheck(path.name, path, error.problem)]
    return [FileCheck(path.name, path, checksummed=False)]


INFO = DatasetInfo(
    name="npz",
    title="your own arrays in an .npz file (data.path)",
    image_shape=None,
    num_classes=None,
    split_sizes={},
    class_names=(),
    files={},
    folder_contents=FOLDER_CONTENTS,
    read=read,
    check=check,
    download=None,
    facts=facts,
    options=("path",),
)
