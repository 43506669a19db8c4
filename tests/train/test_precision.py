"""Measurements trace every matrix product at full float32 precision; training keeps the default."""

import jax
import jax.numpy as jnp
import pytest

from bioprop_cli.config import load_config
from bioprop_cli.rules import make_rule
from bioprop_cli.studies.beta import make_batch_estimates
from bioprop_cli.datasets import REGISTRY

NUM_CLASSES = REGISTRY["mnist"].num_classes
from bioprop_cli.train import build_program
from bioprop_cli.metrics.measure import make_measure
from bioprop_cli.network import architecture

HIGHEST = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
SMALL = [("model.width", 8), ("model.depth", 2), ("ep.free_steps", 3), ("ep.nudged_steps", 2),
         ("ep.reference_steps", 5), ("ep.adjoint_steps", 5)]


def products(fn, *args) -> list:
    """The precision of every dot_general that fn traces, in loops and branches too."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.append(eqn.params["precision"])
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    if hasattr(sub, "eqns"):
                        walk(sub)
                    elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                        walk(sub.jaxpr)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def network(rule: str):
    config = load_config(overrides=[("rule", rule)] + SMALL)
    program = build_program(config, 100, 20)
    state = program.init(0)
    rule_fns = make_rule(config, program.arch, 100)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 20))
    y = jax.nn.one_hot(jnp.arange(4), NUM_CLASSES)
    return config, rule_fns, state, x, y


@pytest.mark.parametrize("rule", ["fa", "ep"])
def test_the_measurement_is_full_precision_and_training_is_not(rule):
    config, r, state, x, y = network(rule)
    key = jax.random.PRNGKey(2)
    measured = products(make_measure(config, architecture(config, 20), r), state.params, state.rule_state, x, y, key)
    trained = products(lambda *a: r.estimate(*a).grads, state.params, state.rule_state, x, y, key)
    assert measured and set(measured) == {HIGHEST}
    assert trained and set(trained) == {None}


def test_the_beta_sweep_is_full_precision():
    config, _, state, x, y = network("ep")
    estimates = make_batch_estimates(config, jnp.asarray([0.1, 0.2]), ("symmetric",))
    assert set(products(estimates, state.params, state.rule_state, x, y, jax.random.PRNGKey(0))) == {HIGHEST}
