"""Equilibrium propagation with a softmax cross-entropy readout (model.loss = cross_entropy;
Laborieux et al. 2021): the nudge, the exact gradient with the readout, EP's estimate of it."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import central_difference, random_directions
from typer.testing import CliRunner

from bioprop_cli.models.arch import dense
from bioprop_cli.cli import app
from bioprop_cli.config import load_config
from bioprop_cli.ep import bptt_gradient, free_fixed_point, implicit_gradient
from bioprop_cli.models.energy import RHOS, cost, energy, energy_gradient, hard_sigmoid, input_drive, step
from bioprop_cli.models.layers import init_params
from bioprop_cli.precision import float64
from bioprop_cli.rules import make_rule

SIZES = (6, 5, 4, 3)  # input, two hidden layers of the dynamics, the readout's 3 classes


def _problem(dtype=jnp.float32, scale=1.0, seed=0, batch=7):
    params = init_params(jax.random.PRNGKey(seed), dense(SIZES), "glorot_uniform", scale)
    params = [{"w": p["w"].astype(dtype), "b": p["b"].astype(dtype) + 0.1} for p in params]
    kx, ky = jax.random.split(jax.random.PRNGKey(seed + 100))
    x = jax.random.uniform(kx, (batch, SIZES[0]), dtype)
    y = jax.nn.one_hot(jax.random.randint(ky, (batch,), 0, SIZES[-1]), SIZES[-1], dtype=dtype)
    return params[:-1], params[-1], x, y


def _flat(tree):
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree_util.tree_leaves(tree)])


def _rel(a, b):
    return float(jnp.linalg.norm(_flat(a) - _flat(b)) / jnp.linalg.norm(_flat(b)))


def _states(seed, batch=7):
    keys = jax.random.split(jax.random.PRNGKey(seed), 2)
    return [jax.random.uniform(k, (batch, n)) for k, n in zip(keys, SIZES[1:3])]


@pytest.mark.parametrize("rho_name", ["hard_sigmoid", "sigmoid", "tanh"])
def test_the_nudge_is_the_gradient_of_beta_times_the_cross_entropy(rho_name):
    dynamic, readout, x, y = _problem()
    rho = RHOS[rho_name]
    states = _states(3)
    beta = 0.3

    def total(s):
        return jnp.sum(energy(dynamic, s, x, rho) + beta * cost(s, y, readout, rho))

    expected = jax.grad(total)(states)
    got = energy_gradient(dynamic, states, input_drive(dynamic, x), y, beta, rho, readout=readout)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_the_fast_hard_sigmoid_step_with_a_readout_is_the_general_step():
    dynamic, readout, x, y = _problem()
    rho = RHOS["hard_sigmoid"]
    states = _states(8)
    states[1] = states[1].at[0].set(0.0).at[1].set(1.0)
    for beta in (0.0, 0.7, -0.3):
        grads = energy_gradient(dynamic, states, input_drive(dynamic, x), y, beta, rho, readout=readout)
        general = [hard_sigmoid(s - 0.4 * g) for s, g in zip(states, grads)]
        fast = step(dynamic, states, input_drive(dynamic, x), y, beta, rho, 0.4, readout=readout)
        for a, b in zip(fast, general):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rho_name", ["sigmoid", "hard_sigmoid"])
def test_implicit_gradient_with_readout_matches_finite_differences_and_bptt(rho_name):
    with float64():
        dynamic, readout, x, y = _problem(jnp.float64, scale=0.5)
        rho = RHOS[rho_name]
        fixed = jax.jit(lambda p: free_fixed_point(p, x, rho, 0.5, 5000, 1e-13))(dynamic)
        implicit, misfit = jax.jit(lambda p, s, r: implicit_gradient(p, s, x, y, rho, 0.5, 5000, 1e-12, readout=r))(
            dynamic, fixed.states, readout)
        assert len(implicit) == 3 and float(misfit) < 1e-11
        bptt = jax.jit(lambda p, r: bptt_gradient(p, x, y, rho, 0.5, int(fixed.steps) + 50, readout=r))(dynamic, readout)
        assert _rel(bptt, implicit) < 1e-8

        @jax.jit  # one program for every evaluation of the finite differences
        def loss(params):
            s = free_fixed_point(params[:-1], x, rho, 0.5, 5000, 1e-13).states
            return jnp.mean(cost(s, y, params[-1], rho))

        params = dynamic + [readout]
        for d in random_directions(params, jax.random.PRNGKey(5), 2):
            numeric = central_difference(loss, params, d)
            assert float(jnp.vdot(_flat(implicit), _flat(d))) == pytest.approx(numeric, rel=1e-5, abs=1e-10)


def _config(rho_name, **ep):
    return load_config(overrides=[("rule", "ep"), ("model.depth", 2), ("model.activation", rho_name),
                                  ("model.loss", "cross_entropy")] + [(f"ep.{k}", v) for k, v in ep.items()])


CONVERGED = dict(free_steps=5000, nudged_steps=5000, tolerance=1e-13, eps=0.5)


@pytest.mark.parametrize("rho_name", ["sigmoid", "hard_sigmoid"])
def test_ep_with_readout_equals_the_implicit_gradient_at_small_beta(rho_name):
    """Every layer, the readout included, within 0.1% of the exact gradient at beta 1e-3 (symmetric);
    the one-sided estimate's error shrinks in proportion to beta."""
    with float64():
        dynamic, readout, x, y = _problem(jnp.float64, scale=0.5)
        rho = RHOS[rho_name]


        @jax.jit  # one program: op by op, each operation would compile on its own
        def fixed_implicit_and_loss(dynamic, readout):
            fixed = free_fixed_point(dynamic, x, rho, 0.5, 5000, 1e-13)
            implicit, _ = implicit_gradient(dynamic, fixed.states, x, y, rho, 0.5, 5000, 1e-12, readout=readout)
            return implicit, jnp.mean(cost(fixed.states, y, readout, rho))

        implicit, loss_at_fixed_point = fixed_implicit_and_loss(dynamic, readout)
        params = dynamic + [readout]

        def estimate(**ep):
            rule = make_rule(_config(rho_name, **CONVERGED, **ep), dense(SIZES))
            key = jax.random.PRNGKey(0)
            return jax.jit(lambda p: rule.estimate(p, rule.init(key, p), x, y, key))(params)

        est = estimate(estimator="symmetric", beta=1e-3)
        assert len(est.grads) == 3 and est.logits.shape == (7, 3)
        for g, t in zip(est.grads, implicit):
            assert _rel(g, t) < 1e-3
        errors = [_rel(estimate(estimator="one-sided", beta=b).grads, implicit) for b in (1e-2, 1e-3)]
        assert errors[1] == pytest.approx(errors[0] / 10, rel=0.2)
        assert float(est.loss) == pytest.approx(float(loss_at_fixed_point), rel=1e-9)


