"""Load MNIST / Fashion-MNIST as flat float32 arrays, from verified IDX files or tensorflow-datasets.

Where the data comes from, first match wins:

1. the ``data_dir`` argument (``--data-dir`` flag or config);
2. the environment variable ``BIOPROP_DATA_DIR`` (if set and non-empty);
3. for ``fashion_mnist`` only, ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``);
4. tensorflow-datasets (downloads when online, else uses its cache).

A data folder holds the four standard IDX files, each plain or gzip-compressed (``.gz``); the plain one wins when
both exist. Every file is checked (presence, gzip integrity, IDX magic number, shape, label range, and the MD5 of the
uncompressed content against the canonical checksum); any problem is a one-line ``UserError``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from bioprop_cli.errors import UserError

DATASETS = ("mnist", "fashion_mnist")

DATA_DIR_ENV_VAR = "BIOPROP_DATA_DIR"
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
IDX_FILE_NAMES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

NUM_TRAIN, NUM_TEST, IMAGE_SIDE, NUM_CLASSES = 60000, 10000, 28, 10

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
    name: str  # "mnist" or "fashion_mnist"
    x_train: np.ndarray  # float32, (60000, 784), pixel / 255
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
    origin: str  # where the folder was named: "data_dir", "BIOPROP_DATA_DIR", or the Debian package


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


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    check_dataset_name(name)
    folder = locate_data_folder(name, data_dir)
    if folder is None:
        return load_from_tfds(name)
    arrays = load_idx_folder(folder.path, canonical_specs(name), origin=folder.origin)
    return Dataset(
        name=name,
        x_train=scale_images(arrays[TRAIN_IMAGES]),
        y_train=arrays[TRAIN_LABELS].astype(np.int32),
        x_test=scale_images(arrays[TEST_IMAGES]),
        y_test=arrays[TEST_LABELS].astype(np.int32),
        source=f"files in {folder.path} (from {folder.origin})",
    )


def check_dataset_name(name: str) -> None:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")


def locate_data_folder(name: str, data_dir: str | os.PathLike | None) -> DataFolder | None:
    """The folder to read IDX files from, or None to fall back to tensorflow-datasets."""
    if data_dir is not None and str(data_dir) != "":
        return DataFolder(Path(data_dir).expanduser(), "data_dir")
    env_dir = os.environ.get(DATA_DIR_ENV_VAR, "")
    if env_dir:
        return DataFolder(Path(env_dir).expanduser(), DATA_DIR_ENV_VAR)
    if name == "fashion_mnist" and DEBIAN_FASHION_MNIST_DIR.is_dir():
        return DataFolder(DEBIAN_FASHION_MNIST_DIR, "Debian package dataset-fashion-mnist")
    return None


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


def check_folder_exists(folder: Path, origin: str) -> None:
    given_by = f" (given by {origin})" if origin else ""
    if not folder.exists():
        raise UserError(f"data folder {folder}{given_by} does not exist; "
                        "pass --data-dir DIR or set BIOPROP_DATA_DIR to a folder holding the IDX files")
    if not folder.is_dir():
        raise UserError(f"data folder {folder}{given_by} is not a folder; "
                        "pass --data-dir DIR or set BIOPROP_DATA_DIR to a folder holding the IDX files")


def find_idx_file(folder: Path, base_name: str, expected: Mapping[str, FileSpec]) -> Path:
    for candidate in (folder / base_name, folder / f"{base_name}.gz"):
        if candidate.is_file():
            return candidate
    raise UserError(f"{folder}: missing {base_name} (or {base_name}.gz); the folder must hold the IDX files "
                    f"{', '.join(expected)} (each plain or .gz) - add the file or point --data-dir / BIOPROP_DATA_DIR at a "
                    "folder with the canonical files")


def read_idx_file(path: Path, spec: FileSpec) -> np.ndarray:
    content = read_uncompressed(path)
    array = parse_idx(path, content, spec)
    check_values(path, array, spec)
    check_md5(path, content, spec)
    return array


def read_uncompressed(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise UserError(f"{path}: cannot read the file ({error.strerror or error}) - {FIX_HINT}") from None
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as error:
        raise UserError(f"{path}: expected a complete gzip file, found a truncated or corrupt one "
                        f"({one_line(error)}) - {FIX_HINT}") from None


def parse_idx(path: Path, content: bytes, spec: FileSpec) -> np.ndarray:
    header_size = 4 + 4 * len(spec.shape)
    if len(content) < header_size:
        raise UserError(f"{path}: expected an IDX file with a {header_size}-byte header, found only "
                        f"{len(content)} bytes - {FIX_HINT}")
    magic = int.from_bytes(content[:4], "big")
    if magic != spec.magic:
        raise UserError(f"{path}: expected IDX magic number 0x{spec.magic:08x} (ubyte, {len(spec.shape)} dims), "
                        f"found 0x{magic:08x} - {FIX_HINT}")
    shape = tuple(int(d) for d in np.frombuffer(content, dtype=">i4", count=len(spec.shape), offset=4))
    if shape != spec.shape:
        raise UserError(f"{path}: expected shape {format_shape(spec.shape)}, found {format_shape(shape)} - {FIX_HINT}")
    payload = memoryview(content)[header_size:]
    if len(payload) != int(np.prod(shape)):
        raise UserError(f"{path}: expected {int(np.prod(shape))} data bytes after the header for shape "
                        f"{format_shape(shape)}, found {len(payload)} - {FIX_HINT}")
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


def check_values(path: Path, array: np.ndarray, spec: FileSpec) -> None:
    if spec.max_value < 255 and array.size and int(array.max()) > spec.max_value:
        raise UserError(f"{path}: expected values 0..{spec.max_value}, found a maximum of {int(array.max())} "
                        f"- {FIX_HINT}")


def check_md5(path: Path, content: bytes, spec: FileSpec) -> None:
    actual = hashlib.md5(content).hexdigest()
    if actual != spec.md5:
        raise UserError(f"{path}: MD5 of the uncompressed content is {actual}, expected {spec.md5} (the canonical "
                        f"file); it is corrupt or from another dataset - {FIX_HINT}")


def format_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) if shape else "()"


def one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# --- tensorflow-datasets -----------------------------------------------------------------------------------------


def load_from_tfds(name: str) -> Dataset:
    try:
        (x_train, y_train), (x_test, y_test) = fetch_tfds_splits(name)
    except Exception as error:  # offline, not installed, broken install: all mean "use local files"
        raise UserError(
            f"could not load {name} through tensorflow-datasets ({type(error).__name__}: {one_line(error)}); "
            f"pass --data-dir DIR or set BIOPROP_DATA_DIR to a folder holding {', '.join(IDX_FILE_NAMES)} "
            "(each plain or .gz)"
        ) from None
    dataset = Dataset(name, scale_images(x_train), y_train.astype(np.int32), scale_images(x_test),
                      y_test.astype(np.int32), source="tensorflow-datasets")
    check_tfds_shapes(dataset)
    return dataset


TFDS_DOWNLOAD_HOST = ("storage.googleapis.com", 443)  # where tensorflow-datasets fetches MNIST


def download_host_reachable(timeout_s: float = 3.0) -> bool:
    """A quick check, so that an offline machine fails at once instead of in tfds' retry loop."""
    try:
        socket.create_connection(TFDS_DOWNLOAD_HOST, timeout=timeout_s).close()
        return True
    except OSError:
        return False


