"""The network at a seed, its probe, in a precision: what every measuring study starts from
(`conditions`, `sweep condition`, `jtranspose`, `sweep beta`, `sweep pc`).

The network is drawn in float32 from the seed (network.init_state: the one a run with that config
and seed trains) or trained from it (studies/seeds.py); `--x64` casts that float32 network to
float64, the same weights in higher precision, and measures with JAX's 64-bit mode on (`measuring`).
The probe batch is the one training draws from the seed (splits.seed_probe), its labels one-hot in
the measuring dtype (`batch`); the measurement's key is the seed's probe key folded with 7.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp

from bioprop_cli.data import as_float
from bioprop_cli.datasets.registry import num_classes
from bioprop_cli.network import architecture, init_state
from bioprop_cli.precision import cast_floats, float64
from bioprop_cli.splits import derive_keys, seed_probe


@contextlib.contextmanager
def measuring(x64: bool) -> Iterator[Any]:
    """The measuring dtype: float64 with JAX's 64-bit mode on inside the block (`x64`), else float32."""
    if not x64:
        yield jnp.float32
        return
    with float64():
        yield jnp.float64


def batch(x, labels, n_classes: int, dtype) -> tuple[jax.Array, jax.Array]:
    """Images (uint8 pixels scaled to [0, 1]) and integer labels as a measuring batch: x in `dtype`, the
    labels one-hot over the dataset's n_classes in `dtype`."""
    return jnp.asarray(as_float(x), dtype), jax.nn.one_hot(jnp.asarray(labels), n_classes, dtype=dtype)


@dataclass(frozen=True)
class Probe:
    """A network at a seed on its probe batch, in the measuring dtype."""

    rule: Any
    params: Any
    state: Any
    x: jax.Array
    y: jax.Array
    idx: jax.Array  # the probe's positions in the training split (per-example rule state)
    key: jax.Array


@contextlib.contextmanager
def seed_network_probe(config, splits, seed: int, probe_size: int, x64: bool, params=None,
                       check: Callable[[Any, Any], None] = lambda params, initial: None) -> Iterator[Probe]:
    """The config's network initialised from `seed` (or `params`, e.g. a run's trained ones, checked
    against the initial ones by `check`, with the rule state as training started it: ep's random
    feedback takes the INITIAL params' norm) and its probe of `probe_size` training examples, both
    drawn in float32, then cast to the measuring dtype; measure inside the block (`measuring(x64)`)."""
    n_train, n_in = splits.x_train.shape
    rule, initial, state = init_state(config, architecture(config, n_in), seed, n_train)
    if params is None:
        params = initial
    else:
        check(params, initial)
    px, py, idx = seed_probe(splits, seed, probe_size)
    with measuring(x64) as dtype:
        x, y = batch(px, py, num_classes(config), dtype)
        yield Probe(rule, cast_floats(params, dtype), cast_floats(state, dtype), x, y, idx,
                    jax.random.fold_in(derive_keys(seed).probe, 7))
