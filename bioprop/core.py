"""A rule's update on any model written with bioprop's feedback layers.

The model is a function `model(params, fb, x) -> output` that calls `bioprop.dense` / `bioprop.conv`
with the leaf of `fb` that belongs to each weight (fb has the structure of `kernels(params)`), and the
loss a function `loss(output, y) -> scalar`. Direct feedback needs the two apart: it computes the output
error e = dloss/doutput first.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from bioprop.layers import Direct, Measured, Site
from bioprop.rules import Rule

_is_none = lambda v: v is None


def kernels(params, mask=None):
    """params with None at every leaf that gets no feedback: the 2-d (dense, (n_in, n_out)) and 4-d
    (HWIO conv) leaves are kept, and of those only where `mask` (a pytree of bools like params) is True."""
    keep = lambda w, m=True: w if (m and jnp.ndim(w) in (2, 4)) else None
    if mask is None:
        return jax.tree_util.tree_map(keep, params)
    return jax.tree_util.tree_map(keep, params, mask)


def sites(model, params, x, mask=None):
    """A pytree like kernels(params, mask) of `Site`s: each feedback layer as the model calls it (input,
    weight and output shapes, the convolution's settings, a tap's shape, the order of the calls), found
    by tracing the model once (jax.eval_shape: nothing is computed). Every kernel must reach a layer."""
    counter = [0]
    probes = jax.tree_util.tree_map(lambda w: Site(counter=counter), kernels(params, mask))
    jax.eval_shape(lambda p, x: model(p, probes, x), params, x)
    paths = [jax.tree_util.keystr(path) for path, s in jax.tree_util.tree_leaves_with_path(probes) if s.kind is None]
    if paths:
        raise ValueError(f"weights with feedback that no bioprop layer received: {', '.join(paths)} "
                         "(pass fb's leaf to bioprop.dense / bioprop.conv, or mask the weight out)")
    return probes


def init(rule: Rule, key: jax.Array, model, params, x, mask=None):
    """The rule's initial feedback state for this model (x: a batch of inputs, only its shape is read)."""
    return rule.init(key, kernels(params, mask), sites(model, params, x, mask))


class Update(NamedTuple):
    loss: jax.Array  # the batch's loss at params
    grads: Any  # the rule's update of params (a descent direction, like jax.grad), structured like params
    feedback_grads: Any  # the update of the feedback state (kp, wm learn it; zeros for the others)
    aux: Any = None  # what the model returned beside its output (has_aux: e.g. batch norm's statistics)


class Estimate(NamedTuple):
    loss: jax.Array
    grads: Any  # the rule's estimate of the loss gradient, like params
    hebbian: Any  # the gradient w.r.t. fb (transport(dW) of each feedback layer), like kernels; None for dfa
    signals: Any  # the errors at `probes`, or None
    aux: Any = None


def feedback_arrays(rule: Rule, params, state, key, mask=None):
    """fb: what each feedback layer's error goes through (D for direct feedback), like kernels(params)."""
    return rule.feedback(kernels(params, mask), state, key)


def estimate(rule: Rule, model, loss, params, state, key, x, y, mask=None, probes=None,
             has_aux: bool = False) -> Estimate:
    """The rule's estimate of the loss gradient, without kp's and wm's feedback learning.

    probes: a pair of pytrees like kernels, zeros of each feedback layer's output shape and of its tap's
    shape (None where the model taps nothing), added there so that their gradients are the errors those
    points receive (`bioprop.measure`). has_aux: the model returns (output, aux)."""
    fb = feedback_arrays(rule, params, state, key, mask)

    def received(fb, probes, e=None):
        leaf = (lambda f: f) if e is None else (lambda d: Direct(d, e))
        if probes is None:
            return jax.tree_util.tree_map(leaf, fb)
        return jax.tree_util.tree_map(lambda f, p, t: Measured(leaf(f), p, t), fb, *probes)

    def run(p, fb):
        return model(p, fb, x) if has_aux else (model(p, fb, x), None)

    def objective(p, fb):
        out, aux = run(p, fb)
        return loss(out, y), aux

    if not rule.direct:
        (value, aux), (grads, hebbian, signals) = jax.value_and_grad(
            lambda p, f, q: objective(p, received(f, q)), argnums=(0, 1, 2), has_aux=True)(params, fb, probes)
        return Estimate(value, grads, hebbian, signals, aux)
    out, _ = run(params, jax.tree_util.tree_map(lambda d: None, fb))
    value, e = jax.value_and_grad(loss)(out, y)
    (grads, signals), aux = jax.grad(lambda p, q: objective(p, received(fb, q, e)), argnums=(0, 1),
                                     has_aux=True)(params, probes)
    return Estimate(value, grads, None, signals, aux)


def update(rule: Rule, model, loss, params, state, key, x, y, mask=None, has_aux: bool = False) -> Update:
    """The rule's update for params and for its feedback state on the batch (x, y).

    model(params, fb, x) -> output (has_aux: (output, aux), aux returned in the Update), loss(output, y)
    -> scalar; key: this step's key (brsf's magnitudes, wm's noise); mask: which 2-d / 4-d weights get
    feedback (`kernels`). The grads are descent directions: apply both with one optimizer, e.g. optax on
    the pair (params, state)."""
    est = estimate(rule, model, loss, params, state, key, x, y, mask, has_aux=has_aux)
    if rule.learn is None:
        return Update(est.loss, est.grads, jax.tree_util.tree_map(jnp.zeros_like, state), est.aux)
    where = sites(model, params, x, mask) if rule.needs_sites else None
    extra, state_grads = rule.learn(kernels(params, mask), state, est.hebbian, key, where)
    grads = est.grads
    if extra is not None:
        grads = jax.tree_util.tree_map(lambda e, g: g if e is None else g + e, extra, grads, is_leaf=_is_none)
    return Update(est.loss, grads, state_grads, est.aux)
