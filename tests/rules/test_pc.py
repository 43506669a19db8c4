"""Predictive coding (rule pc): the energy's gradient, the exact variants against jax.grad, the
standard variant's approach to backprop, and training through the CLI."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bioprop_cli.cli.train as cli_train
from bioprop_cli.models.arch import dense
from bioprop_cli.cli import app
from bioprop_cli.config import load_config
from bioprop_cli.metrics.alignment import compare_updates, exact_gradients
from bioprop_cli.models.layers import init_params
from bioprop_cli.models.mlp import ACTIVATIONS, LOSSES, forward
from bioprop_cli.precision import float64
from bioprop_cli.rules import make_rule
from bioprop_cli.rules.predictive_coding import Network, energy, node_gradients
from bioprop_cli.runs import read_jsonl
from bioprop_cli.metrics.measure import make_measure
from bioprop_cli.metrics.predictive_coding import make_comparison
from helpers import REPO_ROOT, assert_nothing_written, assert_user_error

CONFIGS = REPO_ROOT / "configs"


def _setup(depth=2, n_in=5, width=8, n_out=3, batch=4, seed=0):
    sizes = (n_in,) + (width,) * depth + (n_out,)
    params = init_params(jax.random.PRNGKey(seed), dense(sizes), "lecun_normal", 1.0)
    kx, ky = jax.random.split(jax.random.PRNGKey(seed + 1))
    x = jax.random.normal(kx, (batch, n_in))
    y = jax.nn.one_hot(jax.random.randint(ky, (batch,), 0, n_out), n_out)
    return sizes, params, x, y


def _config(sizes, loss="mse", depth=2, **pc):
    overrides = [("rule", "pc"), ("model.depth", depth), ("model.width", sizes[1]), ("model.loss", loss)]
    return load_config(overrides=overrides + [(f"pc.{k}", v) for k, v in pc.items()])


def _rule(sizes, loss="mse", depth=2, **pc):
    return make_rule(_config(sizes, loss, depth, **pc), dense(sizes))


def _measure(sizes, loss="mse", depth=2, **pc):
    config = _config(sizes, loss, depth, **pc)
    return jax.jit(make_measure(config, dense(sizes), make_rule(config, dense(sizes))))


def _against_backprop(rule, params, x, y, loss):
    est = rule.estimate(params, (), x, y, jax.random.PRNGKey(2))
    network = dense(tuple([params[0]["w"].shape[0]] + [layer["w"].shape[1] for layer in params]))
    exact, exact_deltas = exact_gradients(network, params, x, y, ACTIVATIONS["tanh"], LOSSES[loss])
    return est, exact, exact_deltas


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_energy_gradient_equals_jax_grad(loss):
    """dF/dx_l = e_l - eps_l W_l^T at value nodes away from the feedforward pass."""
    with float64():
        sizes, params, x, y = _setup(depth=3)
        net = Network(ACTIVATIONS["tanh"], LOSSES[loss], 0.3)
        keys = jax.random.split(jax.random.PRNGKey(7), len(sizes) - 2)
        hidden = [h + 0.5 * jax.random.normal(k, h.shape) for k, h in zip(keys, forward(params, x, net.act).inputs[1:])]
        total = lambda hidden: jnp.sum(energy(net, params, [x] + hidden, y))
        both = jax.jit(lambda hidden: (jax.grad(total)(hidden), node_gradients(net, params, [x] + hidden, y)))
        expected, got = both(hidden)  # one program, not op by op
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize(
    "variant, steps, lr",
    [("fixed_prediction", 200, 0.5), ("fixed_prediction", 2, 1.0), ("zero_divergence", 1, 0.1)],
)
@pytest.mark.parametrize("depth", [1, 2])
def test_exact_variants_equal_backprop(loss, variant, steps, lr, depth):
    """The fixed-prediction assumption (converged, or L-1 steps at rate 1) and Z-IL (whatever the
    configured steps and rate) give jax.grad's update and deltas to float64 rounding."""
    with float64():
        sizes, params, x, y = _setup(depth=depth)
        rule = _rule(sizes, loss, depth, variant=variant, inference_steps=steps, inference_lr=lr, output_precision=0.7)
        est, exact, exact_deltas = _against_backprop(rule, params, x, y, loss)
        for g, e in zip(jax.tree_util.tree_leaves(est.grads), jax.tree_util.tree_leaves(exact)):
            np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-15)
        for d, e in zip(est.deltas, exact_deltas):
            np.testing.assert_allclose(d, e, rtol=1e-10, atol=1e-15)


