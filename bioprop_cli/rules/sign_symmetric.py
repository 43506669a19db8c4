"""Sign-symmetric feedback: B_l shares the signs of W_l^T but not its magnitudes.

Liao, Leibo & Poggio 2016 (AAAI, "How important is weight symmetry in backpropagation?");
Xiao, Chen, Liao & Poggio 2018 (arXiv:1811.03567); Moskovitz, Litwin-Kumar & Abbott 2018
(arXiv:1812.06488).

- usf:  B_l = s_l * sign(W_l^T), recomputed every step, with the constant
        s_l = feedback.scale * (initial std of W_l), so that |B_l| = |W_l| at initialisation.
- frsf: B_l = |R_l| * sign(W_l^T), magnitudes |R_l| drawn once (fixed random magnitudes).
- brsf: B_l = |R_l^t| * sign(W_l^T), magnitudes redrawn every batch t from the step's key.
R_l has the distribution of fa's feedback: zero-mean, std = feedback.scale * initial std of W_l.
"""

import jax
import jax.numpy as jnp

from bioprop_cli.rules.base import LearningRule, feedback_rule, feedback_std, model_functions
from bioprop_cli.rules.feedback_alignment import random_feedback


def _signs(params) -> list:
    return [None] + [jnp.sign(layer["w"].T) for layer in params[1:]]


def _with_magnitudes(params, magnitudes) -> list:
    return [None] + [m * s for m, s in zip(magnitudes[1:], _signs(params)[1:])]


def make_usf(config, sizes) -> LearningRule:
    act, loss = model_functions(config)
    scales = [None] + [feedback_std(config, sizes, l) for l in range(1, len(sizes) - 1)]
    return feedback_rule(
        act,
        loss,
        init=lambda key, params: (),
        matrices=lambda params, state, key: [None] + [s * b for s, b in zip(scales[1:], _signs(params)[1:])],
    )


def make_frsf(config, sizes) -> LearningRule:
    act, loss = model_functions(config)
    return feedback_rule(
        act,
        loss,
        init=lambda key, params: [None] + [jnp.abs(r) for r in random_feedback(key, config, sizes)[1:]],
        matrices=lambda params, state, key: _with_magnitudes(params, state),
    )


def make_brsf(config, sizes) -> LearningRule:
    act, loss = model_functions(config)

    def matrices(params, state, key):
        magnitudes = [None] + [jnp.abs(r) for r in random_feedback(key, config, sizes)[1:]]
        return _with_magnitudes(params, magnitudes)

    return feedback_rule(act, loss, init=lambda key, params: (), matrices=matrices)
