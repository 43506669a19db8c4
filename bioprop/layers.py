"""Feedback layers: the ordinary forward product, the learning rule's backward.

Row-vector, channel-last convention. `dense(x, w, b, fb)`: x (..., n_in), w (n_in, n_out), b (n_out,) or
None, forward x @ w + b. `conv(x, w, b, fb, ...)`: x NHWC, w HWIO (kh, kw, C_in / groups, C_out), b (C_out,)
or None. The backward pass (a `jax.custom_vjp`) of either layer, with g = dLoss/d(output):

    dw, db   the exact vjp at the layer's own input (dense: x^T g and the sum of g);
    dx       the vjp of the layer's linear map with the feedback fb in place of w (dense: g @ fb, conv:
             the transposed convolution with fb's kernel); fb None sends no error (zeros);
    dfb      the Hebbian product of the feedback synapses' two sides, transport(dw) (dense: g^T x): the
             gradient Kolen-Pollack learns B with.

fb is kept in the layout exact weight transport uses (`transport`): W^T, (n_out, n_in), for a dense
layer, the kernel itself (W's shape) for a conv layer. fb = stop_gradient(transport(w)) is backprop.

Direct feedback (dfa): the rule hands the layer a `Direct(d, e)` instead of fb: the error sent to the
layer's input is e @ d (the output error projected by d, reshaped to the input's shape), whatever came
from above. `tap(h, fb)` moves that delivery point below the layer: placed on an array h that lies
below the layer (e.g. before the pooling that feeds it), it replaces h's cotangent by e @ d and the
layer itself sends nothing. Everything between (pooling, activations, normalisation) passes the error
back exactly, as in backprop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def transport(w: jax.Array) -> jax.Array:
    """What exact weight transport sends errors through, in feedback's layout: W^T for a 2-d dense
    weight, the kernel itself for a 4-d HWIO kernel."""
    if w.ndim == 2:
        return w.T
    if w.ndim == 4:
        return w
    raise ValueError(f"a feedback weight is 2-d (dense) or 4-d (HWIO conv kernel), got shape {w.shape}")


def as_weight(fb: jax.Array) -> jax.Array:
    """Feedback back in the weight's layout (the inverse of `transport`)."""
    return transport(fb)


def fans(w_shape: Sequence[int]) -> tuple[int, int]:
    """(fan_in, fan_out) of a dense weight (n_in, n_out) or an HWIO kernel (kh kw C_in, kh kw C_out)."""
    if len(w_shape) == 2:
        return int(w_shape[0]), int(w_shape[1])
    area = int(w_shape[0]) * int(w_shape[1])
    return area * int(w_shape[2]), area * int(w_shape[3])


# ----------------------------------------------------------------------------------------------
# The convolution and its two vjps.
#
# The vjps are written as forward convolutions where the layer has no dilation and no feature groups:
# inside a compiled loop (an epoch's scan) XLA's CPU backend runs the convolutions jax.linear_transpose
# makes 5 to 17 times slower than outside one, and these forward ones at full speed (measured on
# LeNet's layers at batch 128; jax-ml/jax issue 12868). Dilated and grouped convolutions use
# jax.linear_transpose. Every path is tested against jax.grad.


@dataclass(frozen=True)
class ConvSpec:
    """A convolution's static settings: strides, explicit (low, high) padding per spatial axis, kernel
    (rhs) dilation, feature groups."""

    strides: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def plain(self) -> bool:
        """No dilation and no groups: the vjps written as forward convolutions apply."""
        return self.dilation == (1, 1) and self.groups == 1


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_spec(in_hw: Sequence[int], kernel_hw: Sequence[int], stride=1, padding=0, dilation=1,
              groups: int = 1) -> ConvSpec:
    """The ConvSpec of a convolution of images of spatial size in_hw with a kernel of kernel_hw.
    padding: an int (each side), ((lo, hi), (lo, hi)), or "SAME" / "VALID" (lax's meaning)."""
    strides, dil = _pair(stride), _pair(dilation)
    if isinstance(padding, str):
        extent = [(k - 1) * d + 1 for k, d in zip(kernel_hw, dil)]
        pads = lax.padtype_to_pads(tuple(in_hw), extent, strides, padding.upper())
    elif isinstance(padding, int):
        pads = [(padding, padding)] * 2
    else:
        pads = [_pair(p) for p in padding]
    return ConvSpec(strides, tuple((int(lo), int(hi)) for lo, hi in pads), dil, int(groups))


