"""ep: equilibrium propagation (Scellier & Bengio 2017, Front. Comput. Neurosci. 11:24) as a learning rule.

The estimate, the network it runs on (tied or separate feedback B, the fixed feedback drawn once
at initialisation, the optional cross-entropy readout) and the exact references live once in
bioprop_cli/ep.py (estimators `ep.estimator`: one-sided, negative, symmetric, random-sign, holomorphic, and
the clamped second phases clamped and coupled; feedback
`ep.feedback`: symmetric, random, sign, mixed). This module wraps them in the LearningRule
interface: the rule state (persistent particles, the fixed feedback), predict, and the feedback
matrices the alignment measurements compare with W^T.

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

import jax.numpy as jnp

from bioprop_cli import ep as eqprop
from bioprop_cli.models.energy import cost, output, split_readout, with_feedback, zero_states
from bioprop_cli.rules.base import Estimate, LearningRule


def require_mse_cost(config, command: str) -> None:
    """UserError (exit 2) for rule ep with the cross-entropy readout in a command that measures the
    mean-squared network only (its nudged output layer is what those commands look at)."""
    if config.rule == "ep" and eqprop.has_readout(config):
        from bioprop_cli.errors import UserError

        raise UserError(f"config key 'model.loss': {command} measures ep with model.loss mse only, got 'cross_entropy' "
                        "(train and measure the readout network with bioprop train)")


def make(config, arch, n_train: int = 0) -> LearningRule:
    """The rule on the network `arch` (models/arch.py): an MLP, or a conv net (models/conv_energy.py)."""
    ep = config.ep
    readout_layer = eqprop.has_readout(config)
    dynamics = eqprop.dynamics_architecture(config)

    def init(key, params):
        dynamic, _ = split_readout(params, readout_layer)
        state = {}
        if ep.persistent:
            state["particles"] = zero_states(dynamic, max(n_train, 1), arch=dynamics)
        if not ep.learn_feedback:
            state.update(eqprop.feedback_state(ep, key, dynamic))
        return state or ()

    def init_params(key, params):
        """Learned feedback: params[l]["fb"] = B_l (l >= 1), initialised as `ep.feedback` says."""
        dynamic, readout = split_readout(params, readout_layer)
        fixed = eqprop.feedback_state(ep, key, dynamic)
        dynamic = with_feedback(dynamic, eqprop.feedback_matrices(ep, dynamic, fixed))
        return dynamic + ([readout] if readout_layer else [])

    def estimate(params, state, x, y, key, idx=None):
        net = eqprop.network(config, params, state)
        free, nudged = eqprop.estimate(config, net, x, y, key, eqprop.start_states(config, net, x, state, idx))
        s0 = free.states
        if ep.persistent and idx is not None:
            state = dict(state, particles=[p.at[idx].set(s) for p, s in zip(state["particles"], s0)])
        aux = {
            "free_steps": free.steps,
            "free_residual": free.residual,
            "nudged_steps": nudged.steps,
            "nudged_residual": nudged.residual,
        }
        loss = eqprop.cost_weight(ep) * jnp.mean(cost(s0, y, net.readout, net.rho))
        return Estimate(nudged.grads, state, nudged.shift, loss, output(s0, net.readout, net.rho), aux)

    def predict(params, state, x):
        net = eqprop.network(config, params, state)
        y = jnp.zeros((x.shape[0], arch.sizes[-1]), x.dtype)
        _, free = eqprop.free_phase(config, net, x, y, eqprop.start_states(config, net, x), ep.free_steps, ep.tolerance)
        return output(free.states, net.readout, net.rho)

    def feedback(params, state, key):
        if not eqprop.separate_feedback(ep):
            return {}
        net = eqprop.network(config, params, state)
        return {l: (net.running[l]["fb"], net.trainable[l]["w"].T) for l in range(1, len(net.trainable))}

    return LearningRule(init, estimate, feedback, predict, init_params=init_params if ep.learn_feedback else None)
