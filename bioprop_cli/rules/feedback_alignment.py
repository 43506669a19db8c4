"""fa: feedback alignment (Lillicrap, Cownden, Tweed & Akerman 2016, Nat. Commun. 7:13276).

Each layer's error goes back through a fixed random matrix B_l of the shape of W_l^T:
delta_l = (delta_{l+1} @ B_{l+1}) * f'(a_l). B_l is drawn once from the run's seed, zero-mean,
`feedback.distribution` (normal or uniform), std = feedback.scale * (initial std of W_l).
"""

import jax

from bioprop_cli.models.mlp import sample
from bioprop_cli.rules.base import LearningRule, feedback_rule, feedback_std, model_functions


def random_feedback(key, config, sizes) -> list:
    """[None, B_1, ..., B_{L-1}] with B_l of shape (n_{l+1}, n_l)."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [None] + [
        sample(keys[l], (sizes[l + 1], sizes[l]), feedback_std(config, sizes, l), config.feedback.distribution)
        for l in range(1, len(sizes) - 1)
    ]


def make(config, sizes, n_train: int = 0) -> LearningRule:
    act, loss = model_functions(config)
    return feedback_rule(
        act,
        loss,
        init=lambda key, params: random_feedback(key, config, sizes),
        matrices=lambda params, state, key: state,
    )
