"""The registry of datasets: one module per dataset (bioprop_cli/datasets/<name>.py), the one home of its facts,
found by name. Everything that needs a dataset's facts before reading it (config validation, the network's
input shape and output layer, the one-hot targets, augmentation, the studies) reads them here; reading the
files is bioprop_cli.datasets.load_dataset's. Adding a dataset is one module and one line here.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Mapping

from bioprop_cli.datasets import (  # noqa: I001 (the modules, not the package's __init__)
    cifar10, cifar100, fashion_mnist, imagenet32, imagenet64, mnist, npz, svhn, tiny_imagenet,
)
from bioprop_cli.datasets.base import DatasetInfo, Facts
from bioprop_cli.errors import UserError

REGISTRY: Mapping[str, DatasetInfo] = MappingProxyType({module.INFO.name: module.INFO for module in (
    mnist, fashion_mnist, cifar10, cifar100, svhn, tiny_imagenet, imagenet32, imagenet64, npz,
)})
NAMES = tuple(REGISTRY)


def info(name: str) -> DatasetInfo:
    if name not in REGISTRY:
        raise UserError(f"unknown dataset {name!r}; valid names: {', '.join(NAMES)}")
    return REGISTRY[name]


def check_dataset_name(name: str) -> None:
    info(name)


def facts(data_config) -> Facts:
    """The image shape and class count of the config's data section (npz: read from its file)."""
    return info(data_config.dataset).facts_of(data_config)


def num_classes(config) -> int:
    return facts(config.data).num_classes


def image_shape(config) -> tuple[int, ...]:
    return facts(config.data).image_shape


def host_bytes_needed(name: str, options=None, device_is_host: bool = False, streamed: bool = False) -> int | None:
    """What the host holds of dataset `name` once read: its uint8 images (training, svhn's extra with
    data.extra, test) and labels, and with data.storage float32 the float32 copy of the splits made from them;
    device_is_host (the CPU): the splits put on the device are one more copy in host memory, all of them when the
    training split is resident, the validation and test splits when it is `streamed`. None for npz (the file says)."""
    entry = info(name)
    if not entry.split_sizes:
        return None
    sizes = entry.split_sizes
    n = sizes["train"] + sizes["test"] + (sizes.get("extra", 0) if getattr(options, "extra", False) else 0)
    pixels = math.prod(entry.image_shape)
    stored = 4 if getattr(options, "storage", "uint8") == "float32" else 1  # bytes a pixel of the splits
    needed = n * pixels + 4 * n + (4 * n * pixels if stored == 4 else 0)
    if device_is_host:
        placed = sizes["test"] + getattr(options, "validation_size", 0) if streamed else n
        needed += placed * (stored * pixels + 4)
    return needed
