"""A group's runs trained one after another inside one compiled program (train.map_runs, a conv net's way on
a CPU: runs_one_after_another) compute each run's own numbers: per run, the parameters a run trained alone ends with."""

import jax
import jax.numpy as jnp
import numpy as np

from bioprop_cli.config import load_config
from bioprop_cli.splits import derive_keys
from bioprop_cli.train import build_program, map_runs, runs_one_after_another, seed_batched

# LeNet's shape, tiny: a padded single-channel conv (the banded product), max pool, a conv of 2 -> 3 channels
# (XLA's convolution forward, the banded transposed convolution), max pool, dense 4, 10 outputs
TINY_LENET = {"model.arch": "cnn", "model.cnn.channels": [2, 3], "model.cnn.kernels": [5, 5],
              "model.cnn.paddings": [2, 0], "model.cnn.dense": [4], "model.activation": "relu",
              "optimizer.name": "momentum", "train.batch_size": 4, "alignment.probe_size": 4}


def test_map_runs_maps_as_vmap_does():
    f = lambda a, b, c: (a * b + c, {"sum": jnp.sum(a)})
    a, c = jnp.arange(6.0).reshape(3, 2), jnp.ones((3, 2)) / 3
    expected = jax.vmap(f, in_axes=(0, None, 0))(a, 2.5, c)
    got = map_runs(f, in_axes=(0, None, 0))(a, 2.5, c)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(expected)
    for x, y in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(x, y)


def test_conv_nets_run_one_after_another_on_a_cpu_holding_the_group():
    conv = build_program(load_config(overrides=list(TINY_LENET.items())), 8, 784).arch
    mlp = build_program(load_config(overrides=[("model.width", 4)]), 8, 784).arch
    assert runs_one_after_another(conv, None) == (jax.default_backend() == "cpu")
    assert not runs_one_after_another(conv, object())  # sharded over devices: vmapped
    assert not runs_one_after_another(mlp, None)


def _two_steps(batched, seeds):
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.random((8, 784), np.float32)), jnp.asarray(rng.integers(0, 10, 8), jnp.int32)
    seeds = jnp.asarray(seeds, jnp.int32)
    keys = jax.vmap(derive_keys)(seeds)
    probe = batched.probe(keys.probe, x, y)
    state, _ = batched.chunk(batched.init(seeds, {}), x, y, *probe, keys, batched.order(keys, 0), 0, 0)
    return state.params


def test_lenet_shaped_seeds_one_after_another_equal_each_seed_alone():
    config = load_config(overrides=[("rule", "fa")] + list(TINY_LENET.items()))
    program = build_program(config, 8, 784)
    assert program.steps_per_epoch == 2
    together = _two_steps(seed_batched(program, 4, 2, one_after_another=True), [0, 1])
    one_run = seed_batched(program, 4, 1)
    for i, seed in enumerate([0, 1]):
        alone = _two_steps(one_run, [seed])
        for a, b in zip(jax.tree_util.tree_leaves(together), jax.tree_util.tree_leaves(alone)):
            np.testing.assert_array_equal(a[i], b[0])
    first, second = (jax.tree_util.tree_leaves(together)[0][i] for i in (0, 1))
    assert not np.array_equal(first, second)  # the seeds did differ
