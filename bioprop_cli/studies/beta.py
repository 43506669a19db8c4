"""`bioprop sweep beta`: bias and variance of equilibrium propagation's gradient estimate against beta.

For a fixed network (at initialisation, or after some epochs of training), K minibatches and
several seeds, each estimator's estimate g_hat(beta) is compared with the exact gradient g at the
free fixed point (implicit differentiation). With d = g_hat - g over all batches and seeds:
    bias     = |mean d| / mean |g|                 (relative)
    std      = sqrt(mean |d - mean d|^2) / mean |g| (relative spread across batches and seeds)
    angle    = mean over batches of angle(g_hat, g)
and per seed the same bias and std, whose mean and standard deviation across seeds give the error
bars. The slope of log(bias) against log(beta), fitted from the beta of least bias upwards (where
the bias dominates), is about 1 for one-sided and about 2 for symmetric nudging when the phases
have converged and rho is smooth; the hard sigmoid's kinks (units that start or stop saturating
under the nudge) add an O(beta) error to every estimator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bioprop_cli import ep as eqprop
from bioprop_cli.config import Config, derive, to_dict
from bioprop_cli.datasets.registry import num_classes
from bioprop_cli.experiment.probe import batch, measuring
from bioprop_cli.experiment.study import Measured, run_study
from bioprop_cli.experiment.runner import RunSpec, open_experiment
from bioprop_cli.interrupt import check as check_interrupt
from bioprop_cli.interrupt import interrupted
from bioprop_cli.metrics.alignment import flat_weights
from bioprop_cli.metrics.angles import angle_degrees
from bioprop_cli.precision import cast_floats, full_float32
from bioprop_cli.report.study_figures import plot_beta_bias, plot_beta_training
from bioprop_cli.runs import read_jsonl, write_json, write_jsonl
from bioprop_cli.splits import derive_keys
from bioprop_cli.studies.seeds import SeedStudy, study_folder_name


def default_betas() -> list[float]:
    """Log-spaced from 1e-4 to 1 (two per decade), plus 0.001, 0.002, ..., 0.009."""
    logspaced = [10 ** (e / 2) for e in range(-8, 1)]
    return sorted(set(round(b, 12) for b in logspaced + [k / 1000 for k in range(1, 10)]))


def make_batch_estimates(config: Config, betas: jax.Array, estimators: tuple[str, ...]) -> Callable:
    """(params, rule state, x, y, key) -> (exact gradient (P,), {estimator: estimates (n_betas, P)},
    free-phase residual), over the weights (metrics/alignment.flat_weights, as every whole-network
    comparison).

    The estimate is the training rule's (bioprop_cli/ep.py: the free phase from zero, then the
    estimator's nudged phase(s)), on the network the rule runs (its fixed feedback from the rule
    state), and the exact gradient is that network's, so a non-symmetric feedback shows as a bias
    that does not vanish as beta -> 0. The free phase runs once per batch; the nudged phases of all
    betas run together (vmap). random-sign: the sign of each beta drawn from `key`.
    """
    ep = config.ep

    def batch_estimates(params, rule_state, x, y, key):
        net = eqprop.network(config, params, rule_state)
        _, exact, _ = eqprop.implicit_reference(config, net, x, y)
        drive0, free = eqprop.free_phase(config, net, x, y, eqprop.start_states(config, net, x), ep.free_steps,
                                         ep.tolerance)

        def at(beta, beta_key, estimator):
            nudged = eqprop.second_phase(config, net, x, y, drive0, free.states, beta, beta_key, ep.nudged_steps,
                                         ep.tolerance, estimator)
            return flat_weights(nudged.grads)

        keys = jax.random.split(key, betas.shape[0])
        out = {e: jax.vmap(lambda b, k, e=e: at(b, k, e))(betas, keys) for e in estimators}
        return flat_weights(exact), out, free.residual

    return jax.jit(full_float32(batch_estimates))  # a measurement: at full float32 (precision.py)


def seed_statistics(config: Config, splits, seed: int, params, betas: list[float], estimators, n_batches: int,
                    dtype, rule_state=()) -> dict:
    """Per (estimator, beta): sums over this seed's batches, to be pooled across seeds. `rule_state`:
    the rule's state (ep's fixed feedback; studies/seeds.fixed_network gives it)."""
    params = cast_floats(params, dtype)
    if isinstance(rule_state, dict):  # only the fixed feedback is used: not ep's persistent particles
        rule_state = {k: v for k, v in rule_state.items() if k != "particles"}
    rule_state = cast_floats(rule_state, dtype)
    batch_estimates = make_batch_estimates(config, jnp.asarray(betas, dtype), tuple(estimators))
    key = jax.random.fold_in(derive_keys(seed).data, 10_000)
    n = splits.x_train.shape[0]
    bs = config.train.batch_size
    order = np.asarray(jax.random.permutation(key, n))[: n_batches * bs].reshape(n_batches, bs)
    sums = {e: {"d": 0.0, "d2": np.zeros(len(betas)), "angle": [], "exact_norm": []} for e in estimators}
    residuals = []
    for b, idx in enumerate(order):
        check_interrupt()
        x, y = batch(splits.x_train[idx], splits.y_train[idx], num_classes(config), dtype)
        exact, estimates, residual = batch_estimates(params, rule_state, x, y, jax.random.fold_in(key, b))
        residuals.append(float(residual))
        for e, est in estimates.items():
            d = est - exact[None, :]
            s = sums[e]
            s["d"] = s["d"] + d
            s["d2"] += np.asarray(jnp.sum(d**2, axis=1), np.float64)
            s["angle"].append(np.asarray(jax.vmap(lambda g: angle_degrees(g, exact))(est), np.float64))
            s["exact_norm"].append(float(jnp.linalg.norm(exact)))
    return {"sums": sums, "n_batches": n_batches, "free_residual": max(residuals)}


def summarise(per_seed: list[dict], betas: list[float], estimators) -> list[dict]:
    """Pools the seeds' sums into one row per (estimator, beta)."""
    rows = []
    for e in estimators:
        total_n = sum(s["n_batches"] for s in per_seed)
        g_norm = np.mean([v for s in per_seed for v in s["sums"][e]["exact_norm"]])
        mean_d = sum(s["sums"][e]["d"] for s in per_seed) / total_n  # (n_betas, P)
        sum_d2 = sum(s["sums"][e]["d2"] for s in per_seed)
        mean_d_norm2 = np.asarray(jnp.sum(mean_d**2, axis=1), np.float64)
        pooled_var = np.maximum(sum_d2 / total_n - mean_d_norm2, 0.0)
        seed_bias, seed_std = [], []
        for s in per_seed:
            n = s["n_batches"]
            m = np.asarray(jnp.sum((s["sums"][e]["d"] / n) ** 2, axis=1), np.float64)
            gs = np.mean(s["sums"][e]["exact_norm"])
            seed_bias.append(np.sqrt(m) / gs)
            seed_std.append(np.sqrt(np.maximum(s["sums"][e]["d2"] / n - m, 0.0)) / gs)
        angles = np.concatenate([np.stack(s["sums"][e]["angle"]) for s in per_seed])  # (batches, n_betas)
        for i, beta in enumerate(betas):
            rows.append({
                "estimator": e,
                "beta": beta,
                "bias": float(np.sqrt(mean_d_norm2[i]) / g_norm),
                "std": float(np.sqrt(pooled_var[i]) / g_norm),
                "bias_seed_mean": float(np.mean([b[i] for b in seed_bias])),
                "bias_seed_std": float(np.std([b[i] for b in seed_bias])),
                "std_seed_mean": float(np.mean([v[i] for v in seed_std])),
                "std_seed_std": float(np.std([v[i] for v in seed_std])),
                # a batch whose exact gradient is 0 (all outputs on target) has no angle
                "angle_mean": float(np.nanmean(angles[:, i])) if np.isfinite(angles[:, i]).any() else None,
                "angle_std": float(np.nanstd(angles[:, i])) if np.isfinite(angles[:, i]).any() else None,
                "n_estimates": int(total_n),
            })
    return rows


