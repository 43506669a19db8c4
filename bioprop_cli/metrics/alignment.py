"""How close a rule's update is to backprop's: per-layer angles on a probe batch.

The exact gradient and the exact deltas come from jax.grad of the loss (not from our own backward
pass), so a bug in the shared backward code cannot hide itself in these measurements. Both the
reference and the measured update are computed at full float32 precision (precision.full_float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bioprop_cli.metrics.angles import angle_degrees, norm_ratio
from bioprop_cli.models.arch import Architecture
from bioprop_cli.models.layers import forward
from bioprop_cli.models.mlp import Activation, Loss, Params
from bioprop_cli.precision import full_float32
from bioprop_cli.rules.base import LearningRule


@full_float32
def exact_gradients(arch: Architecture, params: Params, x, y, act: Activation, loss: Loss) -> tuple[Params, list]:
    """(dLoss/dparams, [dLoss/da_l]) by jax.grad; the deltas as gradients of zero perturbations of
    each pre-activation (of each layer's pre_shape)."""
    zeros = [jnp.zeros((x.shape[0],) + shape, x.dtype) for shape in arch.pre_shapes]

    def objective(params, perturb):
        return loss.value(forward(arch, params, x, act, perturb).logits, y)

    return jax.grad(objective, argnums=(0, 1))(params, zeros)


def relative_error(estimate, exact):
    """|estimate - exact| / |exact| (Frobenius norms)."""
    return jnp.linalg.norm(jnp.ravel(estimate - exact)) / jnp.linalg.norm(jnp.ravel(exact))


def flat_weights(params: Params) -> jax.Array:
    """The whole network's weights as one vector: every layer's w, flattened and concatenated (biases
    and a learned "fb" left out). Every whole-network angle and relative error is taken on it."""
    return jnp.concatenate([jnp.ravel(p["w"]) for p in params])


def feedback_angles(rule: LearningRule, params, state, key) -> dict[int, tuple]:
    """{layer: (angle in degrees, norm ratio)} of each feedback matrix B_l against what exact
    transport would use there (rule.feedback's reference)."""
    return {int(l): (angle_degrees(b, reference), norm_ratio(b, reference))
            for l, (b, reference) in rule.feedback(params, state, key).items()}


def feedback_per_layer(rule: LearningRule, params, state, key) -> dict:
    """{"feedback_angle": (L,), "feedback_norm_ratio": (L,)}: feedback_angles as arrays over the
    layers, NaN where a layer has no feedback matrix (its transport is exact)."""
    angle = ratio = jnp.full((len(params),), jnp.nan)
    for l, (a, r) in feedback_angles(rule, params, state, key).items():
        angle, ratio = angle.at[l].set(a), ratio.at[l].set(r)
    return {"feedback_angle": angle, "feedback_norm_ratio": ratio}


def compare_updates(grads: Params, exact: Params) -> tuple[dict, dict]:
    """Per-layer and whole-network (flat_weights) angle and relative error of weight updates against
    the exact gradient."""
    flat = flat_weights
    layers = {
        "update_angle": jnp.stack([angle_degrees(g["w"], t["w"]) for g, t in zip(grads, exact)]),
        "update_rel_error": jnp.stack([relative_error(g["w"], t["w"]) for g, t in zip(grads, exact)]),
    }
    network = {
        "update_angle": angle_degrees(flat(grads), flat(exact)),
        "update_rel_error": relative_error(flat(grads), flat(exact)),
    }
    return layers, network


@full_float32
def measure_alignment(rule: LearningRule, arch: Architecture, act: Activation, loss: Loss, params, state, x, y, key,
                      exact_output: bool = True) -> dict:
    """{"layers": {name: (L,)}, "network": {name: scalar}}, NaN where a quantity does not apply.

    Per layer: update_angle and update_rel_error (rule's update for W_l vs the true gradient for
    W_l, same batch and parameters); delta_angle (rule's error signal delta_l vs backprop's, over all
    of a_l's units); feedback_angle (B_l vs what exact transport would use: W_l^T, or W_l's kernel for a
    conv layer, whose transposed convolution backprop runs with W_l's own kernel; for direct feedback
    D_l vs backprop's linear path from the output to a_l, rules/base.transport_path); feedback_norm_ratio
    (|B_l| / |that reference|). Whole network: the same update comparison on all weights at once, and
    mean_update_angle: the mean over the hidden layers where the rule's output-layer update is exact
    (`exact_output`, the registry's fact: every rule that sends backprop's output error), else over all layers.
    """
    est = (rule.gradient_estimate or rule.estimate)(params, state, x, y, key)
    true_grads, true_deltas = exact_gradients(arch, params, x, y, act, loss)
    layers, network = compare_updates(est.grads, true_grads)
    layers["delta_angle"] = jnp.stack([angle_degrees(d, t) for d, t in zip(est.deltas, true_deltas)])
    layers.update(feedback_per_layer(rule, params, state, key))
    network["mean_update_angle"] = jnp.mean(layers["update_angle"][:-1] if exact_output else layers["update_angle"])
    network.update(est.aux or {})  # the rule's own diagnostics (pc: energy, residual)
    return {"layers": layers, "network": network}
