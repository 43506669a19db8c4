"""The seven conditions under which a local learning rule's update equals backprop's, measured.

For one rule and setup (a config), on a probe batch, at the network the config initialises (or at a
run's trained parameters, params.npz):

(1) convergence: the settling reaches a fixed point. Measured: the spectral radius rho of the
    settling map's Jacobian at the free fixed point (Lanczos, with the estimate's move over the
    last half of its steps as the error: ep.spectral_radius_with_error), the final residual r = |s_T1 - s_T1-1|
    of the free phase with the configured T1 (largest over the batch), and from them the bound
    on the distance to the fixed point, |s_T1 - s*| <= r rho / (1 - rho) <= r / (1 - rho) for a
    map contracting at rate rho (the residual alone says nothing at rho near 1: at rho = 0.997 a
    residual of 1e-4 can be 3e-2 away). Graded on that distance.
(2) energy function: the dynamics derive from one energy, i.e. the connections are symmetric.
    Measured: the angle between the feedback the network uses and W^T (ep.feedback).
(3) phases: a free phase and a nudged (or target / backward) phase. Counted from the rule.
(4) consistent feedback reaches every weight. Measured: the angle between each layer's feedback
    matrix and the matrix exact transport would use (`rule.feedback`), and which layers receive
    an error signal (chain, direct, or through the dynamics: layer l only if T2 >= L - l).
(5) locality: the update uses only pre- and post-synaptic quantities (and, for ep, is contrastive).
(6) small perturbation: beta -> 0. Measured: the relative error of the EP estimate, with both
    phases settled to convergence (so that (1) and (7) play no part), against the implicit
    gradient at the free fixed point, at the configured beta (graded) and down a ladder
    beta, beta/10, ... to BETA_LADDER_FLOOR (printed): where the error stops falling the linear
    regime (or the rounding floor) is reached.
(7) architecture: settling corresponds layer by layer to the feedforward computation. Measured: T1
    and T2 against the number of layers L (the nudge needs L steps to reach the first layer).

Beneath them, the resulting gradient equivalence: per layer, the angle and relative error between
the rule's update and the exact gradient of the same loss (metrics/measure.py: jax.grad for the
feedforward rules, the implicit gradient at the free fixed point for ep), graded on the layers
whose update the rule changes: the hidden layers where the output layer's update is backprop's
(the registry's `exact_output`), else every layer; on the WORST of them, because a rule is only
as equivalent to backprop as its worst layer (a mean, or the whole-network angle that the exact
output layer dominates, hides a layer whose update is unrelated to its gradient: fa at
initialisation, measured in docs/implementation-notes.md). The whole-network numbers are reported beside.

Predictive coding (rule pc) has its own table (`_pc_conditions`), measured on the rule's own
code: the inference's convergence (the update at pc.inference_steps against the update after
CONVERGED_INFERENCE_FACTOR times as many steps, with the inference residual and the energy's
decrease), the small perturbation through the output precision gamma (pc -> bp as gamma -> 0:
metrics/predictive_coding.py's comparison, the update against jax.grad at gamma, gamma/10, ...), the inference
steps against the depth (the error needs one step per layer; Z-IL exactly L - 1, Song et al.
2020), and locality from the registry.

Everything here is a pure function of (config, params, rule state, probe batch) returning plain
dicts of Python numbers and strings; the study (the network and probe a config and seed draw, the
precision, the files) is bioprop_cli/studies/conditions.py, the command bioprop_cli/cli/conditions.py.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from bioprop_cli.metrics import alignment
from bioprop_cli.metrics.angles import angle_degrees
from bioprop_cli.metrics.measure import make_measure
from bioprop_cli.network import architecture
from bioprop_cli.precision import full_float32
from bioprop_cli.rules import ENERGY, HOLDS, PARTIAL, rule_info

# ----------------------------------------------------------------------------------------------
# Thresholds. Every status is decided by one of these against a measured number.

# (1) the settling map contracts at the free fixed point when its Jacobian's spectral radius is
# below 1 (a fixed point that attracts); the radius plus the error of its estimate must be below this.
SPECTRAL_RADIUS_MAX = 1.0
# (1) the bound on the free state's distance to the fixed point, residual / (1 - radius) (largest
# residual over the batch): below this the free state is at the fixed point for gradient purposes
# ("holds"; the EP estimate divides state differences by beta, so the relaxation left over must
# be far below beta x the nudge's effect).
DISTANCE_HOLDS = 1e-4
# (1) below this (and radius < 1) the free phase is close but not settled: "partial"; above it, "fails".
DISTANCE_PARTIAL = 1e-2
# (2), (4) angle between the feedback matrix and W^T (or the transport path, for dfa), worst
# layer: below 1 degree the feedback is the transpose for all purposes ("holds").
FEEDBACK_ANGLE_HOLDS = 1.0
# (2), (4) below this the feedback carries a measurable part of W^T ("partial": approximate, the
# forward weights can align with it); at or above it, "fails". Not 90: a random matrix of the
# shape of W^T lies at 90 +- a fraction of a degree by chance, and must not count as partial.
FEEDBACK_ANGLE_PARTIAL = 80.0
# (6) relative error of the converged-phase EP estimate at the configured beta (pc: of the update
# at the configured output precision, inference converged) against the exact gradient: below this
# the perturbation is small enough ("holds"; symmetric nudging is O(beta^2)).
PERTURBATION_ERROR_HOLDS = 0.05
# (6) below this "partial" (a biased but useful estimate); at or above it "fails".
PERTURBATION_ERROR_PARTIAL = 0.5
# (6) the ladder beta, beta / BETA_LADDER_STEP, ... goes down to this (and includes it): in float32
# the state differences divided by beta stay well above rounding there (a shift of 1e-4 x the
# response against float32's 1e-7).
BETA_LADDER_STEP = 10.0
BETA_LADDER_FLOOR = 1e-4
# Gradient equivalence, worst graded layer: angle below this and ...
EQUIVALENCE_ANGLE_HOLDS = 1.0
# ... relative error below this: the update IS the gradient ("holds").
EQUIVALENCE_REL_ERROR_HOLDS = 0.05
# Angle below this in every graded layer: a descent direction, better than chance ("partial");
# at or above: "fails". Not 90: an update unrelated to the gradient lies at 90 degrees give or
# take a few on a probe batch (fa at initialisation: docs/implementation-notes.md), and must not count.
EQUIVALENCE_ANGLE_PARTIAL = 80.0
# pc (1): the update after CONVERGED_INFERENCE_FACTOR x pc.inference_steps steps is the converged
# reference; the configured one's relative distance to it is graded with the (6) thresholds.
CONVERGED_INFERENCE_FACTOR = 10
# pc (6): the output precision's ladder gamma, gamma / 10, ... goes down to this (the low end of
# `bioprop sweep pc`'s default range; the update divides by gamma).
GAMMA_LADDER_FLOOR = 1e-3

THRESHOLDS = {
    "spectral_radius_max": SPECTRAL_RADIUS_MAX,
    "distance_holds": DISTANCE_HOLDS,
    "distance_partial": DISTANCE_PARTIAL,
    "feedback_angle_holds_deg": FEEDBACK_ANGLE_HOLDS,
    "feedback_angle_partial_deg": FEEDBACK_ANGLE_PARTIAL,
    "perturbation_error_holds": PERTURBATION_ERROR_HOLDS,
    "perturbation_error_partial": PERTURBATION_ERROR_PARTIAL,
    "beta_ladder_step": BETA_LADDER_STEP,
    "beta_ladder_floor": BETA_LADDER_FLOOR,
    "converged_inference_factor": CONVERGED_INFERENCE_FACTOR,
    "gamma_ladder_floor": GAMMA_LADDER_FLOOR,
    "equivalence_angle_holds_deg": EQUIVALENCE_ANGLE_HOLDS,
    "equivalence_rel_error_holds": EQUIVALENCE_REL_ERROR_HOLDS,
    "equivalence_angle_partial_deg": EQUIVALENCE_ANGLE_PARTIAL,
}

PC = "pc"  # the rule with its own table (predictive coding)
FAILS, NA = "fails", "n/a"  # HOLDS and PARTIAL: the registry's (rule locality is graded there)
_ORDER = {HOLDS: 0, PARTIAL: 1, FAILS: 2}

CONDITION_NAMES = {
    1: "convergence",
    2: "energy function",
    3: "two phases",
    4: "feedback consistency",
    5: "locality",
    6: "small perturbation",
    7: "architecture",
}



def worst(*statuses: str) -> str:
    applicable = [s for s in statuses if s in _ORDER]
    return max(applicable, key=_ORDER.get) if applicable else NA


def _f(v) -> float | None:
    """A finite Python float, or None."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _row(number: int, status: str, measured: str, threshold: str, reason: str, values: dict | None = None) -> dict:
    return {
        "condition": number,
        "name": CONDITION_NAMES[number],
        "status": status,
        "measured": measured,
        "threshold": threshold,
        "reason": reason,
        "values": values or {},
    }


