"""dfa: direct feedback alignment (Nøkland 2016, NeurIPS, "Direct feedback alignment provides
learning in deep neural networks").

The output error e = dLoss/dz goes straight to every hidden layer through a fixed random D_l:
delta_l = reshape(e @ D_l) * f'(a_l), with D_l of shape (n_out, number of units of a_l) (row-vector
convention; the paper's B_l is its transpose, hidden width x n_out), reshaped to a_l's shape (a conv
layer's (H', W', C_out), before its pooling: see rules/base.direct_deltas). No layer-to-layer backward
chain. D_l is zero-mean, `feedback.distribution`, std = feedback.scale * (initial std of the output
layer's weights), since D_l stands where W_{L-1}^T would stand for the last hidden layer.
"""

import math

import jax

from bioprop_cli.models.mlp import sample
from bioprop_cli.rules.base import LearningRule, feedback_rule, feedback_std, model_functions


def make(config, arch, n_train: int = 0) -> LearningRule:
    act, loss = model_functions(config)
    n_layers = len(arch.layers)
    std = feedback_std(config, arch, n_layers - 1)
    n_out = arch.sizes[-1]

    def init(key, params):
        keys = jax.random.split(key, n_layers - 1)
        return [sample(k, (n_out, math.prod(shape)), std, config.feedback.distribution)
                for k, shape in zip(keys, arch.pre_shapes)]

    return feedback_rule(arch, act, loss, init=init, matrices=lambda params, state, key: state, direct=True)
