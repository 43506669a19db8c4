"""Equilibrium propagation's estimate beside the exact gradient, with the settling diagnostics.

The estimate and the references are bioprop_cli/ep.py's (the code that trains): the implicit
gradient at the free fixed point (implicit differentiation) and BPTT through the T1 free steps the
network runs. With persistent particles (ep.persistent) the measurement takes the probe examples'
particles, as the training step would: the estimate measured is the update that trains.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bioprop_cli import ep as eqprop
from bioprop_cli.metrics.alignment import compare_updates, feedback_per_layer, flat_weights
from bioprop_cli.metrics.angles import angle_degrees
from bioprop_cli.precision import full_float32


def measure_ep(rule, config, params, state, x, y, key, idx=None) -> dict:
    """EP's estimate against the implicit gradient (and BPTT), per layer and for the whole network,
    with the settling diagnostics of both phases and of the reference fixed point. `idx`: the probe
    examples' positions in the training split (their persistent particles, if any)."""
    return measure_with_references(rule, config, params, state, x, y, key, idx)[0]


@full_float32
def measure_with_references(rule, config, params, state, x, y, key, idx=None) -> tuple[dict, dict]:
    """(measure_ep's measurements, the exact references they were taken against: ep.exact_references)."""
    k_estimate, k_radius = jax.random.split(key)
    est = rule.estimate(params, state, x, y, k_estimate, idx=idx)
    net = eqprop.network(config, params, state)
    ref = eqprop.exact_references(config, net, x, y, k_radius, eqprop.start_states(config, net, x, state, idx))
    layers, network = compare_updates(est.grads, ref["implicit"])
    # W-to-B angle per layer (NaN where B is W^T: always for the symmetric network, and layer 0)
    layers.update(feedback_per_layer(rule, params, state, k_estimate))
    layers["bptt_update_angle"] = jnp.stack([angle_degrees(g["w"], t["w"]) for g, t in zip(est.grads, ref["bptt"])])
    flat = flat_weights
    network.update(
        mean_update_angle=jnp.mean(layers["update_angle"]),
        bptt_update_angle=angle_degrees(flat(est.grads), flat(ref["bptt"])),
        implicit_vs_bptt_angle=angle_degrees(flat(ref["implicit"]), flat(ref["bptt"])),
        spectral_radius=ref["spectral_radius"],
        reference_steps=ref["fixed_point"].steps,
        reference_residual=ref["fixed_point"].residual,
        adjoint_residual=ref["adjoint_residual"],
        **est.aux,
    )
    return {"layers": layers, "network": network}, ref
