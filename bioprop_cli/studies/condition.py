"""`bioprop sweep condition`: break one condition of gradient equivalence at a time.

Start from an equilibrium-propagation setup where every condition holds (the BASE overrides: a
small sigmoid network, symmetric weights, a converged free phase, beta = 0.01 with symmetric
nudging, T2 well above the depth), then vary ONE knob, keeping the others at the base:

    knob        condition                       config overrides
    t1          (1) convergence                 ep.free_steps = v
    asymmetry   (2) energy function / symmetry  ep.feedback = mixed, ep.feedback_angle = v (degrees)
    feedback    (4) feedback consistency        ep.feedback = v (symmetric, sign, random)
    beta        (6) small perturbation          ep.beta = v
    t2          (7) architecture                ep.nudged_steps = v

For every value: (a) on a probe batch at initialisation, the angle and relative error of the EP
update to the exact gradient (implicit differentiation at the free fixed point, ep.exact_references),
per layer and for the whole network, mean over seeds; (b) optionally, the test accuracy after a
short training (through the runner, experiment/runner.py: the seeds of a value train together; a rerun
of an interrupted sweep trains only what did not finish).

Cost of violating a condition, relative to the baseline (the base config itself, measured once):
    angle cost(knob)    = max over the knob's values v of [theta(v) - theta(base)], theta the
                          whole-network angle (all weight matrices flattened) in degrees;
    accuracy cost(knob) = max over v of [acc(base) - acc(v)], acc the test accuracy after training,
                          in percentage points (a diverged run counts as chance, 10%).
The condition whose violation costs most is the knob with the largest accuracy cost when trained
(ties and untrained sweeps: the largest angle cost); both rankings are reported.
A layer whose update is exactly zero (the nudge did not reach it) has no angle: it is reported as
null and its relative error is 1; the whole-network angle still exists.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from bioprop_cli import ep as eqprop
from bioprop_cli.config import Config, derive, to_dict
from bioprop_cli.errors import UserError
from bioprop_cli.experiment.runner import Experiment, RunSpec, identity_name, open_experiment
from bioprop_cli.interrupt import check as check_interrupt
from bioprop_cli.interrupt import interrupted
from bioprop_cli.metrics.alignment import compare_updates
from bioprop_cli.experiment.probe import seed_network_probe
from bioprop_cli.precision import float32_normal_problem
from bioprop_cli.report.study_figures import plot_condition_knob
from bioprop_cli.runs import append_jsonl, read_jsonl, write_json
from bioprop_cli.splits import make_splits

# The all-conditions-hold setup (used when no --config is given; --set and the flags go on top).
# Sigmoid rho (smooth: no kinks), spectral radius ~0.56 at initialisation, so 100 free steps
# leave a residual ~1e-7; T2 = 50 >> L = 3; symmetric nudging at beta = 0.01 (relative bias
# ~5e-4 in float32). Short training: 4,500 training examples, 1 epoch, Adam 3e-3.
BASE = [
    ("rule", "ep"),
    ("model.depth", 2),
    ("model.width", 64),
    ("model.activation", "sigmoid"),
    ("ep.estimator", "symmetric"),
    ("ep.beta", 0.01),
    ("ep.free_steps", 100),
    ("ep.nudged_steps", 50),
    ("ep.tolerance", 0.0),
    # Adam: learns visibly within one short epoch (SGD 0.1, the ep preset, stays at chance there)
    ("optimizer.name", "adam"),
    ("optimizer.lr", 0.003),
    ("data.train_limit", 5000),
    ("data.validation_size", 500),
    ("data.test_limit", 2000),
    ("alignment.enabled", False),
]

CHANCE_ACCURACY = 0.1


@dataclasses.dataclass(frozen=True)
class Knob:
    name: str
    condition: int
    condition_name: str
    overrides: Callable[[Any], dict]
    defaults: Callable[[Config], list]
    parse: Callable[[str], Any]
    axis_label: str  # the x axis of its figure
    log_x: bool = False
    categorical: bool = False


def _t1_defaults(base: Config) -> list:
    return sorted({1, 2, 5, 10, 20, 50, base.ep.free_steps})


def _t2_defaults(base: Config) -> list:
    layers = base.model.depth + 1
    return sorted(set(range(1, layers + 1)) | {layers + 2, base.ep.nudged_steps})


def _int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError
    return value


def _angle(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 180:
        raise ValueError
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)) or float32_normal_problem(value):
        raise ValueError
    return value


def _feedback_kind(text: str) -> str:
    if text not in ("symmetric", "sign", "random", "mixed"):
        raise ValueError
    return text


KNOBS: dict[str, Knob] = {
    "t1": Knob("t1", 1, "convergence", lambda v: {"ep.free_steps": v}, _t1_defaults, _int,
               "free-phase steps T1", log_x=True),
    "asymmetry": Knob("asymmetry", 2, "energy function", lambda v: {"ep.feedback": "mixed", "ep.feedback_angle": v},
                      lambda base: [0.0, 30.0, 60.0, 90.0], _angle, "feedback angle to W^T (°)"),
    "feedback": Knob("feedback", 4, "feedback consistency", lambda v: {"ep.feedback": v},
                     lambda base: ["symmetric", "sign", "random"], _feedback_kind, "feedback", categorical=True),
    "beta": Knob("beta", 6, "small perturbation", lambda v: {"ep.beta": v},
                 lambda base: [1e-3, 1e-2, 0.1, 1.0], _positive, "beta", log_x=True),
    "t2": Knob("t2", 7, "architecture", lambda v: {"ep.nudged_steps": v}, _t2_defaults, _int,
               "nudged-phase steps T2", log_x=True),
}


def parse_knobs(text: str) -> list[str]:
    chosen = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in KNOBS]
    if unknown or not chosen:
        raise UserError(f"--knobs: unknown knob {unknown[0]!r}; known: {', '.join(KNOBS)}" if unknown else "--knobs: none given")
    return list(dict.fromkeys(chosen))


def parse_knob_values(name: str, text: str) -> list:
    knob = KNOBS[name]
    try:
        values = [knob.parse(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        what = {"t1": "integers >= 1", "t2": "integers >= 1", "beta": "positive normal float32 numbers (1.18e-38 to 3.4e38)",
                "asymmetry": "angles in degrees in [0, 180]", "feedback": "symmetric, sign, random or mixed"}[name]
        raise UserError(f"--{name}: expected comma-separated {what}, got {text!r}") from None
    if not values:
        raise UserError(f"--{name}: no values given")
    return list(dict.fromkeys(values))


def _value_label(v) -> str:
    return v if isinstance(v, str) else f"{v:g}"


# ----------------------------------------------------------------------------------------------
# Measuring one point.


# The exact reference depends on the network and its dynamics, not on T1, T2, beta or the
# estimator: points that differ only in those share it (computed once per seed).
_NOT_IN_REFERENCE = ("free_steps", "nudged_steps", "beta", "tolerance", "estimator", "persistent")


def _reference_key(config: Config, seed: int) -> str:
    tree = to_dict(config)
    for k in _NOT_IN_REFERENCE:
        tree["ep"].pop(k, None)
    tree.pop("seed", None)
    return json.dumps([tree, seed], sort_keys=True)


class PointMeasurer:
    """Per point and seed: the EP estimate (rule.estimate, compiled per point: T1, T2 and beta are
    static) against the implicit gradient at the free fixed point (compiled and computed once per
    distinct network and dynamics, cached), on the seed's probe batch, at initialisation."""

    def __init__(self, splits, seeds: list[int], probe_size: int, x64: bool):
        self.splits, self.seeds, self.probe_size, self.x64 = splits, seeds, probe_size, x64
        self.references: dict[str, tuple] = {}

    def __call__(self, config: Config) -> dict:
        def reference(cfg, params, state, x, y, key, idx):
            net = eqprop.network(cfg, params, state)
            ref = eqprop.exact_references(cfg, net, x, y, key, eqprop.start_states(cfg, net, x, state, idx))
            return ref["implicit"], {"adjoint_residual": ref["adjoint_residual"], "spectral_radius": ref["spectral_radius"],
                                     "reference_residual": ref["fixed_point"].residual}

        per_seed = []
        estimate = None
        for seed in self.seeds:
            check_interrupt()
            cfg = derive(config, {"seed": seed})
            with seed_network_probe(cfg, self.splits, seed, self.probe_size, self.x64) as probe:
                params, state, x, y, key, idx = probe.params, probe.state, probe.x, probe.y, probe.key, probe.idx
                ref_key = _reference_key(cfg, seed)
                if ref_key not in self.references:
                    implicit, diag = jax.jit(lambda *a, cfg=cfg: reference(cfg, *a))(params, state, x, y, key, idx)
                    self.references[ref_key] = (implicit, {k: float(v) for k, v in diag.items()})
                implicit, diag = self.references[ref_key]
                if estimate is None:
                    estimate = jax.jit(lambda p, s, x, y, k, i, rule=probe.rule: rule.estimate(p, s, x, y, k, idx=i))
                est = estimate(params, state, x, y, key, idx)
                layers, network = compare_updates(est.grads, implicit)
            aux = {k: float(v) for k, v in (est.aux or {}).items()}
            per_seed.append({
                "angle": np.asarray(layers["update_angle"], np.float64),
                "rel": np.asarray(layers["update_rel_error"], np.float64),
                "net_angle": float(network["update_angle"]), "net_rel": float(network["update_rel_error"]),
                **{k: aux.get(k) for k in ("free_residual", "nudged_residual")}, **diag,
            })
        angles = np.stack([p["angle"] for p in per_seed])
        rels = np.stack([p["rel"] for p in per_seed])

        def mean(values):
            values = np.asarray([np.nan if v is None else v for v in values], np.float64)
            return float(np.mean(values)) if np.all(np.isfinite(values)) else None

        def largest(name):
            values = [p.get(name) for p in per_seed]
            return None if any(v is None or not math.isfinite(v) for v in values) else float(max(values))

        return {
            # a layer whose update is exactly zero (not reached by the nudge) has no angle: null
            "angle_per_layer": [mean(angles[:, l]) for l in range(angles.shape[1])],
            "rel_error_per_layer": [mean(rels[:, l]) for l in range(rels.shape[1])],
            "update_angle": mean([p["net_angle"] for p in per_seed]),
            "update_rel_error": mean([p["net_rel"] for p in per_seed]),
            **{name: largest(name) for name in ("free_residual", "nudged_residual", "spectral_radius",
                                                "reference_residual", "adjoint_residual")},
        }


