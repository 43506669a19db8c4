"""fa: feedback alignment (Lillicrap, Cownden, Tweed & Akerman 2016, Nat. Commun. 7:13276).

Each layer's error goes back through a fixed random B_l in place of W_l: delta_l = (delta_{l+1} @ B_{l+1})
* f'(a_l) with B_l of the shape of W_l^T for a dense layer; for a conv layer B_l is a kernel of W_l's
shape and the error goes back by the transposed convolution with it (rules/base.py). B_l is drawn once
from the run's seed, zero-mean, `feedback.distribution` (normal or uniform), std = feedback.scale *
(initial std of W_l).
"""

import jax

from bioprop_cli.models.layers import feedback_shape
from bioprop.rules import sample
from bioprop_cli.rules.base import LearningRule, feedback_rule, feedback_std, model_functions


def random_feedback(key, config, arch) -> list:
    """[None, B_1, ..., B_{L-1}] in transport's layout: (n_{l+1}, n_l) for a dense layer, W_l's
    kernel shape for a conv layer."""
    layers = arch.layers
    keys = jax.random.split(key, len(layers))
    return [None] + [
        sample(keys[l], feedback_shape(layers[l].op), feedback_std(config, arch, l), config.feedback.distribution)
        for l in range(1, len(layers))
    ]


def make(config, arch, n_train: int = 0) -> LearningRule:
    act, loss = model_functions(config)
    return feedback_rule(
        arch,
        act,
        loss,
        init=lambda key, params: random_feedback(key, config, arch),
        matrices=lambda params, state, key: state,
    )
