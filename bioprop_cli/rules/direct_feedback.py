"""dfa: direct feedback alignment (Nøkland 2016, NeurIPS, "Direct feedback alignment provides
learning in deep neural networks").

The output error e = dLoss/dz goes straight to every hidden layer through a fixed random D_l:
delta_l = reshape(e @ D_l) * f'(a_l) for a dense layer, with D_l of shape (n_out, units) (row-vector
convention; the paper's B_l is its transpose, hidden width x n_out). No layer-to-layer backward chain.
On a conv layer, feedback.dfa_target says where D_l delivers e (rules/base.direct_deltas):
- pooled (default): a dense D_l onto the layer's output after its pooling, then exactly back through
  the pooling and f', delta_l = pool_vjp(e D_l) * f'(a_l): Nøkland's code places its ErrorFeedback
  module after SpatialMaxPooling (anokland/dfa-torch, Models/conv.lua);
- pooled_conv: the same place, but D_l is a kernel (k, k, C_l, n_out) of the next conv layer's size,
  the error tiled over that layer's output grid and sent back by its transposed convolution (biotorch,
  jsalbert/biotorch, biotorch/layers/dfa/conv.py: the backward hook of each conv layer replaces the
  gradient at its input); below a dense layer, as pooled;
- pre_pool: a dense D_l onto the pre-activation a_l, every unit of it (also those max pooling
  discards), gated by f'(a_l) only.
D_l is zero-mean, `feedback.distribution`, std = feedback.scale * (initial std of the output layer's
weights), since D_l stands where W_{L-1}^T would stand for the last hidden layer (for every target;
Nøkland draws U(+-1/sqrt(units)), biotorch xavier_uniform_ of its (n_out, C_in, k, k) tensor).
"""

import jax

from bioprop.rules import sample
from bioprop_cli.rules.base import LearningRule, direct_feedback_shape, feedback_rule, feedback_std, model_functions


def make(config, arch, n_train: int = 0) -> LearningRule:
    act, loss = model_functions(config)
    n_layers = len(arch.layers)
    std = feedback_std(config, arch, n_layers - 1)
    target = config.feedback.dfa_target
    shapes = [direct_feedback_shape(arch, l, arch.sizes[-1], target) for l in range(n_layers - 1)]

    def init(key, params):
        keys = jax.random.split(key, n_layers - 1)
        return [sample(k, shape, std, config.feedback.distribution) for k, shape in zip(keys, shapes)]

    return feedback_rule(arch, act, loss, init=init, matrices=lambda params, state, key: state, direct=target)
