"""ImageNet 64x64 (Chrabaszcz, Loshchilov & Hutter 2017): bioprop_cli/datasets/downsampled_imagenet.py reads it."""

from __future__ import annotations

from bioprop_cli.datasets.downsampled_imagenet import Downsampled

ARCHIVES = ("Imagenet64_train_part1_npz.zip", "Imagenet64_train_part2_npz.zip", "Imagenet64_val_npz.zip")
FILES = Downsampled("imagenet64", 64, ARCHIVES, n_train=1281167, n_val=50000)
INFO = FILES.info("ImageNet 64x64 (Chrabaszcz, Loshchilov & Hutter 2017)")