def _angles_and_errors(loss, gammas, steps):
    """Standard pc's update against jax.grad (whole network) after `steps` inference steps at rate 0.2,
    at each output precision in `gammas`: (angles, relative errors). One compiled program per loss and
    number of gammas (`sweep pc`'s comparison: gamma and the step count are its arguments)."""
    with float64():
        sizes, params, x, y = _setup()
        compare = make_comparison(_config(sizes, loss, inference_lr=0.2), dense(sizes))
        measured = compare(params, x, y, jnp.asarray(gammas), steps)
        return np.asarray(measured["update_angle_all"]).tolist(), np.asarray(measured["update_rel_error_all"]).tolist()


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_standard_approaches_backprop_as_the_output_precision_shrinks(loss):
    """Converged inference: the angle falls with gamma and the relative error is O(gamma)."""
    angles, errors = _angles_and_errors(loss, [1.0, 0.1, 0.01], 300)
    assert angles[0] > angles[1] > angles[2], angles
    assert angles[0] > 15 and angles[2] < 1, angles
    assert 5 < errors[1] / errors[2] < 20, errors  # first order in gamma


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_standard_approaches_backprop_as_inference_runs_longer(loss):
    angles = [_angles_and_errors(loss, [0.01], t)[0][0] for t in (1, 10, 30, 300)]
    assert all(a > b for a, b in zip(angles, angles[1:])), angles
    assert angles[0] > 20 and angles[-1] < 1, angles


def test_moving_the_target_towards_the_output_leaves_the_standard_bias():
    """A smaller output error from a closer target is not the limit that makes pc exact: the relaxed
    output error is a fixed linear map of the feedforward one (see the rule's docstring)."""
    with float64():
        sizes, params, x, y = _setup()
        z = forward(params, x, ACTIVATIONS["tanh"]).logits
        rule = _rule(sizes, "mse", inference_steps=300, inference_lr=0.2, output_precision=1.0)
        for s in (0.1, 0.01):
            target = z + s * (y - z)
            est, exact, _ = _against_backprop(rule, params, x, target, "mse")
            _, network = compare_updates(est.grads, exact)
            assert float(network["update_rel_error"]) > 0.3


def test_inference_diagnostics():
    """Relaxing lowers the energy from gamma * loss, and the residual shrinks as inference runs longer."""
    with float64():
        sizes, params, x, y = _setup()
        short, long = (_rule(sizes, "cross_entropy", inference_steps=t, inference_lr=0.2, output_precision=0.5)
                       .estimate(params, (), x, y, None) for t in (3, 300))
        start = 0.5 * float(short.loss)
        for est in (short, long):
            np.testing.assert_allclose(float(est.aux["energy"]) + float(est.aux["energy_decrease"]), start, rtol=1e-12)
            assert 0 < float(est.aux["energy_decrease"])
        assert float(long.aux["energy"]) < float(short.aux["energy"])
        assert float(long.aux["inference_residual"]) < 1e-3 * float(short.aux["inference_residual"])


