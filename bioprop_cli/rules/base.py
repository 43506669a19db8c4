"""The learning-rule interface, and the backward pass shared by every rule that sends errors
through feedback (bp, fa, dfa, usf, frsf, brsf, kp, wm), on any architecture (models/arch.py).

A rule is a pair of pure functions, like an optax transformation:
    state = rule.init(key, params)
    est = rule.estimate(params, state, x, y_onehot, key)   # the rule's update direction
and, for the alignment measurements only (bioprop_cli/metrics/measure.py), `rule.feedback(params, state, key)`.
`estimate` never sees the true gradient: the exact gradient is computed on the side by
bioprop_cli/metrics/alignment.py, and never reaches training.

The feedforward rules (bp, fa, dfa, usf, frsf, brsf, kp, wm) have one backward pass, the library's
(bioprop.dense / bioprop.conv, rules/library.py), on every network. What stays here besides the interface
are the layer stacks' direct-feedback shapes and the Architecture-level references the measurements
compare with: backprop's linear path to a layer (transport_path), dfa's D as the matrix it applies
(direct_matrix). Direct feedback projects the output error e straight to each hidden layer's output
(then back exactly through its pooling and activation), or to its pre-activation (feedback.dfa_target):
delta_l = reshape(e @ D_l) * f'(a_l) for a dense layer.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from bioprop_cli.models.arch import Architecture, Conv, Pool
from bioprop_cli.models.layers import pool, send_back, transport
from bioprop_cli.models.mlp import Activation, Loss, Params


class Estimate(NamedTuple):
    grads: Params  # the rule's update direction, same structure as params (descent: params -= lr * grads)
    state: Any  # the rule's state after this step (feedback that changes over training)
    deltas: list  # the error signal delta_l the rule delivers to each layer's pre-activation (gradient_estimate; [] if not measured)
    loss: jax.Array  # loss of the batch at the current params
    logits: jax.Array
    aux: dict | None = None  # rule-specific diagnostics (settling steps and residuals for ep)


class LearningRule(NamedTuple):
    init: Callable[[jax.Array, Params], Any]
    # estimate(params, state, x, y_onehot, key, idx=None); idx: the examples' positions in the
    # training split (rules with per-example state, e.g. ep's persistent particles, use it)
    estimate: Callable[..., Estimate]
    # {layer l: (B_l, reference)}: the feedback a layer's error goes through, and what exact weight
    # transport would use there (W^T, the conv kernel itself, or backprop's linear path for direct feedback).
    feedback: Callable[[Params, Any, jax.Array], dict[int, tuple[jax.Array, jax.Array]]]
    # The network's output for evaluation (the logits of a feedforward network; the free equilibrium's
    # output layer for an energy-based network).
    predict: Callable[[Params, Any, jax.Array], jax.Array]
    # Rules that LEARN their feedback add it to the trainable parameters: init_params(key, params)
    # returns params with params[l]["fb"] (transport's layout: W_l^T's shape, or the kernel's) added, and
    # estimate returns an update for it, so the optimizer moves it like any weight. None: the network's
    # parameters only.
    init_params: Callable[[jax.Array, Params], Params] | None = None
    # The part of `estimate` that estimates the loss gradient, which the alignment measurements compare
    # with the exact gradient (same signature). None: `estimate` itself. kp and wm leave out the decay
    # of their learned feedback, a regulariser, not an estimate of the loss gradient.
    gradient_estimate: Callable[..., Estimate] | None = None


def projection_conv(arch: Architecture, l: int, n_out: int) -> Conv | None:
    """dfa_target pooled_conv's projection for hidden layer l: the convolution of the layer above (its
    kernel, stride and padding, on layer l's output) with n_out output channels, whose transposed
    convolution takes the error tiled over that layer's output grid to layer l's output (biotorch's dfa
    Conv2d: its weight_backward (n_out, C_in, k, k) on the loss gradient repeated over H' x W'). None
    where the layer above is dense: then D_l is dense, as in Nøkland's placement."""
    above = arch.layers[l + 1].op
    return above._replace(channels=n_out) if isinstance(above, Conv) else None