def _feedback_threshold() -> str:
    return f"max angle < {FEEDBACK_ANGLE_HOLDS:g}° holds, < {FEEDBACK_ANGLE_PARTIAL:g}° partial, else fails"


def _graded(value: float | None, holds: float, partial: float) -> str:
    """holds below `holds`, partial below `partial`, fails at or above; n/a when not measured."""
    if value is None:
        return NA
    if value < holds:
        return HOLDS
    return PARTIAL if value < partial else FAILS


def angle_status(angle: float | None) -> str:
    return _graded(angle, FEEDBACK_ANGLE_HOLDS, FEEDBACK_ANGLE_PARTIAL)


def distance_bound(radius: float | None, residual: float | None) -> float | None:
    """residual / (1 - radius): how far a state whose last step was `residual` can be from the fixed
    point of a map contracting at rate `radius` (the geometric series of the remaining steps);
    None (unbounded) unless radius < 1."""
    if radius is None or residual is None or radius >= SPECTRAL_RADIUS_MAX:
        return None
    return residual / (1.0 - radius)


def convergence_status(radius: float | None, radius_error: float | None, residual: float | None) -> str:
    """Graded on the distance bound, with the radius counted at its estimate plus its error."""
    worst_radius = None if radius is None else radius + (radius_error or 0.0)
    distance = distance_bound(worst_radius, residual)
    return FAILS if distance is None else _graded(distance, DISTANCE_HOLDS, DISTANCE_PARTIAL)


