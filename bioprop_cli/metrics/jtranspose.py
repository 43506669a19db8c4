"""'J transpose' made visible: the state shift of a nudged layered network against backprop's error signal.

The network (models/energy.py): states s = (s_1, ..., s_L) (row vectors, s_L the output), settling
along the vector field v(s) to a fixed point. Give every layer an extra drive u_k (added to v_k, the
`external` argument of the dynamics) and call s*(u) the fixed point of v(s) + u = 0. Nudging the
output with strength beta is the drive u_L = -beta e(s), e = dC/ds_L = s_L - y (per example).

Let A = -dv/ds at the free fixed point s^0 (restricted to the units the projection onto [0, 1]
leaves free; pinned units neither move nor pass anything on). The implicit function theorem gives
ds*/du = A^{-1}. Differentiating v(s^beta) - beta e(s^beta) = 0 at beta = 0:

    shift_k := lim_{beta->0} (s^beta_k - s^0_k)/beta = -[A^{-1}]_{k,L} e = -(ds*_k/du_L) e.

Backprop's error signal at layer k is the gradient of the cost with respect to the drive entering
layer k, through the equivalent feedforward computation from that drive to the output, the
fixed-point map u_k -> s*_L with Jacobian J_k = ds*_L/du_k = [A^{-1}]_{L,k}:

    delta_k := dC(s*(u))/du_k = J_k^T e = [A^{-1}]_{L,k}^T e = [A^{-T}]_{k,L} e.

With symmetric weights (B_l = W_l^T) the dynamics are a gradient flow, v = -dE/ds, A = d^2E/ds^2
is symmetric, [A^{-1}]_{k,L} = [A^{-1}]_{L,k}^T, and so shift_k = -delta_k: the nudged network's
state shift IS the backprop error signal J^T e, delivered to each layer by the network's own
dynamics (Scellier & Bengio 2017, sec. 3; Scellier & Bengio 2019, equivalence of EP and recurrent
backprop), up to O(beta). With feedback B_l != W_l^T, A is not symmetric: the shift -A^{-1} e
travels down through B (the dynamics), while delta = A^{-T} e travels down through W^T, the
transpose of the forward weights (the adjoint of the actual dynamics). The angle between them is
the price of the asymmetry.

The reference delta is the TRUE error signal of the network that runs: the exact gradient of its
cost, at its own free fixed point, with respect to each layer's drive (with the forward weights'
transpose carrying the error down). It is computed with `jax.vjp` of the fixed-point function
s*(u) (settled to convergence), whose backward pass is implicit differentiation (custom_vjp): the
adjoint system (I - dPhi/ds^T) lambda = s_bar at s^0, solved as in bioprop_cli/ep.py
(solve_adjoint: BiCGSTAB, as the networks here carry explicit feedback matrices), then
u_bar = (dPhi/du)^T lambda; exact at the fixed point, with no truncation (the tests check it
against jax.vjp through the converged settling). Both sides are compared over the whole batch,
layer by layer: angle(shift_k, -delta_k) and |shift_k + delta_k| / |delta_k|.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bioprop_cli.config import EPConfig
from bioprop_cli.ep import feedback_matrices, feedback_state, solve_adjoint
from bioprop_cli.metrics.alignment import relative_error
from bioprop_cli.metrics.angles import angle_degrees
from bioprop_cli.models.energy import Rho, input_drive, residual, settle, step, with_feedback, zero_states
from bioprop_cli.precision import full_float32

DEFAULT_BETAS = tuple(float(b) for b in np.logspace(-3, 0, 7))  # 1e-3 .. 1, two per decade
DEFAULT_ANGLES = (0.0, 15.0, 30.0, 45.0, 60.0, 75.0, 90.0)


def fixed_point_function(params, x, rho: Rho, eps: float, max_steps: int, tol: float, adjoint_iterations: int,
                         adjoint_tol: float, arch=None) -> Callable:
    """u -> s*(u): the free fixed point under extra drives u (a list like the states), settled from
    zero until the step is below `tol`; differentiable by implicit differentiation (custom_vjp).
    `arch`: a conv net's layers (models/conv_energy.py), None for the MLP."""
    y0 = jnp.zeros((x.shape[0], params[-1]["w"].shape[1]), x.dtype)
    drive0 = input_drive(params, x, arch)
    start = zero_states(params, x.shape[0], x.dtype, arch)

    @jax.custom_vjp
    def s_star(u):
        return settle(params, start, drive0, y0, 0.0, rho, eps, max_steps, tol, external=u, arch=arch).states

    def fwd(u):
        s = s_star(u)
        return s, (s, u)

    def bwd(res, s_bar):
        s, u = res
        lam, _ = solve_adjoint(params, s, x, y0, list(s_bar), rho, eps, adjoint_iterations, adjoint_tol, external=u,
                               arch=arch)
        _, pull = jax.vjp(lambda uu: step(params, s, drive0, y0, 0.0, rho, eps, uu, arch=arch), u)
        return pull(lam)

    s_star.defvjp(fwd, bwd)
    return s_star


