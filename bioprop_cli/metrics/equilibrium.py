"""The exact gradient beside equilibrium propagation's estimate, and settling diagnostics.

Two references for the gradient of the cost C(s*) = mean 1/2 |y - s*_L|^2 (or the cross-entropy of
the softmax readout, model.loss = cross_entropy) at the free fixed point:
- implicit differentiation of the fixed point s* = Phi(theta, s*) of the settling map (recurrent
  backprop, Almeida 1987, Pineda 1987): (I - dPhi/ds^T) lambda = dC/ds, then
  dC/dtheta = (dPhi/dtheta)^T lambda;
- backprop through time through exactly the T1 free steps the network runs (Ernoult et al. 2019,
  NeurIPS, "Updates of equilibrium prop match gradients of backprop through time").
They agree once the free phase has converged (tested).

With separate feedback weights (ep.feedback other than symmetric, or ep.learn_feedback; see
models/energy.py) there is no energy: the settling map Phi follows a vector field whose Jacobian
is not symmetric. Both references still differentiate the fixed point of the dynamics that
actually run: the adjoint system (I - J^T) lambda = g uses the transpose of the NON-symmetric
Jacobian (so the error travels down through W^T, the forward weights, while the dynamics send it
down through B), and is solved by BiCGSTAB instead of conjugate gradients; the spectral radius is
that of the non-symmetric Jacobian. The functions take the parameters the dynamics run on
(params[l]["fb"] = B_l where present); `feedback`, a function trainable params -> such params (for
sign and mixed feedback, which are functions of W), makes the gradients total derivatives with
respect to the trainable parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bioprop_cli.metrics.alignment import compare_updates
from bioprop_cli.metrics.angles import angle_degrees, norm_ratio
from bioprop_cli.models.energy import (
    RHOS,
    Rho,
    cost,
    free_units,
    has_separate_feedback,
    input_drive,
    settle,
    settle_fixed,
    step,
    zero_states,
)
from bioprop_cli.precision import full_float32


def _identity(params):
    return params


def _tree_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(tree)))


def free_fixed_point(params, x, rho: Rho, eps: float, max_steps: int, tol: float):
    """The free equilibrium, settled from zero until the step is below `tol` (or `max_steps`)."""
    drive0 = input_drive(params, x)
    y = jnp.zeros((x.shape[0], params[-1]["w"].shape[1]), x.dtype)
    return settle(params, zero_states(params, x.shape[0], x.dtype), drive0, y, 0.0, rho, eps, max_steps, tol)


def solve_adjoint(params, fixed_point, x, y, g, rho: Rho, eps: float, max_iterations: int, tol: float = 1e-6,
                  external=None, readout=None):
    """lambda solving (I - J^T) lambda = g, J = dPhi/ds at the fixed point; returns (lambda, misfit).

    The settling map is a step along the vector field v followed by the projection onto [0, 1]:
    J = D (I + eps dv/ds), with D the 0/1 diagonal of units the projection leaves free. On the free
    units the system is -eps (dv/ds)_FF^T lambda_F = g_F; the pinned units follow,
    lambda = g + J^T lambda_F. With symmetric weights -dv/ds = H, the Hessian of E (symmetric,
    positive definite at a stable minimum): conjugate gradients. With separate feedback dv/ds is not
    symmetric: BiCGSTAB (Van der Vorst 1992), which needs no symmetry and compiles to a smaller
    program than jax's GMRES (about 3 s against 6 s of CPU here); when the dynamics contract, the
    free block of I - J^T has its eigenvalues in the disc of radius rho(J) < 1 around 1, and it
    reached misfits of 1e-13 (float64) and 1e-6 (float32) on the networks tested; the misfit
    below says when it did not.
    `misfit` = |(I - J^T) lambda - g| / |g| tells whether that worked: it stays large where the
    settled state is no fixed point (the free phase has not converged: see its residual).
    `external`: the extra drive u of the dynamics at that fixed point (models/energy.py), if any.
    """

    def phi(s):
        return step(params, s, input_drive(params, x), y, 0.0, rho, eps, external, readout)

    _, vjp_states = jax.vjp(phi, fixed_point)
    mask = free_units(params, fixed_point, input_drive(params, x), y, 0.0, rho, eps, external, readout)
    tmap = jax.tree_util.tree_map
    apply_mask = lambda v: tmap(jnp.multiply, mask, v)

    def adjoint_operator(lam):
        return tmap(jnp.subtract, lam, vjp_states(lam)[0])

    def relative_misfit(lam):
        return _tree_norm(tmap(jnp.subtract, adjoint_operator(lam), g)) / (_tree_norm(g) + 1e-30)

    rhs = apply_mask(g)
    operator = lambda v: apply_mask(adjoint_operator(apply_mask(v)))
    if has_separate_feedback(params):
        free_part, _ = jax.scipy.sparse.linalg.bicgstab(operator, rhs, tol=tol, atol=0.0, maxiter=max_iterations)
    else:
        free_part, _ = jax.scipy.sparse.linalg.cg(operator, rhs, tol=tol, atol=0.0, maxiter=max_iterations)
    # every unit that the cost sees pinned by the projection: the gradient is exactly zero (and
    # the Krylov solvers would divide 0 by 0)
    nothing_free = _tree_norm(rhs) == 0
    free_part = tmap(lambda v: jnp.where(nothing_free, 0.0, v), free_part)
    lam = tmap(jnp.add, g, vjp_states(apply_mask(free_part))[0])
    return lam, relative_misfit(lam)


def implicit_gradient(params, fixed_point, x, y, rho: Rho, eps: float, max_iterations: int, tol: float = 1e-6,
                      feedback=None, readout=None):
    """dC/dtheta at the fixed point by implicit differentiation; returns (grads, residual).

    Solves the adjoint system (I - J^T) lambda = dC/ds (`solve_adjoint`), then
    dC/dtheta = (dPhi/dtheta)^T lambda. `params` are the trainable parameters of the dynamics;
    `feedback(params)` (default: the identity) the parameters the dynamics run on, differentiated
    through. With a cross-entropy `readout` R the cost is C(s_top, R) and the gradients get one more
    layer, dC/dR at the fixed point (the readout does not act on the free dynamics). `residual` is
    the adjoint solve's relative misfit.
    """
    feedback = feedback or _identity

    def phi(p, s):
        q = feedback(p)
        return step(q, s, input_drive(q, x), y, 0.0, rho, eps, readout=readout)

    g = jax.grad(lambda s: jnp.mean(cost(s, y, readout, rho)))(fixed_point)
    lam, misfit = solve_adjoint(feedback(params), fixed_point, x, y, g, rho, eps, max_iterations, tol, readout=readout)
    _, vjp_params = jax.vjp(lambda p: phi(p, fixed_point), params)
    (grads,) = vjp_params(lam)
    if readout is not None:
        grads = list(grads) + [jax.grad(lambda r: jnp.mean(cost(fixed_point, y, r, rho)))(readout)]
    return grads, misfit


def bptt_gradient(params, x, y, rho: Rho, eps: float, steps: int, feedback=None, readout=None):
    """dC/dtheta through exactly `steps` free steps from zero (lax.scan, reverse-mode); `feedback`
    and `readout` as in implicit_gradient (with a readout, its gradient is the last layer)."""
    feedback = feedback or _identity

    def loss(p, r):
        q = feedback(p)
        final = settle_fixed(q, zero_states(q, x.shape[0], x.dtype), x, y, 0.0, rho, eps, steps, readout=r)
        return jnp.mean(cost(final, y, r, rho))

    if readout is None:
        return jax.grad(loss)(params, None)
    grads, readout_grad = jax.grad(loss, argnums=(0, 1))(params, readout)
    return list(grads) + [readout_grad]


def spectral_radius(params, fixed_point, x, rho: Rho, eps: float, key, iterations: int = 100):
    """Power-iteration estimate of the spectral radius of dPhi/ds at the fixed point.

    The Jacobian of the batch is block-diagonal, so this is the largest over the examples.
    Below 1: the settling dynamics contract towards the fixed point. Symmetric weights: the growth
    of the last iteration. Separate feedback: the Jacobian is not symmetric and its dominant
    eigenvalues may be a complex pair, around which the one-step growth oscillates; the estimate is
    then the geometric mean of the growth over the second half of the iterations (|J^k v|^(1/k)
    tends to the spectral radius whatever the eigenvalues, Gelfand's formula).
    """
    y = jnp.zeros((x.shape[0], params[-1]["w"].shape[1]), x.dtype)
    _, jvp = jax.linearize(lambda s: step(params, s, input_drive(params, x), y, 0.0, rho, eps), fixed_point)
    keys = jax.random.split(key, len(fixed_point))
    v = [jax.random.normal(k, s.shape, s.dtype) for k, s in zip(keys, fixed_point)]

    if has_separate_feedback(params):
        burn_in = iterations // 2

        def averaged(i, carry):
            v, log_sum = carry
            jv = jvp(v)
            norm = _tree_norm(jv)
            log_sum = log_sum + jnp.where(i >= burn_in, jnp.log(norm / _tree_norm(v) + 1e-30), 0.0)
            return [a / (norm + 1e-30) for a in jv], log_sum

        _, log_sum = jax.lax.fori_loop(0, iterations, averaged, (v, jnp.asarray(0.0, x.dtype)))
        return jnp.exp(log_sum / max(iterations - burn_in, 1))

    def body(_, carry):
        v, _ = carry
        jv = jvp(v)
        growth = _tree_norm(jv) / _tree_norm(v)
        scale = 1.0 / (_tree_norm(jv) + 1e-30)
        return [a * scale for a in jv], growth

    _, growth = jax.lax.fori_loop(0, iterations, body, (v, jnp.asarray(0.0, x.dtype)))
    return growth


@full_float32
def exact_references(config, params, x, y, key, state=()) -> dict:
    """Fixed point, implicit and BPTT gradients, and the diagnostics of computing them.

    `params` are the trainable parameters and `state` the rule's state (ep's fixed feedback lives
    there); the references differentiate the network that `config.ep.feedback` defines.
    """
    from bioprop_cli.models.energy import split_readout
    from bioprop_cli.rules.equilibrium import effective_params, has_readout, separate_feedback

    ep = config.ep
    rho = RHOS[config.model.activation]
    params, readout = split_readout(params, has_readout(config))
    feedback = (lambda p: effective_params(ep, p, state)) if separate_feedback(ep) else None
    running = feedback(params) if feedback else params
    fixed = free_fixed_point(running, x, rho, ep.eps, ep.reference_steps, ep.reference_tolerance)
    implicit, adjoint_residual = implicit_gradient(
        params, fixed.states, x, y, rho, ep.eps, ep.adjoint_steps, ep.reference_tolerance, feedback=feedback,
        readout=readout,
    )
    return {
        "fixed_point": fixed,
        "implicit": implicit,
        "adjoint_residual": adjoint_residual,
        "bptt": bptt_gradient(params, x, y, rho, ep.eps, ep.free_steps, feedback=feedback, readout=readout),
        "spectral_radius": spectral_radius(running, fixed.states, x, rho, ep.eps, key),
    }


@full_float32
def measure_ep(rule, config, params, state, x, y, key) -> dict:
    """EP's estimate against the implicit gradient (and BPTT), per layer and for the whole network,
    with the settling diagnostics of both phases and of the reference fixed point."""
    k_estimate, k_radius = jax.random.split(key)
    est = rule.estimate(params, state, x, y, k_estimate)
    ref = exact_references(config, params, x, y, k_radius, state)
    layers, network = compare_updates(est.grads, ref["implicit"])
    # W-to-B angle per layer (NaN where B is W^T: always for the symmetric network, and layer 0)
    fb_angle = fb_ratio = jnp.full((len(params),), jnp.nan)
    for l, (b, reference) in rule.feedback(params, state, k_estimate).items():
        fb_angle = fb_angle.at[l].set(angle_degrees(b, reference))
        fb_ratio = fb_ratio.at[l].set(norm_ratio(b, reference))
    layers.update(feedback_angle=fb_angle, feedback_norm_ratio=fb_ratio)
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
