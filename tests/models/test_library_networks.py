"""The CLI's rule on networks built on the library's layers (rules/library.py, resnet and vgg): its update against
jax.grad of the same network, BatchNorm's running statistics through the training loop, and `bioprop train`."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

import bioprop
from bioprop_cli.cli import app
from bioprop_cli.config import load_config
from bioprop_cli.models import graph
from bioprop_cli.models.graph import EXACT, Ops
from bioprop_cli.models.mlp import LOSSES, init_std
from bioprop_cli.network import architecture, init_state
from bioprop_cli.precision import float64
from bioprop_cli.runs import read_jsonl
from bioprop_cli.train import build_program
from tests.conftest import make_fake_dataset

TINY = [("model.arch", "resnet"), ("model.resnet.depth", 8), ("model.resnet.width", 4)]


def setup(rule: str, extra=()):
    """A ResNet-8 of width 4 on MNIST-shaped inputs, its rule, params, state and a batch of 6 (float64)."""
    config = load_config(overrides=[("rule", rule), *TINY, *extra])
    network = architecture(config, 784)
    rule_impl, params, state = init_state(config, network, 0)
    params, state = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64), (params, state))
    params = {**params, "norms": [{"scale": 1 + 0.1 * jnp.arange(n["scale"].size), "bias": 0.05 * jnp.arange(n["bias"].size)}
                                  for n in params["norms"]]}  # BatchNorm's affine part away from (1, 0)
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 784), jnp.float64)
    y = jax.nn.one_hot(jnp.array([0, 3, 3, 7, 9, 1]), 10, dtype=jnp.float64)
    return config, network, rule_impl, params, state, x, y


def exact(network, params, stats, x, y):
    """jax.grad of the exact network (BatchNorm in train mode), its loss and running statistics."""
    return jax.jit(lambda *args: _exact(network, *args))(params, stats, x, y)


def _exact(network, params, stats, x, y):
    def value(p):
        logits, new = network.apply(p, stats, [None] * len(network.weights), x, True, EXACT)
        return LOSSES["cross_entropy"].value(logits, y), new

    (loss, new_stats), grads = jax.value_and_grad(value, has_aux=True)(params)
    return loss, grads, new_stats


def assert_close(a, b, rtol=1e-10):
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=1e-13), a, b)


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_bp_is_jax_grad_of_the_resnet_with_batchnorm_in_train_mode(shortcut):
    with float64():
        _, network, rule, params, state, x, y = setup("bp", [("model.resnet.shortcut", shortcut)])
        est = jax.jit(rule.estimate)(params, state, x, y, jax.random.PRNGKey(2))
        loss, grads, stats = exact(network, params, state["stats"], x, y)
        assert_close(est.grads, grads)
        assert_close(est.state["stats"], stats)
        assert float(est.loss) == pytest.approx(float(loss), rel=1e-12)


def test_fa_with_b_set_to_w_transposed_is_jax_grad():
    with float64():
        _, network, rule, params, state, x, y = setup("fa")
        transported = jax.tree_util.tree_map(bioprop.transport, bioprop.kernels({"layers": params["layers"], "norms": params["norms"]}))
        state = {**state, "feedback": transported}
        est = jax.jit(rule.estimate)(params, state, x, y, jax.random.PRNGKey(2))
        _, grads, _ = exact(network, params, state["stats"], x, y)
        assert_close(est.grads, grads)
        # and with its own random B it is not
        _, _, rule, params, state, x, y = setup("fa")
        own = jax.jit(rule.estimate)(params, state, x, y, jax.random.PRNGKey(2))
        assert not np.allclose(own.grads["layers"][0]["w"], grads["layers"][0]["w"])


def test_usf_is_the_library_layers_called_by_hand():
    """usf's B_l = s_l sign(W_l) in transport's layout, s_l = feedback.scale x W_l's initial std (lecun_normal: 1 /
    sqrt(fan_in)); the network run with bioprop.dense / bioprop.conv given those B by hand, differentiated by jax.grad."""
    with float64():
        config, network, rule, params, state, x, y = setup("usf")
        est = jax.jit(rule.estimate)(params, state, x, y, jax.random.PRNGKey(2))
        fb = [bioprop.transport(init_std("lecun_normal", 1.0, *layer.fans) * jnp.sign(p["w"]))
              for layer, p in zip(network.weights, params["layers"])]
        ops = Ops(bioprop.dense, lambda x, w, b, f, s, p: bioprop.conv(x, w, b, f, stride=s, padding=p))

        def value(p):
            logits, _ = network.apply(p, state["stats"], fb, x, True, ops)
            return LOSSES["cross_entropy"].value(logits, y)

        assert_close(est.grads, jax.jit(jax.grad(value))(params))
        _, grads, _ = exact(network, params, state["stats"], x, y)
        assert not np.allclose(est.grads["layers"][1]["w"], grads["layers"][1]["w"])  # not backprop


def test_bp_measures_zero_angles_and_fa_does_not():
    from bioprop_cli.metrics.measure import make_measure

    for rule_name, zero in (("bp", True), ("usf", False)):
        with float64():
            config, network, rule, params, state, x, y = setup(rule_name)
            measured = jax.jit(make_measure(config, network, rule))(params, state, x, y, jax.random.PRNGKey(3))
        angles = np.asarray(measured["layers"]["update_angle"])
        assert angles.shape == (len(network.weights),)
        assert np.all(angles[:-1] < 1e-4) == zero
        assert np.asarray(measured["layers"]["delta_angle"])[-1] < 1e-2  # the output layer's error is the loss's


def test_the_training_loop_moves_the_running_statistics_and_kps_feedback_and_evaluation_reads_them():
    config = load_config(overrides=[("rule", "kp"), *TINY, ("train.batch_size", 16), ("train.epochs", 1),
                                     ("alignment.probe_size", 8), ("data.validation_size", 0)])
    data = make_fake_dataset(n_train=64, n_test=32)
    program = build_program(config, 64, 784)
    state = program.init(0)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    probe_x, probe_y = x[:8], y[:8]
    from bioprop_cli.splits import derive_keys

    new, _ = program.epoch(state, x, y, probe_x, probe_y, derive_keys(0), 0)
    before, after = state.rule_state["stats"], new.rule_state["stats"]
    assert all(not np.allclose(a["mean"], b["mean"]) for a, b in zip(before, after))
    learned = [(a["w"], b["w"]) for a, b in zip(state.params["fb"]["layers"], new.params["fb"]["layers"])]
    assert len(learned) == len(program.arch.weights) and all(not np.allclose(a, b) for a, b in learned)
    network = program.arch
    xt, yt = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    mask = jnp.ones(32)
    _, accuracy, _ = program.evaluate(new, xt, yt, mask)
    logits, _ = network.apply(new.params, after, [None] * len(network.weights), xt, False, EXACT)
    assert float(accuracy) == pytest.approx(float(jnp.mean(jnp.argmax(logits, -1) == yt)))
    with_init_stats, _ = network.apply(new.params, before, [None] * len(network.weights), xt, False, EXACT)
    assert not np.allclose(logits, with_init_stats)


@pytest.mark.slow  # three compilations of a ResNet-20: 44 s and 111 s measured on the shared 2-core machine
def test_bioprop_train_usf_resnet20_logs_every_conv_layer(mnist_dir, tmp_path):
    """`bioprop train --rule usf --set model.arch=resnet` (ResNet-20 at width 4, a few hundred MNIST images)."""
    result = CliRunner().invoke(app, [
        "train", "--rule", "usf", "--set", "model.arch=resnet", "--set", "model.resnet.width=4", "--epochs", "1",
        "--batch-size", "32", "--no-progress", "--data-dir", mnist_dir, "--results-dir", str(tmp_path),
        "--set", "data.train_limit=300", "--set", "data.validation_size=100", "--set", "data.test_limit=100",
        "--set", "alignment.probe_size=32"])
    assert result.exit_code == 0, (result.output, result.exception)
    [run] = list(tmp_path.glob("*/*usf-resnet20*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["architecture"] == "resnet20-A-w4"
    lines = [r for r in read_jsonl(run / "alignment.jsonl") if r["layer"] != "all"]
    network = architecture(load_config(run / "config.yaml"), 784)
    convs = [l for l, w in enumerate(network.weights) if w.kind == "conv"]
    assert len(convs) == 19
    for epoch in (0, 1):
        measured = {r["layer"]: r for r in lines if r["epoch"] == epoch}
        assert sorted(measured) == list(range(20))
        for l in convs:
            assert all(math.isfinite(measured[l][k]) for k in ("update_angle", "delta_angle", "feedback_angle"))
    stored = np.load(run / "params.npz")
    assert "layers.0.w" in stored.files and "norms.0.scale" in stored.files

