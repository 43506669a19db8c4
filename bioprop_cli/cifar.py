"""CIFAR-10 from its official binary version: the archive ``cifar-10-binary.tar.gz`` or its extracted folder.

A data folder holds the archive (its MD5 checked against the published value, its members read straight from it,
nothing extracted to disk), or the folder ``cifar-10-batches-bin/`` it extracts to, or is that folder itself. The
archive wins when both are present. The batch files are ``data_batch_1.bin`` .. ``data_batch_5.bin`` (training,
in that order) and ``test_batch.bin``; each is exactly 10000 records of one label byte (0..9) and 3072 pixel bytes:
the red, green and blue planes of a 32x32 image, each row-major (https://www.cs.toronto.edu/~kriz/cifar.html).
Every file is checked: its size, its labels, and the published split's class counts (1000 images of each class
in the test batch, 5000 across the training batches); any problem is a one-line ``UserError``. The images come
out channel-last, (H, W, C) flattened, like every dataset of bioprop (``data.IMAGE_SHAPES``).

The python version of CIFAR-10 is pickles, and unpickling runs whatever code a file names: it is refused, never read.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from bioprop_cli.data import (
    CIFAR10_ARCHIVE, CIFAR10_FOLDER, IMAGE_SHAPES, NUM_CLASSES, BadDataFile, DataFolder, Dataset, FileCheck,
    check_folder_exists, folder_contents, one_line, scale_images,
)
from bioprop_cli.errors import UserError

ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # published on https://www.cs.toronto.edu/~kriz/cifar.html
TRAIN_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_BATCH = "test_batch.bin"
BATCH_FILES = (*TRAIN_BATCHES, TEST_BATCH)
HEIGHT, WIDTH, CHANNELS = IMAGE_SHAPES["cifar10"]
RECORD_BYTES = 1 + HEIGHT * WIDTH * CHANNELS  # the label byte, then the pixels

PYTHON_ARCHIVE = "cifar-10-python.tar.gz"
PYTHON_FOLDER = "cifar-10-batches-py"
PYTHON_BATCH = "data_batch_1"  # the python version's batch files have no .bin
BINARY_VERSION = (f"get the binary version {CIFAR10_ARCHIVE} from https://www.cs.toronto.edu/~kriz/cifar.html "
                  "or run `bioprop data fetch cifar10`")


@dataclass(frozen=True)
class Layout:
    """What the files hold: the published values, or (in tests) smaller batches and their archive's checksum."""

    records_per_batch: int = 10000
    archive_md5: str = ARCHIVE_MD5


CANONICAL = Layout()  # looked up when a reader runs: tests put smaller generated files in its place

Batches = dict[str, tuple[np.ndarray, np.ndarray]]  # {batch file name: (labels (n,) uint8, images (n, H, W, C) uint8)}


def read_cifar10(folder: DataFolder) -> Dataset:
    """The dataset from a data folder holding the binary archive or its extracted batch files."""
    source = find_binary_source(folder)
    return dataset_from_batches(read_source(source, CANONICAL), source, folder.origin)


def dataset_from_batches(batches: Batches, path: Path, origin: str) -> Dataset:
    train = [batches[name] for name in TRAIN_BATCHES]
    labels_train = np.concatenate([labels for labels, _ in train])
    images_train = np.concatenate([images for _, images in train])
    labels_test, images_test = batches[TEST_BATCH]
    return Dataset("cifar10", scale_images(images_train), labels_train.astype(np.int32), scale_images(images_test),
                   labels_test.astype(np.int32), source=f"files in {path} (from {origin})")


def find_binary_source(folder: DataFolder) -> Path:
    """The archive or the batch folder to read (binary_source); a UserError when the folder holds neither."""
    check_folder_exists(folder.path, folder.origin, folder_contents("cifar10"))
    source = binary_source(folder.path)
    if source is None:
        refuse_python_version(folder.path)
        given_by = f" (given by {folder.origin})" if folder.origin else ""
        raise UserError(f"{folder.path}{given_by}: holds neither {CIFAR10_ARCHIVE} nor {CIFAR10_FOLDER}/ nor the batch "
                        f"files {', '.join(BATCH_FILES)}; {BINARY_VERSION}, or point --data-dir / BIOPROP_DATA_DIR at "
                        "the folder holding it")
    return source


