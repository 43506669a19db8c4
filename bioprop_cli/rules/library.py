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
layer with jax.grad of the same network in the same train-mode pass (bioprop.measure). The training step is the
library's estimate (bioprop.estimate, bioprop.update) with BatchNorm's statistics kept: tested equal to
bioprop.update, so that what is measured is what trains.
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

    def model(stats, ops=LIBRARY):
        """bioprop's model(params, fb, x) -> (logits, running statistics after the pass), BatchNorm in train mode."""
        return lambda p, fb, x: network.apply(p, stats, weights(fb), x, True, ops)

    def objective(stats, x, y):
        def value(p, fb):
            logits, new_stats = model(stats)(p, fb, x)
            return loss.value(logits, y), (logits, new_stats)

        return value

    def feedback_state(params, state):
        return params["fb"] if learned else state["feedback"]

    def initial_feedback(key, params):
        net = network_params(params)
        return bioprop.init(rule, key, lambda p, fb, x: model(init_stats(network))(p, fb, x)[0], net, example)

    def init_params(key, params):
        return {**params, "fb": initial_feedback(key, params)}

    def init(key, params):
        return {"feedback": () if learned else initial_feedback(key, params), "stats": init_stats(network)}

    def gradient(params, state, x, y, key, idx=None, with_learning=True):
        net = network_params(params)
        fb_state = feedback_state(params, state)
        fb = bioprop.feedback_arrays(rule, net, fb_state, key)
        value = objective(state["stats"], x, y)
        if rule.direct:  # the output error first (a pass whose layers send nothing), then D carries it
            silent = jax.tree_util.tree_map(lambda d: None, fb)
            logits = model(state["stats"])(net, silent, x)[0]
            e = jax.grad(loss.value)(logits, y)
            direct = jax.tree_util.tree_map(lambda d: bioprop.Direct(d, e), fb)
            grads, (logits, stats) = jax.grad(lambda p: value(p, direct), has_aux=True)(net)
            loss_value, hebbian = loss.value(logits, y), None
        else:
            (loss_value, (logits, stats)), (grads, hebbian) = jax.value_and_grad(
                value, argnums=(0, 1), has_aux=True)(net, fb)
        new_params = dict(grads)
        if rule.learn is not None:
            sites = bioprop.sites(lambda p, f, x: model(state["stats"])(p, f, x)[0], net, x) if rule.needs_sites else None
            extra, state_grads = rule.learn(bioprop.kernels(net), fb_state, hebbian, key, sites)
            if extra is not None and with_learning:
                new_params = jax.tree_util.tree_map(lambda g, e: g if e is None else g + e, grads, extra,
                                                    is_leaf=lambda v: v is None)
            new_params["fb"] = state_grads
        new_state = {"feedback": state["feedback"], "stats": stats}
        return Estimate(new_params, new_state, [], loss_value, logits)

    def estimate(params, state, x, y, key, idx=None):
        return gradient(params, state, x, y, key, idx)

    def gradient_estimate(params, state, x, y, key, idx=None):
        """The estimate of the loss gradient alone (kp's and wm's decay left out), for the measurements."""
        return gradient(params, state, x, y, key, idx, with_learning=False)

    def feedback(params, state, key):
        if config.rule == "bp" or rule.direct:
            return {}
        net = network_params(params)
        fb = weights(bioprop.feedback_arrays(rule, net, feedback_state(params, state), key))
        return {l: (b, bioprop.transport(p["w"])) for l, (b, p) in enumerate(zip(fb, net["layers"]))}

    def predict(params, state, x):
        return network.apply(network_params(params), state["stats"], [None] * len(network.weights), x, False, EXACT)[0]

    return LearningRule(init, estimate, feedback, predict, init_params if learned else None,
                        gradient_estimate if learned else None)


def make_measure(config, network: Network, rule: LearningRule):
    """measure(params, state, x, y, key, idx=None) -> {"layers": {name: (L,)}, "network": {name: ()}}: the
    library's measurement (bioprop.measure: the rule's update, the error each layer's output receives and B, against
    jax.grad of the same network, BatchNorm in train mode) of each weight layer's kernel, in forward order, in the
    records train.py writes (metrics/alignment.py names them). "network" holds mean_update_angle, the mean over the
    layers below the output layer (whose update is exact for every rule here)."""
    loss = LOSSES[config.model.loss]
    lib_rule = library_rule(config)
    learned = config.rule in LEARNED

    @full_float32
    def measure(params, state, x, y, key, idx=None):
        model = lambda p, fb, x: network.apply(p, state["stats"], weights(fb), x, True, LIBRARY)[0]
        fb_state = params["fb"] if learned else state["feedback"]
        report = bioprop.measure(lib_rule, model, loss.value, network_params(params), fb_state, key, x, y)
        per_layer = lambda tree: jnp.stack(weights(tree))
        nan = jnp.full((len(network.weights),), jnp.nan)
        feedback = report.get("feedback") if config.rule != "bp" else None  # bp's B is W itself: nothing to compare
        layers = {
            "update_angle": per_layer(report["update"]["angle"]),
            "update_rel_error": per_layer(report["update"]["relative_error"]),
            "delta_angle": per_layer(report["signal"]["angle"]),
            "feedback_angle": nan if feedback is None else per_layer(feedback["angle"]),
            "feedback_norm_ratio": nan if feedback is None else per_layer(feedback["norm_ratio"]),
        }
        return {"layers": layers, "network": {"mean_update_angle": jnp.mean(layers["update_angle"][:-1])}}

    return measure