HOLOMORPHIC_MAX_RADIUS = 0.5  # fit_slopes' largest radius for holomorphic EP


def fit_slopes(rows: list[dict], max_beta: float = 0.1) -> dict:
    """Slope of log(bias) against log(beta) per estimator, where the bias dominates: over the betas
    above the one of least bias (the sweet spot, where the floor of round-off and unconverged
    settling is as large as the bias; below it the floor takes over) and up to `max_beta` (the
    power laws are the small-beta expansion; at beta ~ 1 the nudged state moves far).
    Theory for converged phases and a smooth rho: about 1 one-sided, about 2 symmetric, N for holomorphic
    EP at N points, fitted up to HOLOMORPHIC_MAX_RADIUS: its error a_{N+1} r^N + a_{2N+1} r^{2N} + ... is led
    by r^N while r is well inside the radius of convergence of the nudged state s(beta), which is a property of
    the network (past 0.5 on the untrained MNIST network of docs/holomorphic_ep.md, below 0.1 on a trained
    one): the betas fitted are reported with the slope."""
    slopes = {}
    for e in sorted({r["estimator"] for r in rows}):
        holomorphic = (eqprop.parse_estimator(e) or ("",))[0] == "holomorphic"
        top = max(max_beta, HOLOMORPHIC_MAX_RADIUS) if holomorphic else max_beta
        points = sorted((r["beta"], r["bias"]) for r in rows if r["estimator"] == e and r["bias"] > 0)
        if not points:
            slopes[e] = {"slope": None, "betas": [], "reason": "no nonzero bias"}
            continue
        sweet = min(range(len(points)), key=lambda i: points[i][1])
        fitted = [p for p in points[sweet + 1 :] if p[0] <= top]
        if len(fitted) < 3:
            slopes[e] = {"slope": None, "betas": [p[0] for p in fitted], "sweet_spot": points[sweet][0],
                         "reason": "fewer than 3 betas above the sweet spot"}
            continue
        x, y = np.log10([p[0] for p in fitted]), np.log10([p[1] for p in fitted])
        slope, intercept = np.polyfit(x, y, 1)
        slopes[e] = {"slope": float(slope), "intercept": float(intercept), "betas": [p[0] for p in fitted],
                     "sweet_spot": points[sweet][0]}
    return slopes


