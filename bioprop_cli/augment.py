"""Data augmentation of training batches, on the device, inside the compiled epoch (config `data.augment`).

`crop_flip` (the standard CIFAR-10 augmentation): each image is padded with 4 zeros on every side, a window of
the image's size is cut at a random offset (0..8 in each direction, uniform), and the window is mirrored
left-right with probability 1/2; every draw is independent per example. The batch stays flat (B, H*W*C),
channel-last as every dataset's arrays (the image shape of its registry entry, bioprop_cli/datasets/). The zeros are those of the arrays training sees:
after `data.normalization: per_channel`, the training split's channel means. `data.crop_padding: edge` pads
with each border pixel repeated instead (torchvision's RandomCrop padding_mode 'edge', Laborieux et al. 2021's
CIFAR-10 augmentation); it commutes with the per-channel normalisation, so it is theirs exactly.

Training draws the step's augmentation from `augmentation_key(step key)`; the measurement probe and the
evaluation splits are never augmented.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


PAD = 4
# folded into a step's key for its augmentation: a stream of its own, apart from the key the rule uses
AUGMENT_STREAM = 0xA06


def augmentation_key(step_key: jax.Array) -> jax.Array:
    return jax.random.fold_in(step_key, AUGMENT_STREAM)


def crop_flip(key: jax.Array, x: jax.Array, image_shape: tuple[int, int, int], padding: str = "zeros") -> jax.Array:
    """x (B, H*W*C), flat channel-last images -> the same shape, each randomly cropped from its padded
    version (`padding`: zeros, or edge: the border pixels repeated) and mirrored left-right with probability 1/2."""
    height, width, channels = image_shape
    images = x.reshape(-1, height, width, channels)
    k_offset, k_flip = jax.random.split(key)
    offsets = jax.random.randint(k_offset, (images.shape[0], 2), 0, 2 * PAD + 1)
    flips = jax.random.bernoulli(k_flip, 0.5, (images.shape[0],))
    padded = jnp.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)), mode="constant" if padding == "zeros" else "edge")
    crops = jax.vmap(lambda image, offset: jax.lax.dynamic_slice(
        image, (offset[0], offset[1], 0), (height, width, channels)))(padded, offsets)
    flipped = jnp.where(flips[:, None, None, None], crops[:, :, ::-1, :], crops)
    return flipped.reshape(x.shape)


def make_augment(augment: str, image_shape: tuple[int, ...], padding: str = "zeros") -> Callable[[jax.Array, jax.Array], jax.Array] | None:
    """(key, flat batch) -> augmented batch for config `data.augment` (`data.crop_padding`) on images of
    `image_shape` (H, W, C), or None when it is "none"."""
    if augment == "none":
        return None
    return lambda key, x: crop_flip(key, x, image_shape, padding)
