"""The CLI's learning rule for networks built on the library's feedback layers (models/graph.py: resnet, vgg).

The rule itself is the library's (`bioprop.rule(name, ...)`: its feedback, its learned feedback for kp and wm);
this module only adapts it to the CLI's `LearningRule` interface (rules/base.py) and carries BatchNorm's
running statistics through the training state:

    params = {"layers": [...], "norms": [...]}  (+ "fb": the learned feedback of kp and wm, moved by the optimizer
                                                 like any weight, as the layer stacks' kp and wm do)
    state  = {"feedback": the library rule's state (fa's B, frsf's |R|; () for the others),
              "stats": BatchNorm's running statistics (models/graph.py), updated by every training step}

A training step is one forward pass in BatchNorm's train mode (batch statistics) through the library's layers,
whose backward pass is the rule's; its running statistics become the state's. `predict` (evaluation) runs
BatchNorm in eval mode on the running statistics. The measurement compares the rule's update of each weight
layer with jax.grad of the same network in the same train-mode pass (bioprop.measure). The training step is
bioprop.update itself (has_aux: the logits and the running statistics come back with the update), and the
measurement bioprop.measure of the same model: what is measured is what trains.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import bioprop
from bioprop_cli.models.graph import EXACT, Network, Ops, init_stats
from bioprop_cli.models.mlp import LOSSES
from bioprop_cli.precision import full_float32
from bioprop_cli.rules.base import Estimate, LearningRule

RULES = ("bp", "fa", "dfa", "usf", "frsf", "brsf", "kp", "wm")  # the library's feedforward rules
LEARNED = ("kp", "wm")  # their feedback is a trainable parameter (params["fb"])


def _library_conv(x, w, b, fb, stride, padding):
    return bioprop.conv(x, w, b, fb, stride=stride, padding=padding)


LIBRARY = Ops(bioprop.dense, _library_conv)  # the rule's backward pass


def library_rule(config) -> bioprop.Rule:
    """The library's rule config.rule with the config's feedback settings (feedback.*, model.init)."""
    fb, init = config.feedback, config.model.init
    options = {"scale": fb.scale, "distribution": fb.distribution, "scheme": init.scheme.split("_")[0],
               "init_scale": init.scale}
    if config.rule in LEARNED:
        options["decay"] = fb.decay
    if config.rule == "wm":
        options.update(mirror_noise=fb.mirror_noise, mirror_lr_scale=fb.mirror_lr_scale)
    return bioprop.rule(config.rule, **options)


def weights(fb) -> list:
    """The feedback leaf of each weight layer, in order, from a pytree shaped like bioprop.kernels(params)."""
    return [layer["w"] for layer in fb["layers"]]


def network_params(params) -> dict:
    return {"layers": params["layers"], "norms": params["norms"]}


def make(config, network: Network, n_train: int = 0) -> LearningRule:
    rule = library_rule(config)
    loss = LOSSES[config.model.loss]
    learned = config.rule in LEARNED
    example = jnp.zeros((1,) + tuple(network.input_shape))

    def feedback_state(params, state):
        return params["fb"] if learned else state["feedback"]

    def initial_feedback(key, params):
        return bioprop.init(rule, key, training_model(network, init_stats(network)), network_params(params), example)

    def init_params(key, params):
        return {**params, "fb": initial_feedback(key, params)}

    def init(key, params):
        return {"feedback": () if learned else initial_feedback(key, params), "stats": init_stats(network)}

    def estimate(params, state, x, y, key, idx=None):
        up = bioprop.update(rule, training_model(network, state["stats"]), loss.value, network_params(params),
                            feedback_state(params, state), key, x, y, has_aux=True)
        logits, stats = up.aux
        grads = {**up.grads, "fb": up.feedback_grads} if learned else up.grads
        return Estimate(grads, {"feedback": state["feedback"], "stats": stats}, [], up.loss, logits)

    def feedback(params, state, key):
        if config.rule == "bp" or rule.direct:
            return {}
        net = network_params(params)
        fb = weights(bioprop.feedback_arrays(rule, net, feedback_state(params, state), key))
        return {l: (b, bioprop.transport(p["w"])) for l, (b, p) in enumerate(zip(fb, net["layers"]))}

    def predict(params, state, x):
        return network.apply(network_params(params), state["stats"], [None] * len(network.weights), x, False, EXACT)[0]

    return LearningRule(init, estimate, feedback, predict, init_params if learned else None)


def training_model(network: Network, stats):
    """bioprop's model(params, fb, x) with has_aux: (logits, (logits, BatchNorm's running statistics after the
    pass)), BatchNorm in train mode, the feedback layers the library's."""
    def model(params, fb, x):
        logits, new_stats = network.apply(params, stats, weights(fb), x, True, LIBRARY)
        return logits, (logits, new_stats)

    return model


def make_measure(config, network: Network, rule: LearningRule):
    """measure(params, state, x, y, key, idx=None) -> {"layers": {name: (L,)}, "network": {name: ()}}: the
    library's measurement (bioprop.measure: the rule's update, the error each layer's output receives and B, against
    jax.grad of the same network, BatchNorm in train mode; for dfa, D against backprop's batch-mean Jacobian to its
    delivery point) of each weight layer's kernel, in forward order, in the records train.py writes
    (metrics/alignment.py names them). "network" holds mean_update_angle, the mean over the
    layers below the output layer (whose update is exact for every rule here)."""
    loss = LOSSES[config.model.loss]
    lib_rule = library_rule(config)
    learned = config.rule in LEARNED

    @full_float32
    def measure(params, state, x, y, key, idx=None):
        fb_state = params["fb"] if learned else state["feedback"]
        report = bioprop.measure(lib_rule, training_model(network, state["stats"]), loss.value, network_params(params),
                                 fb_state, key, x, y, has_aux=True)
        per_layer = lambda tree: jnp.stack(weights(tree))
        nan = jnp.full((len(network.weights),), jnp.nan)
        feedback = None if config.rule == "bp" else report["feedback"]  # bp's B is W itself: nothing to compare
        layers = {
            "update_angle": per_layer(report["update"]["angle"]),
            "update_rel_error": per_layer(report["update"]["relative_error"]),
            "delta_angle": per_layer(report["signal"]["angle"]),
            "feedback_angle": nan if feedback is None else per_layer(feedback["angle"]),
            "feedback_norm_ratio": nan if feedback is None else per_layer(feedback["norm_ratio"]),
        }
        return {"layers": layers, "network": {"mean_update_angle": jnp.mean(layers["update_angle"][:-1])}}

    return measure
