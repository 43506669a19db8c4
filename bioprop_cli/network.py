"""One way to build a network: the parameters and rule state a run starts training from.

Training (train.build_program's init) and every study (bioprop_cli/studies/) call `init_state`, so
a study measures the network a run with the same config and seed trains.
"""

from __future__ import annotations

import math

from bioprop_cli.errors import UserError
from bioprop_cli.models import arch, graph
from bioprop_cli.models.layers import init_params
from bioprop_cli.rules import LearningRule, make_rule
from bioprop_cli.splits import derive_keys


def architecture(config, n_in: int | None = None) -> arch.Architecture:
    """The config's network (model.arch) on its dataset's images (arch.of_config), one output per class.

    n_in: the number of features of the data the network will read, where known. An MLP reads flat
    inputs of any size (its first layer takes the data's); a conv net reads the dataset's images and
    refuses data of another size."""
    network = arch.of_config(config)
    if n_in is None or n_in == math.prod(network.input_shape):
        return network
    if config.model.arch != "mlp":
        shape = "x".join(map(str, network.input_shape))
        raise UserError(f"config key 'model.arch': {config.model.arch} reads {shape} images, "
                        f"the data has {n_in} features per example")
    return arch.build(config.model, (n_in,), network.sizes[-1])


def init_state(config, network: arch.Architecture, seed, n_train: int = 0) -> tuple[LearningRule, list, object]:
    """(rule, params, rule state) at initialisation, from the keys of `seed` (splits.derive_keys;
    the seed may be traced): params drawn from keys.params (with the rule's own trainable parameters,
    e.g. a learned feedback, from keys.rule), the rule state from keys.rule and the INITIAL params
    (ep's random feedback takes their norm; fa draws its B). `config` may carry traced batched values
    (config.with_values); network: the architecture (`architecture(config)`); n_train: the training
    split's size (per-example state)."""
    keys = derive_keys(seed)
    rule = make_rule(config, network, n_train)
    init = config.model.init
    if arch.is_library(network):  # resnet, vgg: {"layers", "norms"} (models/graph.py)
        params = graph.init_params(keys.params, network, init.scheme, init.scale)
    else:
        params = init_params(keys.params, network, init.scheme, init.scale, init.bias)
    if rule.init_params is not None:
        params = rule.init_params(keys.rule, params)
    return rule, params, rule.init(keys.rule, params)
