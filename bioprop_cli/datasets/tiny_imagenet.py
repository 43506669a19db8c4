"""Tiny ImageNet (the 200-class subset of ImageNet of Stanford's CS231n, 64x64 colour): the official
`tiny-imagenet-200.zip`, read without extracting it (or its extracted folder `tiny-imagenet-200/`).

Classes: in the order of `wnids.txt`. Training: `train/<wnid>/images/*.JPEG`, 500 per class; test: the labelled
validation split, `val/images/*.JPEG` labelled by `val/val_annotations.txt` (file, wnid, box), 50 per class (the
split the field reports as "test": the official test images carry no labels). JPEGs are decoded with Pillow;
the few grey ones are converted to RGB (their value in each channel). The zip's MD5 is checked against the
value loaders agree on (90528d7c..., 248,100,043 bytes; CS231n publishes none).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from types import MappingProxyType

import numpy as np

from bioprop_cli.data import BadDataFile, DataFolder, Dataset, FileCheck, check_folder_exists, unsafe_member_name
from bioprop_cli.datasets.archive import Members
from bioprop_cli.datasets.base import DatasetInfo, DownloadSource, optional_module
from bioprop_cli.errors import UserError

ARCHIVE, TOP = "tiny-imagenet-200.zip", "tiny-imagenet-200"
ARCHIVE_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"  # looked up when a reader runs: tests put their archive's in place
IMAGE_SHAPE = (64, 64, 3)
NUM_CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 200, 500, 50  # tests put smaller ones in place
FOLDER_CONTENTS = f"{ARCHIVE} or its extracted folder {TOP}/"


def decode(source: str, raw: bytes) -> np.ndarray:
    """One JPEG -> (64, 64, 3) uint8; grey images are converted to RGB."""
    image_module = optional_module("PIL.Image", "tiny_imagenet")
    try:
        with image_module.open(io.BytesIO(raw), formats=["JPEG"]) as image:  # only the header is read here
            if image.size != IMAGE_SHAPE[:2]:  # checked before any pixel is decoded (no decompression bomb)
                raise BadDataFile(source, f"expected a 64x64 image, found {image.size[0]}x{image.size[1]}")
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, image_module.DecompressionBombError) as error:
        # PIL's UnidentifiedImageError (not a JPEG, or a truncated one) is an OSError
        raise BadDataFile(source, f"expected a JPEG image, found an unreadable one ({type(error).__name__})") from None


def read_members(members: Members, where: str, top: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The arrays of the members under `top` (the zip's "tiny-imagenet-200/", or "" in the extracted folder)."""
    text = lambda name: members.read(f"{top}{name}").decode("utf-8", "replace")
    wnids = text("wnids.txt").split()
    if len(wnids) != NUM_CLASSES or len(set(wnids)) != NUM_CLASSES:
        raise BadDataFile(f"{where} member {top}wnids.txt", f"expected {NUM_CLASSES} distinct class ids, found "
                                                             f"{len(wnids)} ({len(set(wnids))} distinct)")
    label = {wnid: i for i, wnid in enumerate(wnids)}
    names = members.names()
    x_train, y_train = [], []
    for wnid in wnids:
        prefix = f"{top}train/{wnid}/images/"
        files = sorted(n for n in names if n.startswith(prefix) and n.endswith(".JPEG"))
        if len(files) != TRAIN_PER_CLASS:
            raise BadDataFile(where, f"expected {TRAIN_PER_CLASS} training images in {prefix}, found {len(files)}")
        x_train += [decode(f"{where} member {n}", members.read(n)) for n in files]
        y_train += [label[wnid]] * len(files)
    x_test, y_test = [], []
    for line_number, line in enumerate(text("val/val_annotations.txt").splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label or unsafe_member_name(fields[0]) or "/" in fields[0]:
            raise BadDataFile(f"{where} member {top}val/val_annotations.txt",
                              f"line {line_number}: expected FILE<tab>WNID of a class in wnids.txt, found {line[:80]!r}")
        x_test.append(decode(f"{where} member {fields[0]}", members.read(f"{top}val/images/{fields[0]}")))
        y_test.append(label[fields[1]])
    counts = np.bincount(np.asarray(y_test, np.int64), minlength=NUM_CLASSES)
    if np.any(counts != VAL_PER_CLASS):
        raise BadDataFile(where, f"validation images per class: {counts.min()}..{counts.max()}, expected "
                                 f"{VAL_PER_CLASS} of each")
    flat = lambda images: np.stack(images).reshape(len(images), -1)
    return flat(x_train), np.asarray(y_train, np.int32), flat(x_test), np.asarray(y_test, np.int32)


def source_in(folder: Path) -> Path | None:
    for candidate in (folder / ARCHIVE, folder / TOP):
        if candidate.exists():
            return candidate
    return folder if (folder / "wnids.txt").is_file() else None


def check_archive_md5(source, raw_md5: str) -> None:
    if raw_md5 != ARCHIVE_MD5:
        raise BadDataFile(source, f"MD5 is {raw_md5}, expected {ARCHIVE_MD5} ({ARCHIVE} as published); the archive "
                                  "is truncated, corrupt or another one")


def read_source(source: Path) -> tuple[np.ndarray, ...]:
    if source.is_file():
        with source.open("rb") as file:
            check_archive_md5(source, hashlib.file_digest(file, "md5").hexdigest())
        with Members(source) as members:
            return read_members(members, str(source), f"{TOP}/")
    with Members(source) as members:  # the extracted folder
        return read_members(members, str(source), "")


def read(folder: DataFolder, options=None) -> Dataset:
    check_folder_exists(folder.path, folder.origin, FOLDER_CONTENTS)
    source = source_in(folder.path)
    if source is None:
        raise UserError(f"{folder.path}: holds neither {ARCHIVE} nor {TOP}/; run `bioprop data fetch tiny_imagenet` "
                        "or point --data-dir / BIOPROP_DATA_DIR at the folder holding it")
    x_train, y_train, x_test, y_test = read_source(source)
    return Dataset("tiny_imagenet", x_train, y_train, x_test, y_test,
                   source=f"files in {source} (from {folder.origin})", num_classes=NUM_CLASSES)


def check(folder: Path) -> list:
    check_folder_exists(Path(folder), "", FOLDER_CONTENTS)
    source = source_in(Path(folder))
    if source is None:
        return [FileCheck(ARCHIVE, None, wanted=FOLDER_CONTENTS)]
    try:
        read_source(source)
    except BadDataFile as error:
        return [FileCheck(source.name, source, error.problem)]
    return [FileCheck(source.name, source, checksummed=source.is_file())]


def verify(dataset: str, source: str, file_name: str, raw: bytes) -> None:
    check_archive_md5(source, hashlib.md5(raw).hexdigest())


def present(folder: Path, file_name: str) -> bool:
    return source_in(folder) is not None


INFO = DatasetInfo(
    name="tiny_imagenet",
    title="Tiny ImageNet (200 classes, 64x64; Stanford CS231n)",
    image_shape=IMAGE_SHAPE,
    num_classes=NUM_CLASSES,
    split_sizes=MappingProxyType({"train": NUM_CLASSES * TRAIN_PER_CLASS, "test": NUM_CLASSES * VAL_PER_CLASS}),
    class_names=(),  # the wnids of the archive's wnids.txt, in its order
    files=MappingProxyType({ARCHIVE: ARCHIVE_MD5}),
    folder_contents=FOLDER_CONTENTS,
    read=read,
    check=check,
    download=DownloadSource(mirrors=("http://cs231n.stanford.edu/",), files=(ARCHIVE,), verify=verify,
                            present=present),
)
