"""bioprop's rules on bioprop_cli's MLP and LeNet, written with the library's layers, give bioprop_cli's
updates (same params, the same feedback arrays taken from the bioprop_cli rule's state), and their
feedback is bioprop_cli's."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bioprop
from bioprop_cli.config import load_config
from bioprop_cli.models.layers import feedback_model, init_params, transport
from bioprop_cli.models.mlp import ACTIVATIONS, LOSSES
from bioprop_cli.network import architecture
from bioprop_cli.rules import make_rule
from bioprop_cli.rules.base import feedback_std

ACT, LOSS = ACTIVATIONS["tanh"], LOSSES["cross_entropy"]
MLP = [("model.arch", "mlp"), ("model.depth", 2), ("model.width", 16)]
LENET = [("model.arch", "lenet")]


def cli_model(arch, pre_pool=False):
    """bioprop_cli's stack on bioprop's layers (models/layers.feedback_model, what make_stack trains); pre_pool:
    each layer's direct feedback tapped before the pooling below it (feedback.dfa_target pre_pool). The tests
    below check what make_stack adds around it: its state and feedback in the library's layout, its keys."""
    return feedback_model(arch, ACT, tap=pre_pool)


def loss(logits, y):
    return LOSS.value(logits, y)


MASK = lambda params: [{"w": l > 0, "b": False} for l in range(len(params))]  # bioprop_cli: no feedback into x


def setup(rule_name, arch_overrides, *overrides, n=4):
    config = load_config(overrides=[("rule", rule_name)] + arch_overrides + list(overrides))
    arch = architecture(config)
    cli = make_rule(config, arch)
    params = init_params(jax.random.PRNGKey(0), arch, "lecun_normal", 1.0)
    if cli.init_params is not None:
        params = cli.init_params(jax.random.PRNGKey(5), params)
    state = cli.init(jax.random.PRNGKey(5), params)
    kx, ky = jax.random.split(jax.random.PRNGKey(1))
    x = jax.random.normal(kx, (n, arch.sizes[0]))
    y = jax.nn.one_hot(jax.random.randint(ky, (n,), 0, 10), 10)
    return config, arch, cli, params, state, x, y


def as_library(per_layer):
    """bioprop_cli's [None, B_1, ..., B_{L-1}] as a pytree like kernels(params, MASK)."""
    return [{"w": b, "b": None} for b in per_layer]


def plain(params):
    return [{"w": p["w"], "b": p["b"]} for p in params]


def _close(a, b, tol=1e-5):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


def library_state(name, cli_params, cli_state):
    if name in ("fa", "frsf"):
        return as_library(cli_state)
    if name in ("kp", "wm"):
        return as_library([None] + [p["fb"] for p in cli_params[1:]])
    if name == "dfa":
        return as_library([None] + list(cli_state))  # bioprop_cli's D_l feeds hidden layer l: layer l + 1's input
    return ()


def given(rule, feedback):
    """The rule with its feedback replaced by fixed arrays (brsf: bioprop_cli's draw of this step)."""
    return rule._replace(feedback=lambda kernels, state, key: feedback)


ARCHS = {"mlp": MLP, "lenet": LENET}
RULE_NAMES = ["bp", "fa", "usf", "frsf", "brsf", "kp", "wm", "dfa"]


@pytest.mark.parametrize("arch_name", ARCHS)
@pytest.mark.parametrize("name", RULE_NAMES)
def test_the_library_update_is_bioprop_cli_s(name, arch_name):
    config, arch, cli, params, state, x, y = setup(name, ARCHS[arch_name])
    key = jax.random.PRNGKey(7)
    rule = bioprop.rule(name)
    if name == "brsf":
        from bioprop.rules import fast_uniform  # the step's |R_l|: uniform on [0, sqrt(3) std], layer l's key

        keys = jax.random.split(key, len(params))
        magnitudes = [math.sqrt(3.0) * feedback_std(config, arch, l) * fast_uniform(keys[l], p["w"].shape)
                      for l, p in enumerate(params)]
        matrices = [None] + [transport(l.op, m * jnp.sign(p["w"])) for l, m, p in
                             zip(arch.layers[1:], magnitudes[1:], params[1:])]
        rule = given(rule, as_library(matrices))
    lib_state = library_state(name, params, state)
    out = jax.jit(lambda p, s, x, y: bioprop.update(rule, cli_model(arch), loss, p, s, key, x, y, mask=MASK(p)))(
        plain(params), lib_state, x, y)
    want = jax.jit(lambda p, s: cli.estimate(p, s, x, y, key))(params, state)
    _close(out.grads, plain(want.grads))
    np.testing.assert_allclose(out.loss, want.loss, rtol=1e-6)
    if name == "kp":  # B's update: W's transposed plus B's decay, as bioprop_cli's step
        _close(out.feedback_grads, as_library([None] + [g["fb"] for g in want.grads[1:]]))


