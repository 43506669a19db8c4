"""The CLI's learning rule for every feedforward rule (bp fa dfa usf frsf brsf kp wm) on every network: the layer
stacks mlp, lenet and cnn (models/layers.feedback_model; `make_stack`, below) and the networks of models/graph.py
(resnet, vgg). Their backward pass is the library's (bioprop.dense / bioprop.conv), the only one there is.

For models/graph.py networks:

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
from bioprop.layers import fans
from bioprop.rules import INIT_STD, sample
from bioprop_cli.models.arch import Architecture, is_library
from bioprop_cli.models.graph import EXACT, Network, Ops, init_stats
from bioprop_cli.models.layers import feedback_model, forward
from bioprop_cli.models.mlp import LOSSES
from bioprop_cli.precision import full_float32
from bioprop_cli.rules.base import (Estimate, LearningRule, direct_feedback_shape, direct_matrix, feedback_std,
                                    model_functions, transport_path)

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


def make(config, network: Network | Architecture, n_train: int = 0, rule: bioprop.Rule | None = None) -> LearningRule:
    """The library's rule (default: config.rule's, library_rule) for the network (a layer stack or a
    models/graph.py Network)."""
    rule = rule or library_rule(config)
    if not is_library(network):
        return make_stack(config, network, rule)
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
        if rule.name == "bp" or rule.direct:
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


def with_layer_fans(rule: bioprop.Rule, arch: Architecture, scheme: str) -> bioprop.Rule:
    """The rule with feedback scaled to each layer's own fans where they are not its weight's shape's (LeNet's
    conv3, a dense layer with a convolution's fans: models/arch.Dense.kernel_area): the library draws B (fa,
    frsf, kp, wm: the state, at init) or sizes sign(W) (usf, brsf: each step's feedback) with the std of the
    shape's fans; times std(layer fans) / std(shape fans) it is the layer's initial std, as biotorch's
    xavier_uniform_ and scaling_factor read the Conv2d's fans. The rule itself where every ratio is 1."""
    ratios = [INIT_STD[scheme](*layer.op.fans) / INIT_STD[scheme](*fans(layer.op.weight_shape))
              for layer in arch.layers]
    if rule.direct or rule.name == "bp" or all(r == 1.0 for r in ratios):
        return rule

    def scaled(tree):
        return [jax.tree_util.tree_map(lambda a, r=r: r * a, leaf) for leaf, r in zip(tree, ratios)]

    def init(key, kernels, sites=None):
        state = rule.init(key, kernels, sites)
        return state if state == () else scaled(state)

    def feedback(kernels, state, key):
        fb = rule.feedback(kernels, state, key)
        return scaled(fb) if state == () else fb  # a drawn state was scaled once, at init

    return rule._replace(init=init, feedback=feedback)


def make_stack(config, arch: Architecture, rule: bioprop.Rule) -> LearningRule:
    """The rule on a layer stack (mlp, lenet, cnn): bioprop.update on models/layers.feedback_model, with the layer
    stacks' conventions kept (same seeds, same numbers):

    - the first layer sends no error anywhere: kp and wm learn no B_0 and kp puts no decay on W_0
      (params[l]["fb"] for l >= 1 only); layer 0's feedback leaf is a placeholder whose error XLA never computes;
    - fa's and frsf's B_l and brsf's and wm's per-step draws come from the library with one key per layer split
      from the rule's key (layer 0's unused): the keys the stacks have always used; fa's and frsf's state stays
      [None, B_1 (|R_1|), ..., B_{L-1}];
    - dfa's D_l for hidden layer l (state: [D_0, ..., D_{L-2}], keys split per hidden layer) is handed to layer
      l + 1 (the library delivers e D at a layer's input: layer l's pooled output); pre_pool taps f(a_l) before
      the pooling; pooled_conv's kernel is drawn, then kept as the (n_out, units) matrix it applies
      (rules/base.direct_matrix), expanded once at init since D is fixed (docs/results.md: the step time).
    """
    rule = with_layer_fans(rule, arch, config.model.init.scheme.split("_")[0])
    act, loss = model_functions(config)
    learned = rule.learn is not None
    target = config.feedback.dfa_target if rule.direct else None
    model = feedback_model(arch, act, tap=target == "pre_pool")
    n_out, hidden = arch.sizes[-1], len(arch.layers) - 1

    def with_logits(params, fb, x):
        logits = model(params, fb, x)
        return logits, logits

    def network_params(params):
        return [{"w": p["w"], "b": p["b"]} for p in params]

    def leaves(arrays):
        return [{"w": a, "b": None} for a in arrays]

    def library_state(params, state):
        """The library rule's state, like bioprop.kernels(network_params(params))."""
        if learned:
            return leaves([jnp.zeros_like(bioprop.transport(params[0]["w"]))] + [p["fb"] for p in params[1:]])
        if rule.direct:
            first = jnp.zeros((n_out, arch.sizes[0]), params[0]["w"].dtype)
            return leaves([first] + list(state))
        if state == ():
            return ()
        return leaves([unused_first(params)] + list(state[1:]))

    def unused_first(params):
        """Zeros in place of the rule's state for layer 0 (whose error goes nowhere)."""
        drawn = jax.eval_shape(lambda p: rule.init(jax.random.PRNGKey(0), bioprop.kernels(network_params(p))), params)
        return jnp.zeros(drawn[0]["w"].shape, drawn[0]["w"].dtype)

    def init_params(key, params):
        drawn = rule.init(key, bioprop.kernels(network_params(params)))
        return [dict(params[0])] + [{**p, "fb": b["w"]} for p, b in zip(params[1:], drawn[1:])]

    def init(key, params):
        if learned:
            return ()
        if rule.direct:
            keys = jax.random.split(key, hidden)
            std = feedback_std(config, arch, hidden)
            return [direct_matrix(arch, l, target,
                                  sample(k, direct_feedback_shape(arch, l, n_out, target), std, config.feedback.distribution))
                    for l, k in enumerate(keys)]
        drawn = rule.init(key, bioprop.kernels(network_params(params)))
        return drawn if drawn == () else [None] + [b["w"] for b in drawn[1:]]

    def learn(params, fb, est, key, x):
        sites = bioprop.sites(with_logits, network_params(params), x) if rule.needs_sites else None
        extra, fb_grads = rule.learn(bioprop.kernels(network_params(params)), fb, est.hebbian, key, sites)
        grads = [dict(est.grads[0])]
        for l in range(1, len(params)):
            w = est.grads[l]["w"] if extra is None else est.grads[l]["w"] + extra[l]["w"]
            grads.append({"w": w, "b": est.grads[l]["b"], "fb": fb_grads[l]["w"]})
        return grads

    def estimate(params, state, x, y, key, idx=None):
        fb = library_state(params, state)
        est = bioprop.estimate(rule, with_logits, loss.value, network_params(params), fb, key, x, y, has_aux=True)
        grads = learn(params, fb, est, key, x) if learned else est.grads
        return Estimate(grads, state, [], est.loss, est.aux)

    def gradient_estimate(params, state, x, y, key, idx=None):
        """The estimate without kp's and wm's feedback learning, with the error delta_l each layer's
        pre-activation receives (the gradient of a zero probe added there)."""
        outputs = leaves([jnp.zeros((x.shape[0],) + layer.op.out_shape, x.dtype) for layer in arch.layers])
        probes = (outputs, leaves([None] * len(arch.layers)))
        est = bioprop.estimate(rule, with_logits, loss.value, network_params(params), library_state(params, state),
                               key, x, y, probes=probes, has_aux=True)
        return Estimate(est.grads, state, [s["w"] for s in est.signals[0]], est.loss, est.aux)

    def feedback(params, state, key):
        if rule.name == "bp":
            return {}
        if rule.direct:
            return {l: (d, transport_path(arch, params, l, target != "pre_pool")) for l, d in enumerate(state)}
        arrays = bioprop.feedback_arrays(rule, network_params(params), library_state(params, state), key)
        return {l: (arrays[l]["w"], bioprop.transport(params[l]["w"])) for l in range(1, len(params))}

    def predict(params, state, x):
        return forward(arch, params, x, act).logits

    return LearningRule(init, estimate, feedback, predict, init_params if learned else None, gradient_estimate)
