"""SVHN cropped digits (Netzer et al. 2011): 32x32 colour house-number digits, `train_32x32.mat` and
`test_32x32.mat` (and, with `data.extra: true`, `extra_32x32.mat` appended to the training split).

Each file is a MATLAB v5 file read with scipy.io.loadmat (which parses arrays and never runs code from the file):
X, uint8 of shape (32, 32, 3, N), and y of shape (N, 1), labels 1..10 where 10 means the digit 0 (it becomes
label 0 here, so label k is digit k). Every file's MD5 is checked against the published value (torchvision and
the SVHN page agree on them), then its variables' types, shapes and labels.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from types import MappingProxyType

import numpy as np

from bioprop_cli.data import BadDataFile, DataFolder, Dataset, FileCheck, check_folder_exists
from bioprop_cli.datasets.base import DatasetInfo, DownloadSource, optional_module
from bioprop_cli.errors import UserError

TRAIN, TEST, EXTRA = "train_32x32.mat", "test_32x32.mat", "extra_32x32.mat"
MD5 = {TRAIN: "e26dedcc434d2e4c54c9b2d4a06d8373", TEST: "eb5a983be6a315427106f1b164d9cef3",
       EXTRA: "a93ce644f1a588dc4d68dda5feec44a7"}  # looked up when a reader runs: tests put their files' in place
SIZES = {TRAIN: 73257, TEST: 26032, EXTRA: 531131}
IMAGE_SHAPE = (32, 32, 3)
CLASS_NAMES = tuple(str(digit) for digit in range(10))
FOLDER_CONTENTS = f"{TRAIN} and {TEST} (and {EXTRA} with data.extra) of SVHN's cropped digits"


def files_of(options) -> tuple[str, ...]:
    return (TRAIN, EXTRA, TEST) if options is not None and getattr(options, "extra", False) else (TRAIN, TEST)


def parse_mat(source: str | Path, raw: bytes, expected: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 32, 32, 3) uint8, labels (N,) int32 0..9) of one file's bytes, every check passed."""
    loadmat = optional_module("scipy.io", "svhn").loadmat
    try:
        variables = loadmat(io.BytesIO(raw), variable_names=("X", "y"))
    except Exception as error:  # scipy raises ValueError, TypeError, OSError... on a malformed file
        raise BadDataFile(source, f"expected a MATLAB v5 file holding X and y, found an unreadable one "
                                  f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    for name in ("X", "y"):
        if name not in variables:
            raise BadDataFile(source, f"expected variables X and y, found no {name}")
    x, y = variables["X"], variables["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != IMAGE_SHAPE:
        raise BadDataFile(source, f"expected X of uint8 and shape 32x32x3xN, found {x.dtype} of shape "
                                  f"{'x'.join(map(str, x.shape))}")
    if x.shape[3] != expected:
        raise BadDataFile(source, f"expected {expected} images (the published file), found {x.shape[3]}")
    if y.dtype.kind not in "iuf" or y.shape != (expected, 1):
        raise BadDataFile(source, f"expected y of numbers and shape {expected}x1, found {y.dtype} of shape "
                                  f"{'x'.join(map(str, y.shape))}")
    labels = y[:, 0]
    bad = np.flatnonzero((labels < 1) | (labels > 10) | (labels != np.round(labels)))
    if bad.size:
        raise BadDataFile(source, f"label {labels[bad[0]]} at position {bad[0]}, expected 1..10 (10 is the digit 0; "
                                  f"{bad.size} bad labels in all)")
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), (labels.astype(np.int32) % 10)


def check_md5(source: str | Path, raw: bytes, file_name: str) -> None:
    actual = hashlib.md5(raw).hexdigest()
    if actual != MD5[file_name]:
        raise BadDataFile(source, f"MD5 is {actual}, expected {MD5[file_name]} (the published {file_name}); the file "
                                  "is truncated, corrupt or another one")


def read_file(path: Path, file_name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise BadDataFile(path, f"cannot read the file ({error.strerror or error})") from None
    arrays = parse_mat(path, raw, SIZES[file_name])
    check_md5(path, raw, file_name)
    return arrays


def read(folder: DataFolder, options=None) -> Dataset:
    check_folder_exists(folder.path, folder.origin, FOLDER_CONTENTS)
    arrays = {}
    for name in files_of(options):
        if not (folder.path / name).is_file():
            raise UserError(f"{folder.path}: missing {name}; an SVHN folder holds {FOLDER_CONTENTS} - run "
                            "`bioprop data fetch svhn` or add the file")
        arrays[name] = read_file(folder.path / name, name)
    train = [arrays[name] for name in files_of(options)[:-1]]
    images = np.concatenate([x for x, _ in train]).reshape(-1, int(np.prod(IMAGE_SHAPE)))
    return Dataset("svhn", images, np.concatenate([y for _, y in train]),
                   arrays[TEST][0].reshape(len(arrays[TEST][0]), -1), arrays[TEST][1],
                   source=f"files in {folder.path} (from {folder.origin})", num_classes=len(CLASS_NAMES))


def check(folder: Path) -> list:
    check_folder_exists(Path(folder), "", FOLDER_CONTENTS)
    checks = []
    for name in (TRAIN, TEST, EXTRA):
        path = Path(folder) / name
        if not path.is_file():
            if name != EXTRA:
                checks.append(FileCheck(name, None, wanted=name))
            continue
        try:
            read_file(path, name)
            checks.append(FileCheck(name, path))
        except BadDataFile as error:
            checks.append(FileCheck(name, path, error.problem))
    return checks


def verify(dataset: str, source: str, file_name: str, raw: bytes) -> None:
    parse_mat(source, raw, SIZES[file_name])
    check_md5(source, raw, file_name)


def present(folder: Path, file_name: str) -> bool:
    return (folder / file_name).is_file()


INFO = DatasetInfo(
    name="svhn",
    title="SVHN cropped digits (Netzer et al. 2011)",
    image_shape=IMAGE_SHAPE,
    num_classes=len(CLASS_NAMES),
    split_sizes=MappingProxyType({"train": SIZES[TRAIN], "test": SIZES[TEST], "extra": SIZES[EXTRA]}),
    class_names=CLASS_NAMES,
    files=MappingProxyType(MD5),
    folder_contents=FOLDER_CONTENTS,
    read=read,
    check=check,
    # extra_32x32.mat (1.3 GB) is not fetched: put it in the folder to use data.extra
    download=DownloadSource(mirrors=("http://ufldl.stanford.edu/housenumbers/",), files=(TRAIN, TEST),
                            verify=verify, present=present),
    options=("extra",),
)