def convolve(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    """The convolution without bias: NHWC images, HWIO kernel. Undilated and ungrouped, it is
    `banded_convolve` where that is faster than XLA's CPU convolution (`banded_pays`), else lax's."""
    if spec.plain and banded_pays(x.shape, w.shape):
        return banded_convolve(x, w, spec.strides, spec.padding)
    return lax.conv_general_dilated(x, w, spec.strides, spec.padding, rhs_dilation=spec.dilation,
                                    dimension_numbers=_DIMENSIONS, feature_group_count=spec.groups)


def banded_pays(x_shape: Sequence[int], w_shape: Sequence[int]) -> bool:
    """Whether `banded_convolve` beats XLA's CPU convolution (docs/speed.md, measured on LeNet's layers and
    CIFAR-like ones): a single input channel, or fewer than 8 output channels from an image at most twice as
    wide as the kernel (the band then does at most twice the convolution's multiplications; LeNet's conv2
    transposed). XLA's convolution wins from 16 output channels on."""
    return x_shape[3] == 1 or (w_shape[3] < 8 and x_shape[2] <= 2 * w_shape[1])


def banded_convolve(x: jax.Array, w: jax.Array, strides: Sequence[int],
                    padding: Sequence[tuple[int, int]]) -> jax.Array:
    """The (undilated, ungrouped) convolution as one matrix product: the kh image rows (padded in height)
    that each output row reads, side by side (batch H', kh W C), times the banded matrix
    T[(i, p, c), (x, o)] = w[i, p + lo - x s, c, o] (zero off the band 0 <= p + lo - x s < kw; the width's
    padding lo is in the band, not in the rows), (kh W C, W' C_out). W / kw times the convolution's
    multiplications, all in one large product."""
    kh, kw, c_in, c_out = w.shape
    sh, sw = strides
    (lh, hh), (lw, hw) = padding
    xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (lh, hh, 0), (0, 0, 0), (0, 0, 0)])
    batch, hp, width, _ = xp.shape
    ho, wo = (hp - kh) // sh + 1, (width + lw + hw - kw) // sw + 1
    rows = jnp.stack([lax.slice(xp, (0, i, 0, 0), (batch, i + (ho - 1) * sh + 1, width, c_in), (1, sh, 1, 1))
                      for i in range(kh)], axis=2)  # (batch, H', kh, W, C)
    band = (jnp.arange(width)[:, None, None] + lw
            == jnp.arange(wo)[None, :, None] * sw + jnp.arange(kw)[None, None, :])
    t = jnp.einsum("pxj,ijco->ipcxo", band.astype(w.dtype), w).reshape(kh * width * c_in, wo * c_out)
    return (rows.reshape(batch * ho, kh * width * c_in) @ t).reshape(batch, ho, wo, c_out)


def conv_transpose(g: jax.Array, w: jax.Array, in_hw: Sequence[int], strides: Sequence[int],
                   padding: Sequence[tuple[int, int]]) -> jax.Array:
    """The input gradient of the (undilated, ungrouped) convolution with kernel w, g (batch, H', W',
    C_out) -> (batch, H, W, C_in): the stride-dilated g, padded by k - 1 - lo below and by what the
    stride's floor dropped above, convolved with the kernel flipped in space and transposed in channels."""
    kernel_hw = w.shape[:2]
    dilated = lambda n, s: (n - 1) * s + 1
    pads = [(k - 1 - lo, side + lo - dilated(n, s))
            for k, (lo, _), side, n, s in zip(kernel_hw, padding, in_hw, g.shape[1:3], strides)]
    flipped = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    if tuple(strides) == (1, 1) and banded_pays(g.shape, flipped.shape):
        return banded_convolve(g, flipped, (1, 1), pads)
    return lax.conv_general_dilated(g, flipped, (1, 1), pads, lhs_dilation=tuple(strides),
                                    dimension_numbers=_DIMENSIONS)


