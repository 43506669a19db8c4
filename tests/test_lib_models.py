"""bioprop on plain-JAX models: with exact feedback (bp, or fa with B := W^T) the update is jax.grad of
a net with a strided padded conv, a residual connection, batch and layer normalisation; dfa on a
one-hidden-layer net is its closed form; measure() against hand computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import bioprop

N = 6


def _normal(key, shape, scale=0.5):
    return scale * jax.random.normal(key, shape)


def resnet_params(key):
    k = jax.random.split(key, 8)
    return {
        "stem": {"w": _normal(k[0], (3, 3, 2, 4)), "b": _normal(k[1], (4,), 0.1)},
        "block": {"w": _normal(k[2], (3, 3, 4, 4)), "b": _normal(k[3], (4,), 0.1)},
        "bn": {"gamma": 1.0 + _normal(k[4], (4,), 0.1), "beta": _normal(k[5], (4,), 0.1)},
        "ln": {"scale": 1.0 + _normal(k[6], (4,), 0.1), "bias": jnp.zeros(4)},
        "head": {"w": _normal(k[7], (64, 3)), "b": jnp.zeros(3)},
    }


def batch_norm(h, gamma, beta):
    mean, var = jnp.mean(h, axis=(0, 1, 2)), jnp.var(h, axis=(0, 1, 2))
    return gamma * (h - mean) / jnp.sqrt(var + 1e-5) + beta


def layer_norm(h, scale, bias):
    mean, var = jnp.mean(h, axis=-1, keepdims=True), jnp.var(h, axis=-1, keepdims=True)
    return scale * (h - mean) / jnp.sqrt(var + 1e-5) + bias


def resnet(conv, dense):
    """8x8x2 -> conv 3x3 stride 2 pad 1 -> relu -> [conv SAME -> batch norm -> relu] + skip -> layer norm -> dense 3."""

    def model(p, fb, x):
        h = jax.nn.relu(conv(x, p["stem"]["w"], p["stem"]["b"], fb["stem"]["w"], stride=2, padding=1))
        r = conv(h, p["block"]["w"], p["block"]["b"], fb["block"]["w"], padding="SAME")
        h = h + jax.nn.relu(batch_norm(r, p["bn"]["gamma"], p["bn"]["beta"]))
        h = layer_norm(h, p["ln"]["scale"], p["ln"]["bias"]).reshape(x.shape[0], -1)
        return dense(h, p["head"]["w"], p["head"]["b"], fb["head"]["w"])

    return model


def plain_conv(x, w, b, fb, stride=1, padding=0):
    pad = padding if isinstance(padding, str) else [(padding, padding)] * 2
    return lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")) + b


def plain_dense(x, w, b, fb):
    return x @ w + b


def loss(logits, y):
    return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits), axis=-1))


def batch(key, x_shape, n_out=3):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, x_shape), jax.nn.one_hot(jax.random.randint(ky, (x_shape[0],), 0, n_out), n_out)


def _close(a, b, tol=1e-5):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["bp", "fa", "kp"])
def test_exact_feedback_is_jax_grad_on_a_residual_net_with_normalisation(name):
    params = resnet_params(jax.random.PRNGKey(0))
    x, y = batch(jax.random.PRNGKey(1), (N, 8, 8, 2))
    model = resnet(bioprop.conv, bioprop.dense)
    tied = jax.tree_util.tree_map(bioprop.transport, bioprop.kernels(params))  # B := W^T (the kernel for a conv)
    state = () if name == "bp" else tied
    rule = bioprop.rule(name, decay=0.0) if name == "kp" else bioprop.rule(name)
    out = jax.jit(lambda p, s: bioprop.update(rule, model, loss, p, s, jax.random.PRNGKey(2), x, y))(params, state)
    value, exact = jax.value_and_grad(lambda p: loss(resnet(plain_conv, plain_dense)(p, bioprop.kernels(p), x), y))(params)
    _close(out.grads, exact)
    np.testing.assert_allclose(out.loss, value, rtol=1e-6)
    report = jax.jit(lambda p, s: bioprop.measure(rule, model, loss, p, s, jax.random.PRNGKey(2), x, y))(params, state)
    for angle in jax.tree_util.tree_leaves(report["update"]["angle"]) + jax.tree_util.tree_leaves(report["signal"]["angle"]):
        assert float(angle) < 0.05
    if name == "kp":  # B learns with W's update transposed: the fb cotangent is the kernels' exact gradient
        _close(out.feedback_grads, jax.tree_util.tree_map(bioprop.transport, bioprop.kernels(exact)))


def one_hidden(params, fb, x):
    h = jnp.tanh(bioprop.dense(x, params[0]["w"], params[0]["b"], fb[0]["w"]))
    return bioprop.dense(h, params[1]["w"], params[1]["b"], fb[1]["w"])


def one_hidden_setup():
    k = jax.random.split(jax.random.PRNGKey(3), 2)
    params = [{"w": _normal(k[0], (5, 7)), "b": jnp.zeros(7)}, {"w": _normal(k[1], (7, 3)), "b": jnp.zeros(3)}]
    x, y = batch(jax.random.PRNGKey(4), (N, 5))
    mask = [{"w": False, "b": False}, {"w": True, "b": False}]
    return params, x, y, mask


def test_dfa_on_one_hidden_layer_is_its_closed_form():
    params, x, y, mask = one_hidden_setup()
    rule = bioprop.rule("dfa")
    state = bioprop.init(rule, jax.random.PRNGKey(5), one_hidden, params, x, mask)
    d = state[1]["w"]
    assert state[0]["w"] is None and d.shape == (3, 7)
    out = bioprop.update(rule, one_hidden, loss, params, state, None, x, y, mask)
    a1 = x @ params[0]["w"] + params[0]["b"]
    h1 = jnp.tanh(a1)
    e = (jax.nn.softmax(h1 @ params[1]["w"] + params[1]["b"]) - y) / N
    delta1 = (e @ d) * (1 - jnp.tanh(a1) ** 2)  # Nøkland 2016: delta_1 = (e D) * f'(a_1)
    _close(out.grads, [{"w": x.T @ delta1, "b": delta1.sum(0)}, {"w": h1.T @ e, "b": e.sum(0)}])


def _degrees(u, v):
    u, v = np.ravel(np.asarray(u, np.float64)), np.ravel(np.asarray(v, np.float64))
    return np.degrees(np.arccos(u @ v / (np.linalg.norm(u) * np.linalg.norm(v))))


def test_measure_is_the_hand_computed_fa_comparison():
    params, x, y, mask = one_hidden_setup()
    rule = bioprop.rule("fa")
    state = bioprop.init(rule, jax.random.PRNGKey(5), one_hidden, params, x, mask)
    report = jax.jit(lambda p, s: bioprop.measure(rule, one_hidden, loss, p, s, None, x, y, mask))(params, state)
    b, w2 = state[1]["w"], params[1]["w"]
    a1 = x @ params[0]["w"] + params[0]["b"]
    e = (jax.nn.softmax(jnp.tanh(a1) @ w2 + params[1]["b"]) - y) / N
    fa_delta, bp_delta = (e @ b) * (1 - jnp.tanh(a1) ** 2), (e @ w2.T) * (1 - jnp.tanh(a1) ** 2)
    update = report["update"]
    np.testing.assert_allclose(update["angle"][0]["w"], _degrees(x.T @ fa_delta, x.T @ bp_delta), atol=1e-3)
    np.testing.assert_allclose(update["angle"][0]["b"], _degrees(fa_delta.sum(0), bp_delta.sum(0)), atol=1e-3)
    np.testing.assert_allclose(update["angle"][1]["w"], 0.0, atol=1e-3)  # the output layer's update is exact
    rel = np.linalg.norm(x.T @ (fa_delta - bp_delta)) / np.linalg.norm(x.T @ bp_delta)
    np.testing.assert_allclose(update["relative_error"][0]["w"], rel, rtol=1e-4)
    ratio = np.linalg.norm(x.T @ fa_delta) / np.linalg.norm(x.T @ bp_delta)
    np.testing.assert_allclose(update["norm_ratio"][0]["w"], ratio, rtol=1e-4)
    # the error at the output layer's output is e under both rules; at the hidden layer's, delta_1
    np.testing.assert_allclose(report["signal"]["angle"][1]["w"], 0.0, atol=1e-3)
    np.testing.assert_allclose(report["feedback"]["angle"][1]["w"], _degrees(b, w2.T), atol=1e-3)
    np.testing.assert_allclose(report["feedback"]["norm_ratio"][1]["w"], np.linalg.norm(b) / np.linalg.norm(w2), rtol=1e-5)


def test_measure_signal_is_the_error_at_each_layer_output():
    """Two hidden layers: the error fa delivers at the middle layer's output against backprop's."""
    k = jax.random.split(jax.random.PRNGKey(6), 3)
    params = [{"w": _normal(k[0], (5, 7)), "b": jnp.zeros(7)}, {"w": _normal(k[1], (7, 6)), "b": jnp.zeros(6)},
              {"w": _normal(k[2], (6, 3)), "b": jnp.zeros(3)}]

    def model(p, fb, x):
        for l in range(2):
            x = jnp.tanh(bioprop.dense(x, p[l]["w"], p[l]["b"], fb[l]["w"]))
        return bioprop.dense(x, p[2]["w"], p[2]["b"], fb[2]["w"])

    x, y = batch(jax.random.PRNGKey(7), (N, 5))
    rule = bioprop.rule("fa")
    state = bioprop.init(rule, jax.random.PRNGKey(8), model, params, x)
    report = bioprop.measure(rule, model, loss, params, state, None, x, y)
    a = [x @ params[0]["w"]]
    a.append(jnp.tanh(a[0]) @ params[1]["w"])
    e = (jax.nn.softmax(jnp.tanh(a[1]) @ params[2]["w"]) - y) / N
    fa_delta = (e @ state[2]["w"]) * (1 - jnp.tanh(a[1]) ** 2)
    bp_delta = (e @ params[2]["w"].T) * (1 - jnp.tanh(a[1]) ** 2)
    np.testing.assert_allclose(report["signal"]["angle"][1]["w"], _degrees(fa_delta, bp_delta), atol=1e-3)


@pytest.mark.parametrize("name", ["fa", "dfa"])
def test_a_model_s_aux_comes_back_with_the_update(name):
    """has_aux: the model returns (output, aux), e.g. batch norm's batch statistics for running averages."""
    params = resnet_params(jax.random.PRNGKey(0))
    x, y = batch(jax.random.PRNGKey(1), (N, 8, 8, 2))
    model = resnet(bioprop.conv, bioprop.dense)
    with_stats = lambda p, fb, x: (model(p, fb, x), {"mean": jnp.mean(x, axis=(0, 1, 2))})
    rule = bioprop.rule(name)
    state = bioprop.init(rule, jax.random.PRNGKey(2), with_stats, params, x)
    up = bioprop.update(rule, with_stats, loss, params, state, None, x, y, has_aux=True)
    plain = bioprop.update(rule, model, loss, params, state, None, x, y)
    np.testing.assert_array_equal(up.aux["mean"], jnp.mean(x, axis=(0, 1, 2)))
    _close(up.grads, plain.grads, 0)
    report = bioprop.measure(rule, with_stats, loss, params, state, None, x, y, has_aux=True)
    assert float(report["update"]["angle"]["head"]["w"]) < 0.05  # the output layer's update is exact


