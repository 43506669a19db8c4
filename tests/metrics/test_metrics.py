"""Angles on known vectors; alignment measurements against their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bioprop_cli.config import load_config
from bioprop_cli.metrics.alignment import exact_gradients, measure_alignment
from bioprop_cli.metrics.angles import angle_degrees, norm_ratio
from bioprop_cli.models.layers import init_params
from bioprop_cli.models.mlp import ACTIVATIONS, LOSSES, forward
from bioprop_cli.models.arch import dense
from bioprop_cli.rules import make_rule


@pytest.mark.parametrize(
    "a, b, degrees",
    [
        ([1, 0], [0, 1], 90.0),
        ([1, 0], [1, 0], 0.0),
        ([1, 0], [-1, 0], 180.0),
        ([1, 0], [1, 1], 45.0),
        ([1, 0], [0.5, np.sqrt(3) / 2], 60.0),
        ([1, 0], [-1, 1], 135.0),
        ([1, 1, 1, 1], [1, 1, -1, -1], 90.0),
        ([3, 4], [30, 40], 0.0),  # scale does not matter
    ],
)
def test_angle_on_known_vectors(a, b, degrees):
    assert float(angle_degrees(jnp.array(a, float), jnp.array(b, float))) == pytest.approx(degrees, abs=1e-4)


def test_angle_flattens_matrices_and_keeps_precision_near_zero():
    # b = a tilted by about 1e-5 rad, where float32 arccos(cos) rounds to 0; float64 arccos does not.
    a64 = np.arange(12.0).reshape(3, 4) + 1.0
    b64 = a64 + 1e-5 * np.linalg.norm(a64) * np.eye(3, 4)[::-1]
    ref = np.degrees(np.arccos(np.vdot(a64, b64) / np.linalg.norm(a64) / np.linalg.norm(b64)))
    got = float(angle_degrees(jnp.asarray(a64, jnp.float32), jnp.asarray(b64, jnp.float32)))
    assert got == pytest.approx(ref, rel=1e-2)
    assert float(angle_degrees(jnp.asarray(a64, jnp.float32), jnp.asarray(a64, jnp.float32))) == 0.0


def test_angle_with_a_zero_tensor_is_undefined():
    assert np.isnan(float(angle_degrees(jnp.zeros(3), jnp.ones(3))))


def test_norm_ratio():
    assert float(norm_ratio(jnp.array([3.0, 4.0]), jnp.array([[1.0, 0.0], [0.0, 0.0]]))) == pytest.approx(5.0)


SIZES = (9, 6, 6, 6, 10)


def _setup(rule, seed=0):
    config = load_config(overrides=[("rule", rule)])
    params = init_params(jax.random.PRNGKey(seed), dense(SIZES), "lecun_normal", 1.0)
    r = make_rule(config, dense(SIZES))
    kx, ky = jax.random.split(jax.random.PRNGKey(seed + 1))
    x = jax.random.normal(kx, (16, 9))
    y = jax.nn.one_hot(jax.random.randint(ky, (16,), 0, 10), 10)
    return r, params, r.init(jax.random.PRNGKey(2), params), x, y


def test_exact_deltas_are_the_gradients_of_the_pre_activations():
    _, params, _, x, y = _setup("bp")
    act, loss = ACTIVATIONS["tanh"], LOSSES["cross_entropy"]
    grads, deltas = exact_gradients(dense(SIZES), params, x, y, act, loss)
    fwd = forward(params, x, act)
    # output: softmax - y over the batch; layer 0 by the chain rule by hand
    np.testing.assert_allclose(deltas[-1], (jax.nn.softmax(fwd.logits) - y) / 16, atol=1e-7)
    d2 = (deltas[3] @ params[3]["w"].T) * (1 - np.tanh(fwd.pre[2]) ** 2)
    np.testing.assert_allclose(deltas[2], d2, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(grads[2]["w"], fwd.inputs[2].T @ deltas[2], rtol=1e-5, atol=1e-8)


def test_backprop_is_perfectly_aligned_with_itself():
    r, params, state, x, y = _setup("bp")
    m = measure_alignment(r, dense(SIZES), ACTIVATIONS["tanh"], LOSSES["cross_entropy"], params, state, x, y, jax.random.PRNGKey(0))
    assert float(m["network"]["update_angle"]) < 0.05 and float(m["network"]["update_rel_error"]) < 1e-5
    m = m["layers"]
    assert np.all(np.asarray(m["update_rel_error"]) < 1e-5)
    assert np.all(np.asarray(m["update_angle"]) < 0.05)
    assert np.all(np.asarray(m["delta_angle"]) < 0.05)
    assert np.all(np.isnan(m["feedback_angle"]))  # bp has no separate feedback matrix


def test_fa_measurements_follow_their_definitions():
    r, params, state, x, y = _setup("fa")
    act, loss = ACTIVATIONS["tanh"], LOSSES["cross_entropy"]
    key = jax.random.PRNGKey(0)
    measured = measure_alignment(r, dense(SIZES), act, loss, params, state, x, y, key)
    m = measured["layers"]
    est = r.gradient_estimate(params, state, x, y, key)
    grads, deltas = exact_gradients(dense(SIZES), params, x, y, act, loss)
    for l in range(4):
        assert float(m["update_angle"][l]) == pytest.approx(float(angle_degrees(est.grads[l]["w"], grads[l]["w"])), abs=1e-3)
        assert float(m["delta_angle"][l]) == pytest.approx(float(angle_degrees(est.deltas[l], deltas[l])), abs=1e-3)
    assert np.isnan(float(m["feedback_angle"][0]))
    for l in (1, 2, 3):
        assert float(m["feedback_angle"][l]) == pytest.approx(float(angle_degrees(state[l], params[l]["w"].T)), abs=1e-3)
        assert float(m["feedback_norm_ratio"][l]) == pytest.approx(
            float(jnp.linalg.norm(state[l]) / jnp.linalg.norm(params[l]["w"])), rel=1e-5
        )
    # random feedback at initialisation: nearly orthogonal to W^T, updates far from the gradient
    assert 70 < float(m["feedback_angle"][1]) < 110
    assert float(m["update_angle"][-1]) < 0.05
    assert float(measured["network"]["mean_update_angle"]) == pytest.approx(float(np.mean(np.asarray(m["update_angle"])[:3])), abs=1e-4)
    flat = lambda ps: jnp.concatenate([jnp.ravel(p["w"]) for p in ps])
    assert float(measured["network"]["update_angle"]) == pytest.approx(float(angle_degrees(flat(est.grads), flat(grads))), abs=1e-3)
    rel = float(jnp.linalg.norm(est.grads[1]["w"] - grads[1]["w"]) / jnp.linalg.norm(grads[1]["w"]))
    assert float(m["update_rel_error"][1]) == pytest.approx(rel, rel=1e-4)


def test_sign_symmetric_feedback_is_within_90_degrees_of_w_transpose():
    for rule in ("usf", "frsf", "brsf"):
        r, params, state, x, y = _setup(rule)
        m = measure_alignment(r, dense(SIZES), ACTIVATIONS["tanh"], LOSSES["cross_entropy"], params, state, x, y, jax.random.PRNGKey(0))["layers"]
        # sign(w) . w = |w|_1 > 0: the angle is acute; for gaussian W, cos = sqrt(2/pi) -> 37 degrees (usf)
        assert np.all(np.asarray(m["feedback_angle"][1:]) < 60), rule
    r, params, state, x, y = _setup("usf")
    m = measure_alignment(r, dense(SIZES), ACTIVATIONS["tanh"], LOSSES["cross_entropy"], params, state, x, y, jax.random.PRNGKey(0))["layers"]
    w = np.asarray(params[1]["w"])
    expected = np.degrees(np.arccos(np.abs(w).sum() / (np.sqrt(w.size) * np.linalg.norm(w))))
    assert float(m["feedback_angle"][1]) == pytest.approx(expected, abs=1e-3)


def test_dfa_feedback_is_compared_with_the_transport_path():
    r, params, state, x, y = _setup("dfa")
    m = measure_alignment(r, dense(SIZES), ACTIVATIONS["tanh"], LOSSES["cross_entropy"], params, state, x, y, jax.random.PRNGKey(0))["layers"]
    path1 = params[3]["w"].T @ params[2]["w"].T  # W_3^T W_2^T: from the output to layer 1
    assert float(m["feedback_angle"][1]) == pytest.approx(float(angle_degrees(state[1], path1)), abs=1e-3)
    assert float(m["feedback_angle"][2]) == pytest.approx(float(angle_degrees(state[2], params[3]["w"].T)), abs=1e-3)
