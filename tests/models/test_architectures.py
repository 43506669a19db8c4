"""The architecture registry, the ResNet and VGG networks (models/resnet.py, models/vgg.py) and BatchNorm."""

from __future__ import annotations

import math
import typing
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bioprop_cli.config import ModelConfig, load_config
from bioprop_cli.errors import UserError
from bioprop_cli.models import arch, graph, resnet
from bioprop_cli.models.graph import EXACT, batch_norm
from bioprop_cli.precision import float64
from bioprop_cli.rules import check_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_the_registry_lists_every_architecture_and_the_config_accepts_exactly_those():
    assert list(arch.ARCHITECTURES) == ["mlp", "lenet", "cnn", "resnet", "vgg"]
    allowed = typing.get_args(typing.get_type_hints(ModelConfig)["arch"])
    assert allowed == tuple(arch.ARCHITECTURES)


@pytest.mark.parametrize("depth, published", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)])
def test_resnet_parameter_counts_are_the_papers(depth, published):
    """He et al. 2016, Table 6 (and biotorch's small_resnet.py docstring): 0.27M ... 1.7M, option A."""
    network = resnet.build((32, 32, 3), 10, depth)
    assert round(network.n_params / 1e6, 2 if depth < 100 else 1) == published
    # 2 + 6n weight layers: the stem, two convs per block, the dense layer
    assert len(network.weights) == depth


def test_resnet20_count_by_hand():
    """Convs without bias: 3*3*3*16 + 6 * 9*16*16 (stage 1) + 9*16*32 + 5 * 9*32*32 + 9*32*64 + 5 * 9*64*64;
    BatchNorm's scale and shift: 2 x (16 + 6*16 + 6*32 + 6*64); dense 64*10 + 10."""
    convs = 27 * 16 + 6 * 9 * 16 * 16 + 9 * 16 * 32 + 5 * 9 * 32 * 32 + 9 * 32 * 64 + 5 * 9 * 64 * 64
    norms = 2 * (16 + 6 * 16 + 6 * 32 + 6 * 64)
    assert resnet.build((32, 32, 3), 10, 20).n_params == convs + norms + 650 == 269_722


def test_resnet_shortcut_b_adds_two_projections_and_their_batchnorm():
    a, b = resnet.build((32, 32, 3), 10, 20, "A"), resnet.build((32, 32, 3), 10, 20, "B")
    extra = [w for w in b.weights if w.name.endswith("shortcut")]
    assert [w.weight_shape for w in extra] == [(1, 1, 16, 32), (1, 1, 32, 64)]
    assert [w.stride for w in extra] == [2, 2]
    assert b.n_params - a.n_params == 16 * 32 + 32 * 64 + 2 * (32 + 64)


def test_resnet_on_mnist_halves_28_to_14_to_7():
    network = resnet.build((28, 28, 1), 10, 20)
    shapes = {w.name: w.out_shape for w in network.weights}
    assert shapes["conv0"] == (28, 28, 16)
    assert shapes["stage2.block0.conv1"] == (14, 14, 32)
    assert shapes["stage3.block2.conv2"] == (7, 7, 64)
    assert shapes["fc"] == (10,)


@pytest.mark.parametrize("name, shapes", [
    ("vgg5_pcx", [(3, 3, 3, 128), (3, 3, 128, 256), (3, 3, 256, 512), (3, 3, 512, 512), (2048, 10)]),
    ("vgg7_pcx", [(3, 3, 3, 128), (3, 3, 128, 128), (3, 3, 128, 256), (3, 3, 256, 256), (3, 3, 256, 512),
                  (3, 3, 512, 512), (512, 10)]),
    ("vgg_laborieux", [(3, 3, 3, 128), (3, 3, 128, 256), (3, 3, 256, 512), (3, 3, 512, 512), (512, 10)]),
])
def test_named_vgg_configs_have_their_documented_layer_shapes(name, shapes):
    config = load_config(CONFIGS / "models" / f"{name}.yaml", [("data.dataset", "cifar10")])
    network = arch.of_config(config)
    assert [w.weight_shape for w in network.weights] == shapes
    logits = jax.eval_shape(lambda x: network.apply(_init(network), [], [None] * len(shapes), x, True, EXACT)[0],
                            jax.ShapeDtypeStruct((2, 32 * 32 * 3), jnp.float32))
    assert logits.shape == (2, 10)


