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
    "feedback": {"angle", "norm_ratio"}, like kernels: B against transport(W) (chained rules only: direct
                feedback's D has no single W to compare with, and the key is absent).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bioprop.core import estimate, feedback_arrays, kernels, sites
from bioprop.layers import transport
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


def measure(rule: Rule, model, loss, params, state, key, x, y, mask=None) -> dict:
    """The rule's update, error signals and feedback against backprop's on the batch (x, y)."""
    probes = jax.tree_util.tree_map(lambda s, w: jnp.zeros(s.out_shape, w.dtype),
                                    sites(model, params, x, mask), kernels(params, mask))
    value, grads, _, signals = estimate(rule, model, loss, params, state, key, x, y, mask, probes)
    _, exact, _, exact_signals = estimate(bp(), model, loss, params, (), key, x, y, mask, probes)
    report = {"loss": value, "update": compare(grads, exact), "signal": compare(signals, exact_signals)}
    if not rule.direct:
        fb = feedback_arrays(rule, params, state, key, mask)
        tied = jax.tree_util.tree_map(transport, kernels(params, mask))
        report["feedback"] = compare(fb, tied, (("angle", angle_degrees), ("norm_ratio", norm_ratio)))
    return report
