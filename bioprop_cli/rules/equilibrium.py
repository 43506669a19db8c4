"""ep: equilibrium propagation (Scellier & Bengio 2017, Front. Comput. Neurosci. 11:24).

The network settles freely to s^0 (T1 steps), is nudged towards the target with strength beta
(T2 steps from s^0), and each weight changes by the difference of two Hebbian products,
    grad W_l ~ (1/beta) (dE/dW_l(s^beta) - dE/dW_l(s^0)) = -(1/beta)(rho_l^b rho_{l+1}^b - rho_l^0 rho_{l+1}^0),
which tends to the gradient of the cost at the free fixed point as beta -> 0 (their Theorem 1).
Estimators (`ep.estimator`):
- one-sided: s^0 and s^{+beta}; bias O(beta).
- symmetric: s^{+beta} and s^{-beta}, (1/2beta)(...) (Laborieux et al. 2021, Front. Neurosci.
  15:633674, eq. 5); bias O(beta^2).
- random-sign: one-sided with the sign of beta drawn per batch (Scellier & Bengio 2017, sec. 4).
The estimate is returned as a gradient (descent direction), like every rule's.

Feedback weights (`ep.feedback`, `ep.learn_feedback`; the network is defined in models/energy.py):
layer l+1 sends its output down to layer l through B_l (shape of W_l^T, l = 1 .. L-1) instead of
W_l^T, the vector-field generalisation of EP (Scellier, Goyal, Binas, Mesnard & Bengio 2018;
Laborieux et al. 2021 use it too). Every B_l has the Frobenius norm of W_l^T (it differs in
direction only):
- symmetric (default): B_l = W_l^T, the energy-based network, bit for bit the code it always ran.
- random: B_l = |W_l|_F G_l/|G_l|_F, G_l standard normal, drawn ONCE at initialisation (rule state)
  and fixed: as in feedback alignment, nothing ties it to W afterwards (its norm is W's initial one).
- sign: B_l = c_l sign(W_l^T), c_l = |W_l|_F/sqrt(#nonzero entries) (so |B_l|_F = |W_l|_F),
  recomputed from the CURRENT W every step (sign-concordant feedback tracks W).
- mixed: B_l = cos(a) W_l^T + sin(a) R_l, a = `ep.feedback_angle`, R_l = |W_l|_F P_l/|P_l|_F with
  P_l the part of a fixed random direction G_l (drawn once) orthogonal to the CURRENT W_l^T. R_l is
  made orthogonal so that the angle between B_l and W_l^T is exactly a at every step (and
  |B_l|_F = |W_l|_F); recomputed every step, so it tracks W.
Fixed sign and mixed feedback are functions of W, and the exact gradient (metrics/equilibrium.py)
differentiates through them: it is the total derivative of the cost with respect to the trainable
parameters, which at a = 0 is the symmetric network's gradient.
- learn_feedback: B_l is a trainable parameter params[l]["fb"] (added by `init_params`, starting as
  `ep.feedback` says, e.g. random), moved by the optimizer with W_l's contrastive update transposed,
    grad B_l = (grad W_l)^T = -(1/beta)(rho(s_{l+1}^b)^T rho(s_l^b) - rho(s_{l+1}^0)^T rho(s_l^0)),
  local to the synapse from l+1 to l just as W_l's is. Both receive the same update (transposed),
  so W_l^T - B_l does not change under plain SGD (with adaptive optimisers nearly so): the angle
  between B_l and W_l^T shrinks as the common part that learning adds outgrows the initial
  difference, and with weight decay (adamw) the difference itself decays (Kolen-Pollack).
`rule.feedback` returns {l: (B_l, W_l^T)} for l >= 1 whenever B is not tied, so the W-to-B angle is
logged with the other measurements.

Cross-entropy readout (model.loss = cross_entropy; models/energy.py): the last layer of params is a
softmax readout outside the dynamics, whose cost -beta C(s_top, R) nudges the top hidden layer. EP's
estimator applies to it as to any parameter of F = E + beta C (Scellier & Bengio 2017, eq. 9-10
with a parameter-dependent cost): dF/dR = beta dC/dR, so its estimate is dC/dR at the nudged
state (one-sided and random-sign: s^beta; symmetric: the mean over s^{+beta} and s^{-beta}), the
readout's own local delta rule, rho(s_top)^T (softmax - y); it tends to dC/dR at s^0 as beta -> 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bioprop_cli.models.energy import (
    RHOS,
    contrast,
    cost,
    input_drive,
    mixed_feedback,
    output,
    random_feedback,
    settle,
    split_readout,
    sign_feedback,
    with_feedback,
    zero_states,
)
from bioprop_cli.rules.base import Estimate, LearningRule


def separate_feedback(ep) -> bool:
    """Whether the network has feedback weights of its own (params or rule state), not W^T."""
    return ep.feedback != "symmetric" or ep.learn_feedback


def feedback_state(ep, key, params) -> dict:
    """The fixed random parts of the feedback, drawn once: random: the matrices B_l; mixed: the
    directions G_l (standard normal, shape of W_l^T); sign and symmetric: nothing."""
    keys = jax.random.split(key, len(params))
    layers = range(1, len(params))
    if ep.feedback == "random":
        return {"feedback": [random_feedback(keys[l], params[l]["w"]) for l in layers]}
    if ep.feedback == "mixed":
        w = [params[l]["w"] for l in layers]
        return {"feedback_directions": [jax.random.normal(keys[l], a.T.shape, a.dtype) for l, a in zip(layers, w)]}
    return {}


def feedback_matrices(ep, params, fixed, angle=None) -> dict:
    """{l: B_l} for l = 1 .. L-1 as `ep.feedback` defines them from the current W (see the module
    docstring); `fixed` is feedback_state's draw; `angle` overrides ep.feedback_angle (mixed)."""
    layers = range(1, len(params))
    if ep.feedback == "random":
        return {l: fixed["feedback"][l - 1] for l in layers}
    if ep.feedback == "sign":
        return {l: sign_feedback(params[l]["w"]) for l in layers}
    if ep.feedback == "mixed":
        a = ep.feedback_angle if angle is None else angle
        return {l: mixed_feedback(params[l]["w"], fixed["feedback_directions"][l - 1], a) for l in layers}
    return {l: params[l]["w"].T for l in layers}