def perturbation_status(rel_error: float | None) -> str:
    return _graded(rel_error, PERTURBATION_ERROR_HOLDS, PERTURBATION_ERROR_PARTIAL)


def equivalence_status(angles: list, rel_errors: list) -> str:
    """Of the graded layers' angles and relative errors: a layer without an angle (a zero update or
    gradient) fails."""
    if not angles or any(a is None for a in angles):
        return FAILS
    if max(angles) < EQUIVALENCE_ANGLE_HOLDS and all(r is not None and r < EQUIVALENCE_REL_ERROR_HOLDS for r in rel_errors):
        return HOLDS
    return PARTIAL if max(angles) < EQUIVALENCE_ANGLE_PARTIAL else FAILS


# ----------------------------------------------------------------------------------------------
# Measurements (arrays in, plain numbers out).


def feedback_angles(rule, params, state, key) -> dict[int, float]:
    """{layer: angle in degrees between B_l and the matrix exact transport would use there}."""
    return {l: _f(angle) for l, (angle, _) in alignment.feedback_angles(rule, params, state, key).items()}


def gradient_equivalence(measured: dict, exact_output: bool) -> dict:
    """Per layer and whole network: the rule's update against the exact gradient (from
    metrics/measure.py), graded on the worst of the hidden layers where the output layer's update
    is backprop's (`exact_output`), else of every layer (the module docstring says why)."""
    layers = {k: np.asarray(v) for k, v in measured["layers"].items()}
    n = len(layers["update_angle"])
    rows = [
        {"layer": l, "update_angle": _f(layers["update_angle"][l]), "update_rel_error": _f(layers["update_rel_error"][l])}
        for l in range(n)
    ]
    network = {k: _f(v) for k, v in measured["network"].items()}
    graded = list(range(n - 1)) if exact_output and n > 1 else list(range(n))
    angles = [rows[l]["update_angle"] for l in graded]
    status = equivalence_status(angles, [rows[l]["update_rel_error"] for l in graded])
    worst_layer = (next(l for l in graded if rows[l]["update_angle"] is None) if None in angles
                   else max(graded, key=lambda l: rows[l]["update_angle"]))
    which = f"hidden layers {_span(graded)} (the output layer's update is backprop's)" if exact_output else \
        f"every layer {_span(graded)}"
    return {
        "layers": rows,
        "network": network,
        "graded_layers": graded,
        "worst_layer": worst_layer,
        "worst_angle": rows[worst_layer]["update_angle"],
        "status": status,
        "graded_on": which,
        "threshold": f"worst graded layer: angle < {EQUIVALENCE_ANGLE_HOLDS:g}° and relative error < "
        f"{EQUIVALENCE_REL_ERROR_HOLDS:g} in every one holds; angle < {EQUIVALENCE_ANGLE_PARTIAL:g}° partial "
        f"(a descent direction better than chance)",
    }


def ladder(value: float, floor: float = BETA_LADDER_FLOOR) -> list[float]:
    """value, value / BETA_LADDER_STEP, ... while above `floor`, then the floor itself."""
    rungs = [value]
    while rungs[-1] / BETA_LADDER_STEP > floor * (1 + 1e-9):
        rungs.append(rungs[-1] / BETA_LADDER_STEP)
    if rungs[-1] > floor * (1 + 1e-9):
        rungs.append(floor)
    return rungs