def train_points(points: list[tuple[Any, Config]], seeds: list[int], epochs: int, experiment: Experiment,
                 dataset_loader, knob: str, notice: Callable[[str], None] | None = None) -> list[dict]:
    """Trains every (value, config) point's seeds through the runner (experiment/runner.py: runs
    that finished before are not trained again; the points whose configs differ only in batchable
    values, config.BATCHABLE_KEYS, e.g. ep.beta, train together as one vmapped program). Returns,
    per point, the mean test accuracy (a diverged run counts as chance) and the run folders."""
    specs = [RunSpec(f"{knob}-{_value_label(value) if value is not None else 'base'}-s{s}",
                     derive(cfg, {"seed": s, "train.epochs": epochs, "alignment.enabled": False}),
                     {"knob": knob, "value": value})
             for value, cfg in points for s in seeds]
    entries = experiment.train(specs, dataset_loader, interrupted=interrupted, notice=notice)
    check_interrupt()  # the runs recorded `interrupted`; the points after them do not start
    results = []
    for i in range(len(points)):
        mine = entries[i * len(seeds):(i + 1) * len(seeds)]
        accs = [m.get("test_accuracy") if m["status"] == "completed" else None for m in mine]
        results.append({
            "test_accuracy": float(np.mean([CHANCE_ACCURACY if a is None else a for a in accs])),
            "test_accuracy_per_seed": accs,
            "status": [m["status"] for m in mine],
            "run_dirs": [str(experiment.folder / m["run_dir"]) if "run_dir" in m else None for m in mine],
        })
    return results


