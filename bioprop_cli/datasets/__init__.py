"""Datasets: the registry (bioprop_cli/datasets/registry.py: one module per dataset, the one home of its facts:
files and checksums, image shape, classes and their names, splits, reader, download, statistics), and

`load_dataset`: a dataset by name, from the first place that has it:

1. the ``data_dir`` argument (``--data-dir`` flag or config);
2. the environment variable ``BIOPROP_DATA_DIR`` (if set and non-empty);
3. for ``fashion_mnist`` only, ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``);
4. bioprop's download cache, once it holds every file (``bioprop_cli.datasets.download``);
5. a prepared tensorflow-datasets copy, when TensorFlow is installed (mnist, fashion_mnist, cifar10);
6. a download of the canonical files into the cache, which is then read as in 4.

The npz dataset is the one file named by ``data.path``.
"""

from __future__ import annotations

import os
from pathlib import Path

from bioprop_cli import data
from bioprop_cli.data import CACHE_ORIGIN, DataFolder, Dataset, FileCheck, load_from_tfds, tfds_has_prepared_copy
from bioprop_cli.datasets.registry import (  # noqa: F401 (the registry's names, for callers of bioprop_cli.datasets)
    NAMES, REGISTRY, check_dataset_name, facts, host_bytes_needed, image_shape, info, num_classes,
)
from bioprop_cli.errors import UserError

def cache_folder(name: str) -> Path:
    return data.cache_folder(name)


def cache_is_complete(name: str, folder: Path) -> bool:
    """Whether a cache folder holds every file a download of `name` puts there."""
    source = REGISTRY[name].download
    return source is not None and all(source.present(folder, file) for file in source.files)


def locate_data_folder(name: str, data_dir: str | os.PathLike | None) -> DataFolder | None:
    """The folder to read the dataset's files from, or None when the data must come from tensorflow-datasets or a
    download."""
    given = data.given_data_folder(data_dir)
    if given is not None:
        return given
    if name == "fashion_mnist" and data.DEBIAN_FASHION_MNIST_DIR.is_dir():
        return DataFolder(data.DEBIAN_FASHION_MNIST_DIR, "Debian package dataset-fashion-mnist")
    cached = cache_folder(name)
    if cache_is_complete(name, cached):
        return DataFolder(cached, CACHE_ORIGIN)
    return None


def check_host_memory(name: str, options=None) -> None:
    """Refuses, in one line and before any file is read, a dataset the host cannot hold (on the CPU, with the
    splits' copy on the device: data.stream always leaves the training split's out)."""
    import jax

    device_is_host = jax.devices()[0].platform == "cpu"
    streams = getattr(options, "stream", "auto") == "always"  # auto streams only on a device that reports its memory
    need, have = host_bytes_needed(name, options, device_is_host, streams), data.host_memory_bytes()
    if need is not None and have is not None and need > have:
        entry = info(name)
        storage = getattr(options, "storage", "uint8")
        streamed = host_bytes_needed(name, options, device_is_host, streamed=True)
        hint = f"; streamed (data.stream: always) it needs {streamed / 2**30:,.1f} GiB" if streamed < need else ""
        raise UserError(f"dataset {name} needs about {need / 2**30:,.1f} GiB of host memory ({entry.title}: "
                        f"{'x'.join(map(str, entry.image_shape))} images stored as uint8"
                        f"{' plus their float32 copy (data.storage float32)' if storage == 'float32' else ''}"
                        f"{', plus the splits on the CPU device, a copy in host memory' if device_is_host else ''}), "
                        f"more than this machine's {have / 2**30:,.1f} GiB{hint}")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, options=None) -> Dataset:
    """The dataset `name` (options: the config's data section, for npz's path, cifar100's label, svhn's extra)."""
    entry = info(name)
    check_host_memory(name, options)
    if entry.download is None and not entry.split_sizes:  # npz: the file is the data
        return checked(entry.read(None, options), options)
    folder = locate_data_folder(name, data_dir)
    if folder is None and entry.tfds_name and tfds_has_prepared_copy(entry.tfds_name):
        return load_from_tfds(entry)
    if folder is None:
        from bioprop_cli.datasets.download import fetch_dataset

        folder = DataFolder(fetch_dataset(name), CACHE_ORIGIN)
    return checked(entry.read(folder, options), options)


def load_data(data_config) -> Dataset:
    """load_dataset for a config's data section."""
    return load_dataset(data_config.dataset, data_config.data_dir, data_config)


def checked(dataset: Dataset, options) -> Dataset:
    """A file's own validation split must be the one the config holds out."""
    wanted = getattr(options, "validation_size", None)
    if dataset.n_val is not None and wanted is not None and wanted != dataset.n_val:
        raise UserError(f"config key 'data.validation_size': {dataset.source} holds x_val of {dataset.n_val} examples "
                        f"(kept after the training examples); set data.validation_size={dataset.n_val}, got {wanted}")
    return dataset


def check_data_folder(name: str, folder: str | os.PathLike) -> list[FileCheck]:
    """The state of each of the dataset's files in `folder`, without stopping at the first problem."""
    return info(name).check(Path(folder))