def ep_measurements(config, rule, params, state, x, y, key, idx=None) -> tuple[dict, dict]:
    """One compiled pass for ep: (measured, perturbation).

    measured = {"layers", "network"} as the training's measurement gives them
    (metrics/equilibrium.py): the rule's estimate (configured T1, T2, beta; from the probe examples'
    persistent particles `idx` if any) against the implicit gradient at the free fixed point, with
    the settling diagnostics (free_residual of the T1 steps, ...), and the spectral radius at the
    reference fixed point with its error (ep.spectral_radius_with_error).
    perturbation, condition (6): the estimate with both phases settled to convergence (from the
    reference free fixed point, to ep.reference_tolerance within ep.reference_steps) against the
    implicit gradient, at every beta of `ladder(ep.beta)` (clamped learning has no beta: the
    configured one only)."""
    from bioprop_cli import ep as eqprop
    from bioprop_cli.metrics.equilibrium import measure_with_references
    from bioprop_cli.models.energy import input_drive

    ep = config.ep
    betas = [float(ep.beta)] if ep.estimator == "clamped" else ladder(float(ep.beta))

    def compute(params, state, x, y, key):
        measured, ref = measure_with_references(rule, config, params, state, x, y, key, idx)
        implicit, s_star = ref["implicit"], ref["fixed_point"].states
        net = eqprop.network(config, params, state)
        radius, radius_error = eqprop.spectral_radius_with_error(net.running, s_star, x, net.rho, ep.eps,
                                                                 jax.random.fold_in(key, 1), arch=net.arch)
        measured["network"].update(spectral_radius=radius, spectral_radius_error=radius_error)
        drive0 = input_drive(net.running, x, net.arch)
        estimator = "one-sided" if ep.estimator == "random-sign" else ep.estimator  # +beta: one-sided's bias
        flat = alignment.flat_weights
        rungs = []
        for b in betas:
            nudged = eqprop.second_phase(config, net, x, y, drive0, s_star, b, key, ep.reference_steps,
                                         ep.reference_tolerance, estimator)
            rungs.append({"rel_error": jnp.linalg.norm(flat(nudged.grads) - flat(implicit)) / jnp.linalg.norm(flat(implicit)),
                          "angle": angle_degrees(flat(nudged.grads), flat(implicit)), "nudged_residual": nudged.residual})
        perturbation = {
            "ladder": rungs,
            "implicit_norm": jnp.linalg.norm(flat(implicit)),
            "adjoint_residual": ref["adjoint_residual"],
            "fixed_point_residual": ref["fixed_point"].residual,
        }
        return measured, perturbation

    # a measurement: all of it at full float32 (precision.py), the perturbation ladder's nudged phases and the
    # spectral radius too (conv EP's Winograd convolutions otherwise: precision.fast_convolutions)
    measured, out = jax.jit(full_float32(compute))(params, state, x, y, key)
    rungs = [{"beta": b, **{k: _f(v) for k, v in r.items()}} for b, r in zip(betas, out.pop("ladder"))]
    perturbation = {k: _f(v) for k, v in out.items()}
    perturbation.update(beta=float(ep.beta), ladder=rungs, rel_error_vs_implicit=rungs[0]["rel_error"],
                        nudged_residual=max((r["nudged_residual"] or 0.0) for r in rungs))
    return measured, perturbation


def _least_error(rungs: list[dict]) -> dict | None:
    """The rung of the ladder with the least relative error (where the linear regime, or rounding, ends)."""
    measured = [r for r in rungs if r.get("rel_error") is not None]
    return min(measured, key=lambda r: r["rel_error"]) if measured else None


def _ladder_text(rungs: list[dict], knob: str = "beta") -> str:
    return ", ".join(f"{r[knob]:g}: {_fmt(r.get('rel_error'), '.2g')}" for r in rungs)


def pc_measurements(config, params, x, y) -> dict:
    """pc's own conditions, measured on the rule's code (rules/predictive_coding.py) and on
    `bioprop sweep pc`'s comparison with jax.grad (metrics/predictive_coding.make_comparison):
    inference: the update and diagnostics at pc.inference_steps and at CONVERGED_INFERENCE_FACTOR
    times as many steps (the configured output precision), and their relative distance;
    gamma: the update against jax.grad at gamma, gamma/10, ... to GAMMA_LADDER_FLOOR, inference
    converged; steps: the update against jax.grad at L - 1 steps (the error's path to the first
    layer), at the configured steps and converged, at the configured gamma."""
    from dataclasses import replace

    from bioprop_cli.rules import make_rule
    from bioprop_cli.metrics.predictive_coding import make_comparison

    pc = config.pc
    network = architecture(config, x.shape[1])
    converged = pc.inference_steps * CONVERGED_INFERENCE_FACTOR

    @jax.jit
    @full_float32
    def estimate(params, x, y, steps):  # the step count traced: one program for both
        return make_rule(replace(config, pc=replace(pc, inference_steps=steps)), network).estimate(params, (), x, y, None)

    def update(steps):
        est = estimate(params, x, y, steps)
        return alignment.flat_weights(est.grads), {k: _f(v) for k, v in est.aux.items()}

    at_steps, diag = update(pc.inference_steps)
    at_converged, diag_converged = update(converged)
    inference = {"steps": pc.inference_steps, "converged_steps": converged, **diag,
                 **{f"converged_{k}": v for k, v in diag_converged.items()},
                 "rel_distance_to_converged": _f(jnp.linalg.norm(at_steps - at_converged) / jnp.linalg.norm(at_converged))}
    gammas = ladder(float(pc.output_precision), GAMMA_LADDER_FLOOR)
    compare = make_comparison(config, network)
    by_gamma = compare(params, x, y, jnp.asarray(gammas, x.dtype), converged)
    gamma_rungs = [{"gamma": g, "rel_error": _f(by_gamma["update_rel_error_all"][i]),
                    "angle": _f(by_gamma["update_angle_all"][i])} for i, g in enumerate(gammas)]
    steps_list = sorted({len(params) - 1, pc.inference_steps, converged})
    gamma = jnp.asarray([pc.output_precision], x.dtype)
    step_rungs = []
    for t in steps_list:
        m = compare(params, x, y, gamma, t)
        step_rungs.append({"steps": t, "rel_error": _f(m["update_rel_error_all"][0]), "angle": _f(m["update_angle_all"][0]),
                           "angle_per_layer": [_f(a) for a in np.asarray(m["update_angle"][0])]})
    return {"inference": inference, "gamma_ladder": gamma_rungs, "steps_ladder": step_rungs}


# ----------------------------------------------------------------------------------------------
# The table.


