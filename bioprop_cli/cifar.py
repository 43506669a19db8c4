"""CIFAR-10 and CIFAR-100 from their official binary versions: the archive or its extracted folder.

A data folder holds the archive (``cifar-10-binary.tar.gz``, ``cifar-100-binary.tar.gz``: its MD5 checked against
the published value, its members read straight from it, nothing extracted to disk), or the folder it extracts to
(``cifar-10-batches-bin/``, ``cifar-100-binary/``), or is that folder itself. The archive wins when both are
present. CIFAR-10's batch files are ``data_batch_1.bin`` .. ``data_batch_5.bin`` (training, in that order) and
``test_batch.bin``, each exactly 10000 records of one label byte (0..9) and 3072 pixel bytes; CIFAR-100's are
``train.bin`` (50000 records) and ``test.bin`` (10000), each record a coarse label byte (0..19), a fine label byte
(0..99) and the 3072 pixel bytes. The pixels are the red, green and blue planes of a 32x32 image, each row-major
(https://www.cs.toronto.edu/~kriz/cifar.html). Every file is checked: its size, its labels, and the published
split's class counts (the test file holds the same number of images of each class, and so do the training files
together); any problem is a one-line ``UserError``. The images come out channel-last, (H, W, C) flattened, uint8,
like every dataset of bioprop.

The python versions are pickles, and unpickling runs whatever code a file names: they are refused, never read.
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
    BadDataFile, DataFolder, Dataset, FileCheck, check_folder_exists, flat_images, one_line, unsafe_member_name,
)
from bioprop_cli.errors import UserError

ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # published on https://www.cs.toronto.edu/~kriz/cifar.html
CIFAR100_ARCHIVE_MD5 = "03b5dce01913d631647c71ecec9e9cb8"  # published there too (168,513,733 bytes)
TRAIN_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_BATCH = "test_batch.bin"
BATCH_FILES = (*TRAIN_BATCHES, TEST_BATCH)
HEIGHT, WIDTH, CHANNELS = IMAGE_SHAPE = (32, 32, 3)
PIXEL_BYTES = HEIGHT * WIDTH * CHANNELS
RECORD_BYTES = 1 + PIXEL_BYTES  # CIFAR-10's: the label byte, then the pixels


@dataclass(frozen=True)
class Layout:
    """What the files hold: the published values, or (in tests) smaller batches and their archive's checksum.
    Defaults: CIFAR-10's binary version."""

    records_per_batch: int = 10000  # of each CIFAR-10 batch file; of CIFAR-100's test file (train.bin: 5x)
    archive_md5: str = ARCHIVE_MD5
    dataset: str = "cifar10"
    title: str = "CIFAR-10"
    archive: str = "cifar-10-binary.tar.gz"  # the binary version, as published
    folder: str = "cifar-10-batches-bin"  # the folder the archive extracts to
    train_files: tuple[str, ...] = TRAIN_BATCHES
    test_file: str = TEST_BATCH
    label_classes: tuple[int, ...] = (10,)  # classes of each label byte, in record order
    python_names: tuple[str, ...] = ("cifar-10-python.tar.gz", "cifar-10-batches-py", "data_batch_1")

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file)

    @property
    def record_bytes(self) -> int:
        return len(self.label_classes) + PIXEL_BYTES

    def records(self, file: str) -> int:
        """Records in one file: the training records are split evenly over the training files (5 x the test's)."""
        if file == self.test_file:
            return self.records_per_batch
        return 5 * self.records_per_batch // len(self.train_files)

    @property
    def binary_version(self) -> str:
        return (f"get the binary version {self.archive} from https://www.cs.toronto.edu/~kriz/cifar.html "
                f"or run `bioprop data fetch {self.dataset}`")

    @property
    def contents(self) -> str:
        return f"{self.archive} or its extracted folder {self.folder}/ (the binary version of {self.title})"


CANONICAL = Layout()  # looked up when a reader runs: tests put smaller generated files in its place
CANONICAL_100 = Layout(archive_md5=CIFAR100_ARCHIVE_MD5, dataset="cifar100", title="CIFAR-100",
                       archive="cifar-100-binary.tar.gz", folder="cifar-100-binary", train_files=("train.bin",),
                       test_file="test.bin", label_classes=(20, 100),
                       python_names=("cifar-100-python.tar.gz", "cifar-100-python"))
FINE, COARSE = 1, 0  # CIFAR-100's label bytes: coarse (20 superclasses) first, then fine (100 classes)

# {file name: (labels (n, label bytes) uint8, images (n, H, W, C) uint8)}
Batches = dict[str, tuple[np.ndarray, np.ndarray]]


def layout_of(dataset: str) -> Layout:
    """The canonical layout of `dataset`, looked up when a reader runs (tests replace it)."""
    return CANONICAL if dataset == "cifar10" else CANONICAL_100


