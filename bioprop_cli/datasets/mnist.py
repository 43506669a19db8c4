"""MNIST (LeCun, Cortes & Burges 1998): 28x28 grey handwritten digits, 60000 training and 10000 test images."""

from __future__ import annotations

from types import MappingProxyType

from bioprop_cli.data import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from bioprop_cli.datasets.idx import IdxDataset

# MD5 of the *uncompressed* IDX files (gzip containers differ between mirrors; their content does not): the
# canonical values.
MD5 = MappingProxyType({
    TRAIN_IMAGES: "6bbc9ace898e44ae57da46a324031adb",
    TRAIN_LABELS: "a25bea736e30d166cdddb491f175f624",
    TEST_IMAGES: "2646ac647ad5339dbf082846283269ea",
    TEST_LABELS: "27ae3e4e09519cfbb04c329615203637",
})
SPLIT_SIZES = MappingProxyType({"train": 60000, "test": 10000})
IMAGE_SHAPE = (28, 28, 1)
CLASS_NAMES = tuple(str(digit) for digit in range(10))
FILES = IdxDataset("mnist", MD5, SPLIT_SIZES, IMAGE_SHAPE, len(CLASS_NAMES))

INFO = FILES.info(
    title="MNIST handwritten digits (LeCun, Cortes & Burges 1998)",
    class_names=CLASS_NAMES,
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's
        "https://storage.googleapis.com/cvdf-datasets/mnist/",  # Google's CVDF mirror
    ),
    channel_mean=(0.1306604762738429,),  # all 60000 training images (tests/data/test_datasets.py recomputes them)
    channel_std=(0.30810780385646264,),
)
