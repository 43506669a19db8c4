"""kp (Kolen-Pollack) and wm (weight mirror), the rules that learn their feedback (Akrout et al.
2019): updates against hand formulas, the exact (1 - lr decay) contraction of W^T - B under SGD,
the mirror's expectation, and end-to-end CLI runs that log the W-to-B angle."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from typer.testing import CliRunner

from bioprop_cli.cli import app
from bioprop_cli.config import load_config
from bioprop_cli.errors import UserError
from bioprop_cli.metrics.angles import angle_degrees
from bioprop_cli.models.layers import init_params
from bioprop_cli.models.mlp import ACTIVATIONS, LOSSES, forward
from bioprop_cli.optim import make_optimizer
from bioprop_cli.models.arch import dense
from bioprop_cli.rules import make_rule
from bioprop_cli.runs import read_jsonl
from bioprop_cli.metrics.measure import make_measure
from helpers import REPO_ROOT

SIZES = (7, 5, 5, 4)  # 7 -> 5 -> 5 -> 4: two feedback matrices, B_1 (5x5) and B_2 (4x5)
ACT, LOSS = ACTIVATIONS["tanh"], LOSSES["cross_entropy"]


def _config(rule, *overrides):
    return load_config(overrides=[("rule", rule), ("model.depth", 2), ("model.width", 5)] + list(overrides))


def _batch(n=6, n_in=7, n_out=4, seed=1):
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.normal(kx, (n, n_in))
    return x, jax.nn.one_hot(jax.random.randint(ky, (n,), 0, n_out), n_out)


def _setup(rule, *overrides, seed=0, sizes=SIZES):
    config = _config(rule, *overrides)
    r = make_rule(config, dense(sizes))
    params = init_params(jax.random.PRNGKey(seed), dense(sizes), "lecun_normal", 1.0)
    params = r.init_params(jax.random.PRNGKey(seed + 100), params)
    return config, r, params, r.init(jax.random.PRNGKey(seed + 200), params)


@jax.jit
def _hand_fa(params, x, y):
    """fa's deltas and weight updates through B_l = params[l]["fb"], written out for two hidden layers."""
    fwd = forward(params, x, ACT)
    e = (jax.nn.softmax(fwd.logits) - y) / x.shape[0]
    d1 = (e @ params[2]["fb"]) * ACT.df(fwd.pre[1])
    d0 = (d1 @ params[1]["fb"]) * ACT.df(fwd.pre[0])
    deltas = [d0, d1, e]
    return deltas, [h.T @ d for h, d in zip(fwd.inputs, deltas)], [d.sum(0) for d in deltas]


