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

from bioprop.rules import fast_uniform  # brsf's counter-based hash (wm's noise imports it from here)
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
