"""The seven conditions under which a local learning rule's update equals backprop's, measured.

For one rule and setup (a config), on a probe batch, at the network the config initialises (or at a
run's trained parameters, params.npz):

(1) convergence: the settling reaches a fixed point. Measured: the spectral radius of the settling
    map's Jacobian at the free fixed point (power iteration, bioprop_cli/ep.py) and the final
    residual |s_T1 - s_T1-1| of the free phase with the configured T1 (largest over the batch).
(2) energy function: the dynamics derive from one energy, i.e. the connections are symmetric.
    Measured: the angle between the feedback the network uses and W^T (ep.feedback).
(3) phases: a free phase and a nudged (or target / backward) phase. Counted from the rule.
(4) consistent feedback reaches every weight. Measured: the angle between each layer's feedback
    matrix and the matrix exact transport would use (`rule.feedback`), and which layers receive
    an error signal (chain, direct, or through the dynamics: layer l only if T2 >= L - l).
(5) locality: the update uses only pre- and post-synaptic quantities (and, for ep, is contrastive).
(6) small perturbation: beta -> 0. Measured: the relative error of the EP estimate at the
    configured beta, with both phases settled to convergence (so that (1) and (7) play no part),
    against the implicit gradient at the free fixed point; and against the same estimate at
    beta x BETA_SMALL_FACTOR.
(7) architecture: settling corresponds layer by layer to the feedforward computation. Measured: T1
    and T2 against the number of layers L (the nudge needs L steps to reach the first layer).

Beneath them, the resulting gradient equivalence: per layer, the angle and relative error between
the rule's update and the exact gradient of the same loss (metrics/measure.py: jax.grad for the
feedforward rules, the implicit gradient at the free fixed point for ep).

Everything here is a pure function of (config, params, rule state, probe batch) returning plain
dicts of Python numbers and strings; the study (the network and probe a config and seed draw, the
precision, the files) is bioprop_cli/studies/conditions.py, the command bioprop_cli/cli/conditions.py.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from bioprop_cli.metrics.angles import angle_degrees
from bioprop_cli.metrics.measure import make_measure
from bioprop_cli.rules import ENERGY, HOLDS, PARTIAL, rule_info

# ----------------------------------------------------------------------------------------------
# Thresholds. Every status is decided by one of these against a measured number.

# (1) the settling map contracts at the free fixed point when its Jacobian's spectral radius is
# below 1 (a fixed point that attracts); below this it "holds" as far as the radius goes.
SPECTRAL_RADIUS_MAX = 1.0
# (1) final free-phase residual |s_T1 - s_T1-1| (largest over the batch): below this the free
# state is at the fixed point for gradient purposes ("holds"; the EP estimate divides state
# differences by beta, so the relaxation left over must be far below beta x the nudge's effect).
RESIDUAL_HOLDS = 1e-4
# (1) below this (and radius < 1) the free phase is close but not settled: "partial"; above it, "fails".
RESIDUAL_PARTIAL = 1e-2
# (2), (4) angle between the feedback matrix and W^T (or the transport path, for dfa), worst
# layer: below 1 degree the feedback is the transpose for all purposes ("holds").
FEEDBACK_ANGLE_HOLDS = 1.0
# (2), (4) below this the feedback carries a measurable part of W^T ("partial": approximate, the
# forward weights can align with it); at or above it, "fails". Not 90: a random matrix of the
# shape of W^T lies at 90 +- a fraction of a degree by chance, and must not count as partial.
FEEDBACK_ANGLE_PARTIAL = 80.0
# (6) relative error of the converged-phase EP estimate at the configured beta against the
# implicit gradient: below this the nudge is small enough ("holds"; symmetric nudging is O(beta^2)).
BETA_BIAS_HOLDS = 0.05
# (6) below this "partial" (a biased but useful estimate); at or above it "fails".
BETA_BIAS_PARTIAL = 0.5
# (6) the "much smaller beta" the configured one is also compared with.
BETA_SMALL_FACTOR = 0.01
# Gradient equivalence (whole network, all weight matrices at once): angle below this and ...
EQUIVALENCE_ANGLE_HOLDS = 1.0
# ... relative error below this: the update IS the gradient ("holds").
EQUIVALENCE_REL_ERROR_HOLDS = 0.05
# Angle below this: still a descent direction ("partial"); at or above: "fails".
EQUIVALENCE_ANGLE_PARTIAL = 90.0

THRESHOLDS = {
    "spectral_radius_max": SPECTRAL_RADIUS_MAX,
    "residual_holds": RESIDUAL_HOLDS,
    "residual_partial": RESIDUAL_PARTIAL,
    "feedback_angle_holds_deg": FEEDBACK_ANGLE_HOLDS,
    "feedback_angle_partial_deg": FEEDBACK_ANGLE_PARTIAL,
    "beta_bias_holds": BETA_BIAS_HOLDS,
    "beta_bias_partial": BETA_BIAS_PARTIAL,
    "beta_small_factor": BETA_SMALL_FACTOR,
    "equivalence_angle_holds_deg": EQUIVALENCE_ANGLE_HOLDS,
    "equivalence_rel_error_holds": EQUIVALENCE_REL_ERROR_HOLDS,
    "equivalence_angle_partial_deg": EQUIVALENCE_ANGLE_PARTIAL,
}

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


def convergence_status(radius: float | None, residual: float | None) -> str:
    if radius is None or residual is None or radius >= SPECTRAL_RADIUS_MAX or residual >= RESIDUAL_PARTIAL:
        return FAILS
    return HOLDS if residual < RESIDUAL_HOLDS else PARTIAL


def beta_status(bias: float | None) -> str:
    return _graded(bias, BETA_BIAS_HOLDS, BETA_BIAS_PARTIAL)


def equivalence_status(angle: float | None, rel_error: float | None) -> str:
    if angle is None:
        return FAILS
    if angle < EQUIVALENCE_ANGLE_HOLDS and rel_error is not None and rel_error < EQUIVALENCE_REL_ERROR_HOLDS:
        return HOLDS
    return PARTIAL if angle < EQUIVALENCE_ANGLE_PARTIAL else FAILS


# ----------------------------------------------------------------------------------------------
# Measurements (arrays in, plain numbers out).


def feedback_angles(rule, params, state, key) -> dict[int, float]:
    """{layer: angle in degrees between B_l and the matrix exact transport would use there}."""
    return {int(l): _f(angle_degrees(b, ref)) for l, (b, ref) in rule.feedback(params, state, key).items()}


def gradient_equivalence(measured: dict) -> dict:
    """Per layer and whole network: the rule's update against the exact gradient (from metrics/measure.py)."""
    layers = {k: np.asarray(v) for k, v in measured["layers"].items()}
    n = len(layers["update_angle"])
    rows = [
        {"layer": l, "update_angle": _f(layers["update_angle"][l]), "update_rel_error": _f(layers["update_rel_error"][l])}
        for l in range(n)
    ]
    network = {k: _f(v) for k, v in measured["network"].items()}
    status = equivalence_status(network.get("update_angle"), network.get("update_rel_error"))
    return {
        "layers": rows,
        "network": network,
        "status": status,
        "threshold": f"whole-network angle < {EQUIVALENCE_ANGLE_HOLDS:g}° and relative error < "
        f"{EQUIVALENCE_REL_ERROR_HOLDS:g} holds; angle < {EQUIVALENCE_ANGLE_PARTIAL:g}° partial (a descent direction)",
    }