def test_a_weight_with_feedback_that_reaches_no_bioprop_layer_is_refused_by_name():
    params = resnet_params(jax.random.PRNGKey(0))
    x, _ = batch(jax.random.PRNGKey(1), (N, 8, 8, 2))
    half = resnet(bioprop.conv, plain_dense)  # the head multiplies by its weight directly
    with pytest.raises(ValueError, match=r"\['head'\]\['w'\]"):
        bioprop.init(bioprop.rule("fa"), jax.random.PRNGKey(2), half, params, x)
    mask = jax.tree_util.tree_map(lambda _: True, params) | {"head": {"w": False, "b": False}}
    state = bioprop.init(bioprop.rule("fa"), jax.random.PRNGKey(2), half, params, x, mask)
    assert state["head"]["w"] is None and state["stem"]["w"].shape == (3, 3, 2, 4)


def test_measure_compares_dfa_s_d_with_backprop_s_mean_jacobian():
    """Two hidden layers: D of the output layer (delivered to h_2) against W_3^T; D of the middle layer
    (delivered to h_1) against the batch mean of W_3^T diag(f'(a_2)) W_2^T."""
    k = jax.random.split(jax.random.PRNGKey(9), 3)
    params = [{"w": _normal(k[0], (5, 7)), "b": jnp.zeros(7)}, {"w": _normal(k[1], (7, 6)), "b": jnp.zeros(6)},
              {"w": _normal(k[2], (6, 3)), "b": jnp.zeros(3)}]

    def model(p, fb, x):
        for l in range(2):
            x = jnp.tanh(bioprop.dense(x, p[l]["w"], p[l]["b"], fb[l]["w"]))
        return bioprop.dense(x, p[2]["w"], p[2]["b"], fb[2]["w"])

    x, y = batch(jax.random.PRNGKey(10), (N, 5))
    rule = bioprop.rule("dfa")
    state = bioprop.init(rule, jax.random.PRNGKey(11), model, params, x)
    report = jax.jit(lambda p, s: bioprop.measure(rule, model, loss, p, s, None, x, y))(params, state)
    w2, w3 = params[1]["w"], params[2]["w"]
    np.testing.assert_allclose(report["feedback"]["angle"][2]["w"], _degrees(state[2]["w"], w3.T), atol=1e-3)
    slope = 1 - jnp.tanh(jnp.tanh(x @ params[0]["w"]) @ w2) ** 2  # f'(a_2), (batch, 6)
    jacobian = jnp.mean(jnp.einsum("ok,bk,ik->boi", w3.T, slope, w2), axis=0)  # W_3^T diag(f'(a_2)) W_2^T
    np.testing.assert_allclose(report["feedback"]["angle"][1]["w"], _degrees(state[1]["w"], jacobian), atol=1e-3)
    np.testing.assert_allclose(report["feedback"]["norm_ratio"][1]["w"],
                               np.linalg.norm(state[1]["w"]) / np.linalg.norm(jacobian), rtol=1e-4)
