"""CIFAR-100 (Krizhevsky 2009): 32x32 colour images of 100 classes in 20 superclasses, from its binary version
(bioprop_cli.cifar). `data.label`: fine (the 100 classes, the default) or coarse (the 20 superclasses)."""

from __future__ import annotations

from types import MappingProxyType

from bioprop_cli import cifar
from bioprop_cli.datasets.base import Facts
from bioprop_cli.datasets.cifar_binary import CifarBinary

# label order: as the archive's fine_label_names.txt and coarse_label_names.txt list them
FINE_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)
COARSE_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores", "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes", "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)
LABEL_BYTES = MappingProxyType({"fine": cifar.FINE, "coarse": cifar.COARSE})


def label_of(options) -> str:
    return getattr(options, "label", "fine") if options is not None else "fine"


def facts(options) -> Facts:
    return Facts(cifar.IMAGE_SHAPE, len(FINE_NAMES) if label_of(options) == "fine" else len(COARSE_NAMES))


FILES = CifarBinary("cifar100", lambda options: LABEL_BYTES[label_of(options)])

INFO = FILES.info(
    title="CIFAR-100 (Krizhevsky 2009), binary version",
    class_names=FINE_NAMES,
    split_sizes={"train": 50000, "test": 10000},
    facts=facts,
    options=("label",),
)
