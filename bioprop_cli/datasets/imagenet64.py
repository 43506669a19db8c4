"""ImageNet 64x64 (Chrabaszcz, Loshchilov & Hutter 2017): bioprop_cli/datasets/downsampled_imagenet.py reads it."""

from __future__ import annotations

from types import MappingProxyType

from bioprop_cli.datasets.base import DatasetInfo, DownloadSource
from bioprop_cli.datasets.downsampled_imagenet import NUM_CLASSES, Downsampled

ARCHIVES = ("Imagenet64_train_part1_npz.zip", "Imagenet64_train_part2_npz.zip", "Imagenet64_val_npz.zip")
FILES = Downsampled("imagenet64", 64, ARCHIVES, n_train=1281167, n_val=50000)

INFO = DatasetInfo(
    name="imagenet64",
    title="ImageNet 64x64 (Chrabaszcz, Loshchilov & Hutter 2017)",
    image_shape=FILES.image_shape,
    num_classes=NUM_CLASSES,
    split_sizes=MappingProxyType({"train": FILES.n_train, "test": FILES.n_val}),
    class_names=(),  # ILSVRC-2012's 1000 synsets, labels 1..1000 as the authors' map_clsloc.txt; not shipped here
    files=MappingProxyType({name: None for name in ARCHIVES}),  # no published checksum
    folder_contents=FILES.folder_contents,
    read=FILES.read,
    check=FILES.check,
    download=DownloadSource(mirrors=(), files=ARCHIVES, verify=FILES.verify, present=FILES.present),
)