def direct_feedback_shape(arch: Architecture, l: int, n_out: int, target: str) -> tuple[int, ...]:
    """The shape of D_l: (n_out, units of a_l) for pre_pool, (n_out, units of h_{l+1}) for pooled (the
    same for a layer without pooling), pooled_conv's kernel (k, k, C_l, n_out) below a conv layer."""
    conv = projection_conv(arch, l, n_out) if target == "pooled_conv" else None
    if conv is not None:
        return conv.weight_shape
    units = arch.pre_shapes[l] if target == "pre_pool" else arch.layers[l].out_shape
    return (n_out, math.prod(units))


def direct_projection(arch: Architecture, l: int, target: str, d: jax.Array, e: jax.Array) -> jax.Array:
    """The output error e (batch, n_out) through D_l, flat: e @ D_l, or for pooled_conv's kernel the
    transposed convolution of e tiled over the next conv layer's output positions."""
    conv = projection_conv(arch, l, e.shape[-1]) if target == "pooled_conv" else None
    if conv is None:
        return e @ d
    tiled = jnp.broadcast_to(e[:, None, None, :], e.shape[:1] + conv.out_shape)
    return send_back(conv, d, tiled, e.shape[:1] + conv.in_shape).reshape(e.shape[0], -1)


def direct_matrix(arch: Architecture, l: int, target: str, d: jax.Array) -> jax.Array:
    """D_l as the (n_out, units) matrix it applies to e: itself, or for pooled_conv's kernel the
    projections of the output's unit vectors."""
    n_out = arch.sizes[-1]
    if target != "pooled_conv" or projection_conv(arch, l, n_out) is None:
        return d
    return direct_projection(arch, l, target, d, jnp.eye(n_out, dtype=d.dtype))


def transport_path(arch: Architecture, params: Params, l: int, pooled_output: bool = False) -> jax.Array:
    """The linear part of backprop's path from the output to the pre-activation a_l (pooled_output:
    to the layer's output h_{l+1}, after its pooling), as an (n_out, units) matrix; direct feedback's D_l
    is compared with it where D_l delivers the error.

    For an MLP W_{L-1}^T ... W_{l+1}^T (W_{L-1}^T itself for the last hidden layer). For a conv net
    the output's unit vectors go back through every layer above l with its transported weights, the
    activations taken as the identity and max pooling as average pooling of the same window: the
    linear map backprop would use if the network were linear (max pooling's route depends on the
    data, average pooling spreads the error evenly over the same window).
    """
    n_out = params[-1]["w"].shape[-1]
    g = jnp.eye(n_out, dtype=params[-1]["w"].dtype)
    for k in range(len(arch.layers) - 1, l, -1):
        op, below = arch.layers[k].op, arch.layers[k - 1]
        g = send_back(op, transport(op, params[k]["w"]), g, (n_out,) + below.out_shape)
        if below.pool is not None and not (pooled_output and k == l + 1):
            g = _average_pool_back(below, g)
    return g.reshape(n_out, -1)


def _average_pool_back(layer, g: jax.Array) -> jax.Array:
    """g at a pooled layer's output, sent back through average pooling of its window and stride."""
    average = Pool("avg", layer.pool.window, layer.pool.stride)
    shape = (g.shape[0],) + layer.op.out_shape
    (out,) = jax.linear_transpose(lambda z: pool(average, z), jax.ShapeDtypeStruct(shape, g.dtype))(
        g.reshape((g.shape[0],) + layer.out_shape))
    return out


def model_functions(config) -> tuple[Activation, Loss]:
    from bioprop_cli.models.mlp import ACTIVATIONS, LOSSES

    return ACTIVATIONS[config.model.activation], LOSSES[config.model.loss]


def feedback_std(config, arch: Architecture, l: int) -> float:
    """feedback.scale times the initial std of W_l: feedback starts with the statistics of transport(W_l)."""
    from bioprop_cli.models.mlp import init_std

    init = config.model.init
    return config.feedback.scale * init_std(init.scheme, init.scale, *arch.layers[l].op.fans)
