"""The measurement of a rule against the exact gradient, chosen by the rule's family in the registry.

    measure = make_measure(config, arch, rule)
    measure(params, rule_state, x, y_onehot, key, idx=None) -> {"layers": {name: (L,)}, "network": {name: ()}}

Feedforward rules are measured against `jax.grad` of the network's loss (metrics/alignment.py); energy-based
rules against the implicit gradient at the free fixed point (metrics/equilibrium.py). `idx`: the probe
examples' positions in the training split (ep's persistent particles). Training (train.build_program)
and every study call this, so a study measures what trains.
"""

from __future__ import annotations

import functools
from typing import Callable

from bioprop_cli.metrics.alignment import measure_alignment
from bioprop_cli.metrics.equilibrium import measure_ep
from bioprop_cli.models.arch import is_library
from bioprop_cli.rules import ENERGY, LearningRule, library, rule_info
from bioprop_cli.rules.base import model_functions


def make_measure(config, arch, rule: LearningRule) -> Callable[..., dict]:
    """arch: the network the rule was made for (network.architecture(config))."""
    info = rule_info(config.rule)
    if is_library(arch):  # resnet, vgg: the library's measurement (rules/library.py)
        return library.make_measure(config, arch, rule)
    if info.family == ENERGY:
        return functools.partial(measure_ep, rule, config)
    act, loss = model_functions(config)

    def measure(params, state, x, y, key, idx=None):
        return measure_alignment(rule, arch, act, loss, params, state, x, y, key, exact_output=info.exact_output)

    return measure
