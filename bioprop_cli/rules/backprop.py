"""bp: backpropagation, the reference. Errors go back through W^T (equals jax.grad; tested)."""

from bioprop_cli.rules.base import LearningRule, feedback_rule, model_functions


def make(config, sizes, n_train: int = 0) -> LearningRule:
    act, loss = model_functions(config)
    return feedback_rule(
        act,
        loss,
        init=lambda key, params: (),
        matrices=lambda params, state, key: [None] + [layer["w"].T for layer in params[1:]],
        separate_feedback=False,
    )
