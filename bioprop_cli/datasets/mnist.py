"""MNIST (LeCun, Cortes & Burges 1998): 28x28 grey handwritten digits, 60000 training and 10000 test images."""

from __future__ import annotations

from bioprop_cli.datasets.idx import IdxDataset, idx_md5

# MD5 of the *uncompressed* IDX files (gzip containers differ between mirrors; their content does not): the
# canonical values.
MD5 = idx_md5(train_images="6bbc9ace898e44ae57da46a324031adb", train_labels="a25bea736e30d166cdddb491f175f624",
              test_images="2646ac647ad5339dbf082846283269ea", test_labels="27ae3e4e09519cfbb04c329615203637")
CLASS_NAMES = tuple(str(digit) for digit in range(10))
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's
           "https://storage.googleapis.com/cvdf-datasets/mnist/")  # Google's CVDF mirror
FILES = IdxDataset("mnist", MD5, CLASS_NAMES)
# channel statistics: all 60000 training images (tests/data/test_datasets.py recomputes them)
INFO = FILES.info("MNIST handwritten digits (LeCun, Cortes & Burges 1998)", MIRRORS,
                  channel_mean=(0.1306604762738429,), channel_std=(0.30810780385646264,))
