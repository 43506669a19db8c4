"""The learning-rule interface, and the backward pass shared by every rule that sends errors
through feedback (bp, fa, dfa, usf, frsf, brsf, kp, wm), on any architecture (models/arch.py).

A rule is a pair of pure functions, like an optax transformation:
    state = rule.init(key, params)
    est = rule.estimate(params, state, x, y_onehot, key)   # the rule's update direction
and, for the alignment measurements only (bioprop_cli/metrics/measure.py), `rule.feedback(params, state, key)`.
`estimate` never sees the true gradient: the exact gradient is computed on the side by
bioprop_cli/metrics/alignment.py, and never reaches training.

One backward mechanism for dense and conv layers (models/layers.py): the forward pass is
a_l = pre_activation(op_l, params_l, h_l), h_{l+1} = pool_l(f(a_l)). A layer's weight update is the
vjp of its pre-activation w.r.t. (W_l, b_l) at its own input h_l with its error delta_l (h_l^T delta_l
for a dense layer). The error sent below is the rule's choice of feedback B_l in the vjp of the layer's
linear map w.r.t. its input (dense: delta_l @ B_l; conv: the transposed convolution with B_l's
kernel; B_l = transport(W_l) is backprop); pooling, flattening and the activation of the layer below
then pass it back exactly (their vjp at a_{l-1}). Direct feedback instead projects the output
error e straight to each hidden pre-activation: delta_l = reshape(e @ D_l) * f'(a_l).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from bioprop_cli.models.arch import Architecture, Pool
from bioprop_cli.models.layers import forward, pool, send_back, through_activation, transport, weight_vjp
from bioprop_cli.models.mlp import Activation, Loss, Params


class Estimate(NamedTuple):
    grads: Params  # the rule's update direction, same structure as params (descent: params -= lr * grads)
    state: Any  # the rule's state after this step (feedback that changes over training)
    deltas: list  # the error signal delta_l the rule delivers to each layer's pre-activation
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


def weight_gradients(arch: Architecture, inputs: list, deltas: list) -> Params:
    """The vjp of each layer's pre-activation w.r.t. (W_l, b_l) at its input h_l with delta_l (deltas
    already carry 1/batch): dW_l = h_l^T delta_l, db_l = sum of delta_l for a dense layer."""
    return [weight_vjp(layer.op, h, d) for layer, h, d in zip(arch.layers, inputs, deltas)]


def chain_deltas(arch: Architecture, fwd, e: jax.Array, feedback: list, act: Activation) -> list:
    """Layer-to-layer backward chain: delta_l = (the error delta_{l+1} sends back through B_{l+1}) passed
    back exactly through layer l's pooling and activation; for an MLP (delta_{l+1} @ B_{l+1}) * f'(a_l).

    feedback[l] = B_l for l = 1 .. L-1 (feedback[0] is unused); B_l = transport(W_l) is backprop.
    """
    deltas = [e]
    for l in range(len(arch.layers) - 2, -1, -1):
        g = send_back(arch.layers[l + 1].op, feedback[l + 1], deltas[0], fwd.inputs[l + 1].shape)
        deltas.insert(0, through_activation(arch.layers[l], act, fwd.pre[l], g))
    return deltas


def direct_deltas(arch: Architecture, fwd, e: jax.Array, feedback: list, act: Activation) -> list:
    """Direct feedback (Nøkland 2016): delta_l = reshape(e @ D_l) * f'(a_l) for every hidden layer l.

    D_l reaches the pre-activation a_l itself: for a pooled conv layer every unit of a_l gets its
    projected error (also those max pooling discards), gated by f'(a_l) only; the pooling is bypassed
    like the layers above.
    """
    hidden = [(e @ feedback[l]).reshape(a.shape) * act.df(a) for l, a in enumerate(fwd.pre[:-1])]
    return hidden + [e]


def feedback_rule(
    arch: Architecture,
    act: Activation,
    loss: Loss,
    init: Callable[[jax.Array, Params], Any],
    matrices: Callable[[Params, Any, jax.Array], list],
    direct: bool = False,
    separate_feedback: bool = True,
) -> LearningRule:
    """A rule defined by the feedback its backward pass uses (`matrices(params, state, key)`).

    separate_feedback=False (backprop) means the feedback is transport(W) itself: nothing to compare.
    """
    propagate = direct_deltas if direct else chain_deltas

    def estimate(params, state, x, y, key, idx=None):
        fwd = forward(arch, params, x, act)
        e = loss.error(fwd.logits, y)
        deltas = propagate(arch, fwd, e, matrices(params, state, key), act)
        return Estimate(weight_gradients(arch, fwd.inputs, deltas), state, deltas, loss.value(fwd.logits, y), fwd.logits)

    def feedback(params, state, key):
        if not separate_feedback:
            return {}
        mats = matrices(params, state, key)
        if direct:
            return {l: (mats[l], transport_path(arch, params, l)) for l in range(len(params) - 1)}
        return {l: (mats[l], transport(arch.layers[l].op, params[l]["w"])) for l in range(1, len(params))}

    def predict(params, state, x):
        return forward(arch, params, x, act).logits

    return LearningRule(init, estimate, feedback, predict)


def transport_path(arch: Architecture, params: Params, l: int) -> jax.Array:
    """The linear part of backprop's path from the output to the pre-activation a_l, as an
    (n_out, prod(a_l's shape)) matrix; direct feedback's D_l is compared with it.

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
        if below.pool is not None:
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