class BetaStudy(SeedStudy):
    """Per seed the estimates of every estimator and beta on `n_batches` batches (and, on the first seed,
    the seconds per update); the seeds' sums pooled into one row per (estimator, beta), the slopes, the
    summary."""

    name = "beta_sweep"

    def __init__(self, config: Config, dataset, betas: list[float], estimators, n_batches: int, seeds: list[int],
                 train_epochs: int, x64: bool, progress: Callable[[str], None] = lambda m: None):
        super().__init__(config, dataset, seeds, train_epochs, x64, progress)
        self.betas, self.estimators, self.n_batches = list(betas), list(estimators), n_batches
        self.title = (f"EP gradient estimate vs implicit gradient ({self.precision}, T1={config.ep.free_steps}, "
                      f"T2={config.ep.nudged_steps})")

    def settings(self) -> dict:
        return {"betas": self.betas, "estimators": self.estimators, "seeds": self.seeds,
                "batches_per_seed": self.n_batches, "train_epochs": self.train_epochs, "precision": self.precision}

    def measure_network(self, splits, seed, params, rule_state, dtype) -> Measured:
        statistics = seed_statistics(self.config, splits, seed, params, self.betas, self.estimators, self.n_batches,
                                     dtype, rule_state)
        row = {"seed": seed, "n_batches": statistics["n_batches"], "free_residual": statistics["free_residual"]}
        if seed == self.seeds[0]:
            row["seconds_per_update"] = seconds_per_update(self.config, splits, params, rule_state, self.estimators, dtype)
        arrays = {}
        for e, sums in statistics["sums"].items():
            arrays.update({f"{e}.d": sums["d"], f"{e}.d2": sums["d2"], f"{e}.angle": np.stack(sums["angle"]),
                           f"{e}.exact_norm": np.asarray(sums["exact_norm"], np.float64)})
        return Measured(row, arrays)

    def _statistics(self, measured: Measured) -> dict:
        """seed_statistics' result again, from what measure_network kept (d as the JAX array it was, in the
        measuring precision)."""
        a = measured.arrays
        with measuring(self.x64):
            sums = {e: {"d": jnp.asarray(a[f"{e}.d"]), "d2": a[f"{e}.d2"], "angle": list(a[f"{e}.angle"]),
                        "exact_norm": [float(v) for v in a[f"{e}.exact_norm"]]} for e in self.estimators}
        residual = measured.row["free_residual"]
        return {"sums": sums, "n_batches": measured.row["n_batches"],
                "free_residual": float("nan") if residual is None else residual}

    def summarise(self, measured: list[Measured]) -> tuple[list[dict], dict]:
        statistics = [self._statistics(m) for m in measured]
        rows = summarise(statistics, self.betas, self.estimators)
        slopes = fit_slopes(rows)
        summary = {
            "precision": self.precision,
            "slopes": slopes,
            "slope_summary": slope_sentence(slopes),
            "max_free_residual": max(s["free_residual"] for s in statistics),
            "seconds_per_update": measured[0].row["seconds_per_update"],
            **self.seed_facts(),
            "betas": self.betas,
            "estimators": self.estimators,
        }
        return rows, summary

    def figures(self, rows: list[dict], summary: dict, folder: Path) -> None:
        """beta_sweep.png (the rows' and slopes' kinds, which `bioprop compare` checks: records.py)."""
        plot_beta_bias(rows, summary["slopes"], folder / "beta_sweep.png", self.title)


