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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bioprop_cli.models.energy import RHOS, contrast, cost, input_drive, settle, zero_states
from bioprop_cli.rules.base import Estimate, LearningRule


def make(config, sizes, n_train: int = 0) -> LearningRule:
    ep = config.ep
    rho = RHOS[config.model.activation]

    def init(key, params):
        if not ep.persistent:
            return ()
        return {"particles": zero_states(params, max(n_train, 1))}

    def free_phase(params, x, y, initial):
        drive0 = input_drive(params, x)
        free = settle(params, initial, drive0, y, 0.0, rho, ep.eps, ep.free_steps, ep.tolerance)
        return drive0, free

    def nudge(params, states, drive0, y, beta):
        return settle(params, states, drive0, y, beta, rho, ep.eps, ep.nudged_steps, ep.tolerance)

    def nudge_both_ways(params, s0, drive0, y, beta):
        """The +beta and -beta phases as one batch of twice the size (one settling loop, not two)."""
        n = y.shape[0]
        twice = lambda a: jnp.concatenate([a, a])
        signs = jnp.concatenate([jnp.full((n, 1), beta, y.dtype), jnp.full((n, 1), -beta, y.dtype)])
        both = nudge(params, [twice(s) for s in s0], twice(drive0), twice(y), signs)
        return [s[:n] for s in both.states], [s[n:] for s in both.states], both

    def estimate(params, state, x, y, key, idx=None):
        persistent = ep.persistent and idx is not None
        initial = [p[idx] for p in state["particles"]] if persistent else zero_states(params, x.shape[0], x.dtype)
        drive0, free = free_phase(params, x, y, initial)
        s0 = free.states
        if ep.estimator == "symmetric":
            plus, minus, both = nudge_both_ways(params, s0, drive0, y, ep.beta)
            grads = contrast(plus, minus, x, rho, 1.0 / (2.0 * ep.beta))
            shift = [(a - b) / (2.0 * ep.beta) for a, b in zip(plus, minus)]
            nudged_steps, nudged_residual = both.steps, both.residual
        else:
            beta = ep.beta
            if ep.estimator == "random-sign":
                beta = jnp.where(jax.random.bernoulli(key), ep.beta, -ep.beta)
            nudged = nudge(params, s0, drive0, y, beta)
            grads = contrast(nudged.states, s0, x, rho, 1.0 / beta)
            shift = [(a - b) / beta for a, b in zip(nudged.states, s0)]
            nudged_steps, nudged_residual = nudged.steps, nudged.residual
        if persistent:
            state = {"particles": [p.at[idx].set(s) for p, s in zip(state["particles"], s0)]}
        aux = {
            "free_steps": free.steps,
            "free_residual": free.residual,
            "nudged_steps": nudged_steps,
            "nudged_residual": nudged_residual,
        }
        loss = jnp.mean(cost(s0, y))
        return Estimate(grads, state, shift, loss, s0[-1], aux)

    def predict(params, state, x):
        initial = zero_states(params, x.shape[0], x.dtype)
        _, free = free_phase(params, x, jnp.zeros((x.shape[0], sizes[-1]), x.dtype), initial)
        return free.states[-1]

    rule = LearningRule(init, estimate, lambda params, state, key: {}, predict, measure=None)

    def measure(params, state, x, y, key):
        from bioprop_cli.metrics.equilibrium import measure_ep

        return measure_ep(rule, config, params, state, x, y, key)

    return rule._replace(measure=measure)