def _ep_conditions(config, measured: dict, fb_angles: dict, perturbation: dict, n_layers: int) -> list[dict]:
    ep = config.ep
    net = measured["network"]
    radius, residual = _f(net.get("spectral_radius")), _f(net.get("free_residual"))
    ref_residual = _f(net.get("reference_residual"))
    rows = []

    # (1)
    radius_error = _f(net.get("spectral_radius_error"))
    status = convergence_status(radius, radius_error, residual)
    counted = None if radius is None else radius + (radius_error or 0.0)
    distance = distance_bound(counted, residual)
    contracts = counted is not None and counted < SPECTRAL_RADIUS_MAX
    why = {
        HOLDS: f"the dynamics contract (radius < 1) and T1 = {ep.free_steps} steps end within {DISTANCE_HOLDS:g} of the fixed point",
        PARTIAL: f"the dynamics contract but T1 = {ep.free_steps} steps can stop {_fmt(distance, '.1e')} short of the fixed point",
        FAILS: (f"T1 = {ep.free_steps} steps can leave the free phase {_fmt(distance, '.1e')} from the fixed point "
                f"(residual / (1 - radius)): the estimate carries its continued relaxation" if contracts
                else "the settling map does not contract at the free state (radius + its error >= 1): "
                     "no attracting fixed point is shown"),
    }[status]
    if ref_residual is not None and ref_residual >= ep.reference_tolerance * 10 and ep.reference_tolerance > 0:
        why += f" (the reference fixed point itself only reached residual {ref_residual:.1e})"
    how = ("Lanczos; its last half moved it by" if radius_error is not None
           else "power iteration, no error bound (separate feedback)")
    rows.append(_row(
        1, status,
        f"spectral radius {_fmt(radius, '.4f')} ({how}{'' if radius_error is None else f' {radius_error:.1e}'}), "
        f"free residual {_fmt(residual, '.2e')} (T1 = {ep.free_steps}), distance to the fixed point <= "
        f"{_fmt(distance, '.2e') if distance is not None else 'unbounded'}",
        f"radius < {SPECTRAL_RADIUS_MAX:g} and residual / (1 - radius) < {DISTANCE_HOLDS:g} holds, < {DISTANCE_PARTIAL:g} partial",
        why, {"spectral_radius": radius, "spectral_radius_error": radius_error, "free_residual": residual,
              "distance_bound": distance, "free_steps": ep.free_steps,
              "reference_residual": ref_residual, "reference_steps": _f(net.get("reference_steps"))},
    ))

    # (2)
    kind = ep.feedback
    worst_angle = max(fb_angles.values()) if fb_angles else None
    learn = ep.learn_feedback
    if kind == "symmetric" and not fb_angles:
        status, measured_text, worst_angle = HOLDS, "symmetric: W_l couples s_l and s_l+1 both ways (0°)", 0.0
        why = "one energy E(s) generates the dynamics: top-down feedback is W^T itself"
    elif worst_angle is not None:
        status = angle_status(worst_angle)
        measured_text = f"ep.feedback = {kind}: max angle(B_l, W_l^T) {worst_angle:.2f}°"
        why = ("the feedback equals W^T: the dynamics are still a gradient flow of one energy" if status == HOLDS
               else "top-down feedback differs from W^T: no energy function generates the dynamics, only an approximation")
    else:
        status = FAILS if kind == "random" else PARTIAL
        measured_text = f"ep.feedback = {kind} (angle not reported by the rule)"
        why = "top-down feedback differs from W^T: no energy function generates the dynamics"
    if learn:
        why += "; the feedback is learned (ep.learn_feedback), so the angle may shrink in training"
    rows.append(_row(2, status, measured_text, _feedback_threshold(), why,
                     {"feedback": kind, "feedback_angle_deg": ep.feedback_angle,
                      "max_feedback_angle": worst_angle, "learn_feedback": learn}))

    # (3)
    phases = {"symmetric": ["free", "+beta", "-beta"], "one-sided": ["free", "+beta"], "negative": ["free", "-beta"],
              "random-sign": ["free", "+-beta"], "clamped": ["free", "output clamped to the target"],
              "coupled": ["free", "output clamped to (1 - beta) s_L + beta y"],
              "holomorphic": ["free"] + [f"beta exp(2 pi i {k}/{ep.holomorphic_points})"
                                         for k in range(ep.holomorphic_points)]}[ep.estimator]
    rows.append(_row(3, HOLDS, f"{len(phases)} phases: {', '.join(phases)} (ep.estimator = {ep.estimator})",
                     ">= 2 phases, one free and one nudged", "the update contrasts the free and the nudged equilibria",
                     {"phases": phases}))

    # (4)
    distance = [n_layers - l for l in range(n_layers)]  # steps the nudge needs to reach W_l
    reached = [l for l in range(n_layers) if ep.nudged_steps >= distance[l]]
    missing = [l for l in range(n_layers) if l not in reached]
    reach_status = HOLDS if not missing else FAILS
    angle_part = HOLDS if worst_angle is None else angle_status(worst_angle)
    status = worst(reach_status, angle_part)
    reach_text = "all layers" if not missing else f"layers {_span(reached)} only (not {_span(missing)})"
    why = ("the nudge travels back through the dynamics; with symmetric weights the feedback is W^T"
           if status == HOLDS else
           f"with T2 = {ep.nudged_steps} the nudge reaches W_l only if T2 >= L - l; layers {_span(missing)} get no error"
           if missing else "the error reaches every layer, but through feedback that is not W^T")
    rows.append(_row(4, status, f"through the dynamics: {reach_text}; max feedback angle {_fmt(worst_angle, '.2f')}°",
                     f"every layer reached (T2 >= L - l) and {_feedback_threshold()}", why,
                     {"reach": "dynamics", "reached_layers": reached, "unreached_layers": missing,
                      "feedback_angles": fb_angles, "nudged_steps": ep.nudged_steps}))

    # (5)
    rows.append(_row(5, HOLDS, "Delta W_l ∝ rho(s_l^b) rho(s_l+1^b) - rho(s_l^0) rho(s_l+1^0)",
                     "pre x post products only, contrastive", "each synapse sees its own two units in the two phases"))

    # (6)
    error = perturbation.get("rel_error_vs_implicit")
    status = perturbation_status(error) if perturbation.get("implicit_norm") else NA
    why = {
        HOLDS: f"beta = {ep.beta:g} is in the small-beta regime: the estimate is the gradient up to O(beta{'^2' if ep.estimator == 'symmetric' else ''})",
        PARTIAL: f"beta = {ep.beta:g} biases the estimate (finite nudge; the hard sigmoid's kinks add O(beta))",
        FAILS: f"beta = {ep.beta:g} is far from 0: the nudged state leaves the linear regime",
        NA: "the implicit gradient is zero (all outputs on target): no error to measure",
    }[status]
    not_an_estimate = {  # bioprop_cli/ep.py: the clamped second phases do not tend to the gradient
        "clamped": "contrastive learning (ep.estimator = clamped) does not estimate the gradient (no beta to shrink)",
        "coupled": f"coupled learning at eta = beta = {ep.beta:g}; as eta -> 0 it tends to the gradient with the output "
                   "error weighted by the Schur complement of the energy's Hessian on the output, not to the gradient",
    }
    if ep.estimator in not_an_estimate and status in (PARTIAL, FAILS):
        why = not_an_estimate[ep.estimator]
    if ep.estimator == "holomorphic" and status != NA:  # graded by the measured error, r need not be small
        n = ep.holomorphic_points
        why = {
            HOLDS: f"at the finite radius r = {ep.beta:g} the {n}-point Fourier estimate is the gradient up to O(r^{n})",
            PARTIAL: f"radius r = {ep.beta:g}: the {n}-point Fourier estimate keeps an O(r^{n}) error (more points or a "
                     "smaller radius shrink it)",
            FAILS: f"radius r = {ep.beta:g}: the O(r^{n}) error is large (r near the nudged states' radius of convergence "
                   "in beta, or the phases unsettled)",
        }[status]
    rungs = perturbation["ladder"]
    least = _least_error(rungs)
    if least is not None and len(rungs) > 1 and ep.estimator != "clamped":
        why += f"; least error {least['rel_error']:.2g} at beta {least['beta']:g}"
        if least is not rungs[-1]:
            why += " (below it the error grows again: rounding, or the reference's own settling error)"
    settled = max(perturbation.get("fixed_point_residual") or 0.0, perturbation.get("nudged_residual") or 0.0)
    if ep.reference_tolerance > 0 and settled >= 10 * ep.reference_tolerance:
        why += f" (the phases only settled to residual {settled:.1e} within {ep.reference_steps} steps)"
    rows.append(_row(
        6, status,
        f"relative error against the implicit gradient, both phases settled (residual "
        f"{_fmt(perturbation.get('fixed_point_residual'), '.1e')} / {_fmt(perturbation.get('nudged_residual'), '.1e')}), "
        f"by beta: {_ladder_text(rungs)}",
        f"relative error at the configured beta < {PERTURBATION_ERROR_HOLDS:g} holds, < {PERTURBATION_ERROR_PARTIAL:g} partial",
        why, perturbation,
    ))

    # (7)
    if ep.nudged_steps < n_layers:
        status = FAILS
        why = f"T2 = {ep.nudged_steps} < L = {n_layers}: the nudge does not reach the first {n_layers - ep.nudged_steps} weight matrices"
    elif ep.free_steps < n_layers:
        status = PARTIAL
        why = f"T1 = {ep.free_steps} < L = {n_layers}: the input has not reached the output in the free phase"
    else:
        status = HOLDS
        why = "enough steps for a signal to cross every layer in both phases, one layer per step"
    rows.append(_row(7, status, f"T1 = {ep.free_steps}, T2 = {ep.nudged_steps}, L = {n_layers} weight layers (depth {n_layers - 1})",
                     "T2 >= L and T1 >= L holds; T2 >= L > T1 partial; T2 < L fails", why,
                     {"free_steps": ep.free_steps, "nudged_steps": ep.nudged_steps, "layers": n_layers}))
    return rows