def _init(network):
    return graph.init_params(jax.random.PRNGKey(0), network, "glorot_uniform", 1.0)


def test_vgg_forward_runs_with_batchnorm():
    config = load_config(overrides=[("model.arch", "vgg"), ("model.vgg.channels", [2, 3]), ("model.vgg.paddings", [1, 0]),
                                     ("model.vgg.pools", ["max", "none"]), ("model.vgg.dense", [5]),
                                     ("model.vgg.norm", "batch"), ("model.activation", "relu")])
    network = arch.of_config(config)
    assert [w.weight_shape for w in network.weights] == [(3, 3, 1, 2), (3, 3, 2, 3), (12 * 12 * 3, 5), (5, 10)]  # 28 -> 28 -> 14 -> 12
    assert [w.bias for w in network.weights] == [False, False, True, True]
    params = _init(network)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 784))
    logits, stats = network.apply(params, graph.init_stats(network), [None] * 4, x, True, EXACT)
    assert logits.shape == (4, 10) and len(stats) == 2


def test_batch_norm_train_and_eval_as_torch():
    """torch.nn.BatchNorm2d(momentum=0.1, eps=1e-5): training normalises with the batch mean and BIASED
    variance over (N, H, W) and moves running_var towards the UNBIASED one (n / (n - 1)); eval uses the
    running statistics. Hand-computed with numpy, float64."""
    with float64():
        rng = np.random.default_rng(0)
        x = rng.normal(2.0, 3.0, (4, 3, 3, 2))
        p = {"scale": np.array([1.5, 0.5]), "bias": np.array([0.1, -0.2])}
        stats = {"mean": np.array([0.3, -0.1]), "var": np.array([2.0, 0.5])}
        y, new = batch_norm(jnp.asarray(x), p, stats, train=True)
        flat = x.reshape(-1, 2)
        n = flat.shape[0]
        mean, biased = flat.mean(0), flat.var(0)
        np.testing.assert_allclose(y, (x - mean) / np.sqrt(biased + 1e-5) * p["scale"] + p["bias"], rtol=1e-12)
        np.testing.assert_allclose(new["mean"], 0.9 * stats["mean"] + 0.1 * mean, rtol=1e-12)
        np.testing.assert_allclose(new["var"], 0.9 * stats["var"] + 0.1 * biased * n / (n - 1), rtol=1e-12)
        y_eval, same = batch_norm(jnp.asarray(x), p, new, train=False)
        np.testing.assert_allclose(y_eval, (x - new["mean"]) / np.sqrt(new["var"] + 1e-5) * p["scale"] + p["bias"],
                                   rtol=1e-12)
        assert same is new


def test_resnet_eval_mode_reads_the_running_statistics():
    network = resnet.build((8, 8, 1), 10, 8, width=4)
    params = _init(network)
    x = jax.random.normal(jax.random.PRNGKey(2), (6, 64))
    stats = graph.init_stats(network)
    train_logits, new_stats = network.apply(params, stats, [None] * len(network.weights), x, True, EXACT)
    assert all(not np.allclose(s["mean"], 0) for s in new_stats)
    eval_fresh, unchanged = network.apply(params, stats, [None] * len(network.weights), x, False, EXACT)
    eval_moved, _ = network.apply(params, new_stats, [None] * len(network.weights), x, False, EXACT)
    assert unchanged == stats
    assert not np.allclose(eval_fresh, eval_moved) and not np.allclose(eval_fresh, train_logits)