def adjoint_misfit(params, s0, drive0, y0, e, delta, rho: Rho, eps: float, arch=None):
    """|(I - J^T) lambda - g| / |g| of the adjoint solution behind delta (g: e at the output).

    dPhi/du = eps D (D: the free units), so delta = eps D lambda: lambda_F = delta/eps on the free
    units and lambda = g + J^T lambda_F, as in ep.solve_adjoint (checked there
    the same way), without solving again."""
    g = [jnp.zeros_like(s) for s in s0[:-1]] + [e]
    _, vjp_states = jax.vjp(lambda s: step(params, s, drive0, y0, 0.0, rho, eps, arch=arch), s0)
    lam = [a + b for a, b in zip(g, vjp_states([d / eps for d in delta])[0])]
    misfit = [a - b - c for a, b, c in zip(lam, vjp_states(lam)[0], g)]
    norm = lambda t: jnp.sqrt(sum(jnp.sum(v**2) for v in t))
    return norm(misfit) / (norm(g) + 1e-30)


@functools.lru_cache(maxsize=8)
def make_error_signals(rho: Rho, eps: float, max_steps: int, tol: float, adjoint_iterations: int,
                       adjoint_tol: float, arch=None) -> Callable:
    """(params, x, y, betas) -> per-beta, per-layer comparison of the shift with -J^T e (jitted).

    `params` are those the dynamics run on (params[l]["fb"] = B_l where the feedback is separate).
    Returns {"angle": (n_betas, L), "rel_error": (n_betas, L), "shift_norm", "reference_norm":
    (n_betas, L) and (L,), "free_residual", "nudged_residual", "adjoint_misfit": scalars}.
    """

    def error_signals(params, x, y, betas):
        n, nb = x.shape[0], betas.shape[0]
        s_star = fixed_point_function(params, x, rho, eps, max_steps, tol, adjoint_iterations, adjoint_tol, arch)
        zeros_u = zero_states(params, n, x.dtype, arch)
        s0, pull = jax.vjp(s_star, zeros_u)
        e = s0[-1] - y
        (delta,) = pull([jnp.zeros_like(s) for s in s0[:-1]] + [e])  # delta_k = J_k^T e
        reference = [-d for d in delta]
        drive0 = input_drive(params, x, arch)
        y0 = jnp.zeros_like(y)
        free_residual = jnp.max(residual(step(params, s0, drive0, y0, 0.0, rho, eps, arch=arch), s0))
        misfit = adjoint_misfit(params, s0, drive0, y0, e, delta, rho, eps, arch)
        # all betas in one settling loop: the batch repeated once per beta, beta as a column
        tile = lambda a: jnp.tile(a, (nb, 1))
        beta_col = jnp.repeat(betas, n)[:, None].astype(x.dtype)
        nudged = settle(params, [tile(s) for s in s0], tile(drive0), tile(y), beta_col, rho, eps, max_steps, tol,
                        arch=arch)
        shifts = [(sb.reshape(nb, n, -1) - s[None]) / betas[:, None, None] for sb, s in zip(nudged.states, s0)]
        angle = jnp.stack([jax.vmap(lambda sh, r=r: angle_degrees(sh, r))(sh) for sh, r in zip(shifts, reference)], 1)
        rel = jnp.stack([jax.vmap(lambda sh, r=r: relative_error(sh, r))(sh) for sh, r in zip(shifts, reference)], 1)
        shift_norm = jnp.stack([jax.vmap(lambda sh: jnp.linalg.norm(jnp.ravel(sh)))(sh) for sh in shifts], 1)
        return {
            "angle": angle,
            "rel_error": rel,
            "shift_norm": shift_norm,
            "reference_norm": jnp.stack([jnp.linalg.norm(jnp.ravel(r)) for r in reference]),
            "free_residual": free_residual,
            "nudged_residual": nudged.residual,
            "adjoint_misfit": misfit,
        }

    return jax.jit(full_float32(error_signals))  # a measurement: at full float32 (precision.py)


