"""`bioprop sweep pc`: standard predictive coding's update against the exact gradient, as the output
precision gamma shrinks and as inference runs longer.

For the network of the config (rule pc, at initialisation or after some epochs of training), on
`n_batches` minibatches per seed, pc's update (the rule's estimate) is compared with jax.grad of the
same loss (metrics/alignment.exact_gradients): angle and relative error |g_hat - g| / |g| of the
weights, per layer and for the whole network; per seed the mean over its batches, then the mean
and standard deviation across seeds. Two grids:
    gamma  pc.output_precision over `gammas`, inference run to convergence (the largest of `steps_list`)
    steps  pc.inference_steps over `steps_list`, at gamma = the smallest of `gammas`
Standard pc's error is first order in gamma once inference has converged (the rule's docstring):
the slope of log(relative error) against log(gamma), fitted above the gamma of least error (below
it the floor that unconverged inference and rounding leave takes over), is about 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bioprop_cli.config import Config, to_dict
from bioprop_cli.datasets.registry import num_classes
from bioprop_cli.interrupt import check as check_interrupt
from bioprop_cli.metrics.predictive_coding import METRICS, make_comparison
from bioprop_cli.experiment.probe import batch
from bioprop_cli.experiment.study import Measured, run_study
from bioprop_cli.precision import cast_floats
from bioprop_cli.report.study_figures import plot_pc_sweep
from bioprop_cli.models.arch import dense
from bioprop_cli.splits import derive_keys
from bioprop_cli.studies.seeds import SeedStudy, study_folder_name

def default_gammas() -> list[float]:
    """1e-3 to 1, two per decade."""
    return [round(10 ** (e / 2), 12) for e in range(-6, 1)]


def default_steps() -> list[int]:
    return [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]


def seed_measurements(config: Config, splits, seed: int, params, gammas: list[float], steps_list: list[int],
                      n_batches: int, dtype) -> dict:
    """This seed's measurements, each the mean over its batches: {"gamma": {metric: (G, L) or (G,)},
    "steps": {metric: (S, L) or (S,)}}."""
    params = cast_floats(params, dtype)
    network = dense(tuple([params[0]["w"].shape[0]] + [layer["w"].shape[1] for layer in params]))
    key = jax.random.fold_in(derive_keys(seed).data, 20_000)
    bs = config.train.batch_size
    order = np.asarray(jax.random.permutation(key, splits.x_train.shape[0]))[: n_batches * bs].reshape(n_batches, bs)
    batches = [batch(splits.x_train[idx], splits.y_train[idx], num_classes(config), dtype) for idx in order]

    def batch_mean(compare, gammas_array, steps):
        measured = []
        for x, y in batches:  # each batch waited for: Ctrl-C leaves no computation running
            check_interrupt()
            measured.append(jax.device_get(compare(params, x, y, gammas_array, steps)))
        return {k: np.mean([np.asarray(m[k], np.float64) for m in measured], axis=0) for k in measured[0]}

    compare = make_comparison(config, network)
    by_gamma = batch_mean(compare, jnp.asarray(gammas, dtype), max(steps_list))
    smallest = jnp.asarray([min(gammas)], dtype)
    per_steps = [batch_mean(compare, smallest, t) for t in steps_list]
    by_steps = {k: np.concatenate([m[k] for m in per_steps]) for k in per_steps[0]}
    return {"gamma": by_gamma, "steps": by_steps}


def _number(value) -> float | None:
    """A float, or None where it is undefined: the angle of a zero update (e.g. the first layer's
    after one inference step, before the error has reached it)."""
    return float(value) if np.isfinite(value) else None


def summarise(per_seed: list[dict], sweep: str, values: list, fixed: dict) -> list[dict]:
    """One row per value of the sweep: whole-network and per-layer mean and std across seeds."""
    rows = []
    for i, value in enumerate(values):
        row = {"sweep": sweep, **fixed, ("gamma" if sweep == "gamma" else "inference_steps"): value}
        for m in METRICS:
            whole = [s[sweep][f"{m}_all"][i] for s in per_seed]
            layers = np.stack([s[sweep][m][i] for s in per_seed])
            row.update({f"{m}_mean": _number(np.mean(whole)), f"{m}_std": _number(np.std(whole)),
                        f"{m}_per_layer_mean": [_number(v) for v in np.mean(layers, axis=0)],
                        f"{m}_per_layer_std": [_number(v) for v in np.std(layers, axis=0)]})
        rows.append(row)
    return rows


def fit_gamma_slope(rows: list[dict], max_gamma: float = 0.1) -> dict:
    """Slope of log10(relative error) against log10(gamma) over the gammas above the one of least
    error (below it the floor of unconverged inference and rounding takes over; as studies/beta.py
    fits), that one included when it is the smallest gamma (no floor in sight), and up to
    `max_gamma` (first order is the small-gamma expansion)."""
    points = sorted((r["gamma"], r["update_rel_error_mean"]) for r in rows if r["update_rel_error_mean"] > 0)
    if not points:
        return {"slope": None, "gammas": [], "reason": "no nonzero error"}
    least = min(range(len(points)), key=lambda i: points[i][1])
    fitted = [p for p in points[least + (least > 0) :] if p[0] <= max_gamma]
    if len(fitted) < 2:
        return {"slope": None, "gammas": [p[0] for p in fitted], "least_error_gamma": points[least][0],
                "reason": f"fewer than 2 gammas in ({points[least][0]:g}, {max_gamma:g}]"}
    slope, intercept = np.polyfit(np.log10([p[0] for p in fitted]), np.log10([p[1] for p in fitted]), 1)
    return {"slope": float(slope), "intercept": float(intercept), "gammas": [p[0] for p in fitted],
            "least_error_gamma": points[least][0]}


def slope_sentence(fit: dict) -> str:
    if fit["slope"] is None:
        return f"no slope ({fit['reason']})"
    return (f"relative error ~ gamma^{fit['slope']:.2f} over gamma in [{min(fit['gammas']):g}, "
            f"{max(fit['gammas']):g}] (theory, converged inference: 1)")


class PcStudy(SeedStudy):
    """Per seed both grids on `n_batches` batches; the rows pooled over the seeds, the slope, the summary."""

    name = "pc_sweep"

    def __init__(self, config: Config, dataset, gammas: list[float], steps_list: list[int], seeds: list[int],
                 n_batches: int, x64: bool, train_epochs: int = 0, progress: Callable[[str], None] = lambda m: None):
        super().__init__(config, dataset, seeds, train_epochs, x64, progress)
        self.gammas, self.steps_list, self.n_batches = sorted(gammas), sorted(steps_list), n_batches
        self.title = (f"pc ({config.pc.variant}) update vs jax.grad ({self.precision}, "
                      f"inference_lr={config.pc.inference_lr:g})")

    def settings(self) -> dict:
        return {"gammas": self.gammas, "steps": self.steps_list, "seeds": self.seeds, "batches_per_seed": self.n_batches,
                "train_epochs": self.train_epochs, "precision": self.precision}

    def measure_network(self, splits, seed, params, rule_state, dtype) -> Measured:
        measured = seed_measurements(self.config, splits, seed, params, self.gammas, self.steps_list, self.n_batches, dtype)
        return Measured({"seed": seed}, {f"{grid}.{m}": v for grid, by in measured.items() for m, v in by.items()})

    def summarise(self, measured: list[Measured]) -> tuple[list[dict], dict]:
        per_seed = [{grid: {k.split(".", 1)[1]: v for k, v in m.arrays.items() if k.startswith(grid + ".")}
                     for grid in ("gamma", "steps")} for m in measured]
        converged, small = max(self.steps_list), min(self.gammas)
        rows = (summarise(per_seed, "gamma", self.gammas, {"inference_steps": converged})
                + summarise(per_seed, "steps", self.steps_list, {"gamma": small}))
        fit = fit_gamma_slope([r for r in rows if r["sweep"] == "gamma"])
        summary = {
            "precision": self.precision,
            "variant": self.config.pc.variant,
            "inference_lr": self.config.pc.inference_lr,
            "gamma_slope": fit,
            "slope_summary": slope_sentence(fit),
            "gamma_sweep_steps": converged,
            "steps_sweep_gamma": small,
            **self.seed_facts(),
            "gammas": self.gammas,
            "steps": self.steps_list,
        }
        return rows, summary

    def figures(self, rows: list[dict], summary: dict, folder: Path) -> None:
        plot_pc_sweep(rows, summary, folder / "pc_sweep.png", self.title)


def folder_for(study: PcStudy) -> Path:
    """RESULTS_DIR/EXPERIMENT/pc-<precision>-<hash of the config and the settings>."""
    config = study.config
    return Path(config.results_dir) / config.experiment / study_folder_name(f"pc-{study.precision}", config, study.settings())


def run(study: PcStudy, folder: Path) -> dict:
    """The study in `folder` (experiment/study.run_study: the seeds measured before are not measured again):
    pc_sweep.points.jsonl and pc_sweep.points/ (per seed), pc_sweep.jsonl (one row per gamma, then per number
    of steps), summary.json, pc_sweep.png; returns {"rows", "summary", "title"}."""
    return run_study(study, folder, {"study": "sweep pc", **study.settings()}, to_dict(study.config), study.progress)
