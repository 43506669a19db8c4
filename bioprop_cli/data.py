"""The arrays every dataset reader returns (`Dataset`), the data folders, and the IDX files' checks and reader.

Every dataset's images are flat rows of H*W*C uint8 pixels, channel-last ((H, W, C) once reshaped with the image
shape of its registry entry, bioprop_cli/datasets/<name>.py, the one home of each dataset's facts); `as_float`
gives them in [0, 1] as float32 (splits.make_splits, where the config's normalisation is applied). An IDX data
folder (MNIST, Fashion-MNIST) holds the four standard IDX files, each plain or gzip-compressed (``.gz``); the
plain one wins when both exist. Every file is checked (presence, gzip integrity, IDX magic number, shape, label
range, and the MD5 of the uncompressed content against the canonical checksum); any problem is a one-line
``UserError``. Where the data comes from is decided in ``bioprop_cli.datasets``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bioprop_cli.errors import UserError

DATA_DIR_ENV_VAR = "BIOPROP_DATA_DIR"
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR_ENV_VAR = "BIOPROP_CACHE_DIR"  # holds one folder per dataset
CACHE_ORIGIN = "bioprop's download cache"

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
IDX_FILE_NAMES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

IDX_UBYTE_TYPE_CODE = 0x08

FIX_HINT = "re-download the file or point --data-dir / BIOPROP_DATA_DIR at a folder with the canonical files"


@dataclass(frozen=True)
class Dataset:
    name: str  # a registry name (bioprop_cli.datasets.REGISTRY)
    x_train: np.ndarray  # uint8 pixels (60000, 784) for MNIST, (50000, 3072) for CIFAR-10, (H, W, C) flattened;
    # float32 for an npz file of floats (and tests' fakes): as_float leaves those as they are
    y_train: np.ndarray  # int32, (60000,), 0..num_classes-1
    x_test: np.ndarray  # as x_train, (10000, 784)
    y_test: np.ndarray  # int32, (10000,)
    source: str  # human-readable origin, e.g. "files in /path (from BIOPROP_DATA_DIR)"
    num_classes: int = 10
    n_val: int | None = None  # the file's own validation split, the last n_val training examples (npz's x_val)


@dataclass(frozen=True)
class FileSpec:
    """What one IDX file must contain: ubyte values of this shape, at most max_value, with this content MD5."""

    md5: str
    shape: tuple[int, ...]
    max_value: int = 255

    @property
    def magic(self) -> int:
        return (IDX_UBYTE_TYPE_CODE << 8) | len(self.shape)


@dataclass(frozen=True)
class DataFolder:
    path: Path
    origin: str  # where the folder was named: "data_dir", "BIOPROP_DATA_DIR", the Debian package, the download cache


class BadDataFile(UserError):
    """One data file fails a check. `problem` says what is wrong, without naming the file or the fix."""

    def __init__(self, source: str | os.PathLike, problem: str):
        self.problem = problem
        super().__init__(f"{source}: {problem} - {FIX_HINT}")


def idx_specs(md5: Mapping[str, str], split_sizes: Mapping[str, int], image_shape: tuple[int, ...],
              num_classes: int) -> dict[str, FileSpec]:
    """The four IDX files of an MNIST-like dataset: its registry entry's MD5s, split sizes, (H, W, 1) images."""
    height, width = image_shape[:2]
    max_label = num_classes - 1
    n_train, n_test = split_sizes["train"], split_sizes["test"]
    return {
        TRAIN_IMAGES: FileSpec(md5[TRAIN_IMAGES], (n_train, height, width)),
        TRAIN_LABELS: FileSpec(md5[TRAIN_LABELS], (n_train,), max_label),
        TEST_IMAGES: FileSpec(md5[TEST_IMAGES], (n_test, height, width)),
        TEST_LABELS: FileSpec(md5[TEST_LABELS], (n_test,), max_label),
    }


def given_data_folder(data_dir: str | os.PathLike | None) -> DataFolder | None:
    """The folder named by `data_dir`, else by BIOPROP_DATA_DIR; None when neither names one."""
    if data_dir is not None and str(data_dir) != "":
        return DataFolder(Path(data_dir).expanduser(), "data_dir")
    env_dir = os.environ.get(DATA_DIR_ENV_VAR, "")
    if env_dir:
        return DataFolder(Path(env_dir).expanduser(), DATA_DIR_ENV_VAR)
    return None


def cache_folder(name: str) -> Path:
    """Where downloads of dataset `name` go: $BIOPROP_CACHE_DIR/<name>, else ~/.cache/bioprop/datasets/<name>."""
    root = os.environ.get(CACHE_DIR_ENV_VAR, "")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME", "") or "~/.cache") / "bioprop" / "datasets"
    return Path(root).expanduser() / name


