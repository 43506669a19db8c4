"""The learning-rule interface, and the backward pass shared by every rule that sends errors
through feedback matrices (bp, fa, dfa, usf, frsf, brsf).

A rule is a pair of pure functions, like an optax transformation:
    state = rule.init(key, params)
    est = rule.estimate(params, state, x, y_onehot, key)   # the rule's update direction
and, for the alignment measurements only (bioprop_cli/metrics/measure.py), `rule.feedback(params, state, key)`.
`estimate` never sees the true gradient: the exact gradient is computed on the side by
bioprop_cli/metrics/alignment.py, and never reaches training.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from bioprop_cli.models.mlp import Activation, Loss, Params, forward


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
    # {layer l: (B_l, reference)}: the feedback matrix a layer's error goes through, and the matrix
    # exact weight transport would use there (W^T, or a product of W^T for direct feedback).
    feedback: Callable[[Params, Any, jax.Array], dict[int, tuple[jax.Array, jax.Array]]]
    # The network's output for evaluation (the logits of the MLP; the free equilibrium's output
    # layer for an energy-based network).
    predict: Callable[[Params, Any, jax.Array], jax.Array]
    # Rules that LEARN their feedback add it to the trainable parameters: init_params(key, params)
    # returns params with params[l]["fb"] (shape of W_l^T) added, and estimate returns an update
    # for it, so the optimizer moves it like any weight. None: the network's parameters only.
    init_params: Callable[[jax.Array, Params], Params] | None = None
    # The part of `estimate` that estimates the loss gradient, which the alignment measurements compare
    # with the exact gradient (same signature). None: `estimate` itself. kp and wm leave out the decay
    # of their learned feedback, a regulariser, not an estimate of the loss gradient.
    gradient_estimate: Callable[..., Estimate] | None = None


def weight_gradients(fwd, deltas: list) -> Params:
    """dW_l = h_l^T delta_l and db_l = sum over the batch of delta_l (deltas already carry 1/batch)."""
    return [{"w": h.T @ d, "b": jnp.sum(d, axis=0)} for h, d in zip(fwd.inputs, deltas)]


def chain_deltas(fwd, e: jax.Array, feedback: list, act: Activation) -> list:
    """Layer-to-layer backward chain: delta_l = (delta_{l+1} @ B_{l+1}) * f'(a_l).

    feedback[l] = B_l for l = 1 .. L-1 (feedback[0] is unused); B_l = W_l^T is backprop.
    """
    deltas = [e]
    for l in range(len(fwd.pre) - 2, -1, -1):
        deltas.insert(0, (deltas[0] @ feedback[l + 1]) * act.df(fwd.pre[l]))
    return deltas


def direct_deltas(fwd, e: jax.Array, feedback: list, act: Activation) -> list:
    """Direct feedback (Nøkland 2016): delta_l = (e @ D_l) * f'(a_l) for every hidden layer l."""
    hidden = [(e @ feedback[l]) * act.df(fwd.pre[l]) for l in range(len(fwd.pre) - 1)]
    return hidden + [e]


def feedback_rule(
    act: Activation,
    loss: Loss,
    init: Callable[[jax.Array, Params], Any],
    matrices: Callable[[Params, Any, jax.Array], list],
    direct: bool = False,
    separate_feedback: bool = True,
) -> LearningRule:
    """A rule defined by the matrices its backward pass uses (`matrices(params, state, key)`).

    separate_feedback=False (backprop) means the matrices are W^T itself: nothing to compare.
    """
    propagate = direct_deltas if direct else chain_deltas

    def estimate(params, state, x, y, key, idx=None):
        fwd = forward(params, x, act)
        e = loss.error(fwd.logits, y)
        deltas = propagate(fwd, e, matrices(params, state, key), act)
        return Estimate(weight_gradients(fwd, deltas), state, deltas, loss.value(fwd.logits, y), fwd.logits)

    def feedback(params, state, key):
        if not separate_feedback:
            return {}
        mats = matrices(params, state, key)
        if direct:
            return {l: (mats[l], transport_path(params, l)) for l in range(len(params) - 1)}
        return {l: (mats[l], params[l]["w"].T) for l in range(1, len(params))}

    def predict(params, state, x):
        return forward(params, x, act).logits

    return LearningRule(init, estimate, feedback, predict)


def transport_path(params: Params, l: int) -> jax.Array:
    """W_{L-1}^T ... W_{l+1}^T: the linear part of backprop's path from the output to layer l.

    For the last hidden layer this is W_{L-1}^T itself; direct feedback's D_l is compared with it.
    """
    path = params[-1]["w"].T
    for k in range(len(params) - 2, l, -1):
        path = path @ params[k]["w"].T
    return path


def model_functions(config) -> tuple[Activation, Loss]:
    from bioprop_cli.models.mlp import ACTIVATIONS, LOSSES

    return ACTIVATIONS[config.model.activation], LOSSES[config.model.loss]


def feedback_std(config, sizes: tuple[int, ...], l: int) -> float:
    """feedback.scale times the initial std of W_l: feedback starts with the statistics of W_l^T."""
    from bioprop_cli.models.mlp import init_std

    init = config.model.init
    return config.feedback.scale * init_std(init.scheme, init.scale, sizes[l], sizes[l + 1])