def asymmetric_networks(params, key, angles) -> list[tuple[str, float | None, list]]:
    """[(kind, a, params with B_l)]: the networks ep.feedback = mixed (at each angle a, the random
    directions drawn once from `key`) and ep.feedback = sign define (bioprop_cli/ep.py)."""
    mixed = EPConfig(feedback="mixed")
    directions = feedback_state(mixed, key, params)
    nets = [("mixed", float(a), with_feedback(params, feedback_matrices(mixed, params, directions, angle=a)))
            for a in angles]
    nets.append(("sign", None, with_feedback(params, feedback_matrices(EPConfig(feedback="sign"), params, {}))))
    return nets


def feedback_angles(params) -> list[float]:
    """angle(B_l, W_l^T) in degrees for l = 1 .. L-1 (0 where the layer has no "fb")."""
    return [float(angle_degrees(layer["fb"], layer["w"].T)) if "fb" in layer else 0.0 for layer in params[1:]]


def jtranspose_networks(params, key, angles, arch=None) -> list[tuple[str, float | None, list]]:
    """[(kind, a, params with B_l)]: the symmetric network, then every asymmetric network (mixed at each
    angle, sign). `params`: the network's own parameters (w, b; a learned "fb" is ignored: the feedback
    compared here is W^T, the mixed and the sign constructions). A conv net (`arch`,
    models/conv_energy.py) has the symmetric network only: its feedback is the transposed convolution of W."""
    params = [{"w": layer["w"], "b": layer["b"]} for layer in params]
    if arch is not None and not arch.is_mlp:
        return [("symmetric", 0.0, params)]
    # the symmetric network as B_l = W_l^T written out: the same dynamics (up to the order of
    # floating-point sums), and one compiled program for every network
    tied = with_feedback(params, feedback_matrices(EPConfig(feedback="symmetric"), params, {}))
    return [("symmetric", 0.0, tied)] + asymmetric_networks(params, key, angles)


def make_jtranspose_measure(rho: Rho, ep, arch=None) -> Callable:
    """(network, x, y, betas) -> the error signals of every beta (make_error_signals at ep's settling budget)."""
    return make_error_signals(rho, ep.eps, ep.reference_steps, ep.reference_tolerance, ep.adjoint_steps,
                              ep.reference_tolerance, arch)


def network_records(measure: Callable, kind: str, a: float | None, net, x, y, betas) -> list[dict]:
    """One record per (beta, layer) of one network of jtranspose_networks."""
    out = jax.tree_util.tree_map(np.asarray, measure(net, x, y, jnp.asarray(betas, x.dtype)))
    fb = feedback_angles(net)
    asym = float(np.mean(fb)) if a is None else a
    n_layers = len(net)
    records = []
    for i, beta in enumerate(betas):
        for k in range(n_layers):
            records.append({
                "feedback": kind,
                "asymmetry_deg": asym,
                "feedback_angles_deg": fb,
                "beta": float(beta),
                "layer": k + 1,
                "layer_name": "output" if k + 1 == n_layers else f"hidden {k + 1}",
                "angle": float(out["angle"][i, k]),
                "rel_error": float(out["rel_error"][i, k]),
                "shift_norm": float(out["shift_norm"][i, k]),
                "reference_norm": float(out["reference_norm"][k]),
                "free_residual": float(out["free_residual"]),
                "nudged_residual": float(out["nudged_residual"]),
                "adjoint_misfit": float(out["adjoint_misfit"]),
            })
    return records


def run_jtranspose(params, x, y, rho: Rho, ep, betas, angles, key, arch=None) -> list[dict]:
    """The whole measurement: one record per (network of jtranspose_networks, beta, layer)."""
    measure = make_jtranspose_measure(rho, ep, arch)
    return [record for kind, a, net in jtranspose_networks(params, key, angles, arch)
            for record in network_records(measure, kind, a, net, x, y, betas)]