def ep_measurements(config, rule, params, state, x, y, key, idx=None) -> tuple[dict, dict]:
    """One compiled pass for ep: (measured, bias).

    measured = {"layers", "network"} as the training's measurement gives them
    (metrics/equilibrium.py): the rule's estimate (configured T1, T2, beta; from the probe examples'
    persistent particles `idx` if any) against the implicit gradient at the free fixed point, with
    the settling diagnostics (free_residual of the T1 steps, spectral radius at the fixed point, ...).
    bias, condition (6): the estimate with both phases settled to convergence (from the reference
    free fixed point, to ep.reference_tolerance within ep.reference_steps), at the configured beta
    and at beta x BETA_SMALL_FACTOR, against the implicit gradient."""
    from bioprop_cli import ep as eqprop
    from bioprop_cli.metrics.equilibrium import measure_with_references
    from bioprop_cli.models.energy import input_drive

    ep = config.ep
    beta = float(ep.beta)

    def compute(params, state, x, y, key):
        measured, ref = measure_with_references(rule, config, params, state, x, y, key, idx)
        implicit, s_star = ref["implicit"], ref["fixed_point"].states
        net = eqprop.network(config, params, state)
        drive0 = input_drive(net.running, x, net.arch)

        def estimate(b):  # random-sign at +beta: its bias is one-sided's (or negative's)
            estimator = "one-sided" if ep.estimator == "random-sign" else ep.estimator
            nudged = eqprop.second_phase(config, net, x, y, drive0, s_star, b, key, ep.reference_steps,
                                         ep.reference_tolerance, estimator)
            return nudged.grads, nudged.residual

        at_beta, res_beta = estimate(beta)
        at_small, res_small = estimate(beta * BETA_SMALL_FACTOR)
        flat = lambda ps: jnp.concatenate([jnp.ravel(p["w"]) for p in ps])
        rel = lambda a, b: jnp.linalg.norm(flat(a) - flat(b)) / jnp.linalg.norm(flat(b))
        bias = {
            "bias_vs_implicit": rel(at_beta, implicit),
            "small_beta_vs_implicit": rel(at_small, implicit),
            "bias_vs_small_beta": rel(at_beta, at_small),
            "angle_vs_implicit": angle_degrees(flat(at_beta), flat(implicit)),
            "implicit_norm": jnp.linalg.norm(flat(implicit)),
            "adjoint_residual": ref["adjoint_residual"],
            "fixed_point_residual": ref["fixed_point"].residual,
            "nudged_residual": jnp.maximum(res_beta, res_small),
        }
        return measured, bias

    measured, bias = jax.jit(compute)(params, state, x, y, key)
    bias = {k: _f(v) for k, v in bias.items()}
    bias.update(beta=beta, small_beta=beta * BETA_SMALL_FACTOR)
    return measured, bias


