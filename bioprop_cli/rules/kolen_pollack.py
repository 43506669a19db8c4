"""kp: Kolen-Pollack feedback learning (Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019,
"Deep learning without weight transport", NeurIPS; after Kolen & Pollack 1994).

The error goes back through a feedback matrix B_l of the shape of W_l^T exactly as in fa,
delta_l = (delta_{l+1} @ B_{l+1}) * f'(a_l), but B_l is LEARNED: it lives in the trainable
parameters (params[l]["fb"], l = 1 .. L-1; drawn at initialisation like fa's fixed matrices, so
kp starts as fa) and receives the same update as W_l^T, plus the same weight decay:

    update(W_l) = h_l^T delta_l + lambda W_l,     update(B_l) = (h_l^T delta_l)^T + lambda B_l,

lambda = feedback.decay (on the pairs (W_l, B_l) only: W_0, which has no feedback matrix, and the
biases get no decay). Both updates are local: W_l's from h_l and delta_{l+1}'s presynaptic and
postsynaptic activity, B_l's from the same two signals seen from the feedback side. Their
difference is lambda (W_l^T - B_l), so under plain SGD W_l^T - B_l shrinks by exactly
(1 - lr * lambda) per step, whatever the error signal: B_l converges to W_l^T and kp becomes
backprop. With `optimizer.layer_lr` both get layer l's multiplier, so the identity holds per layer.
Under momentum mu (optax's trace, m_t = g_t + mu m_{t-1}) the error parts of the two buffers
cancel too, but D_t = W_l^T - B_l follows the second-order recurrence
D_{t+1} = (1 + mu - lr lambda) D_t - mu D_{t-1} (tested): no constant factor per step. Where
(1 + mu - lr lambda)^2 < 4 mu (mu 0.9: 0.0026 < lr lambda < 3.8) its roots are complex with
modulus sqrt(mu): D oscillates, damped by sqrt(mu) per step on average, its norm growing on some
steps and shrinking on others (ratios from 0.16 to 3.85 at lr 0.05, lambda 0.1, mu 0.9); for a
smaller lr lambda the roots are real and the slower one is about 1 - lr lambda / (1 - mu). Either
way it tends to 0. With adam (or rmsprop, adagrad) the
normalisation is per entry and the two entries' histories differ only by the decay terms: the
difference still shrinks (entry-wise roughly by lr * lambda / sqrt(v) per step, faster than SGD
where gradients are small) but not by an exact factor. With adamw, optax's decoupled decay
(optimizer.weight_decay) acts on W and B alike, on top of this.

The alignment measurements (update_angle, delta_angle) compare the error-driven part
h_l^T delta_l with the exact gradient; the decay term is a regulariser, not an estimate of the
loss gradient, and is left out of them. feedback_angle is the angle between B_l and W_l^T.

On a conv layer B_l is a kernel of W_l's shape (the transposed convolution's, rules/base.py) and
"(W_l's update)^T" reads "W_l's update": B_l receives exactly W_l's kernel update.
"""

from __future__ import annotations

from bioprop_cli.models.layers import transport
from bioprop_cli.rules.base import LearningRule, feedback_rule, model_functions
from bioprop_cli.rules.feedback_alignment import random_feedback


def with_feedback(params, feedback: list) -> list:
    """params with params[l]["fb"] = feedback[l] added for l = 1 .. L-1 (layer 0 has none)."""
    return [dict(layer) if l == 0 else {**layer, "fb": feedback[l]} for l, layer in enumerate(params)]


def learned_feedback_rule(config, arch) -> LearningRule:
    """fa through the matrices stored in params[l]["fb"]; init_params draws them like fa's.

    The returned rule's estimate gives fa's update for "w" and "b" and no "fb" entry: kp and wm
    add their own feedback updates (and are measured with this rule's estimate, without them).
    """
    act, loss = model_functions(config)
    rule = feedback_rule(
        arch,
        act,
        loss,
        init=lambda key, params: (),
        matrices=lambda params, state, key: [None] + [layer["fb"] for layer in params[1:]],
    )
    return rule._replace(init_params=lambda key, params: with_feedback(params, random_feedback(key, config, arch)))


def kp_updates(arch, params, grads, decay) -> list:
    """fa's grads -> kp's: lambda W_l added to W_l's update and transport(W_l's update) to B_l's, l >= 1."""
    out = [dict(grads[0])]
    for arch_layer, layer, g in zip(arch.layers[1:], params[1:], grads[1:]):
        fb = transport(arch_layer.op, g["w"]) + decay * layer["fb"]
        out.append({"w": g["w"] + decay * layer["w"], "b": g["b"], "fb": fb})
    return out


def make(config, arch, n_train: int = 0) -> LearningRule:
    base = learned_feedback_rule(config, arch)
    decay = config.feedback.decay

    def estimate(params, state, x, y, key, idx=None):
        est = base.estimate(params, state, x, y, key)
        return est._replace(grads=kp_updates(arch, params, est.grads, decay))

    return base._replace(estimate=estimate, gradient_estimate=base.estimate)