def read_cifar(folder: DataFolder, layout: Layout, label_byte: int = 0) -> Dataset:
    """The dataset from a data folder holding the binary archive or its extracted files; its labels are those of
    label byte `label_byte` (CIFAR-100: FINE or COARSE)."""
    source = find_binary_source(folder, layout)
    return dataset_from_batches(read_source(source, layout), source, folder.origin, layout, label_byte)


def dataset_from_batches(batches: Batches, path: Path, origin: str, layout: Layout = CANONICAL,
                         label_byte: int = 0) -> Dataset:
    train = [batches[name] for name in layout.train_files]
    labels_train = np.concatenate([labels[:, label_byte] for labels, _ in train])
    images_train = np.concatenate([images for _, images in train])
    labels_test, images_test = batches[layout.test_file]
    return Dataset(layout.dataset, flat_images(images_train), labels_train.astype(np.int32), flat_images(images_test),
                   labels_test[:, label_byte].astype(np.int32), source=f"files in {path} (from {origin})",
                   num_classes=layout.label_classes[label_byte])


def find_binary_source(folder: DataFolder, layout: Layout | None = None) -> Path:
    """The archive or the batch folder to read (binary_source); a UserError when the folder holds neither."""
    layout = layout or CANONICAL
    check_folder_exists(folder.path, folder.origin, layout.contents)
    source = binary_source(folder.path, layout)
    if source is None:
        refuse_python_version(folder.path, layout)
        given_by = f" (given by {folder.origin})" if folder.origin else ""
        raise UserError(f"{folder.path}{given_by}: holds neither {layout.archive} nor {layout.folder}/ nor the batch "
                        f"files {', '.join(layout.files)}; {layout.binary_version}, or point --data-dir / "
                        "BIOPROP_DATA_DIR at the folder holding it")
    return source


def read_source(source: Path, layout: Layout) -> Batches:
    """The batches of the archive or batch folder `source`, every check passed."""
    batches = read_archive(source, layout) if source.is_file() else read_batch_folder(source, layout)
    check_class_counts(source, batches, layout)
    return batches


def binary_source(folder: Path, layout: Layout | None = None) -> Path | None:
    """The archive in `folder`, else the extracted batch folder in it, else `folder` itself when it holds batch
    files; None when there is none of these."""
    layout = layout or CANONICAL
    if (folder / layout.archive).is_file():
        return folder / layout.archive
    if (folder / layout.folder).is_dir():
        return folder / layout.folder
    if any((folder / name).exists() for name in layout.files):
        return folder
    return None


def refuse_python_version(folder: Path, layout: Layout | None = None) -> None:
    layout = layout or CANONICAL
    for found in (folder / name for name in layout.python_names):
        if found.exists():
            raise UserError(f"{found}: the python version of {layout.title} (pickled batches), which bioprop never "
                            f"reads (unpickling a file runs the code it names); {layout.binary_version}")


# --- the batch files ---------------------------------------------------------------------------------------------


def parse_batch(source: str | os.PathLike, content: bytes, layout: Layout,
                records: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels (n, label bytes) uint8, images (n, H, W, C) uint8) of one batch file's bytes (`records` of them,
    default the layout's per batch); `source` names it in errors."""
    records = layout.records_per_batch if records is None else records
    expected = records * layout.record_bytes
    if len(content) != expected:
        what = "truncated: found only" if len(content) < expected else "found"
        n_labels = len(layout.label_classes)
        layout_text = (f"{records} records of {n_labels} label byte{'s' if n_labels > 1 else ''} and {PIXEL_BYTES} "
                       "pixel bytes")
        raise BadDataFile(source, f"{what} {len(content)} bytes, expected exactly {expected} ({layout_text})")
    table = np.frombuffer(content, np.uint8).reshape(records, layout.record_bytes)
    labels = table[:, :len(layout.label_classes)]
    for column, classes in enumerate(layout.label_classes):
        bad = np.flatnonzero(labels[:, column] >= classes)
        if bad.size:
            which = "" if len(layout.label_classes) == 1 else f" {column}"
            raise BadDataFile(source, f"label byte{which} {labels[bad[0], column]} in record {bad[0]}, expected "
                                      f"0..{classes - 1} ({bad.size} bad labels in all)")
    # each record stores the red, green and blue planes in turn: (C, H, W) -> (H, W, C)
    images = table[:, len(layout.label_classes):].reshape(-1, CHANNELS, HEIGHT, WIDTH).transpose(0, 2, 3, 1)
    return labels, images


def read_batch_folder(batch_folder: Path, layout: Layout) -> Batches:
    return {name: read_batch_file(batch_folder, name, layout) for name in layout.files}


