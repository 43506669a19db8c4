"""The layer primitives every network is made of (bioprop_cli/models/arch.py describes which):
a dense or convolutional layer's pre-activation, pooling, and the initial parameters.

Row-vector, channel-last convention: a dense layer maps (batch, n_in) -> (batch, n_out) by
h @ W + b with W of shape (n_in, n_out); a conv layer maps (batch, H, W, C_in) -> (batch, H', W',
C_out) with an HWIO kernel (k, k, C_in, C_out) and a bias per output channel. A dense layer reads
its input flattened, a conv layer reads it as images, so both accept whatever the layer below made.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

import bioprop
import bioprop.layers as library
from bioprop.rules import sample
from bioprop_cli.models.arch import Architecture, Conv, Dense, Pool
from bioprop_cli.models.mlp import Forward, init_std


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
    return library.convolve(library.conv_spec(op.in_shape[:2], (op.kernel, op.kernel), op.stride, op.padding), h, w)


def pre_activation(op: Dense | Conv, layer: dict, h: jax.Array) -> jax.Array:
    """a = linear(h) + b (the bias broadcast over the batch and, for a conv layer, over positions)."""
    return linear(op, layer["w"], h) + layer["b"]


def pool(p: Pool | None, h: jax.Array) -> jax.Array:
    """VALID max or average pooling over (H, W) of a (batch, H, W, C) array; None: h unchanged. Max pooling
    of disjoint windows (window = stride) is `tiled_max_pool` (docs/speed.md: its vjp is faster than
    reduce_window's select-and-scatter on LeNet's layers)."""
    if p is None:
        return h
    window, strides = (1, p.window, p.window, 1), (1, p.stride, p.stride, 1)
    if p.kind == "max" and p.window == p.stride:
        return tiled_max_pool(p.window, h)
    if p.kind == "max":
        return lax.reduce_window(h, -jnp.inf, lax.max, window, strides, "VALID")
    return lax.reduce_window(h, 0.0, lax.add, window, strides, "VALID") / (p.window * p.window)


def _tiles(k: int, h: jax.Array) -> jax.Array:
    """h (batch, H, W, C) cut to whole k x k tiles, as (batch, H // k, k, W // k, k, C)."""
    b, height, width, c = h.shape
    return h[:, : height // k * k, : width // k * k].reshape(b, height // k, k, width // k, k, c)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def tiled_max_pool(k: int, h: jax.Array) -> jax.Array:
    """The maximum of each k x k tile of h (batch, H, W, C). Its derivative takes each tile's change at its
    first maximum in row-major order, as reduce_window's select-and-scatter does; the tangent map is
    linear, so jax transposes it into the vjp (and jvp, linearize work)."""
    return jnp.max(_tiles(k, h), axis=(2, 4))


@tiled_max_pool.defjvp
def _tiled_max_pool_jvp(k, primals, tangents):
    (h,), (t,) = primals, tangents
    tiles = _tiles(k, h)
    out = jnp.max(tiles, axis=(2, 4))
    at_max = tiles == out[:, :, None, :, None, :]
    taken = jnp.zeros(out.shape, bool)
    first = [[None] * k for _ in range(k)]
    for i in range(k):
        for j in range(k):
            first[i][j] = at_max[:, :, i, :, j, :] & ~taken
            taken = taken | first[i][j]
    mask = jnp.stack([jnp.stack(row, axis=3) for row in first], axis=2)  # (batch, H', k, W', k, C)
    return out, jnp.sum(jnp.where(mask, _tiles(k, t), jnp.zeros((), t.dtype)), axis=(2, 4))


def init_params(key: jax.Array, arch: Architecture, scheme: str, scale: float, bias: str = "zeros") -> list:
    """[{"w", "b"}] per layer: weights from the variance-scaling scheme (std = scale * scheme(fan_in,
    fan_out), the fans of a kernel being k^2 C_in and k^2 C_out); biases zero, or with `bias`
    fan_in_uniform U(-1/sqrt(fan_in), +1/sqrt(fan_in)) (torch.nn.Linear's and Conv2d's default, from a
    key of their own: the weights do not change). One key per layer, split from `key`."""
    distribution = scheme.split("_")[1]
    keys = jax.random.split(key, len(arch.layers))
    return [
        {
            "w": sample(k, layer.op.weight_shape, init_std(scheme, scale, *layer.op.fans), distribution),
            "b": initial_bias(jax.random.fold_in(k, BIAS_STREAM), layer.op.out_shape[-1], layer.op.fans[0], bias),
        }
        for k, layer in zip(keys, arch.layers)
    ]


BIAS_STREAM = 0xB1A5  # folded into a layer's key for its biases (`model.init.bias`)


def initial_bias(key: jax.Array, n: int, fan_in: int, bias: str) -> jax.Array:
    if bias == "zeros":
        return jnp.zeros((n,))
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, (n,), minval=-bound, maxval=bound)


# ----------------------------------------------------------------------------------------------
# The forward pass of any architecture, and the pieces every backward pass is made of.
#
# Feedback is kept in the layout exact weight transport would use at the layer (`transport`): W^T,
# (n_out, n_in), for a dense layer (the error row vector is multiplied by it, delta @ W^T), the kernel
# itself, (k, k, C_in, C_out), for a conv layer (the transposed convolution reads W's own kernel).
# The vjps below are the transposes of the layer's linear map, written out: for a dense layer in closed
# form (h^T delta, delta @ B, y^T x), the products the MLP has always computed, so that its numbers stay
# bit-identical; for a conv layer as forward convolutions (below). Tested against jax.grad.


def transport(op: Dense | Conv, w: jax.Array) -> jax.Array:
    """What exact weight transport sends errors through, in feedback's layout: W^T (dense), W (conv)."""
    return w.T if isinstance(op, Dense) else w


def as_weight(op: Dense | Conv, fb: jax.Array) -> jax.Array:
    """Feedback back in the weight's layout (the inverse of `transport`)."""
    return fb.T if isinstance(op, Dense) else fb


# A conv layer's two vjps are written as forward convolutions (the library's primitives, bioprop/layers.py):
# XLA's CPU backend runs linear_transpose's convolutions several times slower inside a scan (jax-ml/jax issue
# 12868; measured: docs/implementation-notes.md). Tested against jax.grad.
def conv_transpose(op: Conv, w: jax.Array, g: jax.Array) -> jax.Array:
    """The input gradient of the convolution (stride s, padding p) with g, (batch, H, W, C_in)."""
    s, p = op.stride, op.padding
    return library.conv_transpose(g, w, op.in_shape[:2], (s, s), ((p, p), (p, p)))


def conv_weight_gradient(op: Conv, h: jax.Array, delta: jax.Array) -> jax.Array:
    """The kernel gradient of the convolution (stride s, padding p) at input h with cotangent delta
    (batch, H', W', C_out)."""
    k, s, p = op.kernel, op.stride, op.padding
    return library.conv_weight_gradient(as_input(op, h), delta, (k, k), (s, s), ((p, p), (p, p)))


def weight_vjp(op: Dense | Conv, h: jax.Array, delta: jax.Array) -> dict:
    """{"w", "b"}: the vjp of pre_activation w.r.t. the weights and the bias at the layer's input h,
    cotangent delta: h^T delta and the batch sum of delta (dense); the correlation of the input
    images with delta and its sum over the batch and positions (conv)."""
    if isinstance(op, Dense):
        return {"w": as_input(op, h).T @ delta, "b": jnp.sum(delta, axis=0)}
    delta = delta.reshape((delta.shape[0],) + tuple(op.out_shape))
    return {"w": conv_weight_gradient(op, h, delta), "b": jnp.sum(delta, axis=(0, 1, 2))}


def send_back(op: Dense | Conv, fb: jax.Array, delta: jax.Array, input_shape: tuple[int, ...]) -> jax.Array:
    """The error at the layer's input (of `input_shape`, batch first, as the layer below made it):
    the vjp of linear(op, ., h) w.r.t. h with the feedback fb (transport's layout) in place of W:
    delta @ fb (dense), the transposed convolution with fb's kernel (conv). fb = transport(op, W)
    is backprop."""
    if isinstance(op, Dense):
        return (delta @ fb).reshape(input_shape)
    delta = delta.reshape((delta.shape[0],) + tuple(op.out_shape))
    return conv_transpose(op, as_weight(op, fb), delta).reshape(input_shape)


def forward(arch: Architecture, params: list, x: jax.Array, act, perturb: list | None = None) -> Forward:
    """a_l = pre_activation(h_l), h_{l+1} = pool_l(f(a_l)) (pool_l(a_l) where the layer has no activation),
    keeping what a backward pass needs (the inputs h_l as the layer below made them: images after a conv
    layer): `run` on plain layers, so jax.grad of it is backprop.

    `perturb` (one array per layer, added to a_l) exists only so that jax.grad can return the
    exact deltas dLoss/da_l as the gradient with respect to a zero perturbation.
    """
    return run(arch, act.f, lambda l, op, p, h: pre_activation(op, p, h), params, x, perturb)


def run(arch: Architecture, f: Callable, layer: Callable, params: list, x: jax.Array, perturb: list | None = None,
        tap: Callable | None = None) -> Forward:
    """The one forward pass of a layer stack: a_l = layer(l, op_l, params[l], h_l) (+ perturb[l]), then for a
    hidden layer h_{l+1} = pool_l(f(a_l)), or pool_l(a_l) where `Layer.activation` is False; tap(l, h), if
    given, sees f(a_l) before the pooling. `forward` runs it on plain layers, `feedback_model` on the
    library's feedback layers (whose backward pass is the rule's)."""
    inputs, pre = [], []
    h, last = x, len(arch.layers) - 1
    for l, (spec, p) in enumerate(zip(arch.layers, params)):
        inputs.append(h)
        a = layer(l, spec.op, p, h)
        if perturb is not None:
            a = a + perturb[l]
        pre.append(a)
        if l == last:
            break
        h = f(a) if spec.activation else a
        if tap is not None:
            h = tap(l, h)
        h = pool(spec.pool, h)
    return Forward(inputs, pre)


# ----------------------------------------------------------------------------------------------
# The layer stack on the library's feedback layers: the forward pass above, whose backward pass is the
# learning rule's (bioprop.dense / bioprop.conv; rules/library.py trains mlp, lenet and cnn through it).


@functools.lru_cache(maxsize=None)
def with_derivative(act) -> Callable[[jax.Array], jax.Array]:
    """act.f whose derivative is act.df (the activation's own formula, as the layer stacks have always used:
    the error below is g * f'(a) with f' = act.df), not the one autodiff would derive from f."""
    f = jax.custom_jvp(act.f)
    f.defjvp(lambda primals, tangents: (act.f(primals[0]), act.df(primals[0]) * tangents[0]))
    return f


def feedback_layer(fb: list) -> Callable:
    """layer(l, op, p, h) for `run`: the library's dense or conv layer with feedback fb[l]["w"]."""

    def layer(l, op, p, h):
        h = as_input(op, h)
        if isinstance(op, Dense):
            return bioprop.dense(h, p["w"], p["b"], fb[l]["w"])
        return bioprop.conv(h, p["w"], p["b"], fb[l]["w"], stride=op.stride, padding=op.padding)

    return layer


def feedback_model(arch: Architecture, act, tap: bool = False) -> Callable:
    """bioprop's model(params, fb, x) -> logits of the stack: `run` with a_l = the library's dense or conv
    layer with feedback fb[l]["w"] (transport's layout); fb has the structure of bioprop.kernels(params)
    ([{"w": B_l, "b": None}, ...]). tap: the layer above's direct feedback reaches f(a_l) before the pooling
    (dfa_target pre_pool: delta_l = reshape(e D_l) * f'(a_l); a_l itself on a layer without activation)."""
    f = with_derivative(act)

    def model(params, fb, x):
        taps = (lambda l, h: bioprop.tap(h, fb[l + 1]["w"])) if tap else None
        return run(arch, f, feedback_layer(fb), params, x, tap=taps).logits

    return model