def _feedforward_conditions(config, fb_angles: dict, n_layers: int) -> list[dict]:
    info = rule_info(config.rule)
    no_dynamics = "no settling dynamics: a feedforward pass computes the activities exactly, in one sweep"
    rows = [_row(1, NA, "-", "-", no_dynamics)]
    rows.append(_row(2, NA, "-", "-", "no recurrent dynamics, so no energy is needed; the symmetry it would impose is condition 4"))
    rows.append(_row(3, HOLDS, "2 phases: forward pass, backward pass", ">= 2 phases",
                     "the error is computed in a separate backward pass", {"phases": ["forward", "backward"]}))
    direct = info.feedback == "direct"
    reach = "direct: e D_l to every hidden layer" if direct else "chain: delta_l = (delta_l+1 B_l+1) f'(a_l), every layer"
    if info.feedback == "transpose":
        status, angle, why = HOLDS, 0.0, "B_l = W_l^T exactly (weight transport)"
        measured_text = f"{reach}; B_l = W_l^T (0°)"
    elif fb_angles:
        angle = max(fb_angles.values())
        status = angle_status(angle)
        what = "D_l against the transport path W_L-1^T ... W_l+1^T" if direct else "B_l against W_l^T"
        measured_text = f"{reach}; max angle({what}) {angle:.2f}° (per layer: " + ", ".join(
            f"{l}: {_fmt(a, '.1f')}" for l, a in sorted(fb_angles.items())) + ")"
        why = {HOLDS: "the feedback is the transpose", PARTIAL: "sign-concordant or aligned feedback: approximate",
               FAILS: "random feedback: unrelated to W^T (the forward weights may align with it in training)"}[status]
    else:
        status, angle, measured_text, why = NA, None, reach, "the rule reports no feedback matrices"
    rows.append(_row(4, status, measured_text, _feedback_threshold(), why,
                     {"reach": "direct" if direct else "chain", "feedback_angles": fb_angles, "max_feedback_angle": angle}))
    if info.locality is None:
        rows.append(_row(5, NA, "non-local: delta uses W^T (weight transport)", "-",
                         "backprop is the reference the conditions are measured against, not a local rule"))
    else:
        status, text = info.locality
        rows.append(_row(5, status, text, "pre x post quantities only; no forward weight in the feedback path",
                         "local" if status == HOLDS else "needs information about forward weights in the feedback path"))
    rows.append(_row(6, NA, "-", "-", "no nudge: the error is sent as an exact signal, not as a finite perturbation of activities"))
    rows.append(_row(7, NA, f"{n_layers - 1} backward step(s) for {n_layers} layers" if not direct else "1 direct step",
                     "-", "no settling: the backward pass visits the layers by construction, one step each (or directly)"))
    return rows


