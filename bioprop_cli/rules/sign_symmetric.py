"""Sign-symmetric feedback: B_l shares the signs of W_l^T but not its magnitudes.

Liao, Leibo & Poggio 2016 (AAAI, "How important is weight symmetry in backpropagation?");
Xiao, Chen, Liao & Poggio 2018 (arXiv:1811.03567); Moskovitz, Litwin-Kumar & Abbott 2018
(arXiv:1812.06488).

For a conv layer W_l^T reads "W_l's kernel" (the transposed convolution uses it): B_l is a kernel of
the same signs, entry by entry.

- usf:  B_l = s_l * sign(W_l^T), recomputed every step, with the constant
        s_l = feedback.scale * (initial std of W_l), so that |B_l| = |W_l| at initialisation.
- frsf: B_l = |R_l| * sign(W_l^T), magnitudes |R_l| drawn once (fixed random magnitudes).
- brsf: B_l = |R_l^t| * sign(W_l^T), magnitudes redrawn every batch t from the step's key.
R_l has the distribution of fa's feedback: zero-mean, std = feedback.scale * initial std of W_l,
so |R_l| is uniform on [0, sqrt(3) std] (uniform) or half-normal (normal).
"""

import math

import jax
import jax.numpy as jnp
from jax import lax

from bioprop_cli.models.layers import as_weight, transport
from bioprop_cli.rules.base import LearningRule, feedback_rule, feedback_std, model_functions
from bioprop_cli.rules.feedback_alignment import random_feedback


# Magnitudes are kept in W_l's layout ((n_l, n_{l+1}) for a dense layer) and B_l = transport(|R_l| *
# sign(W_l)) is formed there: the transpose then folds into the backward matrix product instead of copying W_l.


def _with_magnitudes(arch, params, magnitudes) -> list:
    return [None] + [transport(layer.op, m * jnp.sign(p["w"]))
                     for layer, m, p in zip(arch.layers[1:], magnitudes[1:], params[1:])]


def make_usf(config, arch, n_train: int = 0) -> LearningRule:
    act, loss = model_functions(config)
    scales = [None] + [feedback_std(config, arch, l) for l in range(1, len(arch.layers))]
    return feedback_rule(
        arch,
        act,
        loss,
        init=lambda key, params: (),
        matrices=lambda params, state, key: [None] + [
            transport(layer.op, s * jnp.sign(p["w"])) for layer, s, p in zip(arch.layers[1:], scales[1:], params[1:])],
    )


def make_frsf(config, arch, n_train: int = 0) -> LearningRule:
    act, loss = model_functions(config)

    def init(key, params):
        drawn = random_feedback(key, config, arch)
        return [None] + [as_weight(layer.op, jnp.abs(r)) for layer, r in zip(arch.layers[1:], drawn[1:])]

    return feedback_rule(
        arch,
        act,
        loss,
        init=init,
        matrices=lambda params, state, key: _with_magnitudes(arch, params, state),
    )


def _mix32(x):
    """A bijective 32-bit integer mixer (the 'lowbias32' constants of C. Wellons' hash prospector)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def fast_uniform(key, shape) -> jax.Array:
    """Uniform floats in (0, 1) from a keyed counter-based hash: mix(mix(i + k0) ^ k1).

    brsf redraws every feedback magnitude at every step; threefry bits for that cost more than
    the step's matrix products on a CPU, this costs about a sixth of them. Two 32-bit keys from
    the step's JAX key make the streams of two steps unrelated (not shifted copies).
    """
    k0, k1 = jax.random.bits(key, (2,), jnp.uint32)
    counter = lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    bits = _mix32(_mix32(counter + k0) ^ k1)
    return ((bits >> 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))


def redrawn_magnitudes(key, config, arch) -> list:
    """|R_l| for l = 1 .. L-1 in W_l's layout, with the distribution of fa's feedback."""
    keys = jax.random.split(key, len(arch.layers))
    magnitudes = [None]
    for l in range(1, len(arch.layers)):
        u = fast_uniform(keys[l], arch.layers[l].op.weight_shape)
        std = feedback_std(config, arch, l)
        if config.feedback.distribution == "uniform":
            magnitudes.append(math.sqrt(3.0) * std * u)
        else:  # half-normal by its inverse CDF: |N(0, std)| = std sqrt(2) erfinv(u)
            magnitudes.append(std * math.sqrt(2.0) * lax.erf_inv(u))
    return magnitudes


def make_brsf(config, arch, n_train: int = 0) -> LearningRule:
    act, loss = model_functions(config)

    def matrices(params, state, key):
        return _with_magnitudes(arch, params, redrawn_magnitudes(key, config, arch))

    return feedback_rule(arch, act, loss, init=lambda key, params: (), matrices=matrices)