def test_train_ep_with_cross_entropy_readout(tmp_path, mnist_dir):
    result = CliRunner().invoke(app, [
        "train", "--rule", "ep", "--epochs", "2", "--results-dir", str(tmp_path), "--data-dir", mnist_dir,
        "--no-progress", "--width", "32", "--set", "model.loss=cross_entropy", "--set", "optimizer.layer_lr=[]",
        "--set", "ep.free_steps=15", "--set", "ep.nudged_steps=6", "--set", "alignment.probe_size=64",
        "--set", "ep.reference_steps=300", "--set", "data.train_limit=2000", "--set", "data.validation_size=500",
        "--set", "data.test_limit=500"])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "default").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["layer_sizes"] == [784, 32, 10]
    assert summary["test_accuracy"] > 0.6
    lines = [json.loads(line) for line in (run / "alignment.jsonl").read_text().splitlines()]
    last = max(r["step"] for r in lines)
    angles = {r["layer"]: r["update_angle"] for r in lines if r["step"] == last and r["layer"] != "all"}
    assert set(angles) == {0, 1} and all(0 <= a < 90 for a in angles.values())  # the readout is layer 1


@pytest.mark.parametrize("command", [["jtranspose"], ["conditions"], ["sweep", "beta"], ["sweep", "condition"]])
def test_commands_that_measure_the_mse_network_refuse_the_readout(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)  # every default output folder is relative: nothing may appear here
    result = CliRunner().invoke(app, [*command, "--set", "model.loss=cross_entropy"]
                                + (["--rule", "ep"] if command == ["conditions"] else []))
    assert result.exit_code == 2, result.output
    assert "model.loss" in result.output and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())