# ----------------------------------------------------------------------------------------------
# The table.


def _ep_conditions(config, measured: dict, fb_angles: dict, bias: dict, n_layers: int) -> list[dict]:
    ep = config.ep
    net = measured["network"]
    radius, residual = _f(net.get("spectral_radius")), _f(net.get("free_residual"))
    ref_residual = _f(net.get("reference_residual"))
    rows = []

    # (1)
    status = convergence_status(radius, residual)
    why = {
        HOLDS: f"the dynamics contract (radius < 1) and T1 = {ep.free_steps} steps settle the free phase",
        PARTIAL: f"the dynamics contract but T1 = {ep.free_steps} steps stop short of the fixed point",
        FAILS: (f"T1 = {ep.free_steps} steps leave the free phase far from a fixed point: the estimate carries its "
                f"continued relaxation" if radius is not None and radius < SPECTRAL_RADIUS_MAX
                else "the settling map does not contract at the free state: no attracting fixed point"),
    }[status]
    if ref_residual is not None and ref_residual >= ep.reference_tolerance * 10 and ep.reference_tolerance > 0:
        why += f" (the reference fixed point itself only reached residual {ref_residual:.1e})"
    rows.append(_row(
        1, status, f"spectral radius {_fmt(radius, '.4f')}, free residual {_fmt(residual, '.2e')} (T1 = {ep.free_steps})",
        f"radius < {SPECTRAL_RADIUS_MAX:g} and residual < {RESIDUAL_HOLDS:g} holds; radius < 1 and residual < {RESIDUAL_PARTIAL:g} partial",
        why, {"spectral_radius": radius, "free_residual": residual, "free_steps": ep.free_steps,
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
              "coupled": ["free", "output clamped to (1 - beta) s_L + beta y"]}[ep.estimator]
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
    b = bias.get("bias_vs_implicit")
    decided_by = "bias_vs_implicit"
    if b is None or not bias.get("implicit_norm"):
        b, decided_by = bias.get("bias_vs_small_beta"), "bias_vs_small_beta"
    status = beta_status(b)
    why = {
        HOLDS: f"beta = {ep.beta:g} is in the small-beta regime: the estimate is the gradient up to O(beta{'^2' if ep.estimator == 'symmetric' else ''})",
        PARTIAL: f"beta = {ep.beta:g} biases the estimate (finite nudge; the hard sigmoid's kinks add O(beta))",
        FAILS: f"beta = {ep.beta:g} is far from 0: the nudged state leaves the linear regime",
        NA: "the implicit gradient is zero (all outputs on target): no bias to measure",
    }[status]
    not_an_estimate = {  # bioprop_cli/ep.py: the clamped second phases do not tend to the gradient
        "clamped": "contrastive learning (ep.estimator = clamped) does not estimate the gradient (no beta to shrink)",
        "coupled": f"coupled learning at eta = beta = {ep.beta:g}; as eta -> 0 it tends to the gradient with the output "
                   "error weighted by the Schur complement of the energy's Hessian on the output, not to the gradient",
    }
    if ep.estimator in not_an_estimate and status in (PARTIAL, FAILS):
        why = not_an_estimate[ep.estimator]
    settled = max(bias.get("fixed_point_residual") or 0.0, bias.get("nudged_residual") or 0.0)
    if ep.reference_tolerance > 0 and settled >= 10 * ep.reference_tolerance:
        why += f" (the phases only settled to residual {settled:.1e} within {ep.reference_steps} steps)"
    rows.append(_row(
        6, status,
        f"beta {ep.beta:g}: rel. error {_fmt(bias.get('bias_vs_implicit'), '.2e')} vs implicit gradient, "
        f"{_fmt(bias.get('bias_vs_small_beta'), '.2e')} vs beta {bias['small_beta']:g} (both phases settled to "
        f"residual {_fmt(bias.get('fixed_point_residual'), '.1e')} / {_fmt(bias.get('nudged_residual'), '.1e')})",
        f"relative error < {BETA_BIAS_HOLDS:g} holds, < {BETA_BIAS_PARTIAL:g} partial", why,
        {**bias, "decided_by": decided_by},
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
    k_measure, k_feedback = jax.random.split(key)
    fb_angles = feedback_angles(rule, params, state, k_feedback)
    if rule_info(config.rule).family == ENERGY:
        measured, bias = ep_measurements(config, rule, params, state, x, y, k_measure, idx)
        rows = _ep_conditions(config, measured, fb_angles, bias, n_layers)
    else:
        measured = jax.jit(make_measure(config, rule))(params, state, x, y, k_measure)
        rows = _feedforward_conditions(config, fb_angles, n_layers)
    equivalence = gradient_equivalence(measured)
    reference = ("implicit gradient of the cost at the free fixed point" if rule_info(config.rule).family == ENERGY
                 else "jax.grad of the loss")
    equivalence["reference"] = reference
    applicable = [r for r in rows if r["status"] != NA]
    return {
        "rule": config.rule,
        "conditions": rows,
        "all_applicable_hold": all(r["status"] == HOLDS for r in applicable),
        "gradient_equivalence": equivalence,
        "thresholds": THRESHOLDS,
    }
