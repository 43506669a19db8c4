"""model.lenet.linear_fc1: bioprop's lenet as an earlier revision of biotorch's LeNetMNIST (jsalbert/biotorch,
biotorch/models/le_net.py, commit 12b8a2c; the released one has relu4 there, as bioprop's default lenet), with no
activation between its fc1 (84 units) and fc2, checked against a forward pass written here in biotorch's order of
operations, and the rules on it against jax.grad of that forward pass; conv3's fans as biotorch's Conv2d's.
benchmarks/biotorch_one_step.py checks whole SGD steps against biotorch's own code (torch is no dependency)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from typer.testing import CliRunner

from bioprop_cli.cli import app
from bioprop_cli.config import load_config, to_dict
from bioprop_cli.errors import UserError
from bioprop_cli.models.layers import forward, init_params, transport
from bioprop_cli.models.mlp import ACTIVATIONS, LOSSES
from bioprop_cli.network import architecture
from bioprop_cli.rules import check_config, make_rule
from tests.helpers import assert_nothing_written, assert_user_error

BIOTORCH = [("model.arch", "lenet"), ("model.activation", "relu"), ("model.lenet.linear_fc1", True)]
LOSS = LOSSES["cross_entropy"]


@jax.jit  # one program, not one per operation (docs/testing.md)
def biotorch_forward(params, x):
    """LeNetMNIST.forward on a 28x28 image zero-padded to 32x32: conv1, relu, pool; conv2, relu, pool; conv3 (a
    dense 400 -> 120 here), relu; fc1; fc2. NHWC images, HWIO kernels (channel-last flattening)."""
    relu = lambda z: jnp.maximum(z, 0.0)
    max_pool = lambda z: lax.reduce_window(z, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    conv = lambda z, p, pad: lax.conv_general_dilated(z, p["w"], (1, 1), ((pad, pad), (pad, pad)),
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["b"]
    conv1, conv2, conv3, fc1, fc2 = params
    out = max_pool(relu(conv(x.reshape(-1, 28, 28, 1), conv1, 2)))
    out = max_pool(relu(conv(out, conv2, 0)))
    out = relu(out.reshape(out.shape[0], -1) @ conv3["w"] + conv3["b"])
    out = out @ fc1["w"] + fc1["b"]
    return out @ fc2["w"] + fc2["b"]


@pytest.fixture(scope="module")
def problem():
    config = load_config(overrides=[("rule", "bp")] + BIOTORCH)
    arch = architecture(config)
    params = init_params(jax.random.PRNGKey(0), arch, "glorot_uniform", 1.0, "fan_in_uniform")
    kx, ky = jax.random.split(jax.random.PRNGKey(1))
    x = jax.random.normal(kx, (3, 784))
    y = jax.nn.one_hot(jax.random.randint(ky, (3,), 0, 10), 10)
    return arch, params, x, y


def _close(a, b, tol=1e-5):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


def test_the_flag_leaves_the_activation_out_after_the_84_unit_layer_only(problem):
    arch, params, x, _ = problem
    assert [layer.activation for layer in arch.layers] == [True, True, True, False, True]
    assert arch.describe() == "conv6@5x5p2-max2-conv16@5x5-max2-120-84lin-10"
    default = architecture(load_config(overrides=[("model.arch", "lenet")]))
    assert all(layer.activation for layer in default.layers) and "lin" not in default.describe()
    logits = lambda arch: jax.jit(lambda p, x: forward(arch, p, x, ACTIVATIONS["relu"]).logits)(params, x)
    _close(logits(arch), biotorch_forward(params, x))
    # the default network differs from biotorch's (its 84 units pass through relu)
    assert not np.allclose(logits(default), biotorch_forward(params, x))


@jax.jit
def _true_grads(params, x, y):
    return jax.grad(lambda p: LOSS.value(biotorch_forward(p, x), y))(params)


@pytest.mark.parametrize("rule", ["bp", "fa"])
def test_bp_and_fa_with_b_equal_to_w_give_jax_grad_of_biotorch_s_forward(problem, rule):
    arch, params, x, y = problem
    cli = make_rule(load_config(overrides=[("rule", rule)] + BIOTORCH), arch)
    state = cli.init(jax.random.PRNGKey(5), params)
    if rule == "fa":  # B := W (transport's layout): fa is then backprop
        state = [None] + [transport(layer.op, p["w"]) for layer, p in zip(arch.layers[1:], params[1:])]
    est = jax.jit(lambda p, s: cli.estimate(p, s, x, y, jax.random.PRNGKey(2)))(params, state)
    _close(est.grads, _true_grads(params, x, y), tol=2e-5)
    _close(jax.jit(cli.predict)(params, state, x), biotorch_forward(params, x))


def test_the_flag_round_trips_through_the_config_and_ep_refuses_it(tmp_path):
    config = load_config(overrides=[("rule", "fa")] + BIOTORCH)
    assert config.model.lenet.linear_fc1 is True and load_config().model.lenet.linear_fc1 is False
    assert load_config(overrides=[(k, v) for k, v in _flat(to_dict(config))]) == config
    with pytest.raises(UserError, match="model.lenet.linear_fc1") as e:
        check_config(load_config(overrides=[("rule", "ep")] + BIOTORCH + [("model.activation", "hard_sigmoid")]))
    assert "\n" not in str(e.value)
    result = CliRunner().invoke(app, ["train", "--rule", "fa", "--set", "model.lenet.linear_fc1=maybe",
                                      "--results-dir", str(tmp_path / "r")])
    assert_user_error(result, "model.lenet.linear_fc1", "true or false")
    assert_nothing_written(tmp_path / "r")


def _flat(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_dfa_s_tap_delivers_e_d_unscaled_to_the_linear_layer(problem):
    """dfa pre_pool (a tap on f(a_l), here a_l itself): the 84-unit layer's error is e @ D_3 (f' is 1 there: no
    activation), the 120-unit layer's e @ D_2 times relu'(a_2)."""
    arch, params, x, y = problem
    dfa = make_rule(load_config(overrides=[("rule", "dfa"), ("feedback.dfa_target", "pre_pool")] + BIOTORCH), arch)
    state = dfa.init(jax.random.PRNGKey(5), params)
    est = jax.jit(lambda p, s: dfa.gradient_estimate(p, s, x, y, None))(params, state)
    fwd = jax.jit(lambda p, x: forward(arch, p, x, ACTIVATIONS["relu"]))(params, x)
    e = LOSS.error(fwd.logits, y)
    _close(est.deltas[3], e @ state[3])
    _close(est.deltas[2], (e @ state[2]) * (fwd.pre[2] > 0))


def test_conv3_has_the_5x5_convolution_s_fans_in_its_init_and_in_fa_s_and_usf_s_feedback(problem):
    """biotorch's conv3 is nn.Conv2d(16, 120, 5): xavier_uniform_ reads fans (16*25, 120*25) = (400, 3000), for
    W, fa's B and usf's scaling_factor alike; bioprop's dense 400 -> 120 in its place has the same fans (issue 26;
    the dense shape's (400, 120) would make all three 2.56x larger)."""
    arch, params, _, _ = problem
    assert [layer.op.fans for layer in arch.layers] == [(25, 150), (150, 400), (400, 3000), (120, 84), (84, 10)]
    bound = np.sqrt(6.0 / 3400)  # Xavier uniform's limit, sqrt(3) times its std sqrt(2 / 3400)
    w = np.asarray(params[2]["w"])
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound  # 48,000 draws reach the limit
    glorot = BIOTORCH + [("model.init.scheme", "glorot_uniform")]  # biotorch's "xavier" (the LeNet configs')
    fa = make_rule(load_config(overrides=[("rule", "fa")] + glorot), arch)
    b = np.asarray(fa.init(jax.random.PRNGKey(5), params)[2])
    assert b.shape == (120, 400) and bound * 0.99 < np.abs(b).max() <= bound
    usf = make_rule(load_config(overrides=[("rule", "usf")] + glorot), arch)
    fb = usf.feedback(params, usf.init(jax.random.PRNGKey(5), params), jax.random.PRNGKey(6))
    _close(fb[2][0], np.sqrt(2.0 / 3400) * np.sign(w).T, tol=1e-7)
    _close(fb[3][0], np.sqrt(2.0 / 204) * np.sign(np.asarray(params[3]["w"])).T, tol=1e-7)  # a dense layer's own