# ----------------------------------------------------------------------------------------------
# The sweep.


def plan_points(base: Config, knobs: dict[str, list]) -> dict[str, list]:
    """{knob: [(value, config)]}, every config validated (UserError naming the knob and value)."""
    plan = {}
    for name, values in knobs.items():
        knob = KNOBS[name]
        points = []
        for v in values:
            try:
                points.append((v, derive(base, knob.overrides(v))))
            except UserError as e:
                raise UserError(f"knob {name} = {_value_label(v)}: {e}") from None
        plan[name] = points
    return plan


def folder_for(base: Config, knobs: dict[str, list], seeds: list[int], probe_size: int, x64: bool,
               train_epochs: int | None) -> Path:
    """RESULTS_DIR/EXPERIMENT/condition-<precision>-<hash of what the sweep measures and trains>: the
    same command finds the same folder again (and resumes it)."""
    content = {k: v for k, v in to_dict(base).items() if k not in ("results_dir", "experiment")}
    spec = {"base": content, "knobs": knobs, "seeds": seeds, "probe_size": probe_size, "x64": x64,
            "train_epochs": train_epochs or 0}
    return Path(base.results_dir) / base.experiment / identity_name(f"condition-{'float64' if x64 else 'float32'}", spec)


def run(base: Config, dataset, knobs: dict[str, list], seeds: list[int], probe_size: int, x64: bool,
        train_epochs: int | None, folder: Path, report: Callable[[str], None] = lambda m: None,
        on_row: Callable[[dict], None] = lambda r: None, notice: Callable[[str], None] | None = None) -> dict:
    """knobs: {knob name: values}; train_epochs None: no training (else the runs train into
    folder/runs/, through the runner: folder is an experiment folder, locked while the sweep runs).
    Each row goes to `on_row` once measured (and trained). A knob whose rows are in
    folder/condition_sweep.jsonl already (a rerun of an interrupted sweep) takes them from there:
    nothing measured or trained again. `notice`: Experiment.train's. Returns the rows (baseline first), the summary (summary.json)
    and the precision."""
    header = {"knobs": knobs, "seeds": seeds, "probe_size": probe_size, "x64": x64, "train_epochs": train_epochs or 0}
    with open_experiment(folder, header, to_dict(base), what="condition sweep") as experiment:
        return _run(base, dataset, knobs, seeds, probe_size, x64, train_epochs, experiment, report, on_row, notice)