def folder_for(study: BetaStudy) -> Path:
    """RESULTS_DIR/EXPERIMENT/beta-<precision>-<hash of the config and the settings>."""
    config = study.config
    return Path(config.results_dir) / config.experiment / study_folder_name(f"beta-{study.precision}", config,
                                                                           study.settings())


def run(study: BetaStudy, folder: Path) -> dict:
    """The sweep in `folder` (experiment/study.run_study: the seeds measured before are not measured again):
    beta_sweep.points.jsonl and beta_sweep.points/ (per seed), beta_sweep.jsonl (one row per estimator and
    beta), summary.json, beta_sweep.png; returns {"rows", "summary", "title"}."""
    return run_study(study, folder, {"study": "sweep beta", **study.settings()}, to_dict(study.config), study.progress)


def seconds_per_update(config: Config, splits, params, rule_state, estimators, dtype, repeats: int = 5) -> dict:
    """{estimator: the median wall-clock seconds of one update}: the free phase (T1 steps) and the
    estimator's nudged phase(s) (T2 steps each; holomorphic: N//2 + 1 complex phases), at ep.beta, on
    the first training batch, compiled first, on this machine's default device."""
    import time

    ep, n = config.ep, config.train.batch_size
    params = cast_floats(params, dtype)
    if isinstance(rule_state, dict):
        rule_state = cast_floats({k: v for k, v in rule_state.items() if k != "particles"}, dtype)
    x, y = batch(splits.x_train[:n], splits.y_train[:n], num_classes(config), dtype)
    key = jax.random.PRNGKey(0)
    seconds = {}
    for e in estimators:
        def update(params, x, y, e=e):
            net = eqprop.network(config, params, rule_state)
            drive0, free = eqprop.free_phase(config, net, x, y, eqprop.start_states(config, net, x), ep.free_steps,
                                             ep.tolerance)
            return eqprop.second_phase(config, net, x, y, drive0, free.states, ep.beta, key, ep.nudged_steps,
                                       ep.tolerance, e).grads

        run = jax.jit(update)
        jax.block_until_ready(run(params, x, y))
        times = []
        for _ in range(repeats):
            check_interrupt()
            start = time.perf_counter()
            jax.block_until_ready(run(params, x, y))
            times.append(time.perf_counter() - start)
        seconds[e] = float(np.median(times))
    return seconds


