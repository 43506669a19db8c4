"""Every feedforward rule on conv nets, against jax.grad and hand-written (numpy loop) formulas, and
the one backward mechanism on an MLP against the closed forms the MLP has always used."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bioprop_cli.config import load_config
from bioprop_cli.metrics.alignment import exact_gradients, measure_alignment
from bioprop_cli.metrics.angles import angle_degrees
from bioprop_cli.models import arch as archs
from bioprop_cli.models.arch import Pool
from bioprop_cli.models.layers import feedback_model, forward, init_params, linear, send_back, transport, weight_vjp
from bioprop_cli.models.mlp import ACTIVATIONS, LOSSES, init_std
from bioprop_cli.rules import make_rule
from bioprop_cli.rules.base import direct_matrix, transport_path

ACT, LOSS = ACTIVATIONS["tanh"], LOSSES["cross_entropy"]


def tiny(pool_kind="max", padding=1):
    """8x8x1 -> conv 2@3x3 (pad 1), pool 2 -> 4x4x2 -> conv 3@3x3 -> 2x2x3 -> dense 5 -> dense 10."""
    return archs.stack("cnn", (8, 8, 1), [(2, 3, 1, padding, Pool(pool_kind, 2, 2)), (3, 3, 1, 0, None)], (5,), 10)


ARCH = tiny()
CHAINED = ["fa", "usf", "frsf", "brsf", "kp", "wm"]


def _config(rule, *overrides):
    return load_config(overrides=[("rule", rule), ("model.arch", "cnn")] + list(overrides))


def _params(arch=ARCH, seed=0):
    return init_params(jax.random.PRNGKey(seed), arch, "lecun_normal", 1.0)


def _batch(arch=ARCH, n=4, seed=1):
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.normal(kx, (n, arch.sizes[0]))
    return x, jax.nn.one_hot(jax.random.randint(ky, (n,), 0, 10), 10)


def _rule(name, arch=ARCH, *overrides, seed=5):
    rule = make_rule(_config(name, *overrides), arch)
    params = _params(arch)
    if rule.init_params is not None:
        params = rule.init_params(jax.random.PRNGKey(seed), params)
    return rule, params, rule.init(jax.random.PRNGKey(seed), params)


def _true_grads(params, x, y, arch=ARCH, act=ACT):
    plain = [{"w": p["w"], "b": p["b"]} for p in params]
    return jax.grad(lambda p: LOSS.value(forward(arch, p, x, act).logits, y))(plain)


def _close(a, b, tol=1e-5):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


def conv_correlation(x, delta, k, padding):
    """dW[u, v, c, o] = sum_{n, i, j} xpad[n, i + u, j + v, c] delta[n, i, j, o] (stride 1), by loops."""
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    d = np.asarray(delta, np.float64)
    out = np.zeros((k, k, x.shape[-1], d.shape[-1]))
    for u in range(k):
        for v in range(k):
            patch = xp[:, u:u + d.shape[1], v:v + d.shape[2], :]
            out[u, v] = np.einsum("nijc,nijo->co", patch, d)
    return out


# ----------------------------------------------------------------------------------------------
# The mechanism


def test_dense_closed_forms_are_the_vjps():
    """For a dense layer the backward pieces are written out (bit-identical MLP numbers); they are
    exactly what jax.vjp of the layer's map gives."""
    op = archs.Dense(6, 4)
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    h, d, w = jax.random.normal(k[0], (5, 6)), jax.random.normal(k[1], (5, 4)), jax.random.normal(k[2], (6, 4))
    b = jax.random.normal(k[3], (4, 6))
    _, vjp = jax.vjp(lambda w, bias: linear(op, w, h) + bias, w, jnp.zeros(4))
    gw, gb = vjp(d)
    got = weight_vjp(op, h, d)
    _close(got["w"], gw, 1e-6), _close(got["b"], gb, 1e-6)
    (gh,) = jax.vjp(lambda h: linear(op, b.T, h), h)[1](d)
    _close(send_back(op, b, d, h.shape), gh, 1e-6)


