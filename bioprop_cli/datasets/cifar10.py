"""CIFAR-10 (Krizhevsky 2009): 32x32 colour images of 10 classes, from its binary version (bioprop_cli.cifar)."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from bioprop_cli import cifar
from bioprop_cli.datasets.base import DatasetInfo, DownloadSource

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read(folder, options=None):
    return cifar.read_cifar(folder, cifar.CANONICAL)


def check(folder: Path) -> list:
    return cifar.check_cifar_folder(folder, cifar.CANONICAL)


def verify(dataset: str, source: str, file_name: str, raw: bytes) -> None:
    cifar.verify_archive_bytes(source, raw, cifar.CANONICAL)


def present(folder: Path, file_name: str) -> bool:
    """The archive, or its extracted batch files, in the folder."""
    return cifar.binary_source(folder, cifar.CANONICAL) is not None


INFO = DatasetInfo(
    name="cifar10",
    title="CIFAR-10 (Krizhevsky 2009), binary version",
    image_shape=cifar.IMAGE_SHAPE,
    num_classes=len(CLASS_NAMES),
    split_sizes=MappingProxyType({"train": 50000, "test": 10000}),
    class_names=CLASS_NAMES,
    files=MappingProxyType({cifar.CANONICAL.archive: cifar.ARCHIVE_MD5}),
    folder_contents=cifar.CANONICAL.contents,
    read=read,
    check=check,
    download=DownloadSource(mirrors=("https://www.cs.toronto.edu/~kriz/",),  # the authors' page, the one location
                            files=(cifar.CANONICAL.archive,), verify=verify, present=present),
    tfds_name="cifar10",
)
