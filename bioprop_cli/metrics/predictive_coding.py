"""Predictive coding's update against the exact gradient (jax.grad of the same loss), over output
precisions gamma at once: `bioprop sweep pc` (studies/pc.py) and pc's conditions
(metrics/conditions.py) measure with it."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import jax

from bioprop_cli.config import Config
from bioprop_cli.metrics.alignment import compare_updates, exact_gradients
from bioprop_cli.models.arch import Architecture
from bioprop_cli.precision import full_float32
from bioprop_cli.rules import make_rule
from bioprop_cli.rules.base import model_functions

METRICS = ("update_angle", "update_rel_error")


def make_comparison(config: Config, network: Architecture) -> Callable:
    """(params, x, y, gammas (G,), steps) -> {metric: (G, L) per layer, metric + "_all": (G,) whole network}:
    pc's update at `steps` inference steps against jax.grad, all gammas at once (vmap). `steps` is an
    argument of the compiled program (the inference loop's bound): every step count shares one program."""
    act, loss = model_functions(config)

    def at_gamma(params, x, y, gamma, steps):
        pc = replace(config.pc, output_precision=gamma, inference_steps=steps)
        rule = make_rule(replace(config, pc=pc), network)
        estimate = rule.estimate(params, (), x, y, None)
        exact, _ = exact_gradients(network, params, x, y, act, loss)
        layers, whole = compare_updates(estimate.grads, exact)
        return {**layers, **{f"{m}_all": whole[m] for m in METRICS}}

    return jax.jit(full_float32(jax.vmap(at_gamma, in_axes=(None, None, None, 0, None))))
