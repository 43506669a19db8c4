"""The MNIST-like datasets' shared reading: four IDX files in a folder, each plain or .gz (bioprop_cli.data)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np

from bioprop_cli.data import (
    IDX_FILE_NAMES, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, DataFolder, Dataset, FileSpec,
    check_idx_folder, existing_idx_file, flat_images, idx_specs, load_idx_folder, verify_idx_bytes,
)
from bioprop_cli.datasets.base import DatasetInfo, DownloadSource

FOLDER_CONTENTS = f"{', '.join(IDX_FILE_NAMES)} (each plain or .gz)"
GZ_FILES = tuple(f"{base_name}.gz" for base_name in IDX_FILE_NAMES)
MNIST_SPLIT_SIZES = MappingProxyType({"train": 60000, "test": 10000})  # MNIST's layout, which Fashion-MNIST keeps
MNIST_IMAGE_SHAPE = (28, 28, 1)


def idx_md5(train_images: str, train_labels: str, test_images: str, test_labels: str) -> Mapping[str, str]:
    """{IDX file name: its MD5} for the four files, MD5s of the *uncompressed* files."""
    return MappingProxyType(dict(zip(IDX_FILE_NAMES, (train_images, train_labels, test_images, test_labels))))


class IdxDataset:
    """The reader, checks and download of an MNIST-like dataset with these MD5s (of the uncompressed files)."""

    def __init__(self, name: str, md5: Mapping[str, str], class_names: tuple[str, ...],
                 split_sizes: Mapping[str, int] = MNIST_SPLIT_SIZES, image_shape: tuple[int, ...] = MNIST_IMAGE_SHAPE):
        self.name, self.md5, self.class_names = name, md5, class_names
        self.split_sizes, self.image_shape, self.num_classes = split_sizes, image_shape, len(class_names)

    def info(self, title: str, mirrors: tuple[str, ...], channel_mean: tuple[float, ...],
             channel_std: tuple[float, ...]) -> DatasetInfo:
        """The dataset's registry entry: these files, read and checked here, downloaded from `mirrors`; the
        tensorflow-datasets copy of the same name."""
        return DatasetInfo(
            name=self.name, title=title, image_shape=self.image_shape, num_classes=self.num_classes,
            split_sizes=self.split_sizes, class_names=self.class_names, files=self.md5, folder_contents=FOLDER_CONTENTS,
            read=self.read, check=self.check, download=self.download(mirrors), channel_mean=channel_mean,
            channel_std=channel_std, tfds_name=self.name,
        )

    def specs(self) -> dict[str, FileSpec]:
        return idx_specs(self.md5, self.split_sizes, self.image_shape, self.num_classes)

    def read(self, folder: DataFolder, options=None) -> Dataset:
        arrays = load_idx_folder(folder.path, self.specs(), origin=folder.origin)
        return Dataset(
            name=self.name,
            x_train=flat_images(arrays[TRAIN_IMAGES]),
            y_train=arrays[TRAIN_LABELS].astype(np.int32),
            x_test=flat_images(arrays[TEST_IMAGES]),
            y_test=arrays[TEST_LABELS].astype(np.int32),
            source=f"files in {folder.path} (from {folder.origin})",
            num_classes=self.num_classes,
        )

    def check(self, folder: Path) -> list:
        return check_idx_folder(folder, self.specs())

    def verify(self, dataset: str, source: str, file_name: str, raw: bytes) -> None:
        """Raises BadDataFile unless `raw` is the gzip of the canonical IDX file `file_name` (minus .gz)."""
        verify_idx_bytes(source, raw, True, self.specs()[file_name.removesuffix(".gz")])

    def download(self, mirrors: tuple[str, ...]) -> DownloadSource:
        return DownloadSource(mirrors=mirrors, files=GZ_FILES, verify=self.verify, present=holds_idx_file)


def holds_idx_file(folder: Path, file_name: str) -> bool:
    """A plain IDX file stands for its .gz."""
    return existing_idx_file(folder, file_name.removesuffix(".gz")) is not None