def test_conv_weight_update_is_the_input_delta_correlation():
    op = ARCH.layers[0].op
    h, _ = _batch()
    delta = jax.random.normal(jax.random.PRNGKey(3), (4,) + op.out_shape)
    got = weight_vjp(op, h, delta)
    np.testing.assert_allclose(got["w"], conv_correlation(h.reshape(4, 8, 8, 1), delta, 3, 1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["b"], np.asarray(delta).sum(axis=(0, 1, 2)), rtol=1e-5)


@pytest.mark.parametrize("pool_kind", ["max", "avg"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_bp_on_a_conv_net_equals_jax_grad(pool_kind, activation):
    arch = tiny(pool_kind)
    rule = make_rule(_config("bp", ("model.activation", activation)), arch)
    params, (x, y) = _params(arch), _batch(arch)
    est = jax.jit(rule.gradient_estimate)(params, (), x, y, None)  # one program each, not op by op
    _close(est.grads, jax.jit(lambda p: _true_grads(p, x, y, arch, ACTIVATIONS[activation]))(params))
    _, deltas = jax.jit(lambda p: exact_gradients(arch, p, x, y, ACTIVATIONS[activation], LOSS))(params)
    for got, want in zip(est.deltas, deltas):
        assert got.shape == want.shape
        _close(got, want)


def test_fa_with_transported_feedback_equals_bp():
    fa, params, _ = _rule("fa")
    x, y = _batch()

    @jax.jit  # one program, not op by op
    def both(params, x, y):
        tied = [None] + [transport(layer.op, p["w"]) for layer, p in zip(ARCH.layers[1:], params[1:])]
        return fa.estimate(params, tied, x, y, None).grads, _true_grads(params, x, y)

    _close(*both(params, x, y))


def test_fa_feedback_has_transport_layout_and_weight_statistics():
    big = archs.stack("cnn", (12, 12, 8), [(8, 3, 1, 1, None), (64, 3, 1, 1, None)], (), 10)
    fa = make_rule(_config("fa", ("feedback.scale", 2.0)), big)
    b = fa.init(jax.random.PRNGKey(0), _params(big))
    assert b[1].shape == big.layers[1].op.weight_shape == (3, 3, 8, 64)  # a kernel, read by the transposed conv
    assert b[2].shape == (10, 12 * 12 * 64)  # the dense output layer: W^T's shape
    assert float(jnp.std(b[1])) == pytest.approx(2.0 / math.sqrt(9 * 8), rel=0.03)  # 2 x lecun std (fan-in k^2 C_in)


def test_fa_sends_the_error_by_the_transposed_convolution_of_b():
    fa, params, b = _rule("fa")
    x, y = _batch()

    @jax.jit  # one program, not op by op
    def estimate_and_reference(params, b, x, y):
        est = fa.gradient_estimate(params, b, x, y, None)
        fwd = forward(ARCH, params, x, ACT)
        # layer 1 (conv 3@3x3 on 4x4x2) sends delta_1 back through B_1's kernel: the vjp of the conv with B_1
        _, conv_vjp = jax.vjp(lambda h: linear(ARCH.layers[1].op, b[1], h), fwd.inputs[1])
        (g,) = conv_vjp(est.deltas[1])
        _, pool_vjp = jax.vjp(lambda z: jax.lax.reduce_window(z, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                                              "VALID"), ACT.f(fwd.pre[0]))
        (g0,) = pool_vjp(g)
        return est, g0 * ACT.df(fwd.pre[0]), _true_grads(params, x, y)

    est, delta0, true = estimate_and_reference(params, b, x, y)
    _close(est.deltas[0], delta0)
    assert not np.allclose(est.grads[0]["w"], true[0]["w"], atol=1e-3)


def test_usf_feedback_is_scale_times_sign_of_the_kernel():
    usf, params, state = _rule("usf", ARCH, ("feedback.scale", 0.5))
    fb = usf.feedback(params, state, None)
    op = ARCH.layers[1].op
    b, reference = fb[1]
    scale = 0.5 * init_std("lecun_normal", 1.0, *op.fans)
    np.testing.assert_allclose(b, scale * np.sign(params[1]["w"]), rtol=1e-6)
    np.testing.assert_array_equal(reference, params[1]["w"])  # the kernel exact transport would use
    np.testing.assert_allclose(fb[2][0], 0.5 * init_std("lecun_normal", 1.0, 12, 5) * np.sign(params[2]["w"].T), rtol=1e-6)


@pytest.mark.parametrize("rule", ["frsf", "brsf"])
def test_random_magnitude_sign_feedback_has_the_kernels_signs(rule):
    r, params, state = _rule(rule)
    feedback = jax.jit(r.feedback)  # one program for both keys, not op by op
    for key in (1, 2):
        b = feedback(params, state, jax.random.PRNGKey(key))[1][0]
        assert b.shape == params[1]["w"].shape
        np.testing.assert_array_equal(np.sign(b), np.sign(params[1]["w"]))


@pytest.mark.parametrize("rule", CHAINED)
def test_chained_rules_are_the_generic_chain_with_their_own_feedback(rule):
    """Each rule's update is bp's mechanism with its B in place of transport(W): with the rule's own
    feedback put in as fa's, fa gives the same update."""
    r, params, state = _rule(rule)
    x, y = _batch()
    key = jax.random.PRNGKey(6)
    feedback = jax.jit(r.feedback)(params, state, key)
    mats = [None] + [feedback[l][0] for l in range(1, len(ARCH.layers))]
    fa = make_rule(_config("fa"), ARCH)
    plain = [{"w": p["w"], "b": p["b"]} for p in params]
    want = jax.jit(fa.estimate)(plain, mats, x, y, None).grads  # one program each, not op by op
    got = jax.jit(r.gradient_estimate or r.estimate)(params, state, x, y, key).grads
    _close([{"w": g["w"], "b": g["b"]} for g in got], want)


def test_kp_with_b_equal_to_w_stays_backprop():
    kp, params, state = _rule("kp", ARCH, ("feedback.decay", 0.1))
    params = [dict(p, fb=transport(layer.op, p["w"])) if l else p for l, (layer, p) in enumerate(zip(ARCH.layers, params))]
    x, y = _batch()
    estimate_and_exact = jax.jit(lambda params: (kp.estimate(params, state, x, y, None), _true_grads(params, x, y)))
    for _ in range(3):  # plain SGD: B stays transport(W) and the update stays bp's
        est, bp = estimate_and_exact(params)
        _close([g["w"] - (0.1 * p["w"] if l else 0) for l, (g, p) in enumerate(zip(est.grads, params))], [g["w"] for g in bp])
        for l in range(1, len(params)):
            _close(est.grads[l]["fb"], transport(ARCH.layers[l].op, est.grads[l]["w"]), 1e-6)
        params = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, est.grads)
        for l in range(1, len(params)):
            _close(params[l]["fb"], transport(ARCH.layers[l].op, params[l]["w"]), 1e-6)


def _conv_valid(images, w):
    """The VALID stride-1 convolution (cross-correlation) of NHWC images with an HWIO kernel, in float64."""
    k = w.shape[0]
    windows = np.lib.stride_tricks.sliding_window_view(images, (k, k), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3)
    return np.einsum("nijuvc,uvco->nijo", windows, np.asarray(w, np.float64))


def _max_pool_2x2_vjp(h, g):
    """The error g at 2x2 max pooling's output sent to the maximum of each window of h (zero elsewhere)."""
    n, rows, cols, c = h.shape
    windows = h.reshape(n, rows // 2, 2, cols // 2, 2, c)
    at_max = windows == windows.max(axis=(2, 4), keepdims=True)
    return (at_max * g.reshape(n, rows // 2, 1, cols // 2, 1, c)).reshape(h.shape)


@pytest.mark.parametrize("target", ["pooled", "pooled_conv", "pre_pool"])
def test_dfa_on_a_pooled_conv_layer_is_the_closed_form(target):
    """One pooled conv layer then the output. pooled (Nøkland's ErrorFeedback after the pooling; and
    biotorch's, whose layer above is dense: pooled_conv alike): delta_0 = pool_vjp(e @ D_0) * f'(a_0),
    the error only at each window's maximum; pre_pool: delta_0 = reshape(e @ D_0) * f'(a_0) at every
    unit. The update is the correlation of the images with delta_0."""
    arch = archs.stack("cnn", (6, 6, 1), [(2, 3, 1, 0, Pool("max", 2, 2))], (), 10)
    dfa = make_rule(_config("dfa", ("feedback.dfa_target", target)), arch)
    params, (x, y) = _params(arch), _batch(arch)
    (d,) = jax.jit(dfa.init)(jax.random.PRNGKey(4), params)
    assert d.shape == (10, (4 * 4 if target == "pre_pool" else 2 * 2) * 2)
    images = np.asarray(x, np.float64).reshape(4, 6, 6, 1)
    a0 = _conv_valid(images, params[0]["w"])
    h1 = np.tanh(a0).reshape(4, 2, 2, 2, 2, 2).max(axis=(2, 4))  # 2x2 max pooling of 4x4x2
    z = h1.reshape(4, -1) @ np.asarray(params[1]["w"], np.float64)
    e = (np.exp(z) / np.exp(z).sum(1, keepdims=True) - np.asarray(y)) / 4
    projected = e @ np.asarray(d, np.float64)
    if target == "pre_pool":
        delta0 = projected.reshape(4, 4, 4, 2) * (1 - np.tanh(a0) ** 2)
    else:
        delta0 = _max_pool_2x2_vjp(np.tanh(a0), projected) * (1 - np.tanh(a0) ** 2)
        assert np.count_nonzero(delta0) <= delta0.size // 4  # one unit of each 2x2 window
    est = jax.jit(dfa.gradient_estimate)(params, [d], x, y, None)  # one program, not op by op
    assert [dl.shape for dl in est.deltas] == [(4, 4, 4, 2), (4, 10)]
    np.testing.assert_allclose(est.deltas[0], delta0, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(est.grads[0]["w"], conv_correlation(images, delta0, 3, 0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(est.grads[1]["w"], h1.reshape(4, -1).T @ e, rtol=1e-4, atol=1e-6)


def test_dfa_pooled_conv_is_biotorchs_tiled_kernel_projection():
    """A pooled conv layer below a conv layer (kernel 3, padding 1): biotorch's D_0 is a kernel
    K (3, 3, C_0, n_out), and the error at layer 0's pooled output is the transposed convolution of e
    tiled over the upper layer's output grid, g[y, x, c] = sum over output positions (i, j) and offsets
    (u, v) with i + u - 1 = y, j + v - 1 = x of e_o K[u, v, c, o]; then back through the pooling and f'."""
    arch = archs.stack("cnn", (8, 8, 1), [(2, 3, 1, 1, Pool("max", 2, 2)), (3, 3, 1, 1, None)], (), 10)
    dfa = make_rule(_config("dfa", ("feedback.dfa_target", "pooled_conv")), arch)
    params, (x, y) = _params(arch), _batch(arch)
    m0, d1 = jax.jit(dfa.init)(jax.random.PRNGKey(4), params)
    assert m0.shape == (10, 4 * 4 * 2) and d1.shape == (10, 4 * 4 * 3)  # D_0 kept as the matrix its kernel applies
    # the kernel whose projection m0 is (the map kernel -> matrix is linear): m0 is in its range
    expand = jax.jit(jax.jacfwd(lambda k: direct_matrix(arch, 0, "pooled_conv", k)))(jnp.zeros((3, 3, 2, 10)))
    kernel = np.linalg.lstsq(np.asarray(expand).reshape(m0.size, -1), np.asarray(m0).ravel(), rcond=None)[0]
    kernel = jnp.asarray(kernel.reshape(3, 3, 2, 10), jnp.float32)
    np.testing.assert_allclose(jax.jit(lambda k: direct_matrix(arch, 0, "pooled_conv", k))(kernel), m0, atol=1e-5)
    padded = lambda v: np.pad(v, ((0, 0), (1, 1), (1, 1), (0, 0)))
    a0 = _conv_valid(padded(np.asarray(x, np.float64).reshape(4, 8, 8, 1)), params[0]["w"])
    h1 = np.tanh(a0).reshape(4, 4, 2, 4, 2, 2).max(axis=(2, 4))
    a1 = _conv_valid(padded(h1), params[1]["w"])
    z = np.tanh(a1).reshape(4, -1) @ np.asarray(params[2]["w"], np.float64)
    e = (np.exp(z) / np.exp(z).sum(1, keepdims=True) - np.asarray(y)) / 4
    k = np.asarray(kernel, np.float64)
    g = np.zeros((4, 6, 6, 2))  # h_1 padded by 1 on each side
    for i in range(4):
        for j in range(4):
            for u in range(3):
                for v in range(3):
                    g[:, i + u, j + v, :] += e @ k[u, v].T
    g = g[:, 1:-1, 1:-1, :]
    delta0 = _max_pool_2x2_vjp(np.tanh(a0), g) * (1 - np.tanh(a0) ** 2)
    delta1 = (e @ np.asarray(d1, np.float64)).reshape(4, 4, 4, 3) * (1 - np.tanh(a1) ** 2)
    est = jax.jit(dfa.gradient_estimate)(params, [m0, d1], x, y, None)
    np.testing.assert_allclose(est.deltas[0], delta0, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(est.deltas[1], delta1, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("pooled_output", [False, True])
def test_dfa_reference_is_the_linearised_backprop_path(pooled_output):
    """transport_path on a conv net: the Jacobian from a_l (pooled_output: from h_{l+1}, after layer
    l's pooling) to the logits of the network with identity activations and average pooling, computed
    here independently by jax.jacfwd."""
    params = _params()

    def linear_net(a, l):
        h = a
        for k in range(l, len(ARCH.layers) - 1):
            layer = ARCH.layers[k]
            if k > l:
                h = linear(layer.op, params[k]["w"], h)
            if layer.pool is not None and not (pooled_output and k == l):
                h = jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
        return linear(ARCH.layers[-1].op, params[-1]["w"], h)

    for l in range(len(ARCH.layers) - 1):
        shape = (1,) + (ARCH.layers[l].out_shape if pooled_output else ARCH.pre_shapes[l])
        jac = jax.jit(jax.jacfwd(lambda a: linear_net(a, l)[0]))(jnp.zeros(shape))  # one program, not op by op
        path = jax.jit(lambda p: transport_path(ARCH, p, l, pooled_output))(params)
        np.testing.assert_allclose(path, jac.reshape(10, -1),
                                   rtol=1e-5, atol=1e-6)


def test_wm_mirror_is_the_noise_correlation_normalised_per_kernel_entry():
    import bioprop
    from bioprop.rules import fast_uniform, positions

    padded = archs.stack("cnn", (5, 5, 2), [(2, 3, 1, 0, None), (3, 3, 1, 1, None)], (), 10)
    params = _params(padded)
    op, w = padded.layers[1].op, params[1]["w"]
    sigma, batch, key = 0.5, 6, jax.random.PRNGKey(3)
    # decay 0, rate 1: B's update is -M, the mirror itself
    wm = make_rule(_config("wm", ("feedback.decay", 0.0), ("feedback.mirror_lr_scale", 1.0),
                           ("feedback.mirror_noise", sigma)), padded)
    params = wm.init_params(jax.random.PRNGKey(1), params)
    mirror_of = jax.jit(lambda k, x: -wm.estimate(params, (), x, jnp.zeros((x.shape[0], 10)), k).grads[1]["fb"])
    mirror = mirror_of(key, jnp.zeros((batch, 50)))
    # the noise: uniform of variance sigma^2 at the layer's input from the step key's layer-1 key, y its convolution
    noise = jax.jit(lambda key: fast_uniform(jax.random.split(jax.random.fold_in(key, 0x3A11), len(params))[1],
                                             (batch,) + op.in_shape))  # one program each, not op by op
    x = np.asarray((sigma * math.sqrt(3.0)) * (2.0 * noise(key) - 1.0), np.float64)
    y = np.asarray(jax.jit(lambda x: linear(op, w, x))(jnp.asarray(x, jnp.float32)), np.float64)
    counts = conv_correlation(np.ones((1,) + op.in_shape), np.ones((1,) + op.out_shape), 3, 1)
    assert counts[1, 1, 0, 0] == 9 and counts[0, 0, 0, 0] == 4  # centre: every position; corner: 2 x 2
    plain = [{"w": p["w"], "b": p["b"]} for p in params]
    site = bioprop.sites(feedback_model(padded, ACT), plain, jnp.zeros((batch, 50)))[1]["w"]
    np.testing.assert_array_equal(positions(site, jnp.float32), counts)
    np.testing.assert_allclose(mirror, conv_correlation(x, y, 3, 1) / (batch * sigma**2 * counts), rtol=1e-4, atol=1e-5)
    # and its mean over draws is W's kernel
    many = np.mean([mirror_of(jax.random.PRNGKey(k), jnp.zeros((64, 50))) for k in range(40)], axis=0)
    assert float(angle_degrees(many, w)) < 6.0
    assert float(jnp.linalg.norm(many) / jnp.linalg.norm(w)) == pytest.approx(1.0, abs=0.1)


# ----------------------------------------------------------------------------------------------
# Alignment


def _measure(rule_name, *overrides):
    r, params, state = _rule(rule_name, ARCH, *overrides)
    x, y = _batch(n=8)
    measure = jax.jit(lambda *a: measure_alignment(r, ARCH, ACT, LOSS, *a))
    return r, params, state, measure(params, state, x, y, jax.random.PRNGKey(0))


def test_bp_on_a_conv_net_is_aligned_with_itself():
    *_, m = _measure("bp")
    assert np.all(np.asarray(m["layers"]["update_angle"]) < 0.05)
    assert np.all(np.asarray(m["layers"]["delta_angle"]) < 0.05)
    assert np.all(np.isnan(m["layers"]["feedback_angle"]))


def test_fa_conv_feedback_angles_are_those_of_b_and_the_kernels():
    _, params, state, m = _measure("fa")
    layers = m["layers"]
    assert np.isnan(float(layers["feedback_angle"][0]))
    for l in range(1, len(ARCH.layers)):
        reference = transport(ARCH.layers[l].op, params[l]["w"])
        assert float(layers["feedback_angle"][l]) == pytest.approx(float(angle_degrees(state[l], reference)), abs=1e-3)
        assert float(layers["feedback_norm_ratio"][l]) == pytest.approx(
            float(jnp.linalg.norm(state[l]) / jnp.linalg.norm(params[l]["w"])), rel=1e-5)
    assert float(layers["update_angle"][-1]) < 0.05 and float(layers["update_angle"][0]) > 1.0


@pytest.mark.parametrize("target", ["pooled", "pooled_conv", "pre_pool"])
def test_dfa_conv_feedback_is_compared_with_the_linearised_path(target):
    """D_l (pooled_conv's kernel as the matrix of its projection, e.g. a kernel under layer 1's conv) against
    backprop's linear path to where D_l delivers the error: the pooled output, or the pre-activation."""
    _, params, state, m = _measure("dfa", ("feedback.dfa_target", target))
    for l in range(len(ARCH.layers) - 1):
        assert state[l].ndim == 2  # pooled_conv's kernel too, expanded at init (rules/base.direct_matrix)
        want = float(angle_degrees(state[l], transport_path(ARCH, params, l, target != "pre_pool")))
        assert float(m["layers"]["feedback_angle"][l]) == pytest.approx(want, abs=1e-3)


# ----------------------------------------------------------------------------------------------
# Training


SMALL_CNN = [("model.arch", "cnn"), ("model.cnn.channels", [2]), ("model.cnn.kernels", [3]), ("model.cnn.strides", [1]),
             ("model.cnn.paddings", [0]), ("model.cnn.pools", ["max"]), ("model.cnn.dense", [8])]


# Every rule's estimate and measurement on conv nets is tested above; training runs the same loop for
# all of them, so end to end: LeNet with fa, and a small conv net with the rules whose state differs
# (dfa's direct matrices, wm's learned feedback among the parameters). Each run costs its compilation:
# LeNet's is slow (the small conv net's runs cover the loop; LeNet's sizes: tests/models/test_layers.py).
@pytest.mark.parametrize("rule,network", [pytest.param("fa", [("model.arch", "lenet")], marks=pytest.mark.slow),
                                          ("dfa", SMALL_CNN), ("wm", SMALL_CNN)])
def test_conv_nets_train_end_to_end(tmp_path, rule, network):
    """The run's files against a recomputation from its stored parameters: the test accuracy of the
    saved network, and the last update angles of the rule's estimate against jax.grad on the probe
    batch (the angles by numpy's arccos: not the measurement's own code)."""
    from bioprop_cli.network import architecture, init_state
    from bioprop_cli.rules.base import model_functions
    from bioprop_cli.runs import RunWriter, load_params, read_jsonl
    from bioprop_cli.splits import make_splits, seed_probe
    from bioprop_cli.train import train
    from helpers import make_fake_dataset

    config = load_config(overrides=[("rule", rule), ("train.epochs", 1), ("train.batch_size", 50),
                                    ("data.validation_size", 50), ("alignment.probe_size", 16)] + network)
    dataset = make_fake_dataset(n_train=150, n_test=50)
    summary = train(config, dataset, RunWriter(tmp_path))
    lenet = config.model.arch == "lenet"
    assert summary["status"] == "completed"
    assert summary["architecture"] == ("conv6@5x5p2-max2-conv16@5x5-max2-120-84-10" if lenet else "conv2@3x3-max2-8-10")
    assert summary["layer_sizes"] == ([784, 14 * 14 * 6, 5 * 5 * 16, 120, 84, 10] if lenet else [784, 13 * 13 * 2, 8, 10])
    alignment = read_jsonl(tmp_path / "alignment.jsonl")
    per_layer = [a for a in alignment if a["epoch"] == 1 and a["layer"] != "all"]
    assert [a["layer"] for a in per_layer] == list(range(5 if lenet else 3))
    assert all(math.isfinite(a["feedback_angle"]) for a in (per_layer[:-1] if rule == "dfa" else per_layer[1:]))

    splits = make_splits(config, dataset)
    network_ = architecture(config, splits.x_train.shape[1])
    rule_, _, state = init_state(config, network_, config.seed, splits.x_train.shape[0])
    params = load_params(tmp_path)
    act, loss = model_functions(config)
    x, labels, _ = seed_probe(splits, config.seed, config.alignment.probe_size)
    y = jax.nn.one_hot(labels, 10)

    @jax.jit  # one program for the recomputation, not one per operation
    def recomputed(params, state, x_test, x, y):
        logits = forward(network_, params, x_test, act).logits
        estimate = (rule_.gradient_estimate or rule_.estimate)(params, state, x, y, jax.random.PRNGKey(0)).grads
        exact = jax.grad(lambda p: loss.value(forward(network_, p, x, act).logits, y))(params)
        return logits, estimate, exact

    logits, estimate, exact = recomputed(params, state, splits.x_test, x, y)
    predicted = np.argmax(np.asarray(logits), axis=1)
    assert summary["test_accuracy"] == pytest.approx(float(np.mean(predicted == np.asarray(splits.y_test))), abs=1e-6)
    for logged, mine, theirs in zip(per_layer, estimate, exact):
        u, v = np.ravel(mine["w"]).astype(np.float64), np.ravel(theirs["w"]).astype(np.float64)
        angle = np.degrees(np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1)))
        assert logged["update_angle"] == pytest.approx(angle, abs=0.05), (logged["layer"], logged["update_angle"], angle)


def test_rules_that_run_on_mlps_only_refuse_conv_nets():
    from bioprop_cli.errors import UserError
    from bioprop_cli.rules import check_config

    with pytest.raises(UserError, match="pc runs on model.arch mlp only"):
        check_config(load_config(overrides=[("rule", "pc"), ("model.arch", "lenet")]))


def test_layer_lr_counts_the_conv_nets_layers():
    from bioprop_cli.errors import UserError

    assert load_config(overrides=[("model.arch", "lenet"), ("optimizer.layer_lr", [1, 1, 1, 1, 0.5])])
    with pytest.raises(UserError, match=r"optimizer.layer_lr.*5 for model.arch lenet"):
        load_config(overrides=[("model.arch", "lenet"), ("optimizer.layer_lr", [1, 0.5])])


def test_the_memory_check_counts_conv_parameters(monkeypatch):
    from bioprop_cli.errors import UserError

    need = 4 * 6 * 61_706  # float32 x PARAMETER_COPIES x LeNet's weights and biases
    monkeypatch.setattr("bioprop_cli.config.host_memory_bytes", lambda: need - 1)
    with pytest.raises(UserError, match="'model.arch': lenet is too large: 61,706 parameters"):
        load_config(overrides=[("model.arch", "lenet")])
    monkeypatch.setattr("bioprop_cli.config.host_memory_bytes", lambda: need)
    assert load_config(overrides=[("model.arch", "lenet")]).model.arch == "lenet"


def test_conv_flops_by_hand():
    from bioprop_cli.rules import flops

    lenet = archs.lenet((28, 28, 1), 10)
    passes = [2 * 28 * 28 * 25 * 1 * 6, 2 * 10 * 10 * 25 * 6 * 16, 2 * 400 * 120, 2 * 120 * 84, 2 * 84 * 10]
    assert [flops.layer_pass(layer.op) for layer in lenet.layers] == passes
    assert flops.chained(lenet) == 2 * sum(passes) + sum(passes[1:])  # no error sent below the first layer
    assert flops.direct(lenet, load_config()) == 2 * sum(passes) + 2 * 10 * (14 * 14 * 6 + 5 * 5 * 16 + 120 + 84)  # pooled
    pre_pool, pooled_conv = (load_config(overrides=[("feedback.dfa_target", t)]) for t in ("pre_pool", "pooled_conv"))
    assert flops.direct(lenet, pre_pool) == 2 * sum(passes) + 2 * 10 * (28 * 28 * 6 + 10 * 10 * 16 + 120 + 84)
    # pooled_conv: conv 16's 10 x 10 grid, its 5 x 5 kernel over 6 channels, 10 error channels
    assert flops.direct(lenet, pooled_conv) == 2 * sum(passes) + 2 * 10 * 10 * 25 * 6 * 10 + 2 * 10 * (5 * 5 * 16 + 120 + 84)
    assert flops.mirrored(lenet) == flops.chained(lenet) + 2 * sum(passes[1:])