def read_batch_file(batch_folder: Path, name: str, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    path = batch_folder / name
    if not path.is_file():
        raise UserError(f"{batch_folder}: missing {name}; a {layout.title} binary folder holds "
                        f"{', '.join(layout.files)} - add the file, or {layout.binary_version}")
    try:
        content = path.read_bytes()
    except OSError as error:
        raise BadDataFile(path, f"cannot read the file ({error.strerror or error})") from None
    return parse_batch(path, content, layout, layout.records(name))


def check_class_counts(source: str | os.PathLike, batches: Batches, layout: Layout) -> None:
    """The published split: the test file holds the same number of images of each class, and so do the
    training files together (CIFAR-10: 1000 and 5000; CIFAR-100: 100 and 500 of each fine class)."""
    training = "the five training batches" if len(layout.train_files) > 1 else layout.train_files[0]
    for column, classes in enumerate(layout.label_classes):
        per_class = layout.records_per_batch // classes
        groups = {layout.test_file: ([layout.test_file], per_class), training: (list(layout.train_files), per_class * 5)}
        for where, (names, expected) in groups.items():
            counts = np.bincount(np.concatenate([batches[name][0][:, column] for name in names]), minlength=classes)
            if np.any(counts != expected):
                raise BadDataFile(source, f"images per class in {where}: {counts.tolist()}, expected {expected} of "
                                          "each (the published split)")


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
                                  f"{layout.archive}); the archive is truncated, corrupt or not {layout.title}'s "
                                  "binary version")


def read_archive_members(source: str | os.PathLike, file: BinaryIO, layout: Layout) -> Batches:
    try:
        with tarfile.open(fileobj=file, mode="r:gz") as archive:
            refuse_unsafe_members(source, archive)
            return {name: parse_batch(f"{source} member {member_name(name, layout)}",
                                      read_member(source, archive, name, layout), layout, layout.records(name))
                    for name in layout.files}
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:  # OSError: gzip's CRC and length checks
        raise BadDataFile(source, f"expected a complete gzip-compressed tar archive, found a truncated or corrupt one "
                                  f"({one_line(error)})") from None


def member_name(batch_file: str, layout: Layout | None = None) -> str:
    return f"{(layout or CANONICAL).folder}/{batch_file}"


def refuse_unsafe_members(source: str | os.PathLike, archive: tarfile.TarFile) -> None:
    """Nothing is extracted to disk, but an archive naming a member outside its folder (an absolute path, a ..
    component) is not the published one: refused before any member is read."""
    for member in archive.getmembers():
        if unsafe_member_name(member.name):
            raise BadDataFile(source, f"the archive names a member outside its folder ({member.name!r}); "
                                      "not the published archive")


def read_member(source: str | os.PathLike, archive: tarfile.TarFile, batch_file: str,
                layout: Layout | None = None) -> bytes:
    layout = layout or CANONICAL
    name = member_name(batch_file, layout)
    try:
        member = archive.getmember(name)
    except KeyError:
        raise BadDataFile(source, f"the archive has no member {name}; it holds "
                                  f"{', '.join(member_name(b, layout) for b in layout.files)}") from None
    extracted = archive.extractfile(member) if member.isfile() else None
    if extracted is None:
        raise BadDataFile(source, f"the archive's member {name} is not a regular file")
    return extracted.read()


# --- `bioprop data check` ----------------------------------------------------------------------------------------


def check_cifar_folder(folder: str | os.PathLike, layout: Layout | None = None) -> list[FileCheck]:
    """The state of the archive, or of each batch file of the extracted folder and then of the folder's split
    (for `bioprop data check`)."""
    folder, layout = Path(folder), layout or CANONICAL
    check_folder_exists(folder, "", layout.contents)
    source = binary_source(folder, layout)
    if source is None:
        refuse_python_version(folder, layout)
        wanted = f"{layout.archive} (or its extracted folder {layout.folder}/)"
        return [FileCheck(layout.archive, None, wanted=wanted)]
    if source.is_file():
        return [file_check(source.name, source, lambda: read_source(source, layout))]
    return check_batch_folder(source, layout)


def check_batch_folder(source: Path, layout: Layout) -> list[FileCheck]:
    """The extracted files have no published checksum: their sizes, labels and split are what is checked."""
    checks, batches = [], {}
    for name in layout.files:
        path = source / name
        if not path.is_file():
            checks.append(FileCheck(name, None, wanted=name))
            continue
        try:
            batches[name] = read_batch_file(source, name, layout)
            checks.append(FileCheck(name, path, checksummed=False))
        except BadDataFile as error:
            checks.append(FileCheck(name, path, error.problem))
    if len(batches) == len(layout.files):  # every file intact: then the split they make together
        checks.append(file_check(source.name, source, lambda: check_class_counts(source, batches, layout),
                                 checksummed=False))
    return checks


def file_check(base_name: str, path: Path, check: Callable[[], object], checksummed: bool = True) -> FileCheck:
    try:
        check()
    except BadDataFile as error:
        return FileCheck(base_name, path, error.problem)
    return FileCheck(base_name, path, checksummed=checksummed)