def _pc_conditions(config, params, x, y, measured: dict) -> list[dict]:
    pc, n_layers = config.pc, len(params)
    m = pc_measurements(config, params, x, y)
    inf, zil = m["inference"], pc.variant == "zero_divergence"
    rows = []

    # (1)
    if zil:
        rows.append(_row(1, NA, f"Z-IL: {n_layers - 1} inference steps at rate 1 (its schedule)", "-",
                         "Z-IL's schedule fixes the steps (L - 1) and the rate (1): each W_l learns at its step, "
                         "no converged inference is needed", inf))
    else:
        distance = inf["rel_distance_to_converged"]
        status = perturbation_status(distance)
        why = {HOLDS: f"{pc.inference_steps} steps of {pc.inference_lr:g} reach the inference equilibrium",
               PARTIAL: f"{pc.inference_steps} steps of {pc.inference_lr:g} stop short of the inference equilibrium",
               FAILS: f"{pc.inference_steps} steps of {pc.inference_lr:g} are far from the inference equilibrium",
               NA: "the converged update is zero"}[status]
        rows.append(_row(
            1, status,
            f"inference residual max|dF/dx| {_fmt(inf.get('inference_residual'), '.2e')} after {pc.inference_steps} steps "
            f"({_fmt(inf.get('converged_inference_residual'), '.2e')} after {inf['converged_steps']}), energy decrease "
            f"{_fmt(inf.get('energy_decrease'), '.3g')} ({_fmt(inf.get('converged_energy_decrease'), '.3g')}); the update's "
            f"relative distance to the converged one {_fmt(distance, '.2e')}",
            f"relative distance to the update after {CONVERGED_INFERENCE_FACTOR} x the steps < "
            f"{PERTURBATION_ERROR_HOLDS:g} holds, < {PERTURBATION_ERROR_PARTIAL:g} partial", why, inf))

    # (2)
    energy_text = {"standard": "inference descends F = sum |e_l|^2 / 2 + gamma loss",
                   "fixed_prediction": "inference descends F with the predictions held at the feedforward pass "
                                       "(a quadratic energy of the errors)",
                   "zero_divergence": "inference descends F = sum |e_l|^2 / 2 + gamma loss (rate 1)"}[pc.variant]
    rows.append(_row(2, HOLDS, energy_text, "inference is the gradient of one energy",
                     "the errors travel down through W_l^T itself: the inference dynamics are a gradient flow"))

    # (3)
    rows.append(_row(3, HOLDS, "2 phases: feedforward pass, inference with the output clamped to the target",
                     ">= 2 phases", "the weights learn from the relaxed prediction errors",
                     {"phases": ["feedforward", "inference (output clamped)"]}))

    # (4)
    steps = n_layers - 1 if zil else pc.inference_steps
    reached = [l for l in range(n_layers) if steps >= n_layers - 1 - l]
    missing = [l for l in range(n_layers) if l not in reached]
    reach_text = "all layers" if not missing else f"layers {_span(reached)} only (not {_span(missing)})"
    rows.append(_row(4, HOLDS if not missing else FAILS,
                     f"through inference, W_l^T itself (0°): {reach_text}",
                     "every layer reached (steps >= L - 1 - l) through W^T",
                     "the error reaches W_l after L - 1 - l inference steps" + (
                         "" if not missing else f"; with {steps} steps layers {_span(missing)} get no error"),
                     {"reach": "inference", "reached_layers": reached, "unreached_layers": missing}))

    # (5)
    status, text = rule_info(config.rule).locality
    rows.append(_row(5, status, text, "pre x post quantities only; no forward weight in the feedback path",
                     "local" if status == HOLDS else "needs information about forward weights in the feedback path"))

    # (6)
    rungs = m["gamma_ladder"]
    error = rungs[0]["rel_error"]
    status = perturbation_status(error)
    why = {HOLDS: f"gamma = {pc.output_precision:g} is small enough: the update is backprop's up to O(gamma)",
           PARTIAL: f"gamma = {pc.output_precision:g} biases the update (pc -> bp as gamma -> 0)",
           FAILS: f"gamma = {pc.output_precision:g} is far from 0: the relaxed output error is not backprop's",
           NA: "not measured"}[status]
    if pc.variant != "standard":
        why = f"{pc.variant} is exact at any gamma once inference has run (the error is measured, not assumed)"
    least = _least_error(rungs)
    if least is not None and len(rungs) > 1:
        why += f"; least error {least['rel_error']:.2g} at gamma {least['gamma']:g}"
    rows.append(_row(6, status,
                     f"output precision gamma: relative error against jax.grad, inference converged "
                     f"({inf['converged_steps']} steps), by gamma: {_ladder_text(rungs, 'gamma')}",
                     f"relative error at the configured gamma < {PERTURBATION_ERROR_HOLDS:g} holds, "
                     f"< {PERTURBATION_ERROR_PARTIAL:g} partial", why, {"ladder": rungs, "gamma": pc.output_precision}))

    # (7)
    step_rungs = m["steps_ladder"]
    if zil:
        status, why = HOLDS, f"Z-IL runs exactly L - 1 = {n_layers - 1} steps, W_l learning at step L - 1 - l (Song et al. 2020)"
    elif pc.inference_steps < n_layers - 1:
        status, why = FAILS, f"{pc.inference_steps} steps < L - 1 = {n_layers - 1}: the error does not reach the first layers"
    else:
        status, why = HOLDS, f"{pc.inference_steps} steps >= L - 1 = {n_layers - 1}: the error crosses every layer"
    rows.append(_row(7, status,
                     f"inference steps {steps}, L = {n_layers} weight layers; whole-network angle to jax.grad by steps: "
                     + ", ".join(f"{r['steps']}: {_fmt(r['angle'], '.1f')}°" for r in step_rungs),
                     "steps >= L - 1 holds (Z-IL: exactly L - 1); fewer fails", why, {"steps_ladder": step_rungs,
                                                                                       "layers": n_layers}))
    return rows


