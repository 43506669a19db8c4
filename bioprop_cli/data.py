"""The datasets as flat float32 arrays; MNIST / Fashion-MNIST from verified IDX files: their checks, the readers.

Every dataset's images are flat rows of H*W*C float32 pixels in [0, 1], channel-last ((H, W, C) once reshaped with
``IMAGE_SHAPES``, the one home of each dataset's image shape). An MNIST data folder holds the four standard IDX
files, each plain or gzip-compressed (``.gz``); the plain one wins when both exist. Every file is checked (presence,
gzip integrity, IDX magic number, shape, label range, and the MD5 of the uncompressed content against the canonical
checksum); any problem is a one-line ``UserError``. CIFAR-10's binary files are read by ``bioprop_cli.cifar``;
where the data comes from is decided in ``bioprop_cli.datasets``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import math
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from bioprop_cli.errors import UserError

DATASETS = ("mnist", "fashion_mnist", "cifar10")

DATA_DIR_ENV_VAR = "BIOPROP_DATA_DIR"
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR_ENV_VAR = "BIOPROP_CACHE_DIR"  # holds one folder per dataset
CACHE_ORIGIN = "bioprop's download cache"

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
IDX_FILE_NAMES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"  # the binary version, as published (bioprop_cli.cifar reads it)
CIFAR10_FOLDER = "cifar-10-batches-bin"  # the folder the archive extracts to

NUM_TRAIN, NUM_TEST, IMAGE_SIDE, NUM_CLASSES = 60000, 10000, 28, 10
# (H, W, C) of one image; the arrays stay flat, (N, H*W*C) in channel-last order.
IMAGE_SHAPES = MappingProxyType({"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)})
SPLIT_SIZES = MappingProxyType({"mnist": (NUM_TRAIN, NUM_TEST), "fashion_mnist": (NUM_TRAIN, NUM_TEST),
                                "cifar10": (50000, 10000)})  # (training, test) images

IDX_UBYTE_TYPE_CODE = 0x08

FIX_HINT = "re-download the file or point --data-dir / BIOPROP_DATA_DIR at a folder with the canonical files"

# MD5 of the *uncompressed* IDX files (gzip containers differ between mirrors; their content does not).
# MNIST: the canonical values (LeCun, Cortes and Burges).
# Fashion-MNIST: computed from Debian's dataset-fashion-mnist, whose .gz files rebuild byte for byte into Zalando's
# published ones (gzip md5 8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...) once the gzip header that Debian
# normalised (file name, mtime) is restored; the values also agree with other public loaders.
CANONICAL_MD5 = MappingProxyType(
    {
        "mnist": MappingProxyType(
            {
                TRAIN_IMAGES: "6bbc9ace898e44ae57da46a324031adb",
                TRAIN_LABELS: "a25bea736e30d166cdddb491f175f624",
                TEST_IMAGES: "2646ac647ad5339dbf082846283269ea",
                TEST_LABELS: "27ae3e4e09519cfbb04c329615203637",
            }
        ),
        "fashion_mnist": MappingProxyType(
            {
                TRAIN_IMAGES: "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                TRAIN_LABELS: "9018921c3c673c538a1fc5bad174d6f9",
                TEST_IMAGES: "8181f5470baa50b63fa0f6fddb340f0a",
                TEST_LABELS: "15d484375f8d13e6eb1aabb0c3f46965",
            }
        ),
    }
)


@dataclass(frozen=True)
class Dataset:
    name: str  # one of DATASETS
    x_train: np.ndarray  # float32, (60000, 784) for MNIST, (50000, 3072) for CIFAR-10: pixel / 255, (H, W, C) flattened
    y_train: np.ndarray  # int32, (60000,), 0..9
    x_test: np.ndarray  # float32, (10000, 784)
    y_test: np.ndarray  # int32, (10000,)
    source: str  # human-readable origin, e.g. "files in /path (from BIOPROP_DATA_DIR)"


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


def canonical_specs(name: str) -> dict[str, FileSpec]:
    md5 = CANONICAL_MD5[name]
    image_shape = (IMAGE_SIDE, IMAGE_SIDE)
    max_label = NUM_CLASSES - 1
    return {
        TRAIN_IMAGES: FileSpec(md5[TRAIN_IMAGES], (NUM_TRAIN, *image_shape)),
        TRAIN_LABELS: FileSpec(md5[TRAIN_LABELS], (NUM_TRAIN,), max_label),
        TEST_IMAGES: FileSpec(md5[TEST_IMAGES], (NUM_TEST, *image_shape)),
        TEST_LABELS: FileSpec(md5[TEST_LABELS], (NUM_TEST,), max_label),
    }


def check_dataset_name(name: str) -> None:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")


def folder_contents(name: str) -> str:
    """What a data folder of dataset `name` holds, for messages."""
    if name == "cifar10":
        return f"{CIFAR10_ARCHIVE} or its extracted folder {CIFAR10_FOLDER}/ (the binary version of CIFAR-10)"
    return f"{', '.join(IDX_FILE_NAMES)} (each plain or .gz)"


def locate_data_folder(name: str, data_dir: str | os.PathLike | None) -> DataFolder | None:
    """The folder to read the dataset's files from, or None when the data must come from tensorflow-datasets or a
    download."""
    if data_dir is not None and str(data_dir) != "":
        return DataFolder(Path(data_dir).expanduser(), "data_dir")
    env_dir = os.environ.get(DATA_DIR_ENV_VAR, "")
    if env_dir:
        return DataFolder(Path(env_dir).expanduser(), DATA_DIR_ENV_VAR)
    if name == "fashion_mnist" and DEBIAN_FASHION_MNIST_DIR.is_dir():
        return DataFolder(DEBIAN_FASHION_MNIST_DIR, "Debian package dataset-fashion-mnist")
    cached = cache_folder(name)
    if cache_is_complete(name, cached):
        return DataFolder(cached, CACHE_ORIGIN)
    return None


def cache_is_complete(name: str, folder: Path) -> bool:
    """Whether a cache folder holds every file a download of `name` puts there."""
    if name == "cifar10":
        return (folder / CIFAR10_ARCHIVE).is_file()
    return not missing_idx_files(folder, IDX_FILE_NAMES)


def cache_folder(name: str) -> Path:
    """Where downloads of dataset `name` go: $BIOPROP_CACHE_DIR/<name>, else ~/.cache/bioprop/datasets/<name>."""
    root = os.environ.get(CACHE_DIR_ENV_VAR, "")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME", "") or "~/.cache") / "bioprop" / "datasets"
    return Path(root).expanduser() / name


def scale_images(images: np.ndarray) -> np.ndarray:
    scaled = images.reshape(images.shape[0], -1).astype(np.float32)
    scaled /= np.float32(255)
    return scaled


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


def load_from_tfds(name: str) -> Dataset:
    try:
        (x_train, y_train), (x_test, y_test) = fetch_tfds_splits(name)
    except Exception as error:  # a broken TensorFlow install or cache: the data folders still work
        raise UserError(
            f"could not read {name} from the tensorflow-datasets cache ({type(error).__name__}: {one_line(error)}); "
            f"pass --data-dir DIR or set BIOPROP_DATA_DIR to a folder holding {folder_contents(name)}"
        ) from None
    dataset = Dataset(name, scale_images(x_train), y_train.astype(np.int32), scale_images(x_test),
                      y_test.astype(np.int32), source="tensorflow-datasets")
    check_tfds_shapes(dataset)
    return dataset


def fetch_tfds_splits(name: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(images (N, H, W, C) uint8, labels) for train and test, from the prepared copy (never downloads)."""
    import tensorflow_datasets as tfds

    train, test = tfds.as_numpy(tfds.load(name, split=["train", "test"], batch_size=-1, as_supervised=True,
                                          download=False))
    return (np.asarray(train[0]), np.asarray(train[1])), (np.asarray(test[0]), np.asarray(test[1]))


def check_tfds_shapes(dataset: Dataset) -> None:
    n_train, n_test = SPLIT_SIZES[dataset.name]
    n_pixels = math.prod(IMAGE_SHAPES[dataset.name])
    expected = {"x_train": (n_train, n_pixels), "y_train": (n_train,),
                "x_test": (n_test, n_pixels), "y_test": (n_test,)}
    for field, shape in expected.items():
        found = getattr(dataset, field).shape
        if found != shape:
            raise UserError(f"tensorflow-datasets gave {dataset.name} {field} of shape {format_shape(found)}, "
                            f"expected {format_shape(shape)}; pass --data-dir DIR with {folder_contents(dataset.name)}")