def host_memory_bytes() -> int | None:
    """This machine's physical memory (None where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def flat_images(images: np.ndarray) -> np.ndarray:
    """(N, H, W[, C]) uint8 -> (N, H*W*C) uint8, a contiguous copy (the file's buffer is let go)."""
    return np.ascontiguousarray(images.reshape(images.shape[0], -1))


def scale_images(images: np.ndarray) -> np.ndarray:
    scaled = images.reshape(images.shape[0], -1).astype(np.float32)
    scaled /= np.float32(255)
    return scaled


def as_float(x: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1] (pixel / 255, flat); float arrays as they are."""
    return scale_images(x) if x.dtype == np.uint8 else x


# --- IDX folders -------------------------------------------------------------------------------------------------


def load_idx_folder(folder: str | os.PathLike, expected: Mapping[str, FileSpec], origin: str = "") -> dict[str, np.ndarray]:
    """Read and verify each IDX file named in `expected`; return its uint8 array, keyed by base file name."""
    folder = Path(folder)
    check_folder_exists(folder, origin)
    return {base_name: read_idx_file(find_idx_file(folder, base_name, expected), spec)
            for base_name, spec in expected.items()}


def check_folder_exists(folder: Path, origin: str, holding: str = "the IDX files") -> None:
    given_by = f" (given by {origin})" if origin else ""
    if not folder.exists():
        raise UserError(f"data folder {folder}{given_by} does not exist; "
                        f"pass --data-dir DIR or set BIOPROP_DATA_DIR to a folder holding {holding}")
    if not folder.is_dir():
        raise UserError(f"data folder {folder}{given_by} is not a folder; "
                        f"pass --data-dir DIR or set BIOPROP_DATA_DIR to a folder holding {holding}")


def existing_idx_file(folder: Path, base_name: str) -> Path | None:
    """The plain file if present, else the .gz one, else None."""
    for candidate in (folder / base_name, folder / f"{base_name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def missing_idx_files(folder: Path, base_names: tuple[str, ...]) -> list[str]:
    return [base_name for base_name in base_names if existing_idx_file(folder, base_name) is None]


def find_idx_file(folder: Path, base_name: str, expected: Mapping[str, FileSpec]) -> Path:
    found = existing_idx_file(folder, base_name)
    if found is not None:
        return found
    raise UserError(f"{folder}: missing {base_name} (or {base_name}.gz); the folder must hold the IDX files "
                    f"{', '.join(expected)} (each plain or .gz) - add the file or point --data-dir / BIOPROP_DATA_DIR at a "
                    "folder with the canonical files")


def read_idx_file(path: Path, spec: FileSpec) -> np.ndarray:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise BadDataFile(path, f"cannot read the file ({error.strerror or error})") from None
    return verify_idx_bytes(path, raw, path.suffix == ".gz", spec)


def verify_idx_bytes(source: str | os.PathLike, raw: bytes, compressed: bool, spec: FileSpec) -> np.ndarray:
    """The checks every IDX file passes, on its bytes as stored (gzip when `compressed`); `source` names it."""
    content = gunzip(source, raw) if compressed else raw
    array = parse_idx(source, content, spec)
    check_values(source, array, spec)
    check_md5(source, content, spec)
    return array


def gunzip(source: str | os.PathLike, raw: bytes) -> bytes:
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as error:
        raise BadDataFile(source, f"expected a complete gzip file, found a truncated or corrupt one "
                                  f"({one_line(error)})") from None


def parse_idx(source: str | os.PathLike, content: bytes, spec: FileSpec) -> np.ndarray:
    header_size = 4 + 4 * len(spec.shape)
    if len(content) < header_size:
        raise BadDataFile(source, f"expected an IDX file with a {header_size}-byte header, found only "
                                  f"{len(content)} bytes")
    magic = int.from_bytes(content[:4], "big")
    if magic != spec.magic:
        raise BadDataFile(source, f"expected IDX magic number 0x{spec.magic:08x} (ubyte, {len(spec.shape)} dims), "
                                  f"found 0x{magic:08x}")
    shape = tuple(int(d) for d in np.frombuffer(content, dtype=">i4", count=len(spec.shape), offset=4))
    if shape != spec.shape:
        raise BadDataFile(source, f"expected shape {format_shape(spec.shape)}, found {format_shape(shape)}")
    payload = memoryview(content)[header_size:]
    if len(payload) != int(np.prod(shape)):
        raise BadDataFile(source, f"expected {int(np.prod(shape))} data bytes after the header for shape "
                                  f"{format_shape(shape)}, found {len(payload)}")
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


def check_values(source: str | os.PathLike, array: np.ndarray, spec: FileSpec) -> None:
    if spec.max_value < 255 and array.size and int(array.max()) > spec.max_value:
        raise BadDataFile(source, f"expected values 0..{spec.max_value}, found a maximum of {int(array.max())}")


def check_md5(source: str | os.PathLike, content: bytes, spec: FileSpec) -> None:
    actual = hashlib.md5(content).hexdigest()
    if actual != spec.md5:
        raise BadDataFile(source, f"MD5 of the uncompressed content is {actual}, expected {spec.md5} (the canonical "
                                  "file); it is corrupt or from another dataset")


@dataclass(frozen=True)
class FileCheck:
    base_name: str
    path: Path | None  # the file found (plain or .gz), None when missing
    problem: str | None = None  # why the file found is not the canonical one
    wanted: str = ""  # what would stand for the file, when missing (default: the file, plain or .gz)
    checksummed: bool = True  # whether "found" means: the published content (False: checked, but no checksum exists)

    @property
    def wanted_text(self) -> str:
        return self.wanted or f"{self.base_name} (or {self.base_name}.gz)"

    @property
    def status(self) -> str:
        return "missing" if self.path is None else "mismatch" if self.problem else "found"


def check_idx_folder(folder: str | os.PathLike, expected: Mapping[str, FileSpec]) -> list[FileCheck]:
    """Every expected file's state, without stopping at the first problem (for `bioprop data check`)."""
    folder = Path(folder)
    check_folder_exists(folder, "")
    return [check_idx_file(folder, base_name, spec) for base_name, spec in expected.items()]


def check_idx_file(folder: Path, base_name: str, spec: FileSpec) -> FileCheck:
    path = existing_idx_file(folder, base_name)
    if path is None:
        return FileCheck(base_name, None)
    try:
        read_idx_file(path, spec)
    except BadDataFile as error:
        return FileCheck(base_name, path, error.problem)
    return FileCheck(base_name, path)


def unsafe_member_name(name: str) -> bool:
    """An archive member named outside the archive's folder: an absolute path, a drive, a .. component."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


def format_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) if shape else "()"


def one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# --- tensorflow-datasets -----------------------------------------------------------------------------------------


def tfds_has_prepared_copy(name: str) -> bool:
    """Whether tensorflow-datasets holds a prepared copy it can read: it needs TensorFlow for that (4.9 and later)."""
    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tensorflow_datasets") is None:
        return False
    import tensorflow_datasets as tfds  # slow import: only when needed

    return tfds.builder(name).is_prepared()


def load_from_tfds(info) -> Dataset:
    """The dataset of registry entry `info` (datasets.base.DatasetInfo) from tensorflow-datasets' prepared copy."""
    try:
        (x_train, y_train), (x_test, y_test) = fetch_tfds_splits(info.tfds_name)
    except Exception as error:  # a broken TensorFlow install or cache: the data folders still work
        raise UserError(
            f"could not read {info.name} from the tensorflow-datasets cache ({type(error).__name__}: "
            f"{one_line(error)}); pass --data-dir DIR or set BIOPROP_DATA_DIR to a folder holding {info.folder_contents}"
        ) from None
    dataset = Dataset(info.name, flat_images(x_train), y_train.astype(np.int32), flat_images(x_test),
                      y_test.astype(np.int32), source="tensorflow-datasets", num_classes=info.num_classes)
    check_tfds_shapes(dataset, info)
    return dataset


def fetch_tfds_splits(name: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(images (N, H, W, C) uint8, labels) for train and test, from the prepared copy (never downloads)."""
    import tensorflow_datasets as tfds

    train, test = tfds.as_numpy(tfds.load(name, split=["train", "test"], batch_size=-1, as_supervised=True,
                                          download=False))
    return (np.asarray(train[0]), np.asarray(train[1])), (np.asarray(test[0]), np.asarray(test[1]))


def check_tfds_shapes(dataset: Dataset, info) -> None:
    n_train, n_test = info.split_sizes["train"], info.split_sizes["test"]
    n_pixels = int(np.prod(info.image_shape))
    expected = {"x_train": (n_train, n_pixels), "y_train": (n_train,),
                "x_test": (n_test, n_pixels), "y_test": (n_test,)}
    for field, shape in expected.items():
        found = getattr(dataset, field).shape
        if found != shape:
            raise UserError(f"tensorflow-datasets gave {dataset.name} {field} of shape {format_shape(found)}, "
                            f"expected {format_shape(shape)}; pass --data-dir DIR with {info.folder_contents}")
