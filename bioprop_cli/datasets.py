"""`load_dataset`: a dataset by name, from the first place that has it.

Where the data comes from, first match wins:

1. the ``data_dir`` argument (``--data-dir`` flag or config);
2. the environment variable ``BIOPROP_DATA_DIR`` (if set and non-empty);
3. for ``fashion_mnist`` only, ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``);
4. bioprop's download cache, once it holds every file (``bioprop_cli.download``; for CIFAR-10 the binary archive);
5. a prepared tensorflow-datasets copy, when TensorFlow is installed (tensorflow-datasets reads it only through
   TensorFlow);
6. a download of the canonical files into the cache, which is then read as in 4.

MNIST's and Fashion-MNIST's IDX files are read and checked by ``bioprop_cli.data``, CIFAR-10's binary version by
``bioprop_cli.cifar``; a download goes through ``bioprop_cli.download``.
"""

from __future__ import annotations

import os

import numpy as np

from bioprop_cli.cifar import check_cifar_folder, read_cifar10
from bioprop_cli.data import (
    CACHE_ORIGIN, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, DataFolder, Dataset, FileCheck, canonical_specs,
    check_dataset_name, check_idx_folder, load_from_tfds, load_idx_folder, locate_data_folder, scale_images,
    tfds_has_prepared_copy,
)
from bioprop_cli.download import fetch_dataset


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    check_dataset_name(name)
    folder = locate_data_folder(name, data_dir)
    if folder is None and tfds_has_prepared_copy(name):
        return load_from_tfds(name)
    if folder is None:
        folder = DataFolder(fetch_dataset(name), CACHE_ORIGIN)
    if name == "cifar10":
        return read_cifar10(folder)
    return read_idx_dataset(name, folder)


def read_idx_dataset(name: str, folder: DataFolder) -> Dataset:
    arrays = load_idx_folder(folder.path, canonical_specs(name), origin=folder.origin)
    return Dataset(
        name=name,
        x_train=scale_images(arrays[TRAIN_IMAGES]),
        y_train=arrays[TRAIN_LABELS].astype(np.int32),
        x_test=scale_images(arrays[TEST_IMAGES]),
        y_test=arrays[TEST_LABELS].astype(np.int32),
        source=f"files in {folder.path} (from {folder.origin})",
    )


def check_data_folder(name: str, folder: str | os.PathLike) -> list[FileCheck]:
    """The state of each of the dataset's files in `folder`, without stopping at the first problem."""
    check_dataset_name(name)
    if name == "cifar10":
        return check_cifar_folder(folder)
    return check_idx_folder(folder, canonical_specs(name))