def conv_weight_gradient(x: jax.Array, g: jax.Array, kernel_hw: Sequence[int], strides: Sequence[int],
                         padding: Sequence[tuple[int, int]]) -> jax.Array:
    """The kernel gradient of the (undilated, ungrouped) convolution at input x (batch, H, W, C_in) with
    cotangent g (batch, H', W', C_out): dW[i, j, c, o] = sum over the batch and output positions (y, x)
    of x_padded[y s + i, x s + j, c] g[y, x, o], a forward convolution of x's channels (as a batch) with
    g (the batch contracted, the output positions dilated by s) cut to kh x kw."""
    images = jnp.transpose(x, (3, 1, 2, 0))  # (C_in, H, W, batch)
    kernel = jnp.transpose(g, (1, 2, 0, 3))  # (H', W', batch, C_out)
    out = lax.conv_general_dilated(images, kernel, (1, 1), tuple(padding), rhs_dilation=tuple(strides),
                                   dimension_numbers=_DIMENSIONS)
    return jnp.transpose(out[:, :kernel_hw[0], :kernel_hw[1], :], (1, 2, 0, 3))


def conv_input_vjp(spec: ConvSpec, g: jax.Array, kernel: jax.Array, x_shape: Sequence[int]) -> jax.Array:
    """The vjp of x -> convolve(spec, x, kernel) at cotangent g (linear in x)."""
    if spec.plain:
        return conv_transpose(g, kernel, x_shape[1:3], spec.strides, spec.padding)
    (out,) = jax.linear_transpose(lambda x: convolve(spec, x, kernel), jax.ShapeDtypeStruct(tuple(x_shape), g.dtype))(g)
    return out


def conv_kernel_vjp(spec: ConvSpec, x: jax.Array, g: jax.Array, w_shape: Sequence[int]) -> jax.Array:
    """The vjp of w -> convolve(spec, x, w) at cotangent g (linear in w)."""
    if spec.plain:
        return conv_weight_gradient(x, g, w_shape[:2], spec.strides, spec.padding)
    (out,) = jax.linear_transpose(lambda w: convolve(spec, x, w), jax.ShapeDtypeStruct(tuple(w_shape), g.dtype))(g)
    return out


# ----------------------------------------------------------------------------------------------
# What a rule hands a layer in place of a feedback matrix.


@jax.tree_util.register_pytree_node_class
class Direct:
    """Direct feedback for one layer: the output error e (batch, n_out) and the projection d (n_out,
    units), units = the size of one example at the delivery point (the layer's input, or its tap).

    `tapped` is set while the model is traced when `tap(h, this)` moved the delivery point to h."""

    def __init__(self, d: jax.Array, e: jax.Array):
        self.d, self.e, self.tapped = d, e, False

    def project(self, shape: Sequence[int]) -> jax.Array:
        return (self.e @ self.d).reshape(shape)

    def tree_flatten(self):
        return (self.d, self.e), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


@dataclass(eq=False)
class Site:
    """A feedback layer as the model calls it. Stands in for the layer's feedback leaf while
    `bioprop.sites` traces the model, and records what the layer (and a tap that names it) saw."""

    kind: str | None = None  # "dense" or "conv"
    in_shape: tuple | None = None  # the layer's input, batch first
    w_shape: tuple | None = None
    out_shape: tuple | None = None
    conv: ConvSpec | None = None
    tap_shape: tuple | None = None
    order: int = -1  # position of the layer's call in the forward pass
    counter: list = field(default_factory=lambda: [0])  # shared by the probes of one trace


@dataclass(eq=False)
class Measured:
    """A feedback leaf with zero arrays added to the layer's output, to its tap's array (where the model
    taps it) and to its input, so that the gradients with respect to them are the errors those points
    receive (bioprop.measure). None: no probe there."""

    fb: Any
    probe: jax.Array | None = None
    tap_probe: jax.Array | None = None
    in_probe: jax.Array | None = None


# ----------------------------------------------------------------------------------------------
# The layers.


def _send(kind, spec, fb, d, e, tapped, g, x_shape):
    """The error sent to the layer's input."""
    if d is not None:
        return jnp.zeros(x_shape, g.dtype) if tapped else (e @ d).reshape(x_shape).astype(g.dtype)
    if fb is None:
        return jnp.zeros(x_shape, g.dtype)
    if kind == "dense":
        return g @ fb
    return conv_input_vjp(spec, g, fb, x_shape)


