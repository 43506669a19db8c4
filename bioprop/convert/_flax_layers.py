"""Flax's Conv computed by bioprop's feedback layers, shared by the linen and nnx
converters: the same forward as Flax's own (dtype promotion, leading batch axes, padding modes), the backward
the rule's (the weight update the exact local vjp, the error below sent through the feedback B)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax.linen.linear import canonicalize_padding

import bioprop

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
    if isinstance(module.padding, str) and module.padding.upper() == "CAUSAL":
        return "CAUSAL padding"
    return None


def cast(fb, dtype):
    """A feedback array in the layer's compute dtype (a Site, Direct or None as it is)."""
    return fb.astype(dtype) if isinstance(fb, jax.Array) else fb


def conv_forward(module, x, kernel, bias, fb):
    """Flax's Conv (2-d, channels last, any leading batch axes or none) through bioprop.conv."""
    batch_shape = x.shape[:-3]
    x = x.reshape((-1,) + x.shape[-3:])
    padding = canonicalize_padding(module.padding, 2)
    if not isinstance(padding, str):
        padding = tuple(tuple(pair) for pair in padding)
    elif padding in _PAD_MODES:  # padded by hand as Flax does, then a VALID convolution
        dilated = [(k - 1) * d + 1 for k, d in zip(_kernel_size(module), _pair(module.kernel_dilation))]
        pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in dilated] + [(0, 0)]
        x, padding = jnp.pad(x, pads, mode=_PAD_MODES[padding]), "VALID"
    y = bioprop.conv(x, kernel, bias, fb, stride=_pair(module.strides), padding=padding,
                     dilation=_pair(module.kernel_dilation), groups=module.feature_group_count)
    return y.reshape(batch_shape + y.shape[1:])