@pytest.mark.parametrize("variant", ["standard", "fixed_prediction"])
def test_a_traced_step_count_is_the_static_one(variant):
    """pc.inference_steps as an argument of one compiled program (the loop's bound: `conditions` and
    `sweep pc` measure every step count with one program) gives the estimate of the count in the config."""
    sizes, params, x, y = _setup()
    config = _config(sizes, "cross_entropy", variant=variant, inference_lr=0.2)

    def estimate(params, x, y, steps):
        pc = replace(config.pc, inference_steps=steps)
        est = make_rule(replace(config, pc=pc), dense(sizes)).estimate(params, (), x, y, None)
        return jax.tree_util.tree_leaves((est.grads, est.aux))

    traced = jax.jit(estimate)
    leaves = {steps: traced(params, x, y, steps) for steps in (1, 4)}
    assert not np.array_equal(leaves[1][0], leaves[4][0])  # the count reaches the loop
    for steps, shared in leaves.items():
        static = jax.jit(estimate, static_argnums=3)(params, x, y, steps)  # a program of its own per count
        for a, b in zip(static, shared):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_measure_logs_angles_and_diagnostics_and_predict_is_the_feedforward_pass():
    sizes, params, x, y = _setup()
    rule = _rule(sizes, "cross_entropy", variant="zero_divergence")
    measured = _measure(sizes, "cross_entropy", variant="zero_divergence")(params, (), x, y, jax.random.PRNGKey(0))
    assert np.all(np.asarray(measured["layers"]["update_angle"]) < 0.5)
    assert np.all(np.isnan(np.asarray(measured["layers"]["feedback_angle"])))  # errors go through W^T itself
    assert {"energy", "energy_decrease", "inference_residual"} <= set(measured["network"])
    standard = _measure(sizes, "cross_entropy", output_precision=1.0)(params, (), x, y, jax.random.PRNGKey(0))
    angles = np.asarray(standard["layers"]["update_angle"])
    assert angles[-1] > 1  # the relaxed output error is not backprop's: the output layer counts in the mean
    np.testing.assert_allclose(float(standard["network"]["mean_update_angle"]), angles.mean(), rtol=1e-6)
    np.testing.assert_array_equal(rule.predict(params, (), x), forward(params, x, ACTIVATIONS["tanh"]).logits)


def test_pc_yaml_is_a_pc_config():
    config = load_config(CONFIGS / "pc.yaml")
    assert config.rule == "pc" and config.model.depth == 2


def test_trains_through_the_cli(runner, tmp_path, monkeypatch, fake_dataset):
    monkeypatch.setattr(cli_train, "load_dataset", lambda name, data_dir=None, options=None: fake_dataset)
    results_dir = tmp_path / "results"
    args = ["train", "--rule", "pc", "--depth", "2", "--width", "16", "--epochs", "2", "--batch-size", "50",
            "--results-dir", str(results_dir), "--set", "data.validation_size=100", "--set", "alignment.probe_size=32",
            "--set", "pc.inference_steps=5"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (run,) = [p for p in results_dir.glob("*/*") if p.is_dir()]
    metrics = read_jsonl(run / "metrics.jsonl")
    assert len(metrics) == 2 and all(np.isfinite(m["train_loss"]) for m in metrics)
    whole = [r for r in read_jsonl(run / "alignment.jsonl") if r["layer"] == "all"]
    assert len(whole) == 3 and all(r["energy_decrease"] > 0 for r in whole)


@pytest.mark.parametrize(
    "setting, key",
    [
        ("pc.inference_steps=0", "pc.inference_steps"),
        ("pc.inference_lr=1.5", "pc.inference_lr"),
        ("pc.inference_lr=0", "pc.inference_lr"),
        ("pc.output_precision=0", "pc.output_precision"),
        ("pc.variant=exact", "pc.variant"),
    ],
)
def test_bad_pc_config_is_a_one_line_error(runner, tmp_path, setting, key):
    results_dir = tmp_path / "results"
    result = runner.invoke(app, ["train", "--rule", "pc", "--results-dir", str(results_dir), "--set", setting])
    assert_user_error(result, key)
    assert_nothing_written(results_dir)


@pytest.mark.parametrize(
    "variant, expected",
    [("standard", 72 + 3 * 24), ("fixed_prediction", 72 + 4 * 12), ("zero_divergence", 72 + 2 * 24 + 12)],
)
def test_bench_counts_pc_products(variant, expected):
    """4-3-2 with 2 inference steps: forward and weight gradients 2 x 36, 12 per pass through the
    inner layer (zero_divergence: L-1 = 1 step whatever pc.inference_steps says, + its signals)."""
    from bioprop_cli.rules.flops import predictive_coding

    config = load_config(overrides=[("rule", "pc"), ("pc.variant", variant), ("pc.inference_steps", 2)])
    assert predictive_coding(dense((4, 3, 2)), config) == expected
