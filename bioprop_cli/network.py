"""One way to build a network: the parameters and rule state a run starts training from.

Training (train.build_program's init) and every study (bioprop_cli/studies/) call `init_state`, so
a study measures the network a run with the same config and seed trains.
"""

from __future__ import annotations

from bioprop_cli.data import NUM_CLASSES
from bioprop_cli.models import arch, layers
from bioprop_cli.models.mlp import init_params, layer_sizes
from bioprop_cli.rules import LearningRule, make_rule
from bioprop_cli.splits import derive_keys


def architecture(config) -> arch.Architecture:
    """The config's network (model.arch) on its dataset's images, NUM_CLASSES outputs (arch.of_config)."""
    return arch.of_config(config)


def sizes_for(config, n_in: int) -> tuple[int, ...]:
    """The layer sizes of the config's network on inputs of n_in features (NUM_CLASSES outputs)."""
    return layer_sizes(n_in, config.model.depth, config.model.width, NUM_CLASSES)


def init_state(config, sizes: tuple[int, ...], seed, n_train: int = 0) -> tuple[LearningRule, list, object]:
    """(rule, params, rule state) at initialisation, from the keys of `seed` (splits.derive_keys;
    the seed may be traced): params drawn from keys.params (with the rule's own trainable parameters,
    e.g. a learned feedback, from keys.rule), the rule state from keys.rule and the INITIAL params
    (ep's random feedback takes their norm; fa draws its B). `config` may carry traced batched values
    (config.with_values); n_train: the training split's size (per-example state)."""
    keys = derive_keys(seed)
    rule = make_rule(config, sizes, n_train)
    init = config.model.init
    if config.model.arch == "mlp":
        params = init_params(keys.params, sizes, init.scheme, init.scale)
    else:  # bridge (h-convep) until init_state takes the architecture (the layer-wise re-foundation)
        params = layers.init_params(keys.params, architecture(config), init.scheme, init.scale)
    if rule.init_params is not None:
        params = rule.init_params(keys.rule, params)
    return rule, params, rule.init(keys.rule, params)
