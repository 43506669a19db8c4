"""CIFAR-10 (Krizhevsky 2009): 32x32 colour images of 10 classes, from its binary version (bioprop_cli.cifar)."""

from __future__ import annotations

from bioprop_cli.datasets.cifar_binary import CifarBinary

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FILES = CifarBinary("cifar10")

INFO = FILES.info(
    title="CIFAR-10 (Krizhevsky 2009), binary version",
    class_names=CLASS_NAMES,
    split_sizes={"train": 50000, "test": 10000},
    tfds_name="cifar10",
)
