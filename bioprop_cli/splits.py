"""What a run draws from its seed and its dataset: the PRNG keys, the splits on the device, the probe batch.

Training (train.py), the benchmark and every study (bioprop_cli/studies/) take these from here, so a
study measures on the examples, and with the keys, that a run with the same config and seed uses.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bioprop_cli.config import Config, check_against_data


class Keys(NamedTuple):
    params: jax.Array
    rule: jax.Array
    data: jax.Array  # data order: epoch e uses fold_in(data, e)
    steps: jax.Array  # per-step randomness of a rule (brsf): fold_in(steps, global step)
    probe: jax.Array


def derive_keys(seed: int) -> Keys:
    return Keys(*jax.random.split(jax.random.PRNGKey(seed), 5))


class Splits(NamedTuple):
    """Arrays on the device. Evaluation splits are padded to whole chunks, with a mask."""

    x_train: jax.Array
    y_train: jax.Array
    x_val: jax.Array
    y_val: jax.Array
    mask_val: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    mask_test: jax.Array


def _pad(x: np.ndarray, y: np.ndarray, chunk: int):
    n = len(x)
    padded = max(chunk, -(-n // chunk) * chunk)
    mask = np.zeros(padded, np.float32)
    mask[:n] = 1.0
    x = np.concatenate([x, np.zeros((padded - n,) + x.shape[1:], x.dtype)])
    y = np.concatenate([y, np.zeros(padded - n, y.dtype)])
    return jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask)


def make_splits(config: Config, dataset) -> Splits:
    """Training split, validation split (held out from the end of the training set), test split."""
    d = config.data
    n_total = min(len(dataset.x_train), d.train_limit or len(dataset.x_train))
    n_train = check_against_data(config, len(dataset.x_train))
    x, y = dataset.x_train[:n_total], dataset.y_train[:n_total]
    n_test = min(len(dataset.x_test), d.test_limit or len(dataset.x_test))
    chunk = config.train.eval_batch_size
    val = _pad(x[n_train:], y[n_train:], min(chunk, max(1, n_total - n_train)))
    test = _pad(dataset.x_test[:n_test], dataset.y_test[:n_test], min(chunk, n_test))
    return Splits(jnp.asarray(x[:n_train]), jnp.asarray(y[:n_train]), *val, *test)


def probe_indices(key, n: int, size: int):
    """The positions in the training split (of n examples) of the probe batch drawn from `key`."""
    return jax.random.permutation(key, n)[: min(size, n)]


def draw_probe(key, x_train, y_train, size: int):
    """The fixed probe batch of alignment measurements: `size` training examples drawn from `key`;
    (x, y, their positions in the training split)."""
    idx = probe_indices(key, x_train.shape[0], size)
    return x_train[idx], y_train[idx], idx


def probe_batch(config: Config, splits: Splits, keys: Keys):
    """(x, y, positions) of the probe batch training measures on."""
    return draw_probe(keys.probe, splits.x_train, splits.y_train, config.alignment.probe_size)


def seed_probe(splits: Splits, seed: int, size: int):
    """(x, y, positions): `size` training examples drawn from the seed's probe key, as training draws its probe."""
    return draw_probe(derive_keys(seed).probe, splits.x_train, splits.y_train, size)