def _run(base, dataset, knobs, seeds, probe_size, x64, train_epochs, experiment: Experiment, report, on_row,
         notice) -> dict:
    splits = make_splits(base, dataset)
    measure = PointMeasurer(splits, seeds, probe_size, x64)
    rows = []
    done = read_rows(experiment.folder)

    def run_knob(name: str, points: list[tuple[Any, Config]]) -> None:
        condition = KNOBS[name].condition if name in KNOBS else None
        earlier = [next((r for r in done if r["knob"] == name and r["value"] == value), None) for value, _ in points]
        if all(earlier):
            report(f"{name}: done")
            rows.extend(earlier)
            return
        measured = []
        for value, cfg in points:
            report(f"{name} = {_value_label(value) if value is not None else 'base'}: measuring")
            measured.append(measure(cfg))
        trained = [{"test_accuracy": None}] * len(points)
        if train_epochs:
            report(f"{name}: training {len(points)} point(s) x {len(seeds)} seed(s)")
            trained = train_points(points, seeds, train_epochs, experiment, lambda cfg: dataset, name, notice)
        for (value, cfg), m, t in zip(points, measured, trained):
            row = {"knob": name, "condition": condition, "value": value,
                   "overrides": KNOBS[name].overrides(value) if name in KNOBS else {}, **m, **t}
            rows.append(row)
            on_row(row)

    plan = plan_points(base, knobs)  # every point's config validated before any work
    run_knob("baseline", [(None, base)])
    for name, points in plan.items():
        run_knob(name, points)
    precision = "float64" if x64 else "float32"
    summary = summarise(rows, trained=bool(train_epochs))
    summary.update(knobs=dict(knobs), seeds=seeds, trained=bool(train_epochs),
                   train_epochs=train_epochs or 0, n_train=int(splits.x_train.shape[0]), precision=precision,
                   probe_size=probe_size,
                   figures=[figure_name(n) for n in knobs if any(r["knob"] == n for r in rows)])
    return {"rows": rows, "summary": summary, "precision": precision}


def figure_name(knob: str) -> str:
    return f"condition_{knob}.png"


