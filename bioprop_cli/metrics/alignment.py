"""How close a rule's update is to backprop's: per-layer angles on a probe batch.

The exact gradient and the exact deltas come from jax.grad of the loss (not from our own backward
pass), so a bug in the shared backward code cannot hide itself in these measurements.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bioprop_cli.metrics.angles import angle_degrees, norm_ratio
from bioprop_cli.models.mlp import Activation, Loss, Params, forward
from bioprop_cli.rules.base import LearningRule

FIELDS = ("update_angle", "delta_angle", "feedback_angle", "feedback_norm_ratio")


def exact_gradients(params: Params, x, y, act: Activation, loss: Loss) -> tuple[Params, list]:
    """(dLoss/dparams, [dLoss/da_l]) by jax.grad; the deltas as gradients of zero perturbations."""
    zeros = [jnp.zeros((x.shape[0], layer["w"].shape[1]), x.dtype) for layer in params]

    def objective(params, perturb):
        return loss.value(forward(params, x, act, perturb).logits, y)

    return jax.grad(objective, argnums=(0, 1))(params, zeros)


def measure_alignment(rule: LearningRule, act: Activation, loss: Loss, params, state, x, y, key) -> dict:
    """Per-layer measurements as arrays of shape (L,), NaN where a quantity does not apply.

    update_angle: rule's update for W_l vs the true gradient for W_l (same batch, same params);
    delta_angle: rule's error signal delta_l vs backprop's; feedback_angle: B_l vs the matrix exact
    transport would use (W_l^T); feedback_norm_ratio: |B_l| / |W_l|.
    """
    n_layers = len(params)
    est = rule.estimate(params, state, x, y, key)
    true_grads, true_deltas = exact_gradients(params, x, y, act, loss)
    nan = jnp.full((n_layers,), jnp.nan)
    update = jnp.stack([angle_degrees(g["w"], t["w"]) for g, t in zip(est.grads, true_grads)])
    delta = jnp.stack([angle_degrees(d, t) for d, t in zip(est.deltas, true_deltas)])
    fb_angle, fb_ratio = nan, nan
    for l, (b, reference) in rule.feedback(params, state, key).items():
        fb_angle = fb_angle.at[l].set(angle_degrees(b, reference))
        fb_ratio = fb_ratio.at[l].set(norm_ratio(b, reference))
    return {"update_angle": update, "delta_angle": delta, "feedback_angle": fb_angle, "feedback_norm_ratio": fb_ratio}


def mean_hidden_update_angle(measurements: dict) -> jax.Array:
    """Mean update angle over the hidden layers (the output layer's update is exact for every rule)."""
    return jnp.nanmean(measurements["update_angle"][..., :-1], axis=-1)
