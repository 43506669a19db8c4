"""One home each: config.derive, the whole-network flatten (weights only), metrics below the studies, config below
the EP physics, the rule registry and the file system."""

from __future__ import annotations

import ast
from pathlib import Path

import jax.numpy as jnp
import pytest

from bioprop_cli.config import derive, load_config, with_values
from bioprop_cli.errors import UserError
from bioprop_cli.metrics.alignment import compare_updates, flat_weights
from bioprop_cli.metrics.angles import angle_degrees

PACKAGE = Path(__file__).resolve().parents[2] / "bioprop_cli"


def test_derive_replaces_types_and_validates():
    base = load_config(overrides=[("rule", "ep"), ("model.width", 8)])
    derived = derive(base, {"ep.beta": 0.25, "seed": 3})
    assert derived == with_values(base, {"ep.beta": 0.25, "seed": 3})
    with pytest.raises(UserError, match="model.width"):  # typed as a loaded config is
        derive(base, {"model.width": "16"})
    with pytest.raises(UserError, match="ep.beta"):
        derive(base, {"ep.beta": -1.0})
    with pytest.raises(UserError, match="ep.no_such_key"):
        derive(base, {"ep.no_such_key": 1})


def test_the_whole_network_flatten_is_weights_only():
    grads = [{"w": jnp.array([[1.0, 0.0]]), "b": jnp.array([5.0, 5.0])}, {"w": jnp.array([[0.0], [1.0]]), "b": jnp.array([9.0])}]
    exact = [{"w": jnp.array([[1.0, 0.0]]), "b": jnp.array([0.0, 0.0])}, {"w": jnp.array([[0.0], [1.0]]), "b": jnp.array([0.0])}]
    assert flat_weights(grads).tolist() == [1.0, 0.0, 0.0, 1.0]
    _, network = compare_updates(grads, exact)
    assert float(network["update_angle"]) == pytest.approx(0.0, abs=1e-5)  # the biases differ; they are not compared
    assert float(angle_degrees(jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0]))) == pytest.approx(45.0, abs=1e-4)


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("floor, above", [("metrics", "bioprop_cli.studies"), ("metrics", "bioprop_cli.experiment"),
                                          ("experiment", "bioprop_cli.studies"), ("experiment", "bioprop_cli.cli")])
def test_a_floor_imports_nothing_above_it(floor, above):
    offenders = [str(p.relative_to(PACKAGE)) for p in (PACKAGE / floor).glob("*.py")
                 if any(name == above or name.startswith(above + ".") for name in imports_of(p))]
    assert offenders == []


@pytest.mark.parametrize("above", ["bioprop_cli.ep", "bioprop_cli.models.energy", "bioprop_cli.rules", "bioprop_cli.runs"])
def test_config_validates_below_the_physics_the_registry_and_the_file_system(above):
    assert not any(name == above or name.startswith(above + ".") for name in imports_of(PACKAGE / "config.py"))


def test_validation_touches_no_file_system_the_run_start_does(tmp_path):
    from bioprop_cli.runs import check_results_folder

    (tmp_path / "file").write_text("x")
    config = load_config(overrides=[("results_dir", str(tmp_path / "file" / "sub"))])  # valid: a config is data
    with pytest.raises(UserError, match="results_dir.*is under"):
        check_results_folder(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_ep_settling_flops_count_a_conv_layer_by_its_convolution():
    """One home for a layer's FLOPs (rules/flops.layer_pass): ep's settling count on LeNet takes the
    first layer's convolution (2 x 28 x 28 x 25 x 1 x 6), not a dense 784 x 4704 product."""
    from bioprop_cli.models import arch as archs
    from bioprop_cli.rules import flops

    lenet = archs.lenet((28, 28, 1), 10)
    passes = [2 * 28 * 28 * 25 * 1 * 6, 2 * 10 * 10 * 25 * 6 * 16, 2 * 400 * 120, 2 * 120 * 84, 2 * 84 * 10]
    ep = load_config(overrides=[("rule", "ep"), ("ep.free_steps", 7), ("ep.nudged_steps", 3), ("ep.estimator", "symmetric")])
    inner = sum(passes[1:])
    assert flops.settling(lenet, ep) == passes[0] + 13 * 2 * inner + passes[0] + 2 * inner