def read_rows(folder: Path) -> list[dict]:
    """The rows measured (and trained) so far: condition_sweep.jsonl, [] if there is none."""
    path = folder / "condition_sweep.jsonl"
    return read_jsonl(path) if path.exists() else []


def write_row(folder: Path, row: dict) -> None:
    """One measured point, appended to condition_sweep.jsonl as it comes (an interrupted sweep keeps its rows)."""
    append_jsonl(folder / "condition_sweep.jsonl", [row])


def write(result: dict, folder: Path) -> None:
    """One figure per knob swept (condition_<knob>.png) and summary.json; the rows went to
    condition_sweep.jsonl as they came (write_row)."""
    summary = result["summary"]
    for name in summary["knobs"]:
        mine = [r for r in result["rows"] if r["knob"] == name]
        if mine:
            k = KNOBS[name]
            plot_condition_knob(mine, summary["baseline"], folder / figure_name(name),
                                f"({k.condition}) {k.condition_name}: knob {name} (EP, {result['precision']})",
                                k.axis_label, k.categorical, k.log_x)
    write_json(folder / "summary.json", summary)


def summarise(rows: list[dict], trained: bool) -> dict:
    """The cost of each knob relative to the baseline (see the module docstring) and the costliest."""
    base = next(r for r in rows if r["knob"] == "baseline")
    costs = {}
    for name in dict.fromkeys(r["knob"] for r in rows if r["knob"] != "baseline"):
        mine = [r for r in rows if r["knob"] == name]
        angle_deltas = [(r["update_angle"] - base["update_angle"], r["value"]) for r in mine
                        if r["update_angle"] is not None and base["update_angle"] is not None]
        entry = {"condition": mine[0]["condition"], "condition_name": KNOBS[name].condition_name}
        if angle_deltas:
            worst = max(angle_deltas, key=lambda d: d[0])
            entry.update(angle_cost_deg=worst[0], angle_worst_value=worst[1])
        else:
            entry.update(angle_cost_deg=None, angle_worst_value=None)
        if trained and base.get("test_accuracy") is not None:
            drops = [(100.0 * (base["test_accuracy"] - r["test_accuracy"]), r["value"]) for r in mine
                     if r.get("test_accuracy") is not None]
            worst = max(drops, key=lambda d: d[0]) if drops else (None, None)
            entry.update(accuracy_cost_pp=worst[0], accuracy_worst_value=worst[1])
        costs[name] = entry

    def ranked(key):
        return sorted((n for n in costs if costs[n].get(key) is not None), key=lambda n: -costs[n][key])

    by_angle, by_accuracy = ranked("angle_cost_deg"), ranked("accuracy_cost_pp") if trained else []
    costliest = by_accuracy[0] if by_accuracy else (by_angle[0] if by_angle else None)
    decided_by = "accuracy_cost_pp" if by_accuracy else "angle_cost_deg"
    sentence = None
    if costliest is not None:
        c = costs[costliest]
        sentence = (f"breaking condition ({c['condition']}) {c['condition_name']} (knob {costliest}) costs most: "
                    + (f"accuracy -{c['accuracy_cost_pp']:.2f} points at {costliest} = {_value_label(c['accuracy_worst_value'])}, "
                       if by_accuracy else "")
                    + (f"angle +{c['angle_cost_deg']:.1f}° at {costliest} = {_value_label(c['angle_worst_value'])}"
                       if c.get("angle_cost_deg") is not None else "no angle"))
    return {
        "baseline": {k: base.get(k) for k in ("update_angle", "update_rel_error", "angle_per_layer", "rel_error_per_layer",
                                             "test_accuracy", "free_residual", "spectral_radius")},
        "costs": costs,
        "ranking_by_angle": by_angle,
        "ranking_by_accuracy": by_accuracy,
        "costliest": costliest,
        "decided_by": decided_by,
        "sentence": sentence,
        "definitions": {
            "angle_cost_deg": "max over the knob's values of (whole-network angle to the implicit gradient - baseline's), degrees, at initialisation on the probe batch, mean over seeds",
            "accuracy_cost_pp": "max over the knob's values of (baseline test accuracy - this value's), percentage points, after the short training, mean over seeds (diverged = 10%)",
            "costliest": "largest accuracy cost when trained, else largest angle cost",
        },
    }
