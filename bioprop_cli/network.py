"""One way to build a network: the parameters and rule state a run starts training from.

Training (train.build_program's init) and every study (conditions, jtranspose, the beta and
condition sweeps) call `init_state`, so a study measures the network a run with the same config
and seed trains. The keys come from train.derive_keys(seed) (passed in: train imports this module).
"""

from __future__ import annotations

from bioprop_cli.models.mlp import init_params
from bioprop_cli.rules import LearningRule, make_rule


def init_state(config, sizes: tuple[int, ...], keys, n_train: int = 0) -> tuple[LearningRule, list, object]:
    """(rule, params, rule state) at initialisation: params drawn from keys.params (with the rule's
    own trainable parameters, e.g. a learned feedback, from keys.rule), the rule state from keys.rule
    and the INITIAL params (ep's random feedback takes their norm; fa draws its B). `config` may carry
    traced batched values (config.with_values); n_train: the training split's size (per-example state)."""
    rule = make_rule(config, sizes, n_train)
    init = config.model.init
    params = init_params(keys.params, sizes, init.scheme, init.scale)
    if rule.init_params is not None:
        params = rule.init_params(keys.rule, params)
    return rule, params, rule.init(keys.rule, params)