def _span(layers: list[int]) -> str:
    if not layers:
        return "none"
    return str(layers[0]) if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def conditions_table(config, rule, params, state, x, y, key, idx=None) -> dict:
    """All seven conditions and the gradient equivalence for `rule` at (params, state) on the
    probe batch (x, y one-hot; idx: its positions in the training split). Returns a plain dict (JSON-ready)."""
    n_layers = len(params)
    info = rule_info(config.rule)
    k_measure, k_feedback = jax.random.split(key)
    fb_angles = feedback_angles(rule, params, state, k_feedback)
    if info.family == ENERGY:
        measured, perturbation = ep_measurements(config, rule, params, state, x, y, k_measure, idx)
        rows = _ep_conditions(config, measured, fb_angles, perturbation, n_layers)
    else:
        measured = jax.jit(make_measure(config, architecture(config, x.shape[1]), rule))(params, state, x, y, k_measure)
        rows = (_pc_conditions(config, params, x, y, measured) if config.rule == PC
                else _feedforward_conditions(config, fb_angles, n_layers))
    equivalence = gradient_equivalence(measured, info.exact_output)
    equivalence["reference"] = ("implicit gradient of the cost at the free fixed point" if info.family == ENERGY
                                else "jax.grad of the loss")
    applicable = [r for r in rows if r["status"] != NA]
    return {
        "rule": config.rule,
        "conditions": rows,
        "all_applicable_hold": all(r["status"] == HOLDS for r in applicable),
        "gradient_equivalence": equivalence,
        "thresholds": THRESHOLDS,
    }
