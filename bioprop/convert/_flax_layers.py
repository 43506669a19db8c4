"""Flax's Dense / DenseGeneral / Conv computed by bioprop's feedback layers, shared by the linen and nnx
converters: the same forward as Flax's own (dtype promotion, leading batch axes, padding modes), the backward
the rule's (the weight update the exact local vjp, the error below sent through the feedback B)."""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax
from flax.linen.linear import canonicalize_padding

import bioprop
from bioprop.convert._common import Layer

_PAD_MODES = {"CIRCULAR": "wrap", "REFLECT": "reflect"}


def _pair(value) -> tuple[int, int]:
    value = 1 if value is None else value
    return (value, value) if isinstance(value, int) else tuple(value)


def _kernel_size(module) -> tuple[int, ...]:
    size = module.kernel_size
    return (size,) if isinstance(size, int) else tuple(size)


def conv_unsupported(module, custom_conv) -> str | None:
    """Why a Flax Conv cannot run through bioprop.conv (None: it can)."""
    if len(_kernel_size(module)) != 2:
        return f"a {len(_kernel_size(module))}-d convolution (bioprop.conv is 2-d)"
    if _pair(module.input_dilation) != (1, 1):
        return "input_dilation (a transposed convolution)"
    if module.mask is not None:
        return "a kernel mask"
    if custom_conv:
        return "a custom conv_general_dilated"
    if canonicalize_padding(module.padding, 2) == "CAUSAL":
        return "CAUSAL padding"
    return None


def dense_forward(x, kernel, bias, fb):
    """x (..., n_in) @ kernel (n_in, n_out) + bias through bioprop.dense (which reads (batch, n_in))."""
    y = bioprop.dense(x.reshape(-1, x.shape[-1]), kernel, bias, fb)
    return y.reshape(x.shape[:-1] + (kernel.shape[-1],))


def dense_general_forward(module, x, kernel, bias, fb):
    """linen's DenseGeneral (batch_dims=()) as one dense layer: its contracted axes moved last and flattened,
    its kernel (in dims..., features...) read as (prod in, prod features)."""
    axes = (module.axis,) if isinstance(module.axis, int) else tuple(module.axis)
    axes = tuple(sorted(a % x.ndim for a in axes))
    kept = tuple(a for a in range(x.ndim) if a not in axes)
    features = kernel.shape[len(axes):]
    flat = jnp.transpose(x, kept + axes).reshape(-1, math.prod(kernel.shape[:len(axes)]))
    y = bioprop.dense(flat, kernel.reshape(flat.shape[-1], -1), None if bias is None else bias.reshape(-1), fb)
    return y.reshape(tuple(x.shape[a] for a in kept) + features)


def conv_forward(module, x, kernel, bias, fb):
    """Flax's Conv (2-d, channels last, any leading batch axes or none) through bioprop.conv."""
    batch_shape = x.shape[:-3]
    x = x.reshape((-1,) + x.shape[-3:])
    padding = canonicalize_padding(module.padding, 2)
    if padding in _PAD_MODES:  # padded by hand as Flax does, then a VALID convolution
        dilated = [(k - 1) * d + 1 for k, d in zip(_kernel_size(module), _pair(module.kernel_dilation))]
        pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in dilated] + [(0, 0)]
        x, padding = jnp.pad(x, pads, mode=_PAD_MODES[padding]), "VALID"
    y = bioprop.conv(x, kernel, bias, fb, stride=_pair(module.strides), padding=padding,
                     dilation=_pair(module.kernel_dilation), groups=module.feature_group_count)
    return y.reshape(batch_shape + y.shape[1:])


def layer(kind: str, kernel, x_in, y_out) -> Layer:
    """The converted layer's description from one call (inputs as the feedback layer reads them)."""
    if kind == "dense":
        n_in = kernel.shape[0]
        return Layer("dense", (n_in, kernel.shape[1]), (math.prod(x_in.shape) // n_in, n_in),
                     (math.prod(y_out.shape) // kernel.shape[1], kernel.shape[1]))
    batch = math.prod(x_in.shape[:-3])
    return Layer("conv", tuple(kernel.shape), (batch,) + tuple(x_in.shape[-3:]), (batch,) + tuple(y_out.shape[-3:]))
