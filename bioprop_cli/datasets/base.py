"""What a dataset's registry entry holds (`DatasetInfo`), and what its reader returns (`data.Dataset`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple


def optional_module(name: str, dataset: str):
    """The module `name` of the `datasets` extra, or a one-line UserError saying how to install it."""
    import importlib

    from bioprop_cli.errors import UserError

    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"reading {dataset} needs {name.split('.')[0]}: pip install 'bioprop[datasets]'") from None


class Facts(NamedTuple):
    """What a network and a config check need to know of the data, before reading it."""

    image_shape: tuple[int, ...]  # (H, W, C) of one image, or (D,) for flat vectors (npz)
    num_classes: int


@dataclass(frozen=True)
class DownloadSource:
    mirrors: tuple[str, ...]  # folder URLs, tried in order; a file is found at <mirror><file name>
    files: tuple[str, ...]  # file names as published, stored under the same names
    # (dataset, source named in errors, file name, bytes as downloaded) -> None, or raises data.BadDataFile.
    verify: Callable[[str, str, str, bytes], None]
    # (folder, file name) -> whether the folder holds that file, or what stands for it
    present: Callable[[Path, str], bool]


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset's facts, its one home (bioprop_cli/datasets/<name>.py)."""

    name: str
    title: str  # what it is, with its reference
    image_shape: tuple[int, ...] | None  # (H, W, C); None: from the file (npz)
    num_classes: int | None  # None: from the file or an option (npz)
    split_sizes: Mapping[str, int]  # {"train": N, "test": M} as published; {} when the file says (npz)
    class_names: tuple[str, ...]  # in label order; () where the files name them (tiny_imagenet's wnids) or none exist
    files: Mapping[str, str | None]  # {published file: its MD5}; None where no checksum is published
    folder_contents: str  # what a data folder holds, for messages
    # (data.DataFolder, options: the config's data section or None) -> data.Dataset, every check passed
    read: Callable[[Any, Any], Any]
    # (folder) -> [data.FileCheck], every file's state (for `bioprop data check`)
    check: Callable[[Path], list]
    download: DownloadSource | None  # None: no public download (imagenet32/64 need an image-net.org login)
    # per-channel mean and standard deviation of the training split's pixels in [0, 1], where measured here
    # (tests/test_datasets.py recomputes them from the files when present); None: `data.normalization:
    # per_channel` computes them from the training split
    channel_mean: tuple[float, ...] | None = None
    channel_std: tuple[float, ...] | None = None
    tfds_name: str | None = None  # the tensorflow-datasets name of a prepared copy it may read
    # (options) -> Facts; default: the fixed image_shape and num_classes
    facts: Callable[[Any], Facts] | None = None
    options: tuple[str, ...] = field(default=())  # the config's data.* keys the dataset reads (path, label, extra)

    def facts_of(self, options) -> Facts:
        if self.facts is not None:
            return self.facts(options)
        return Facts(self.image_shape, self.num_classes)
