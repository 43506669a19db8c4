"""The layer primitives every network is made of (bioprop_cli/models/arch.py describes which):
a dense or convolutional layer's pre-activation, pooling, and the initial parameters.

Row-vector, channel-last convention: a dense layer maps (batch, n_in) -> (batch, n_out) by
h @ W + b with W of shape (n_in, n_out); a conv layer maps (batch, H, W, C_in) -> (batch, H', W',
C_out) with an HWIO kernel (k, k, C_in, C_out) and a bias per output channel. A dense layer reads
its input flattened, a conv layer reads it as images, so both accept whatever the layer below made.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from bioprop_cli.models.arch import Architecture, Conv, Dense, Pool
from bioprop_cli.models.mlp import init_std, sample

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def as_input(op: Dense | Conv, h: jax.Array) -> jax.Array:
    """h shaped as `op` reads it: (batch, n_in) for a dense layer, (batch, H, W, C) for a conv layer."""
    if isinstance(op, Dense):
        return h.reshape(h.shape[0], -1)
    return h.reshape((h.shape[0],) + tuple(op.in_shape))


def linear(op: Dense | Conv, w: jax.Array, h: jax.Array) -> jax.Array:
    """The layer's linear map without its bias: h @ w, or the convolution of h with the kernel w."""
    h = as_input(op, h)
    if isinstance(op, Dense):
        return h @ w
    pad = ((op.padding, op.padding), (op.padding, op.padding))
    return lax.conv_general_dilated(h, w, (op.stride, op.stride), pad, dimension_numbers=_DIMENSIONS)


def pre_activation(op: Dense | Conv, layer: dict, h: jax.Array) -> jax.Array:
    """a = linear(h) + b (the bias broadcast over the batch and, for a conv layer, over positions)."""
    return linear(op, layer["w"], h) + layer["b"]


def pool(p: Pool | None, h: jax.Array) -> jax.Array:
    """VALID max or average pooling over (H, W) of a (batch, H, W, C) array; None: h unchanged."""
    if p is None:
        return h
    window, strides = (1, p.window, p.window, 1), (1, p.stride, p.stride, 1)
    if p.kind == "max":
        return lax.reduce_window(h, -jnp.inf, lax.max, window, strides, "VALID")
    return lax.reduce_window(h, 0.0, lax.add, window, strides, "VALID") / (p.window * p.window)


def init_params(key: jax.Array, arch: Architecture, scheme: str, scale: float) -> list:
    """[{"w", "b"}] per layer: weights from the variance-scaling scheme (std = scale * scheme(fan_in,
    fan_out), the fans of a kernel being k^2 C_in and k^2 C_out), zero biases. For an MLP these are
    exactly the draws of models.mlp.init_params (same keys, same shapes)."""
    distribution = scheme.split("_")[1]
    keys = jax.random.split(key, len(arch.layers))
    return [
        {
            "w": sample(k, layer.op.weight_shape, init_std(scheme, scale, *layer.op.fans), distribution),
            "b": jnp.zeros((layer.op.out_shape[-1],)),
        }
        for k, layer in zip(keys, arch.layers)
    ]