def train_folder(config: Config, betas: list[float]) -> Path:
    """RESULTS_DIR/EXPERIMENT/beta-train-<hash of the config and the betas>: the same command finds
    the same folder again (and resumes it)."""
    return Path(config.results_dir) / config.experiment / study_folder_name("beta-train", config, {"betas": betas})


def train_per_beta(config: Config, dataset, betas: list[float], folder: Path,
                   notice: Callable[[str], None] = lambda m: None) -> dict:
    """`--train`: one run per beta, all betas trained together (one vmapped program) through the
    runner (experiment/runner.py: a rerun trains only the runs that did not finish), into
    folder/runs/; per beta its status, accuracies and curves. `notice`: Experiment.train's."""
    specs = [RunSpec(f"beta-{beta:g}-s{config.seed}", derive(config, {"ep.beta": beta}), {"ep.beta": beta})
             for beta in betas]
    with open_experiment(folder, {"betas": betas}, to_dict(config), what="beta sweep") as experiment:
        entries = experiment.train(specs, lambda cfg: dataset, interrupted=interrupted, notice=notice)
    check_interrupt()  # the runs recorded `interrupted`
    rows = []
    for beta, entry in zip(betas, entries):
        run_dir = folder / entry["run_dir"] if "run_dir" in entry else None
        summary = _read_summary(run_dir)
        metrics = read_jsonl(run_dir / "metrics.jsonl") if run_dir and (run_dir / "metrics.jsonl").exists() else []
        rows.append({
            "beta": beta,
            "status": entry["status"],
            "test_accuracy": entry.get("test_accuracy"),
            "best_val_accuracy": summary.get("best_val_accuracy"),
            "train_loss": [m["train_loss"] for m in metrics],
            "val_accuracy": [m.get("val_accuracy") for m in metrics],
            "run_dir": str(run_dir) if run_dir else None,
        })
    return {"betas": betas, "estimator": config.ep.estimator, "rows": rows}


def _read_summary(run_dir: Path | None) -> dict:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (TypeError, OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return summary if isinstance(summary, dict) else {}


def write_training(result: dict, folder: Path) -> None:
    """beta_train.jsonl (one row per beta: the runs as they stand, rewritten whole on a rerun),
    summary.json, beta_train.png."""
    write_jsonl(folder / "beta_train.jsonl", result["rows"])
    write_json(folder / "summary.json", result)
    plot_beta_training(result["rows"], folder / "beta_train.png")


def slope_sentence(slopes: dict) -> str:
    # random-sign: +beta and -beta in equal numbers would average to a symmetric estimate (beta^2),
    # but over a finite sample the signs do not balance and an O(beta / sqrt(n)) bias remains
    expected = {"one-sided": 1, "negative": 1, "symmetric": 2, "random-sign": 1, "clamped": 0}  # coupled: bioprop_cli/ep.py
    parts = []
    for e, s in slopes.items():
        estimator, points = eqprop.parse_estimator(e)
        if estimator == "holomorphic":  # the N-point Fourier sum's error: O(r^N) (bioprop_cli/ep.py)
            expected[e] = points
        if s["slope"] is None:
            parts.append(f"{e}: no slope ({s['reason']})")
        else:
            lo, hi = min(s["betas"]), max(s["betas"])
            parts.append(f"{e}: slope {s['slope']:.2f} over beta in [{lo:g}, {hi:g}] (theory, smooth rho: about {expected.get(e, '?')})")
    return "; ".join(parts)
