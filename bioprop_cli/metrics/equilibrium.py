"""The exact gradient beside equilibrium propagation's estimate, and settling diagnostics.

Two references for the gradient of the cost C(s*) = mean 1/2 |y - s*_L|^2 at the free fixed point:
- implicit differentiation of the fixed point s* = Phi(theta, s*) of the settling map (recurrent
  backprop, Almeida 1987, Pineda 1987): (I - dPhi/ds^T) lambda = dC/ds, then
  dC/dtheta = (dPhi/dtheta)^T lambda;
- backprop through time through exactly the T1 free steps the network runs (Ernoult et al. 2019,
  NeurIPS, "Updates of equilibrium prop match gradients of backprop through time").
They agree once the free phase has converged (tested).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bioprop_cli.metrics.alignment import compare_updates
from bioprop_cli.metrics.angles import angle_degrees
from bioprop_cli.models.energy import RHOS, Rho, cost, free_units, input_drive, settle, settle_fixed, step, zero_states


def _tree_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(tree)))


def free_fixed_point(params, x, rho: Rho, eps: float, max_steps: int, tol: float):
    """The free equilibrium, settled from zero until the step is below `tol` (or `max_steps`)."""
    drive0 = input_drive(params, x)
    y = jnp.zeros((x.shape[0], params[-1]["w"].shape[1]), x.dtype)
    return settle(params, zero_states(params, x.shape[0], x.dtype), drive0, y, 0.0, rho, eps, max_steps, tol)


def implicit_gradient(params, fixed_point, x, y, rho: Rho, eps: float, max_iterations: int, tol: float = 1e-6):
    """dC/dtheta at the fixed point by implicit differentiation; returns (grads, residual).

    The adjoint system is (I - J^T) lambda = g, J = dPhi/ds, g = dC/ds. The settling map is
    gradient descent on E followed by the projection onto [0, 1]: J = D (I - eps H), with H the
    Hessian of E (symmetric) and D the 0/1 diagonal of units the projection leaves free. On the free
    units the system is eps H_FF lambda_F = g_F, symmetric and positive definite at a stable
    minimum of E, solved by conjugate gradients; the pinned units follow, lambda = g + J^T lambda_F.
    `residual` = |(I - J^T) lambda - g| / |g| tells whether that worked: it stays large where the
    settled state is no minimum (the free phase has not converged: see its residual).
    """

    def phi(p, s):
        return step(p, s, input_drive(p, x), y, 0.0, rho, eps)

    g = jax.grad(lambda s: jnp.mean(cost(s, y)))(fixed_point)
    _, vjp_states = jax.vjp(lambda s: phi(params, s), fixed_point)
    mask = free_units(params, fixed_point, input_drive(params, x), y, 0.0, rho, eps)
    tmap = jax.tree_util.tree_map
    apply_mask = lambda v: tmap(jnp.multiply, mask, v)

    def adjoint_operator(lam):
        return tmap(jnp.subtract, lam, vjp_states(lam)[0])

    def relative_misfit(lam):
        return _tree_norm(tmap(jnp.subtract, adjoint_operator(lam), g)) / (_tree_norm(g) + 1e-30)

    rhs = apply_mask(g)
    free_part, _ = jax.scipy.sparse.linalg.cg(
        lambda v: apply_mask(adjoint_operator(apply_mask(v))), rhs, tol=tol, atol=0.0, maxiter=max_iterations
    )
    # every unit that the cost sees pinned by the projection: the gradient is exactly zero (and
    # conjugate gradients would divide 0 by 0)
    nothing_free = _tree_norm(rhs) == 0
    free_part = tmap(lambda v: jnp.where(nothing_free, 0.0, v), free_part)
    lam = tmap(jnp.add, g, vjp_states(apply_mask(free_part))[0])
    _, vjp_params = jax.vjp(lambda p: phi(p, fixed_point), params)
    (grads,) = vjp_params(lam)
    return grads, relative_misfit(lam)


def bptt_gradient(params, x, y, rho: Rho, eps: float, steps: int):
    """dC/dtheta through exactly `steps` free steps from zero (lax.scan, reverse-mode)."""

    def loss(p):
        final = settle_fixed(p, zero_states(p, x.shape[0], x.dtype), x, y, 0.0, rho, eps, steps)
        return jnp.mean(cost(final, y))

    return jax.grad(loss)(params)


def spectral_radius(params, fixed_point, x, rho: Rho, eps: float, key, iterations: int = 100):
    """Power-iteration estimate of the spectral radius of dPhi/ds at the fixed point.

    The Jacobian of the batch is block-diagonal, so this is the largest over the examples.
    Below 1: the settling dynamics contract towards the fixed point.
    """
    y = jnp.zeros((x.shape[0], params[-1]["w"].shape[1]), x.dtype)
    _, jvp = jax.linearize(lambda s: step(params, s, input_drive(params, x), y, 0.0, rho, eps), fixed_point)
    keys = jax.random.split(key, len(fixed_point))
    v = [jax.random.normal(k, s.shape, s.dtype) for k, s in zip(keys, fixed_point)]

    def body(_, carry):
        v, _ = carry
        jv = jvp(v)
        growth = _tree_norm(jv) / _tree_norm(v)
        scale = 1.0 / (_tree_norm(jv) + 1e-30)
        return [a * scale for a in jv], growth

    _, growth = jax.lax.fori_loop(0, iterations, body, (v, jnp.asarray(0.0, x.dtype)))
    return growth


def exact_references(config, params, x, y, key) -> dict:
    """Fixed point, implicit and BPTT gradients, and the diagnostics of computing them."""
    ep = config.ep
    rho = RHOS[config.model.activation]
    fixed = free_fixed_point(params, x, rho, ep.eps, ep.reference_steps, ep.reference_tolerance)
    implicit, adjoint_residual = implicit_gradient(
        params, fixed.states, x, y, rho, ep.eps, ep.adjoint_steps, ep.reference_tolerance
    )
    return {
        "fixed_point": fixed,
        "implicit": implicit,
        "adjoint_residual": adjoint_residual,
        "bptt": bptt_gradient(params, x, y, rho, ep.eps, ep.free_steps),
        "spectral_radius": spectral_radius(params, fixed.states, x, rho, ep.eps, key),
    }


def measure_ep(rule, config, params, state, x, y, key) -> dict:
    """EP's estimate against the implicit gradient (and BPTT), per layer and for the whole network,
    with the settling diagnostics of both phases and of the reference fixed point."""
    k_estimate, k_radius = jax.random.split(key)
    est = rule.estimate(params, state, x, y, k_estimate)
    ref = exact_references(config, params, x, y, k_radius)
    layers, network = compare_updates(est.grads, ref["implicit"])
    layers["bptt_update_angle"] = jnp.stack([angle_degrees(g["w"], t["w"]) for g, t in zip(est.grads, ref["bptt"])])
    flat = lambda ps: jnp.concatenate([jnp.ravel(p["w"]) for p in ps])
    network.update(
        mean_update_angle=jnp.mean(layers["update_angle"]),
        bptt_update_angle=angle_degrees(flat(est.grads), flat(ref["bptt"])),
        implicit_vs_bptt_angle=angle_degrees(flat(ref["implicit"]), flat(ref["bptt"])),
        spectral_radius=ref["spectral_radius"],
        reference_steps=ref["fixed_point"].steps,
        reference_residual=ref["fixed_point"].residual,
        adjoint_residual=ref["adjoint_residual"],
        **est.aux,
    )
    return {"layers": layers, "network": network}
