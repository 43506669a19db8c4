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
layer with jax.grad of the same network with exact layers (models/graph.EXACT), in the same train-mode pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import bioprop
from bioprop_cli.metrics.angles import angle_degrees, norm_ratio
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


def probed(ops: Ops, probes: list) -> Ops:
    """ops whose i-th call adds probes[i] (zeros) to the layer's output: the gradient w.r.t. probes[i] is the
    error that layer's output receives (its delta)."""
    count = [0]

    def add(out):
        i = count[0]
        count[0] += 1
        return out + probes[i]

    return Ops(lambda x, w, b, fb: add(ops.dense(x, w, b, fb)),
               lambda x, w, b, fb, s, p: add(ops.conv(x, w, b, fb, s, p)))


def make_measure(config, network: Network, rule: LearningRule):
    """measure(params, state, x, y, key, idx=None) -> {"layers": {name: (L,)}, "network": {name: ()}}, the
    records train.py writes (metrics/alignment.py names them) over the network's weight layers in forward order."""
    loss = LOSSES[config.model.loss]
    lib_rule = library_rule(config)
    learned = config.rule in LEARNED

    @full_float32
    def measure(params, state, x, y, key, idx=None):
        net = network_params(params)
        zeros = [jnp.zeros((x.shape[0],) + w.out_shape, x.dtype) for w in network.weights]

        def exact(p, probes):
            logits, _ = network.apply(p, state["stats"], [None] * len(zeros), x, True, probed(EXACT, probes))
            return loss.value(logits, y)

        true_grads, true_deltas = jax.grad(exact, argnums=(0, 1))(net, zeros)
        est = (rule.gradient_estimate or rule.estimate)(params, state, x, y, key)
        deltas = _rule_deltas(lib_rule, network, net, params["fb"] if learned else state["feedback"], state["stats"],
                              x, y, key, loss, zeros)
        ours = [g["w"] for g in est.grads["layers"]]
        exact_w = [g["w"] for g in true_grads["layers"]]
        layers = {
            "update_angle": jnp.stack([angle_degrees(a, b) for a, b in zip(ours, exact_w)]),
            "update_rel_error": jnp.stack([_relative_error(a, b) for a, b in zip(ours, exact_w)]),
            "delta_angle": jnp.stack([angle_degrees(a, b) for a, b in zip(deltas, true_deltas)]),
        }
        fb_angle = fb_ratio = jnp.full((len(ours),), jnp.nan)
        for l, (b, reference) in rule.feedback(params, state, key).items():
            fb_angle = fb_angle.at[l].set(angle_degrees(b, reference))
            fb_ratio = fb_ratio.at[l].set(norm_ratio(b, reference))
        layers.update(feedback_angle=fb_angle, feedback_norm_ratio=fb_ratio)
        flat = lambda ws: jnp.concatenate([jnp.ravel(w) for w in ws])
        network_record = {
            "update_angle": angle_degrees(flat(ours), flat(exact_w)),
            "update_rel_error": _relative_error(flat(ours), flat(exact_w)),
            "mean_update_angle": jnp.mean(layers["update_angle"][:-1]),  # the output layer's update is exact
        }
        return {"layers": layers, "network": network_record}

    return measure


def _relative_error(estimate, exact):
    return jnp.linalg.norm(jnp.ravel(estimate - exact)) / jnp.linalg.norm(jnp.ravel(exact))


def _rule_deltas(rule, network, net, fb_state, stats, x, y, key, loss, zeros) -> list:
    """The error the rule delivers to each weight layer's output (the gradient w.r.t. a zero added there,
    through the library's layers with the rule's feedback)."""
    fb = bioprop.feedback_arrays(rule, net, fb_state, key)
    ops = LIBRARY
    if rule.direct:
        silent = jax.tree_util.tree_map(lambda d: None, fb)
        logits = network.apply(net, stats, weights(silent), x, True, ops)[0]
        e = jax.grad(loss.value)(logits, y)
        fb = jax.tree_util.tree_map(lambda d: bioprop.Direct(d, e), fb)

    def value(probes):
        logits, _ = network.apply(net, stats, weights(fb), x, True, probed(ops, probes))
        return loss.value(logits, y)

    return jax.grad(value)(zeros)
