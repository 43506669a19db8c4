"""bp: backpropagation, the reference. Errors go back through transport(W) = W^T (dense) or the
transposed convolution with W's kernel (equals jax.grad; tested)."""

from bioprop_cli.models.layers import transport
from bioprop_cli.rules.base import LearningRule, feedback_rule, model_functions


def make(config, arch, n_train: int = 0) -> LearningRule:
    act, loss = model_functions(config)
    ops = [layer.op for layer in arch.layers]
    return feedback_rule(
        arch,
        act,
        loss,
        init=lambda key, params: (),
        matrices=lambda params, state, key: [None] + [transport(op, p["w"]) for op, p in zip(ops[1:], params[1:])],
        separate_feedback=False,
    )
