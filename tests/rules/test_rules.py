"""Each rule's update against a hand-derived formula or jax.grad, on tiny networks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bioprop_cli.config import load_config
from bioprop_cli.models.arch import dense
from bioprop_cli.models.layers import init_params
from bioprop_cli.models.mlp import ACTIVATIONS, LOSSES, forward
from bioprop_cli.rules import available_rules, make_rule

jax.config.update("jax_enable_x64", False)
SIZES = (7, 5, 5, 5, 10)  # 7 -> 5 -> 5 -> 5 -> 10


def _config(rule, **model):
    overrides = [("rule", rule)] + [(f"model.{k}", v) for k, v in model.items()]
    return load_config(overrides=overrides)


@functools.partial(jax.jit, static_argnames=("n", "n_in", "seed"))  # one program, not one per op
def _batch(n=6, n_in=7, seed=1):
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.normal(kx, (n, n_in))
    y = jax.nn.one_hot(jax.random.randint(ky, (n,), 0, 10), 10)
    return x, y


@functools.partial(jax.jit, static_argnames=("sizes", "seed"))
def _params(sizes=SIZES, seed=0):
    return init_params(jax.random.PRNGKey(seed), dense(sizes), "lecun_normal", 1.0)


def _close(a, b, tol=1e-5):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_registry_lists_the_rules():
    assert available_rules() == ["bp", "fa", "dfa", "usf", "frsf", "brsf", "kp", "wm", "ep", "pc"]


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_bp_equals_jax_grad(activation, loss):
    params, (x, y) = _params(), _batch()
    act, loss_fn = ACTIVATIONS[activation], LOSSES[loss]
    rule = make_rule(_config("bp", activation=activation, loss=loss), dense(SIZES))
    est = rule.estimate(params, rule.init(jax.random.PRNGKey(0), params), x, y, jax.random.PRNGKey(0))
    expected = jax.grad(lambda p: loss_fn.value(forward(p, x, act).logits, y))(params)
    _close(est.grads, expected)
    assert float(est.loss) == pytest.approx(float(loss_fn.value(forward(params, x, act).logits, y)), rel=1e-6)


def test_bp_by_hand_on_one_hidden_unit():
    # x=2, w0=0.5, b0=0 -> a0=1, h=tanh(1); z = h*w1 (one output, mse, y=0): L = z^2/2.
    act, loss = ACTIVATIONS["tanh"], LOSSES["mse"]
    params = [{"w": jnp.array([[0.5]]), "b": jnp.zeros(1)}, {"w": jnp.array([[3.0]]), "b": jnp.zeros(1)}]
    rule = make_rule(_config("bp", activation="tanh", loss="mse"), dense((1, 1, 1)))
    est = rule.estimate(params, (), jnp.array([[2.0]]), jnp.array([[0.0]]), None)
    h = np.tanh(1.0)
    z = 3.0 * h
    assert float(est.grads[1]["w"][0, 0]) == pytest.approx(z * h, rel=1e-6)  # dL/dw1 = z h
    d0 = z * 3.0 * (1 - h**2)  # delta_0 = dL/dz * w1 * tanh'(a0)
    assert float(est.grads[0]["w"][0, 0]) == pytest.approx(d0 * 2.0, rel=1e-6)
    assert float(est.grads[0]["b"][0]) == pytest.approx(d0, rel=1e-6)


def test_fa_with_transposed_weights_as_feedback_equals_bp():
    params, (x, y) = _params(), _batch()
    fa = make_rule(_config("fa"), dense(SIZES))
    transport = [None] + [layer["w"].T for layer in params[1:]]
    est_fa = fa.estimate(params, transport, x, y, jax.random.PRNGKey(0))
    bp = make_rule(_config("bp"), dense(SIZES))
    _close(est_fa.grads, bp.estimate(params, (), x, y, None).grads)


def test_fa_uses_its_fixed_random_matrices():
    params, (x, y) = _params(), _batch()
    act, loss = ACTIVATIONS["tanh"], LOSSES["cross_entropy"]
    fa = make_rule(_config("fa"), dense(SIZES))
    b = fa.init(jax.random.PRNGKey(3), params)
    assert [m.shape for m in b[1:]] == [layer["w"].T.shape for layer in params[1:]]
    fwd = forward(params, x, act)
    e = loss.error(fwd.logits, y)
    d2 = (e @ b[3]) * act.df(fwd.pre[2])
    d1 = (d2 @ b[2]) * act.df(fwd.pre[1])
    d0 = (d1 @ b[1]) * act.df(fwd.pre[0])
    est = fa.estimate(params, b, x, y, jax.random.PRNGKey(9))
    _close(est.grads, [{"w": h.T @ d, "b": d.sum(0)} for h, d in zip(fwd.inputs, [d0, d1, d2, e])])
    # the same key or another: fa's feedback does not change between steps
    _close(fa.estimate(params, b, x, y, jax.random.PRNGKey(10)).grads, est.grads)


def test_fa_feedback_statistics_follow_the_config():
    sizes = (300, 400, 400, 10)
    params = _params(sizes)
    for dist in ("normal", "uniform"):
        cfg = load_config(overrides=[("rule", "fa"), ("feedback.distribution", dist), ("feedback.scale", 2.0)])
        b = jax.jit(make_rule(cfg, dense(sizes)).init)(jax.random.PRNGKey(0), params)[1]
        assert float(jnp.std(b)) == pytest.approx(2.0 / np.sqrt(400), rel=0.02)  # 2 x lecun std of W_1
        if dist == "uniform":
            assert float(jnp.max(jnp.abs(b))) <= np.sqrt(3) * 2.0 / np.sqrt(400) + 1e-6


def test_dfa_on_one_hidden_layer_is_the_closed_form():
    sizes = (7, 5, 10)
    params, (x, y) = _params(sizes), _batch()
    dfa = make_rule(_config("dfa", depth=1), dense(sizes))
    (d,) = dfa.init(jax.random.PRNGKey(4), params)
    assert d.shape == (10, 5)
    a0 = x @ params[0]["w"] + params[0]["b"]
    h = np.tanh(a0)
    z = h @ params[1]["w"] + params[1]["b"]
    e = (jax.nn.softmax(z) - y) / x.shape[0]
    delta0 = (e @ d) * (1 - h**2)
    est = dfa.estimate(params, [d], x, y, None)
    _close(est.grads, [{"w": x.T @ delta0, "b": delta0.sum(0)}, {"w": h.T @ e, "b": e.sum(0)}])
    # With D = W_1^T direct feedback is exact backprop on one hidden layer.
    bp = make_rule(_config("bp", depth=1), dense(sizes)).estimate(params, (), x, y, None)
    _close(dfa.estimate(params, [params[1]["w"].T], x, y, None).grads, bp.grads)


def test_dfa_sends_the_output_error_to_every_layer_directly():
    params, (x, y) = _params(), _batch()
    act, loss = ACTIVATIONS["tanh"], LOSSES["cross_entropy"]
    dfa = make_rule(_config("dfa", depth=3), dense(SIZES))
    ds = dfa.init(jax.random.PRNGKey(4), params)
    fwd = forward(params, x, act)
    e = loss.error(fwd.logits, y)
    est = dfa.gradient_estimate(params, ds, x, y, None)
    for l in range(3):
        np.testing.assert_allclose(est.deltas[l], (e @ ds[l]) * act.df(fwd.pre[l]), rtol=1e-5, atol=1e-7)


def test_usf_feedback_is_scale_times_sign_of_w():
    params = _params()
    cfg = load_config(overrides=[("rule", "usf"), ("feedback.scale", 0.5)])
    usf = make_rule(cfg, dense(SIZES))
    fb = usf.feedback(params, usf.init(jax.random.PRNGKey(0), params), jax.random.PRNGKey(1))
    for l in (1, 2, 3):
        b, w_t = fb[l]
        scale = 0.5 / np.sqrt(SIZES[l])  # feedback.scale x lecun std of W_l
        np.testing.assert_allclose(b, scale * np.sign(params[l]["w"].T), rtol=1e-6)
        np.testing.assert_array_equal(w_t, params[l]["w"].T)


def test_usf_follows_the_current_signs_of_w():
    params = _params()
    usf = make_rule(_config("usf"), dense(SIZES))
    flipped = [dict(layer) for layer in params]
    flipped[2] = {"w": -params[2]["w"], "b": params[2]["b"]}
    b_before = usf.feedback(params, (), None)[2][0]
    b_after = usf.feedback(flipped, (), None)[2][0]
    np.testing.assert_allclose(b_after, -b_before)


def _frsf_brsf(rule):
    params = _params()
    r = make_rule(_config(rule), dense(SIZES))
    state = r.init(jax.random.PRNGKey(5), params)
    return params, r, state


def test_frsf_magnitudes_are_fixed_and_signs_follow_w():
    params, frsf, state = _frsf_brsf("frsf")
    fb1 = frsf.feedback(params, state, jax.random.PRNGKey(1))
    fb2 = frsf.feedback(params, state, jax.random.PRNGKey(2))
    for l in (1, 2, 3):
        np.testing.assert_array_equal(fb1[l][0], fb2[l][0])  # no redraw between batches
        np.testing.assert_array_equal(np.sign(fb1[l][0]), np.sign(params[l]["w"].T))
        np.testing.assert_allclose(np.abs(fb1[l][0]), state[l].T)  # magnitudes stored in W's layout


def test_brsf_redraws_magnitudes_every_batch_with_the_signs_of_w():
    params, brsf, state = _frsf_brsf("brsf")
    feedback = jax.jit(lambda k: brsf.feedback(params, state, k))
    fb1, fb2 = feedback(jax.random.PRNGKey(1)), feedback(jax.random.PRNGKey(2))
    for l in (1, 2, 3):
        assert not np.allclose(fb1[l][0], fb2[l][0])
        np.testing.assert_array_equal(np.sign(fb1[l][0]), np.sign(params[l]["w"].T))
        np.testing.assert_array_equal(np.sign(fb2[l][0]), np.sign(params[l]["w"].T))
    # the update uses the batch's draw: another key, another update (and the update of a given key is
    # the generic chain formula with that key's feedback: test_chain_rules_match_the_generic_formula...)
    x, y = _batch()
    estimate = jax.jit(lambda key: brsf.estimate(params, state, x, y, key).grads[0]["w"])
    g = lambda k: estimate(jax.random.PRNGKey(k))
    assert not np.allclose(g(1), g(2))


@pytest.mark.parametrize("rule", ["fa", "usf", "frsf", "brsf"])
def test_chain_rules_match_the_generic_formula_with_their_own_feedback(rule):
    params, (x, y) = _params(), _batch()
    act, loss = ACTIVATIONS["tanh"], LOSSES["cross_entropy"]
    r = make_rule(_config(rule), dense(SIZES))
    state, key = r.init(jax.random.PRNGKey(5), params), jax.random.PRNGKey(6)
    feedback = r.feedback(params, state, key)
    mats = [None] + [feedback[l][0] for l in (1, 2, 3)]
    fwd = forward(params, x, act)
    deltas = [loss.error(fwd.logits, y)]  # delta_l = (delta_{l+1} @ B_{l+1}) * f'(a_l), by hand
    for l in (2, 1, 0):
        deltas.insert(0, (deltas[0] @ mats[l + 1]) * act.df(fwd.pre[l]))
    expected = [{"w": h.T @ d, "b": d.sum(0)} for h, d in zip(fwd.inputs, deltas)]
    _close(r.estimate(params, state, x, y, key).grads, expected)


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa", "usf", "frsf", "brsf"])
def test_every_rule_updates_the_output_layer_exactly(rule):
    params, (x, y) = _params(), _batch()
    r = make_rule(_config(rule), dense(SIZES))
    est = r.estimate(params, r.init(jax.random.PRNGKey(5), params), x, y, jax.random.PRNGKey(6))
    act, loss = ACTIVATIONS["tanh"], LOSSES["cross_entropy"]
    true = jax.grad(lambda p: loss.value(forward(p, x, act).logits, y))(params)
    _close(est.grads[-1], true[-1])


def test_brsf_fast_uniform_is_uniform_and_independent_across_steps():
    from bioprop.rules import fast_uniform

    u1 = np.asarray(fast_uniform(jax.random.PRNGKey(1), (512, 512))).ravel()
    u2 = np.asarray(fast_uniform(jax.random.PRNGKey(2), (512, 512))).ravel()
    n = u1.size
    assert 0 < u1.min() and u1.max() < 1
    assert abs(u1.mean() - 0.5) < 4 * np.sqrt(1 / 12 / n)
    assert abs(u1.var() - 1 / 12) < 0.002
    hist, _ = np.histogram(u1, bins=16, range=(0, 1))
    assert np.all(np.abs(hist - n / 16) < 5 * np.sqrt(n / 16))
    for a, b in [(u1, u2), (u1[:-1], u1[1:]), (u1[:-512], u1[512:])]:  # other step, neighbours, rows
        assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(n)


@pytest.mark.parametrize("distribution", ["uniform", "normal"])
def test_brsf_magnitudes_have_the_second_moment_of_w(distribution):
    import bioprop

    sizes = (300, 400, 400, 10)
    params = [{"w": p["w"], "b": p["b"]} for p in _params(sizes)]
    rule = bioprop.rule("brsf", distribution=distribution)
    b = jax.jit(lambda p: rule.feedback(bioprop.kernels(p), (), jax.random.PRNGKey(0)))(params)
    m = np.abs(np.asarray(b[1]["w"]))  # |R_1| (W_1's signs are never 0)
    std = 1 / np.sqrt(400)  # lecun std of W_1 (fan-in 400)
    assert m.min() >= 0
    assert np.sqrt(np.mean(m**2)) == pytest.approx(std, rel=0.01)
    if distribution == "normal":
        assert m.mean() == pytest.approx(std * np.sqrt(2 / np.pi), rel=0.01)  # half-normal mean
    else:
        assert m.max() <= np.sqrt(3) * std