def _weight_vjp(kind, spec, x, g, w_shape):
    if kind == "dense":
        return x.reshape(-1, x.shape[-1]).T @ g.reshape(-1, g.shape[-1])
    return conv_kernel_vjp(spec, x, g, w_shape)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _layer(kind, spec, tapped, x, w, b, fb, d, e):
    out = x @ w if kind == "dense" else convolve(spec, x, w)
    return out if b is None else out + b


def _layer_fwd(kind, spec, tapped, x, w, b, fb, d, e):
    return _layer(kind, spec, tapped, x, w, b, fb, d, e), (x, w, b, fb, d, e)


def _layer_bwd(kind, spec, tapped, res, g):
    x, w, b, fb, d, e = res
    dw = _weight_vjp(kind, spec, x, g, w.shape)
    db = None if b is None else jnp.sum(g.reshape(-1, g.shape[-1]), axis=0)
    dx = _send(kind, spec, fb, d, e, tapped, g, x.shape)
    dfb = None if fb is None else transport(dw)
    zeros = lambda a: None if a is None else jnp.zeros_like(a)
    return dx, dw, db, dfb, zeros(d), zeros(e)


_layer.defvjp(_layer_fwd, _layer_bwd)


def _apply(kind, spec, x, w, b, fb):
    if isinstance(fb, Site):
        out = x @ w if kind == "dense" else convolve(spec, x, w)
        fb.kind, fb.in_shape, fb.w_shape, fb.out_shape = kind, tuple(x.shape), tuple(w.shape), tuple(out.shape)
        fb.conv, fb.order = spec, fb.counter[0]
        fb.counter[0] += 1
        return out if b is None else out + b
    if isinstance(fb, Measured):
        out = _apply(kind, spec, x if fb.in_probe is None else x + fb.in_probe, w, b, fb.fb)
        return out if fb.probe is None else out + fb.probe
    if isinstance(fb, Direct):
        return _layer(kind, spec, fb.tapped, x, w, b, None, fb.d, fb.e)
    return _layer(kind, spec, False, x, w, b, fb, None, None)


def dense(x: jax.Array, w: jax.Array, b: jax.Array | None, fb) -> jax.Array:
    """x @ w + b; backward: exact dw, db; the error below through fb (n_out, n_in) or a Direct."""
    return _apply("dense", None, x, w, b, fb)


def conv(x: jax.Array, w: jax.Array, b: jax.Array | None, fb, *, stride=1, padding=0, dilation=1,
         groups: int = 1) -> jax.Array:
    """The convolution of NHWC images x with the HWIO kernel w, plus b per output channel; backward:
    exact dw, db; the error below by the transposed convolution with fb's kernel (W's shape) or a Direct.

    stride, dilation (of the kernel): an int or a pair; padding: an int, ((lo, hi), (lo, hi)), "SAME"
    or "VALID"; groups: feature groups (w is (kh, kw, C_in / groups, C_out))."""
    spec = conv_spec(x.shape[1:3], w.shape[:2], stride, padding, dilation, groups)
    return _apply("conv", spec, x, w, b, fb)


@jax.custom_vjp
def _replace_cotangent(h, d, e):
    return h


def _replace_fwd(h, d, e):
    return h, (h.shape, d, e)


def _replace_bwd(res, g):
    shape, d, e = res
    return (e @ d).reshape(shape).astype(g.dtype), jnp.zeros_like(d), jnp.zeros_like(e)


_replace_cotangent.defvjp(_replace_fwd, _replace_bwd)


def tap(h: jax.Array, fb) -> jax.Array:
    """Identity forward. Under direct feedback, the delivery point of the layer whose feedback leaf is
    `fb`: h's cotangent is replaced by e @ d (the layer itself then sends nothing below). Put it on an
    array computed before (below) that layer, e.g. before the pooling that feeds it (dfa_target
    pre_pool). Under every other rule it does nothing."""
    if isinstance(fb, Measured):
        h, fb = h if fb.tap_probe is None else h + fb.tap_probe, fb.fb
    if isinstance(fb, Site):
        fb.tap_shape = tuple(h.shape)
        return h
    if isinstance(fb, Direct):
        fb.tapped = True
        return _replace_cotangent(h, fb.d, fb.e)
    return h