@pytest.mark.parametrize("name", ["usf", "frsf", "fa"])
def test_the_library_feedback_is_bioprop_cli_s(name):
    config, arch, cli, params, state, x, y = setup(name, LENET)
    kernels = bioprop.kernels(plain(params), MASK(params))
    lib = bioprop.rule(name).feedback(kernels, library_state(name, params, state), None)
    cli_fb = cli.feedback(params, state, None)
    _close(lib, as_library([None] + [cli_fb[l][0] for l in range(1, len(params))]), 0)


def test_dfa_pre_pool_is_a_tap_before_the_pooling():
    config, arch, cli, params, state, x, y = setup("dfa", LENET, ("feedback.dfa_target", "pre_pool"))
    key = jax.random.PRNGKey(7)
    out = jax.jit(lambda p, s: bioprop.update(bioprop.rule("dfa"), cli_model(arch, pre_pool=True), loss, p, s, key,
                                              x, y, mask=MASK(p)))(plain(params), library_state("dfa", params, state))
    _close(out.grads, plain(jax.jit(lambda p, s: cli.estimate(p, s, x, y, key))(params, state).grads))


@pytest.mark.parametrize("pre_pool", [False, True])
def test_dfa_draws_d_of_the_delivery_point_s_shape(pre_pool):
    config, arch, cli, params, state, x, y = setup("dfa", LENET, ("feedback.dfa_target", "pre_pool" if pre_pool else "pooled"))
    lib = bioprop.init(bioprop.rule("dfa", scale=2.0), jax.random.PRNGKey(0), cli_model(arch, pre_pool), plain(params),
                       x, MASK(params))
    assert lib[0]["w"] is None
    assert [lib[l]["w"].shape for l in range(1, len(params))] == [s.shape for s in state]
    std = 2.0 / math.sqrt(84)  # scale x the output layer's initial (lecun) std, as bioprop_cli's
    assert float(jnp.std(lib[1]["w"])) == pytest.approx(std, rel=0.05)


def test_brsf_redraws_signed_magnitudes_every_step():
    config, arch, cli, params, state, x, y = setup("brsf", [("model.arch", "mlp"), ("model.depth", 1)])
    kernels = bioprop.kernels(plain(params), MASK(params))
    rule = bioprop.rule("brsf")
    first, second = (rule.feedback(kernels, (), jax.random.PRNGKey(k)) for k in (0, 1))
    w = params[1]["w"]  # (256, 10)
    limit = math.sqrt(3.0) / math.sqrt(w.shape[0])
    b = first[1]["w"]
    assert b.shape == w.T.shape
    assert bool(jnp.all(jnp.sign(b) == jnp.sign(w.T))) and float(jnp.max(jnp.abs(b))) <= limit
    assert float(jnp.mean(jnp.abs(b))) == pytest.approx(limit / 2, rel=0.05)  # |R| uniform on [0, sqrt(3) std]
    assert not bool(jnp.allclose(b, second[1]["w"]))


def test_wm_learns_its_feedback_toward_w():
    config, arch, cli, params, state, x, y = setup("wm", MLP, n=64)
    rule = bioprop.rule("wm", decay=0.5, mirror_lr_scale=0.5)
    lib_state = library_state("wm", params, state)
    out = jax.jit(lambda p, s: bioprop.update(rule, cli_model(arch), loss, p, s, jax.random.PRNGKey(0), x, y,
                                              mask=MASK(p)))(plain(params), lib_state)
    for l in (1, 2):  # decay B - scale M, M ~ W^T: (B - W^T) / 2 up to the mirror's noise
        step = out.feedback_grads[l]["w"]
        target = 0.5 * (lib_state[l]["w"] - params[l]["w"].T)
        cos = jnp.vdot(step, target) / (jnp.linalg.norm(step) * jnp.linalg.norm(target))
        assert float(cos) > 0.9


def test_measure_compares_the_error_delivered_at_a_tap_with_backprop_s():
    """dfa pre_pool on LeNet: at each tap (f(a_l), before the pooling) the rule delivers e @ D; backprop's
    error there is dLoss/da_l / f'(a_l)."""
    from bioprop_cli.metrics.alignment import exact_gradients
    from bioprop_cli.models.layers import forward

    config, arch, cli, params, state, x, y = setup("dfa", LENET, ("feedback.dfa_target", "pre_pool"))
    report = jax.jit(lambda p, s: bioprop.measure(bioprop.rule("dfa"), cli_model(arch, pre_pool=True), loss, p, s,
                                                  None, x, y, MASK(p)))(plain(params), library_state("dfa", params, state))
    fwd = forward(arch, plain(params), x, ACT)
    e = LOSS.error(fwd.logits, y)
    _, deltas = jax.jit(lambda p: exact_gradients(arch, p, x, y, ACT, LOSS))(plain(params))
    for l in range(len(params) - 1):
        exact = deltas[l] / ACT.df(fwd.pre[l])
        np.testing.assert_allclose(report["tap"]["angle"][l + 1]["w"], bioprop.angle_degrees(e @ state[l], exact),
                                   atol=1e-3)
    assert report["tap"]["angle"][0]["w"] is None
