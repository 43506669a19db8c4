"""A rule's update against the exact gradient of the same model, on any model.

    report = bioprop.measure(rule, model, loss, params, state, key, x, y, mask=None)

The exact gradient is the update of `bp` (every feedback layer sends its error through transport(W):
jax.grad of the model; tested). Definitions, for a rule's array u against the exact array v, both
flattened:
    angle           arccos(u.v / (|u| |v|)) in degrees, computed as 2 atan2(|u^ - v^|, |u^ + v^|) with
                    u^ = u / |u| (full precision near 0 and 180); NaN where either is zero;
    relative_error  |u - v| / |v|;
    norm_ratio      |u| / |v|.
The report is a dict of plain pytrees of scalars (jit-able):
    "loss":     the batch's loss;
    "update":   {"angle", "relative_error", "norm_ratio"}, each like params: the rule's estimate of the loss
                gradient (kp's and wm's decay and mirror terms, regularisers, left out) against jax.grad;
    "signal":   the same three, like kernels: the error each feedback layer's output receives (dLoss/d output;
                for a dense layer under an MLP, delta_l = dLoss/da_l) under the rule against backprop's;
    "tap":      the same three, like kernels (None where the model taps nothing): the error at each tap
                (under dfa e @ D, delivered there) against backprop's at the same point;
    "feedback": {"angle", "norm_ratio"}, like kernels: B against transport(W); for direct feedback, D
                against backprop's Jacobian from the output to D's delivery point (the layer's input, or its
                tap), averaged over the batch: J[k] = mean over examples i of d output_ik / d point_i, the
                matrix backprop would send the output error through there if it were the same for every
                example (for the layer reading the last hidden layer, W^T exactly).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bioprop.core import estimate, feedback_arrays, kernels, sites
from bioprop.layers import Measured, transport
from bioprop.rules import Rule, bp


def angle_degrees(u: jax.Array, v: jax.Array) -> jax.Array:
    u, v = jnp.ravel(u), jnp.ravel(v)
    uh, vh = u / jnp.linalg.norm(u), v / jnp.linalg.norm(v)
    return jnp.degrees(2.0 * jnp.arctan2(jnp.linalg.norm(uh - vh), jnp.linalg.norm(uh + vh)))


def relative_error(u: jax.Array, v: jax.Array) -> jax.Array:
    return jnp.linalg.norm(jnp.ravel(u - v)) / jnp.linalg.norm(jnp.ravel(v))


def norm_ratio(u: jax.Array, v: jax.Array) -> jax.Array:
    return jnp.linalg.norm(jnp.ravel(u)) / jnp.linalg.norm(jnp.ravel(v))


def compare(estimated, exact, metrics=(("angle", angle_degrees), ("relative_error", relative_error),
                                       ("norm_ratio", norm_ratio))) -> dict:
    """{metric: pytree of scalars} for two pytrees of the same structure."""
    return {name: jax.tree_util.tree_map(f, estimated, exact) for name, f in metrics}


def measure(rule: Rule, model, loss, params, state, key, x, y, mask=None, has_aux: bool = False) -> dict:
    """The rule's update, error signals and feedback against backprop's on the batch (x, y) (has_aux: the
    model returns (output, aux), as for `update`)."""
    where, weights = sites(model, params, x, mask), kernels(params, mask)
    outputs = jax.tree_util.tree_map(lambda s, w: jnp.zeros(s.out_shape, w.dtype), where, weights)
    taps = jax.tree_util.tree_map(lambda s, w: None if s.tap_shape is None else jnp.zeros(s.tap_shape, w.dtype),
                                  where, weights)
    rule_s = estimate(rule, model, loss, params, state, key, x, y, mask, (outputs, taps), has_aux)
    exact = estimate(bp(), model, loss, params, (), key, x, y, mask, (outputs, taps), has_aux)
    report = {"loss": rule_s.loss, "update": compare(rule_s.grads, exact.grads),
              "signal": compare(rule_s.signals[0], exact.signals[0]), "tap": compare(rule_s.signals[1], exact.signals[1])}
    fb = feedback_arrays(rule, params, state, key, mask)
    tied = jax.tree_util.tree_map(transport, weights)
    if rule.direct:
        tied = mean_jacobians(model, params, x, where, weights, has_aux)
    report["feedback"] = compare(fb, tied, (("angle", angle_degrees), ("norm_ratio", norm_ratio)))
    return report


def mean_jacobians(model, params, x, where, weights, has_aux: bool):
    """Like kernels: (n_out, units) per feedback layer, the batch mean of backprop's Jacobian from the model's
    output to the layer's direct-feedback delivery point (its tap, or else its input)."""
    exact = jax.tree_util.tree_map(lambda w: jax.lax.stop_gradient(transport(w)), weights)
    zeros = lambda shape, w: jnp.zeros(shape, w.dtype)
    at_tap = jax.tree_util.tree_map(lambda s, w: None if s.tap_shape is None else zeros(s.tap_shape, w), where, weights)
    at_input = jax.tree_util.tree_map(lambda s, w: zeros(s.in_shape, w) if s.tap_shape is None else None, where, weights)

    def output(probes):
        taps, inputs = probes
        received = jax.tree_util.tree_map(lambda f, t, i: Measured(f, None, t, i), exact, taps, inputs)
        out = model(params, received, x)
        return out[0] if has_aux else out

    out, vjp = jax.vjp(output, (at_tap, at_input))
    units = jnp.eye(out.shape[-1], dtype=out.dtype)
    rows = jax.vmap(lambda u: vjp(jnp.broadcast_to(u, out.shape))[0])(units)  # per output unit k
    taps, inputs = rows
    mean = lambda g: None if g is None else jnp.mean(g, axis=1).reshape(g.shape[0], -1)
    pick = lambda s, t, i: mean(i if t is None else t)
    return jax.tree_util.tree_map(pick, where, taps, inputs)
