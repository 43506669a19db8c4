"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 28x28 grey images of clothing, MNIST's layout and sizes."""

from __future__ import annotations

from bioprop_cli.datasets.idx import IdxDataset, idx_md5

# MD5 of the uncompressed IDX files, computed from Debian's dataset-fashion-mnist, whose .gz files rebuild byte for
# byte into Zalando's published ones (gzip md5 8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...) once the gzip
# header that Debian normalised (file name, mtime) is restored; the values also agree with other public loaders.
MD5 = idx_md5(train_images="f4a8712d7a061bf5bd6d2ca38dc4d50a", train_labels="9018921c3c673c538a1fc5bad174d6f9",
              test_images="8181f5470baa50b63fa0f6fddb340f0a", test_labels="15d484375f8d13e6eb1aabb0c3f46965")
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # Zalando's
           "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/")
FILES = IdxDataset("fashion_mnist", MD5, CLASS_NAMES)
# channel statistics: all 60000 training images (tests/data/test_datasets.py recomputes them)
INFO = FILES.info("Fashion-MNIST (Xiao, Rasul & Vollgraf 2017)", MIRRORS,
                  channel_mean=(0.2860405969887955,), channel_std=(0.35302424451492254,))