def read_source(source: Path, layout: Layout) -> Batches:
    """The batches of the archive or batch folder `source`, every check passed."""
    batches = read_archive(source, layout) if source.is_file() else read_batch_folder(source, layout)
    check_class_counts(source, batches, layout)
    return batches


def binary_source(folder: Path) -> Path | None:
    """The archive in `folder`, else the extracted batch folder in it, else `folder` itself when it holds batch
    files; None when there is none of these."""
    if (folder / CIFAR10_ARCHIVE).is_file():
        return folder / CIFAR10_ARCHIVE
    if (folder / CIFAR10_FOLDER).is_dir():
        return folder / CIFAR10_FOLDER
    if any((folder / name).exists() for name in BATCH_FILES):
        return folder
    return None


def refuse_python_version(folder: Path) -> None:
    for found in (folder / PYTHON_ARCHIVE, folder / PYTHON_FOLDER, folder / PYTHON_BATCH):
        if found.exists():
            raise UserError(f"{found}: the python version of CIFAR-10 (pickled batches), which bioprop never reads "
                            f"(unpickling a file runs the code it names); {BINARY_VERSION}")


# --- the batch files ---------------------------------------------------------------------------------------------


def parse_batch(source: str | os.PathLike, content: bytes, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """(labels (n,) uint8, images (n, H, W, C) uint8) of one batch file's bytes; `source` names it in errors."""
    expected = layout.records_per_batch * RECORD_BYTES
    if len(content) != expected:
        what = "truncated: found only" if len(content) < expected else "found"
        layout_text = f"{layout.records_per_batch} records of 1 label byte and {RECORD_BYTES - 1} pixel bytes"
        raise BadDataFile(source, f"{what} {len(content)} bytes, expected exactly {expected} ({layout_text})")
    records = np.frombuffer(content, np.uint8).reshape(layout.records_per_batch, RECORD_BYTES)
    labels = records[:, 0]
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise BadDataFile(source, f"label byte {labels[bad[0]]} in record {bad[0]}, expected 0..{NUM_CLASSES - 1} "
                                  f"({bad.size} bad labels in all)")
    # each record stores the red, green and blue planes in turn: (C, H, W) -> (H, W, C)
    images = records[:, 1:].reshape(-1, CHANNELS, HEIGHT, WIDTH).transpose(0, 2, 3, 1)
    return labels, images


def read_batch_folder(batch_folder: Path, layout: Layout) -> Batches:
    return {name: read_batch_file(batch_folder, name, layout) for name in BATCH_FILES}


def read_batch_file(batch_folder: Path, name: str, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    path = batch_folder / name
    if not path.is_file():
        raise UserError(f"{batch_folder}: missing {name}; a CIFAR-10 binary folder holds {', '.join(BATCH_FILES)} - "
                        f"add the file, or {BINARY_VERSION}")
    try:
        content = path.read_bytes()
    except OSError as error:
        raise BadDataFile(path, f"cannot read the file ({error.strerror or error})") from None
    return parse_batch(path, content, layout)


def check_class_counts(source: str | os.PathLike, batches: Batches, layout: Layout) -> None:
    """The published split: the test batch holds the same number of images of each class, and so do the
    training batches together (1000 and 5000)."""
    per_class = layout.records_per_batch // NUM_CLASSES
    groups = {TEST_BATCH: ([TEST_BATCH], per_class),
              "the five training batches": (list(TRAIN_BATCHES), per_class * len(TRAIN_BATCHES))}
    for where, (names, expected) in groups.items():
        counts = np.bincount(np.concatenate([batches[name][0] for name in names]), minlength=NUM_CLASSES)
        if np.any(counts != expected):
            raise BadDataFile(source, f"images per class in {where}: {counts.tolist()}, expected {expected} of each "
                                      "(the published split)")


# --- the archive -------------------------------------------------------------------------------------------------


def read_archive(path: Path, layout: Layout) -> Batches:
    try:
        with path.open("rb") as file:
            check_archive_md5(path, hashlib.file_digest(file, "md5").hexdigest(), layout)
            file.seek(0)
            return read_archive_members(path, file, layout)
    except OSError as error:
        raise BadDataFile(path, f"cannot read the file ({error.strerror or error})") from None


def verify_archive_bytes(source: str, raw: bytes, layout: Layout) -> None:
    """The checks the archive passes, on its bytes (a download); `source` names it in errors."""
    check_archive_md5(source, hashlib.md5(raw).hexdigest(), layout)
    check_class_counts(source, read_archive_members(source, io.BytesIO(raw), layout), layout)


def check_archive_md5(source: str | os.PathLike, actual: str, layout: Layout) -> None:
    if actual != layout.archive_md5:
        raise BadDataFile(source, f"MD5 is {actual}, expected {layout.archive_md5} (the published checksum of "
                                  f"{CIFAR10_ARCHIVE}); the archive is truncated, corrupt or not CIFAR-10's binary "
                                  "version")


def read_archive_members(source: str | os.PathLike, file: BinaryIO, layout: Layout) -> Batches:
    try:
        with tarfile.open(fileobj=file, mode="r:gz") as archive:
            return {name: parse_batch(f"{source} member {member_name(name)}", read_member(source, archive, name),
                                      layout) for name in BATCH_FILES}
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:  # OSError: gzip's CRC and length checks
        raise BadDataFile(source, f"expected a complete gzip-compressed tar archive, found a truncated or corrupt one "
                                  f"({one_line(error)})") from None


def member_name(batch_file: str) -> str:
    return f"{CIFAR10_FOLDER}/{batch_file}"


def read_member(source: str | os.PathLike, archive: tarfile.TarFile, batch_file: str) -> bytes:
    name = member_name(batch_file)
    try:
        member = archive.getmember(name)
    except KeyError:
        raise BadDataFile(source, f"the archive has no member {name}; it holds "
                                  f"{', '.join(member_name(b) for b in BATCH_FILES)}") from None
    extracted = archive.extractfile(member) if member.isfile() else None
    if extracted is None:
        raise BadDataFile(source, f"the archive's member {name} is not a regular file")
    return extracted.read()


# --- `bioprop data check` ----------------------------------------------------------------------------------------


def check_cifar_folder(folder: str | os.PathLike) -> list[FileCheck]:
    """The state of the archive, or of each batch file of the extracted folder and then of the folder's split
    (for `bioprop data check`)."""
    folder, layout = Path(folder), CANONICAL
    check_folder_exists(folder, "", folder_contents("cifar10"))
    source = binary_source(folder)
    if source is None:
        refuse_python_version(folder)
        wanted = f"{CIFAR10_ARCHIVE} (or its extracted folder {CIFAR10_FOLDER}/)"
        return [FileCheck(CIFAR10_ARCHIVE, None, wanted=wanted)]
    if source.is_file():
        return [file_check(source.name, source, lambda: read_source(source, layout))]
    return check_batch_folder(source, layout)


def check_batch_folder(source: Path, layout: Layout) -> list[FileCheck]:
    """The extracted files have no published checksum: their sizes, labels and split are what is checked."""
    checks, batches = [], {}
    for name in BATCH_FILES:
        path = source / name
        if not path.is_file():
            checks.append(FileCheck(name, None, wanted=name))
            continue
        try:
            batches[name] = read_batch_file(source, name, layout)
            checks.append(FileCheck(name, path, checksummed=False))
        except BadDataFile as error:
            checks.append(FileCheck(name, path, error.problem))
    if len(batches) == len(BATCH_FILES):  # every file intact: then the split they make together
        checks.append(file_check(source.name, source, lambda: check_class_counts(source, batches, layout),
                                 checksummed=False))
    return checks


def file_check(base_name: str, path: Path, check: Callable[[], object], checksummed: bool = True) -> FileCheck:
    try:
        check()
    except BadDataFile as error:
        return FileCheck(base_name, path, error.problem)
    return FileCheck(base_name, path, checksummed=checksummed)
