"""Networks written as functions on feedback layers (resnet, vgg): what they share.

A network here is a `Network`: its weight layers in order (`WeightLayer`, the layers whose backward pass a
rule chooses: every convolution and dense layer), its BatchNorm layers, and a pure forward function

    logits, stats = network.apply(params, stats, feedback, x, train, ops)

`ops` supplies the two feedback layers (`ops.dense(x, w, b, fb)`, `ops.conv(x, w, b, fb, stride, padding)`):
the library's (bioprop.dense / bioprop.conv, whose backward pass sends the error below through the rule's
feedback) for training, `EXACT` (plain products; jax.grad of it is backprop) for the reference. Everything
else (BatchNorm, activations, residual adds, pooling) is plain JAX, so backprop passes errors back through it
exactly whichever ops are used.

params = {"layers": [{"w", "b"?} per weight layer], "norms": [{"scale", "bias"} per BatchNorm]};
stats = [{"mean", "var"} per BatchNorm] (the running statistics, the training state's, not trained).

BatchNorm (Ioffe & Szegedy 2015) as torch.nn.BatchNorm2d computes it: in training, each channel is
normalised by the batch's mean and biased variance over (batch, H, W), and the running statistics move by
    running = (1 - momentum) running + momentum batch_statistic,   momentum = 0.1,
with the UNBIASED batch variance (n / (n - 1) times the biased one, n = batch x H x W) for running_var,
as torch does; in evaluation the running statistics normalise. eps = 1e-5.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from bioprop.rules import sample
from bioprop_cli.models.mlp import init_std

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


class WeightLayer(NamedTuple):
    name: str  # e.g. "conv0", "stage1.block0.conv1", "fc"
    kind: str  # "conv" or "dense"
    weight_shape: tuple[int, ...]  # HWIO for a conv kernel, (n_in, n_out) for a dense layer
    out_shape: tuple[int, ...]  # per example: (H', W', C_out) or (n_out,)
    stride: int = 1
    padding: int = 0
    bias: bool = True

    @property
    def fans(self) -> tuple[int, int]:
        """(k^2 C_in, k^2 C_out) for a kernel, (n_in, n_out) for a dense layer."""
        if self.kind == "dense":
            return self.weight_shape
        area = self.weight_shape[0] * self.weight_shape[1]
        return area * self.weight_shape[2], area * self.weight_shape[3]

    @property
    def n_params(self) -> int:
        return math.prod(self.weight_shape) + (self.weight_shape[-1] if self.bias else 0)

    def describe(self) -> str:
        if self.kind == "dense":
            return str(self.weight_shape[1])
        k = self.weight_shape[0]
        return (f"conv{self.weight_shape[3]}@{k}x{k}" + (f"s{self.stride}" if self.stride != 1 else "")
                + (f"p{self.padding}" if self.padding else ""))


class Ops(NamedTuple):
    dense: Callable  # (x, w, b, fb) -> x @ w + b
    conv: Callable  # (x, w, b, fb, stride, padding) -> the NHWC / HWIO convolution (+ b)


def exact_dense(x, w, b, fb):
    out = x @ w
    return out if b is None else out + b


def exact_conv(x, w, b, fb, stride, padding):
    out = lax.conv_general_dilated(x, w, (stride, stride), ((padding, padding),) * 2,
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out if b is None else out + b


EXACT = Ops(exact_dense, exact_conv)  # jax.grad through these is backprop


class Network(NamedTuple):
    name: str
    input_shape: tuple[int, int, int]  # (H, W, C) of one example
    weights: tuple[WeightLayer, ...]  # the feedback layers, in forward order
    norms: tuple[int, ...]  # the channels of each BatchNorm, in forward order
    # apply(params, stats, feedback, x (batch, H*W*C) or images, train, ops) -> (logits, stats)
    apply: Callable
    label: str  # one line, e.g. "resnet20-A-16"

    @property
    def layers(self) -> tuple[WeightLayer, ...]:
        """The weight layers: what per-layer settings (optimizer.layer_lr) and measurements count."""
        return self.weights

    @property
    def n_out(self) -> int:
        return self.weights[-1].out_shape[-1]

    @property
    def sizes(self) -> tuple[int, ...]:
        """The units of the input and of each weight layer's output (per example)."""
        return (math.prod(self.input_shape),) + tuple(math.prod(w.out_shape) for w in self.weights)

    @property
    def n_params(self) -> int:
        """Weights, biases and BatchNorm's scale and shift (the running statistics are not parameters)."""
        return sum(w.n_params for w in self.weights) + 2 * sum(self.norms)

    def describe(self) -> str:
        return self.label


