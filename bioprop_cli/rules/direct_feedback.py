"""dfa: direct feedback alignment (Nøkland 2016, NeurIPS, "Direct feedback alignment provides
learning in deep neural networks").

The output error e = dLoss/dz goes straight to every hidden layer through a fixed random D_l:
delta_l = (e @ D_l) * f'(a_l), with D_l of shape (n_out, n_{l+1}) (row-vector convention; the
paper's B_l is its transpose, hidden width x n_out). No layer-to-layer backward chain.
D_l is zero-mean, `feedback.distribution`, std = feedback.scale * (initial std of the output
layer's weights), since D_l stands where W_{L-1}^T would stand for the last hidden layer.
"""

import jax

from bioprop_cli.models.mlp import sample
from bioprop_cli.rules.base import LearningRule, feedback_rule, feedback_std, model_functions


def make(config, sizes, n_train: int = 0) -> LearningRule:
    act, loss = model_functions(config)
    n_layers = len(sizes) - 1
    std = feedback_std(config, sizes, n_layers - 1)

    def init(key, params):
        keys = jax.random.split(key, n_layers - 1)
        return [sample(k, (sizes[-1], sizes[l + 1]), std, config.feedback.distribution) for l, k in enumerate(keys)]

    return feedback_rule(act, loss, init=init, matrices=lambda params, state, key: state, direct=True)
