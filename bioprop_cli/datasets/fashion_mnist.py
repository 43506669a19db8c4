"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 28x28 grey images of clothing, MNIST's layout and sizes."""

from __future__ import annotations

from types import MappingProxyType

from bioprop_cli.data import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from bioprop_cli.datasets.idx import IdxDataset

# MD5 of the uncompressed IDX files, computed from Debian's dataset-fashion-mnist, whose .gz files rebuild byte for
# byte into Zalando's published ones (gzip md5 8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...) once the gzip
# header that Debian normalised (file name, mtime) is restored; the values also agree with other public loaders.
MD5 = MappingProxyType({
    TRAIN_IMAGES: "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    TRAIN_LABELS: "9018921c3c673c538a1fc5bad174d6f9",
    TEST_IMAGES: "8181f5470baa50b63fa0f6fddb340f0a",
    TEST_LABELS: "15d484375f8d13e6eb1aabb0c3f46965",
})
SPLIT_SIZES = MappingProxyType({"train": 60000, "test": 10000})
IMAGE_SHAPE = (28, 28, 1)
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
FILES = IdxDataset("fashion_mnist", MD5, SPLIT_SIZES, IMAGE_SHAPE, len(CLASS_NAMES))

INFO = FILES.info(
    title="Fashion-MNIST (Xiao, Rasul & Vollgraf 2017)",
    class_names=CLASS_NAMES,
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # Zalando's
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    channel_mean=(0.2860405969887955,),  # all 60000 training images (tests/data/test_datasets.py recomputes them)
    channel_std=(0.35302424451492254,),
)
