"""The CIFAR datasets' shared reading: the binary version's archive or its extracted folder (bioprop_cli.cifar)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

from bioprop_cli import cifar
from bioprop_cli.datasets.base import DatasetInfo, DownloadSource

AUTHORS_PAGE = "https://www.cs.toronto.edu/~kriz/"  # the one location of the archives


class CifarBinary:
    """The reader, checks and download of a CIFAR binary version; its layout is looked up when a reader runs
    (cifar.layout_of: tests replace it with smaller generated files)."""

    def __init__(self, dataset: str, label_byte: Callable[[Any], int] = lambda options: 0):
        self.dataset, self.label_byte = dataset, label_byte

    def read(self, folder, options=None):
        return cifar.read_cifar(folder, cifar.layout_of(self.dataset), self.label_byte(options))

    def check(self, folder: Path) -> list:
        return cifar.check_cifar_folder(folder, cifar.layout_of(self.dataset))

    def verify(self, dataset: str, source: str, file_name: str, raw: bytes) -> None:
        cifar.verify_archive_bytes(source, raw, cifar.layout_of(self.dataset))

    def present(self, folder: Path, file_name: str) -> bool:
        """The archive, or its extracted batch files, in the folder."""
        return cifar.binary_source(folder, cifar.layout_of(self.dataset)) is not None

    def info(self, title: str, class_names: tuple[str, ...], split_sizes: Mapping[str, int], **extra) -> DatasetInfo:
        """The dataset's registry entry: the published archive and its MD5, read and checked here, downloaded from
        the authors' page; `extra`: the entry's further facts (facts, options, tfds_name)."""
        layout = cifar.layout_of(self.dataset)
        return DatasetInfo(
            name=self.dataset, title=title, image_shape=cifar.IMAGE_SHAPE, num_classes=len(class_names),
            split_sizes=MappingProxyType(dict(split_sizes)), class_names=class_names,
            files=MappingProxyType({layout.archive: layout.archive_md5}), folder_contents=layout.contents,
            read=self.read, check=self.check,
            download=DownloadSource(mirrors=(AUTHORS_PAGE,), files=(layout.archive,), verify=self.verify,
                                    present=self.present),
            **extra,
        )