def init_params(key: jax.Array, network: Network, scheme: str, scale: float) -> dict:
    """Weights from the variance-scaling scheme (std = scale * scheme(fan_in, fan_out), a kernel's fans
    k^2 C_in and k^2 C_out, as torch's xavier / kaiming initialisers count them), one key per weight
    layer split from `key`; biases zero; BatchNorm's scale 1 and shift 0 (torch's defaults)."""
    distribution = scheme.split("_")[1]
    keys = jax.random.split(key, len(network.weights))
    layers = []
    for k, layer in zip(keys, network.weights):
        p = {"w": sample(k, layer.weight_shape, init_std(scheme, scale, *layer.fans), distribution)}
        if layer.bias:
            p["b"] = jnp.zeros((layer.weight_shape[-1],))
        layers.append(p)
    norms = [{"scale": jnp.ones((c,)), "bias": jnp.zeros((c,))} for c in network.norms]
    return {"layers": layers, "norms": norms}


def init_stats(network: Network) -> list:
    """Running mean 0 and variance 1 per BatchNorm channel (torch's initial running statistics)."""
    return [{"mean": jnp.zeros((c,)), "var": jnp.ones((c,))} for c in network.norms]


def batch_norm(x: jax.Array, p: dict, stats: dict, train: bool) -> tuple[jax.Array, dict]:
    """(normalised x, running statistics after this batch) over every axis but the last (channels)."""
    axes = tuple(range(x.ndim - 1))
    if not train:
        mean, var = stats["mean"], stats["var"]
        new = stats
    else:
        mean = jnp.mean(x, axes)
        var = jnp.mean(jnp.square(x - mean), axes)  # biased: what normalises the batch
        n = math.prod(x.shape[:-1])
        unbiased = var * (n / max(n - 1, 1))
        m = BN_MOMENTUM
        new = {"mean": (1 - m) * stats["mean"] + m * lax.stop_gradient(mean),
               "var": (1 - m) * stats["var"] + m * lax.stop_gradient(unbiased)}
    y = (x - mean) * lax.rsqrt(var + BN_EPS)
    return y * p["scale"] + p["bias"], new


def max_pool(x: jax.Array, window: int = 2, stride: int = 2) -> jax.Array:
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), "VALID")


def conv_out(shape: tuple[int, int, int], channels: int, kernel: int, stride: int, padding: int) -> tuple[int, int, int]:
    """(H', W', C_out): floor((H + 2p - k) / s) + 1 per side."""
    side = lambda n: (n + 2 * padding - kernel) // stride + 1
    return side(shape[0]), side(shape[1]), channels


def pooled(shape: tuple[int, int, int], window: int = 2, stride: int = 2) -> tuple[int, int, int]:
    side = lambda n: (n - window) // stride + 1
    return side(shape[0]), side(shape[1]), shape[2]


def problem(network: Network) -> str | None:
    """What makes the network impossible (a layer with no output left), else None."""
    for layer in network.weights:
        if min(layer.out_shape) < 1:
            return f"layer {layer.name} has no output left on {'x'.join(map(str, network.input_shape))} inputs"
    return None
