"""ImageNet 32x32 (Chrabaszcz, Loshchilov & Hutter 2017): bioprop_cli/datasets/downsampled_imagenet.py reads it."""

from __future__ import annotations

from bioprop_cli.datasets.downsampled_imagenet import Downsampled

ARCHIVES = ("Imagenet32_train_npz.zip", "Imagenet32_val_npz.zip")
FILES = Downsampled("imagenet32", 32, ARCHIVES, n_train=1281167, n_val=50000)
INFO = FILES.info("ImageNet 32x32 (Chrabaszcz, Loshchilov & Hutter 2017)")