def _allclose(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


@pytest.mark.parametrize("rule", ["kp", "wm"])
def test_feedback_is_a_parameter_drawn_like_fa(rule):
    config, r, params, _ = _setup(rule)
    assert "fb" not in params[0]  # the first layer sends its error nowhere
    fa_b = make_rule(_config("fa"), dense(SIZES)).init(jax.random.PRNGKey(100), params)
    for l in (1, 2):
        assert params[l]["fb"].shape == params[l]["w"].T.shape
        _allclose(params[l]["fb"], fa_b[l], 0)  # fa's matrices, same key


def test_kp_update_of_b_is_the_transposed_update_of_w_plus_decay():
    decay = 0.07
    _, kp, params, state = _setup("kp", ("feedback.decay", decay))
    x, y = _batch()
    est = jax.jit(kp.estimate)(params, state, x, y, jax.random.PRNGKey(3))
    _, dw, db = _hand_fa(params, x, y)
    assert set(est.grads[0]) == {"w", "b"}
    _allclose(est.grads[0]["w"], dw[0])  # no decay where there is no feedback matrix
    for l in (1, 2):
        _allclose(est.grads[l]["w"], dw[l] + decay * params[l]["w"])
        _allclose(est.grads[l]["fb"], dw[l].T + decay * params[l]["fb"])
        _allclose(est.grads[l]["fb"] - est.grads[l]["w"].T, decay * (params[l]["fb"] - params[l]["w"].T))
    for l in range(3):
        _allclose(est.grads[l]["b"], db[l])
    assert jax.tree_util.tree_structure(est.grads) == jax.tree_util.tree_structure(params)


@pytest.mark.parametrize("rule", ["kp", "wm"])
def test_error_goes_back_through_b_like_fa(rule):
    _, r, params, state = _setup(rule)
    x, y = _batch()
    estimate = jax.jit(r.gradient_estimate)
    est = estimate(params, state, x, y, jax.random.PRNGKey(3))
    deltas, dw, _ = _hand_fa(params, x, y)
    for got, want in zip(est.deltas, deltas):
        _allclose(got, want)
    fa = make_rule(_config("fa"), dense(SIZES))
    b = [None, params[1]["fb"], params[2]["fb"]]
    plain = [{"w": p["w"], "b": p["b"]} for p in params]
    fa_est = jax.jit(fa.gradient_estimate)(plain, b, x, y, jax.random.PRNGKey(3))
    for got, want in zip(est.deltas, fa_est.deltas):
        _allclose(got, want)
    if rule == "wm":  # the forward updates are exactly fa's through B
        for l in range(3):
            _allclose(est.grads[l]["w"], fa_est.grads[l]["w"])
            _allclose(est.grads[l]["b"], fa_est.grads[l]["b"])
    # and with B = W^T the error is backprop's
    transported = [dict(p, fb=p["w"].T) if l else dict(p) for l, p in enumerate(params)]
    exact = jax.grad(lambda p, z: LOSS.value(forward(p, x, ACT, z).logits, y), argnums=1)(
        plain, [jnp.zeros((x.shape[0], p["w"].shape[1])) for p in plain]
    )
    for got, want in zip(estimate(transported, state, x, y, jax.random.PRNGKey(3)).deltas, exact):
        _allclose(got, want)


LR, DECAY, LAYER_LR = 0.2, 0.25, (1.0, 0.5, 2.0)  # W^T - B of layer l shrinks by 1 - LR * LAYER_LR[l] * DECAY


@pytest.fixture(scope="module")
def kp_sgd_run():
    """300 SGD steps of kp on a tiny problem (a linear teacher), with per-layer learning rates:
    the parameters of the first 11 steps and B_l's angle to W_l^T after every step."""
    config, kp, params, state = _setup(
        "kp", ("feedback.decay", DECAY), ("optimizer.name", "sgd"), ("optimizer.lr", LR),
        ("optimizer.schedule.name", "constant"), ("optimizer.layer_lr", list(LAYER_LR)),
    )  # fmt: skip
    opt = make_optimizer(config.optimizer, 10, 1)
    kx, kt = jax.random.split(jax.random.PRNGKey(7))
    x = jax.random.normal(kx, (32, SIZES[0]))
    y = jax.nn.one_hot(jnp.argmax(x @ jax.random.normal(kt, (SIZES[0], SIZES[-1])), -1), SIZES[-1])

    @jax.jit
    def step(params, opt_state):
        est = kp.estimate(params, state, x, y, jax.random.PRNGKey(0))
        updates, opt_state = opt.update(est.grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        angles = [angle_degrees(*kp.feedback(params, state, None)[l]) for l in (1, 2)]
        return params, opt_state, jnp.stack(angles), est.loss

    opt_state, history, angles, losses = opt.init(params), [params], [], []
    for t in range(300):
        params, opt_state, a, loss = step(params, opt_state)
        if t < 10:
            history.append(params)
        angles.append(a)
        losses.append(loss)
    initial = [float(angle_degrees(*kp.feedback(history[0], state, None)[l])) for l in (1, 2)]
    return history, np.array([initial] + [np.asarray(a) for a in angles]), np.asarray(losses)


def test_kp_sgd_shrinks_w_transpose_minus_b_by_exactly_one_minus_lr_decay(kp_sgd_run):
    history, _, _ = kp_sgd_run
    gap = lambda p, l: np.asarray(p[l]["w"].T - p[l]["fb"], np.float64)
    for before, after in zip(history[:-1], history[1:]):
        for l in (1, 2):
            factor = 1 - LR * LAYER_LR[l] * DECAY  # 0.975 and 0.9
            np.testing.assert_allclose(gap(after, l), factor * gap(before, l), rtol=2e-5, atol=2e-6)
            assert not np.allclose(after[l]["w"], before[l]["w"])  # W itself moved (by the error)
    assert np.linalg.norm(gap(history[-1], 1)) > 0.3 * np.linalg.norm(gap(history[0], 1))  # far from 0 yet


def test_kp_feedback_angle_falls_over_a_few_hundred_steps(kp_sgd_run):
    _, angles, losses = kp_sgd_run  # angles[t, l - 1]: B_l vs W_l^T after t steps
    assert np.all(angles[0] > 60), angles[0]  # random B starts far from W^T
    for l in (0, 1):
        assert angles[100, l] < angles[0, l] - 30, angles[::50, l]
        for t in (200, 300):  # still falling, until float32 round-off (~1e-3 degrees) is reached
            assert angles[t, l] < angles[t - 100, l] or angles[t, l] < 1e-2, angles[::50, l]
        assert angles[300, l] < 1, angles[::50, l]
    assert losses[-1] < 0.6 * losses[0]  # and the network learned


def test_wm_mirror_update_averages_to_w_transpose_and_the_b_update_adds_decay():
    """E[M_l] = W_l^T (normalised by sigma^2), so E[update(B_l)] = decay B_l - scale W_l^T."""
    decay, scale, sigma = 0.2, 0.05, 2.0
    _, wm, params, state = _setup("wm", ("feedback.decay", decay), ("feedback.mirror_lr_scale", scale),
                                  ("feedback.mirror_noise", sigma))
    x, y = _batch(n=32)
    keys = jax.random.split(jax.random.PRNGKey(1), 2000)
    draw = jax.jit(jax.vmap(lambda k: [g["fb"] for g in wm.estimate(params, state, x, y, k).grads[1:]]))
    fb = draw(keys)
    for l, draws in zip((1, 2), fb):
        w_t, b = params[l]["w"].T, params[l]["fb"]
        mirror = (decay * b - draws) / scale  # the mirror term M_l of each draw
        assert float(angle_degrees(mirror[0], w_t)) > 8  # a single noisy draw is off (measured: 15 and more)
        mean = jnp.mean(mirror, axis=0)
        assert float(angle_degrees(mean, w_t)) < 2.5  # 2000 x 32 noise rows
        assert float(jnp.linalg.norm(mean) / jnp.linalg.norm(w_t)) == pytest.approx(1.0, abs=0.05)
        expected = decay * b - scale * w_t
        assert float(jnp.linalg.norm(jnp.mean(draws, 0) - expected) / jnp.linalg.norm(expected)) < 0.06
    # other key, other noise: the mirror is driven by the step's key
    assert not np.allclose(fb[0][0], fb[0][1])
    # and by nothing else: the mirror phase sends noise, not data, so another batch gives the same B update
    x2, y2 = _batch(n=32, seed=7)
    other_batch = jax.jit(lambda x, y: [g["fb"] for g in wm.estimate(params, state, x, y, keys[0]).grads[1:]])(x2, y2)
    assert not np.allclose(x2, x)
    for l in (0, 1):
        np.testing.assert_allclose(other_batch[l], fb[l][0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["kp", "wm"])
def test_measure_reports_the_w_to_b_angle(rule):
    config, r, params, state = _setup(rule, ("feedback.decay", 0.5))
    x, y = _batch()
    measured = jax.jit(make_measure(config, dense(SIZES), r))(params, state, x, y, jax.random.PRNGKey(2))["layers"]
    assert math.isnan(float(measured["feedback_angle"][0]))
    for l in (1, 2):
        want = float(angle_degrees(params[l]["fb"], params[l]["w"].T))
        assert float(measured["feedback_angle"][l]) == pytest.approx(want, abs=1e-3)
    # the update angle is the error-driven part's (decay left out): the output layer is exact
    assert float(measured["update_angle"][-1]) == pytest.approx(0.0, abs=0.1)
    assert float(measured["delta_angle"][1]) > 1.0  # random B: the hidden error is not backprop's


@pytest.mark.parametrize(
    "key,value", [("feedback.decay", -0.1), ("feedback.mirror_noise", 0), ("feedback.mirror_lr_scale", -1)]
)
def test_bad_values_name_the_key(key, value):
    with pytest.raises(UserError, match=f"config key '{key}'"):
        load_config(overrides=[("rule", "wm"), (key, value)])


@pytest.mark.parametrize("rule", ["kp"])  # wm trains through the same loop (test_measure_reports_the_w_to_b_angle)
def test_cli_run_logs_a_falling_feedback_angle(rule, mnist_dir, tmp_path):
    flags = [
        "train", "--rule", rule, "--depth", "1", "--width", "32", "--epochs", "2", "--batch-size", "32",
        "--lr", "0.003", "--no-progress", "--data-dir", mnist_dir, "--results-dir", str(tmp_path),
        "--set", "data.train_limit=2500", "--set", "data.validation_size=500", "--set", "data.test_limit=500",
        "--set", "alignment.probe_size=128",
    ]  # fmt: skip
    result = CliRunner().invoke(app, flags)
    assert result.exit_code == 0, (result.output, result.exception)
    (run,) = [p for p in tmp_path.glob("*/*") if p.is_dir()]
    lines = [r for r in read_jsonl(run / "alignment.jsonl") if r["layer"] == 1]
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    angles = [r["feedback_angle"] for r in lines]
    assert all(isinstance(a, float) for a in angles)
    assert angles[0] > 60 and angles[2] < angles[1] < angles[0], angles
    assert all(r["feedback_angle"] is None for r in read_jsonl(run / "alignment.jsonl") if r["layer"] == 0)
    assert read_jsonl(run / "metrics.jsonl")[-1]["test_accuracy"] > 0.5


@pytest.mark.parametrize("rule", ["kp", "wm"])
def test_shipped_config_selects_the_rule_with_the_default_feedback_knobs(rule):
    config = load_config(REPO_ROOT / "configs" / f"{rule}.yaml")
    assert config.rule == rule and config.feedback == load_config().feedback