def test_option_a_shortcut_is_subsampled_and_zero_padded():
    """A ResNet-8 whose convolutions are all zero: each block is relu(bn(0) + shortcut(x)) = relu(shift + x);
    with BatchNorm's shift 0 the stem's output passes the blocks unchanged except for option A's subsampling
    and zero channels, so the pooled features are the stem's, subsampled, in the middle channels."""
    network = resnet.build((8, 8, 1), 10, 8, width=4)
    params = _init(network)
    layers = [dict(p, w=jnp.zeros_like(p["w"])) if i > 0 else p for i, p in enumerate(params["layers"])]
    params = {"layers": layers, "norms": params["norms"]}
    x = jax.random.normal(jax.random.PRNGKey(3), (5, 64))
    capture = {}

    def dense(h, w, b, fb):
        capture["pooled"] = h
        return EXACT.dense(h, w, b, fb)

    network.apply(params, graph.init_stats(network), [None] * len(layers), x, True, EXACT._replace(dense=dense))
    stem = jax.nn.relu(batch_norm(EXACT.conv(x.reshape(5, 8, 8, 1), layers[0]["w"], None, None, 1, 1),
                                  params["norms"][0], graph.init_stats(network)[0], True)[0])
    sub = stem[:, ::2, ::2, :][:, ::2, ::2, :]  # two stride-2 stages: 8 -> 4 -> 2
    expected = jnp.zeros((5, 16)).at[:, 6:10].set(jnp.mean(sub, axis=(1, 2)))  # 4 -> 8 (pad 2) -> 16 (pad 4)
    np.testing.assert_allclose(capture["pooled"], expected, atol=1e-6)


@pytest.mark.parametrize("key, value, message", [
    ("model.resnet.depth", 21, "model.resnet.depth"),
    ("model.resnet.shortcut", "C", "model.resnet.shortcut"),
    ("model.resnet.width", 3, "model.resnet.width"),
    ("model.vgg.paddings", [1], "model.vgg.paddings"),
    ("model.vgg.pools", ["avg", "max", "max", "max"], "model.vgg.pools"),
])
def test_bad_architecture_keys_are_one_line_errors(key, value, message):
    arch_name = key.split(".")[1]
    with pytest.raises(UserError) as e:
        load_config(overrides=[("model.arch", arch_name), (key, value)])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_vgg_that_pools_away_its_image_is_refused():
    with pytest.raises(UserError, match="model.vgg"):
        load_config(overrides=[("model.arch", "vgg"), ("model.vgg.channels", [2] * 6),
                               ("model.vgg.paddings", [0] * 6), ("model.vgg.pools", ["max"] * 6)])


@pytest.mark.parametrize("rule", ["ep", "pc"])
def test_energy_and_pc_rules_refuse_library_networks(rule):
    config = load_config(overrides=[("rule", rule), ("model.arch", "resnet")])  # types and ranges: fine
    with pytest.raises(UserError) as e:
        check_config(config)  # the registry's word, where a command starts
    assert "model.arch" in str(e.value) and "\n" not in str(e.value)


def test_layer_lr_is_refused_on_library_networks():
    with pytest.raises(UserError, match="optimizer.layer_lr"):
        load_config(overrides=[("model.arch", "resnet"), ("model.resnet.depth", 8), ("optimizer.layer_lr", [1.0] * 8)])


def test_label_names_the_resnet_depth():
    assert arch.label(load_config(overrides=[("model.arch", "resnet"), ("model.resnet.depth", 32)]).model) == "resnet32"
    assert math.prod(resnet.build((28, 28, 1), 10, 20).input_shape) == 784


def test_biotorch_resnet20_protocol_and_its_published_errors():
    """configs/experiments/resnet20_cifar10_biotorch.yaml: biotorch's SGD protocol, and Benchmarks.md's ResNet-20
    column in reproduce's `paper:` format, one number per grid point."""
    from bioprop_cli.config import read_yaml
    from bioprop_cli.studies.reproduce import read_paper

    path = CONFIGS / "experiments" / "resnet20_cifar10_biotorch.yaml"
    config = load_config(path)
    assert (config.model.arch, config.model.resnet.depth, config.model.resnet.shortcut) == ("resnet", 20, "A")
    o = config.optimizer
    assert (o.name, o.lr, o.momentum, o.weight_decay) == ("momentum", 0.1, 0.9, 1e-4)
    assert (o.schedule.name, o.schedule.boundaries, o.schedule.decay_rate) == ("step", (100, 150, 200), 0.1)
    assert (config.train.epochs, config.train.batch_size, config.data.augment) == (250, 128, "crop_flip")
    assert arch.of_config(config).n_params == 269_722
    tree = read_yaml(path)
    published = {n.where["rule"]: n.value for n in read_paper(tree["paper"]).published}
    assert published == {"bp": 8.63, "fa": 32.16, "dfa": 45.94, "usf": 10.05, "brsf": 11.02, "frsf": 11.2}
    assert set(published) == set(tree["sweep"]["grid"]["rule"])