def effective_params(ep, params, state):
    """The parameters the dynamics run on: params itself when B = W^T (symmetric) or when B is
    learned (params[l]["fb"] is already there); else params with the fixed B_l inserted as "fb"."""
    if not separate_feedback(ep) or ep.learn_feedback:
        return params
    return with_feedback(params, feedback_matrices(ep, params, state))


def require_mse_cost(config, command: str) -> None:
    """UserError (exit 2) for rule ep with the cross-entropy readout in a command that measures the
    mean-squared network only (its nudged output layer is what those commands look at)."""
    if config.rule == "ep" and has_readout(config):
        from bioprop_cli.errors import UserError

        raise UserError(f"config key 'model.loss': {command} measures ep with model.loss mse only, got 'cross_entropy' "
                        "(train and measure the readout network with bioprop train)")


def has_readout(config) -> bool:
    """model.loss = cross_entropy: the last layer of params is a softmax readout outside the dynamics."""
    return config.model.loss == "cross_entropy"


def make(config, sizes, n_train: int = 0) -> LearningRule:
    ep = config.ep
    rho = RHOS[config.model.activation]
    readout_layer = has_readout(config)

    def init(key, params):
        dynamic, _ = split_readout(params, readout_layer)
        state = {}
        if ep.persistent:
            state["particles"] = zero_states(dynamic, max(n_train, 1))
        if not ep.learn_feedback:
            state.update(feedback_state(ep, key, dynamic))
        return state or ()

    def init_params(key, params):
        """Learned feedback: params[l]["fb"] = B_l (l >= 1), initialised as `ep.feedback` says."""
        dynamic, readout = split_readout(params, readout_layer)
        dynamic = with_feedback(dynamic, feedback_matrices(ep, dynamic, feedback_state(ep, key, dynamic)))
        return dynamic + ([readout] if readout_layer else [])

    def free_phase(params, x, y, initial, readout=None):
        drive0 = input_drive(params, x)
        free = settle(params, initial, drive0, y, 0.0, rho, ep.eps, ep.free_steps, ep.tolerance, readout=readout)
        return drive0, free

    def nudge(params, states, drive0, y, beta, readout=None):
        return settle(params, states, drive0, y, beta, rho, ep.eps, ep.nudged_steps, ep.tolerance, readout=readout)

    def readout_gradient(top_states, y, readout):
        """dC/dR (batch mean) at the top-layer states given, averaged over the list (see the docstring)."""
        grad = lambda top: jax.grad(lambda r: jnp.mean(cost([top], y, r, rho)))(readout)
        grads = [grad(top) for top in top_states]
        return jax.tree_util.tree_map(lambda *g: sum(g) / len(g), *grads)

    def nudge_both_ways(params, s0, drive0, y, beta, readout=None):
        """The +beta and -beta phases as one batch of twice the size (one settling loop, not two)."""
        n = y.shape[0]
        twice = lambda a: jnp.concatenate([a, a])
        signs = jnp.concatenate([jnp.full((n, 1), beta, y.dtype), jnp.full((n, 1), -beta, y.dtype)])
        both = nudge(params, [twice(s) for s in s0], twice(drive0), twice(y), signs, readout)
        return [s[:n] for s in both.states], [s[n:] for s in both.states], both

    def estimate(params, state, x, y, key, idx=None):
        trainable, readout = split_readout(params, readout_layer)
        params = effective_params(ep, trainable, state)
        persistent = ep.persistent and idx is not None
        initial = [p[idx] for p in state["particles"]] if persistent else zero_states(params, x.shape[0], x.dtype)
        drive0, free = free_phase(params, x, y, initial, readout)
        s0 = free.states
        if ep.estimator == "symmetric":
            plus, minus, both = nudge_both_ways(params, s0, drive0, y, ep.beta, readout)
            grads = contrast(plus, minus, x, rho, 1.0 / (2.0 * ep.beta))
            shift = [(a - b) / (2.0 * ep.beta) for a, b in zip(plus, minus)]
            nudged_steps, nudged_residual = both.steps, both.residual
            nudged_tops = [plus[-1], minus[-1]]
        else:
            beta = ep.beta
            if ep.estimator == "random-sign":
                beta = jnp.where(jax.random.bernoulli(key), ep.beta, -ep.beta)
            nudged = nudge(params, s0, drive0, y, beta, readout)
            grads = contrast(nudged.states, s0, x, rho, 1.0 / beta)
            shift = [(a - b) / beta for a, b in zip(nudged.states, s0)]
            nudged_steps, nudged_residual = nudged.steps, nudged.residual
            nudged_tops = [nudged.states[-1]]
        if persistent:
            state = dict(state, particles=[p.at[idx].set(s) for p, s in zip(state["particles"], s0)])
        if ep.learn_feedback:  # B_l learns W_l's update transposed (the same Hebbian products)
            grads = [dict(g, fb=g["w"].T) if "fb" in layer else g for g, layer in zip(grads, trainable)]
        if readout_layer:
            grads = grads + [readout_gradient(nudged_tops, y, readout)]
        aux = {
            "free_steps": free.steps,
            "free_residual": free.residual,
            "nudged_steps": nudged_steps,
            "nudged_residual": nudged_residual,
        }
        loss = jnp.mean(cost(s0, y, readout, rho))
        return Estimate(grads, state, shift, loss, output(s0, readout, rho), aux)

    def predict(params, state, x):
        dynamic, readout = split_readout(params, readout_layer)
        dynamic = effective_params(ep, dynamic, state)
        initial = zero_states(dynamic, x.shape[0], x.dtype)
        _, free = free_phase(dynamic, x, jnp.zeros((x.shape[0], sizes[-1]), x.dtype), initial, readout)
        return output(free.states, readout, rho)

    def feedback(params, state, key):
        if not separate_feedback(ep):
            return {}
        dynamic, _ = split_readout(params, readout_layer)
        eff = effective_params(ep, dynamic, state)
        return {l: (eff[l]["fb"], dynamic[l]["w"].T) for l in range(1, len(dynamic))}

    rule = LearningRule(init, estimate, feedback, predict, measure=None,
                        init_params=init_params if ep.learn_feedback else None)

    def measure(params, state, x, y, key):
        from bioprop_cli.metrics.equilibrium import measure_ep

        return measure_ep(rule, config, params, state, x, y, key)

    return rule._replace(measure=measure)