def fetch_tfds_splits(name: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(images (N,28,28,1) uint8, labels) for train and test. Uses tf.data when TensorFlow is installed."""
    import tensorflow_datasets as tfds  # slow import: only when needed

    if not tfds.builder(name).is_prepared() and not download_host_reachable():
        raise ConnectionError("not in the tensorflow-datasets cache, and the download server cannot be reached")

    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return fetch_tfds_splits_without_tensorflow(tfds, name)
    train, test = tfds.as_numpy(tfds.load(name, split=["train", "test"], batch_size=-1, as_supervised=True))
    return (np.asarray(train[0]), np.asarray(train[1])), (np.asarray(test[0]), np.asarray(test[1]))


def fetch_tfds_splits_without_tensorflow(tfds, name: str):
    sources = tfds.data_source(name, split=["train", "test"], builder_kwargs={"file_format": "array_record"})
    return tuple(
        (np.stack([example["image"] for example in source]), np.array([example["label"] for example in source]))
        for source in sources
    )


def check_tfds_shapes(dataset: Dataset) -> None:
    expected = {"x_train": (NUM_TRAIN, IMAGE_SIDE * IMAGE_SIDE), "y_train": (NUM_TRAIN,),
                "x_test": (NUM_TEST, IMAGE_SIDE * IMAGE_SIDE), "y_test": (NUM_TEST,)}
    for field, shape in expected.items():
        found = getattr(dataset, field).shape
        if found != shape:
            raise UserError(f"tensorflow-datasets gave {dataset.name} {field} of shape {format_shape(found)}, "
                            f"expected {format_shape(shape)}; pass --data-dir DIR with the canonical IDX files")
