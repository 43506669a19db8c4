"""Loads run folders and beta sweeps below some paths and aggregates them. Pure: no printing, no writing.

A run folder holds `summary.json`, `config.yaml` and `metrics.jsonl` (and usually `alignment.jsonl`);
a beta-sweep folder holds `beta_sweep.jsonl` and `summary.json` (see docs/outputs.md).
Every file is checked as it is read (the records' kinds: bioprop_cli/records.py; config.yaml by the
config's own loader, config.check_stored): a value of the wrong type (a metrics line that is not an object,
a string epoch or accuracy, a list where the config has a number, a beta that is not a positive
number) is a UserError naming the file and the value, never a run silently left out.

What counts: only runs that ended (completed, diverged or interrupted). A run still `running` is
left out, and called stale when the process its summary.json names is gone (killed). Inside a sweep
folder (one with manifest.json) only the run folder the manifest names for each (point, seed)
counts; other run folders there (earlier attempts, a resumed sweep's leftovers) do not. Two counted
runs with the same grouping keys and the same seed are one: the latest completed one is kept. Every
run left out is named in the findings with the reason.

Runs are grouped by the config keys whose values differ between them, except the keys that only
name a replicate or a place (`seed`, `experiment`, `results_dir`, `data.data_dir`); `rule` and
`model.depth` are always grouping keys, and `model.arch` where some run is a conv net (labels then
name the architecture, e.g. 'fa lenet', in place of the depth, which conv nets do not use). Within
a group the runs are the seeds: statistics are the mean and the sample standard deviation over
them (n - 1 in the denominator; None for one seed).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from bioprop_cli import records
from bioprop_cli.config import check_stored
from bioprop_cli.errors import UserError
from bioprop_cli.experiment.manifest import experiment_folder, named_run_dirs
from bioprop_cli.records import is_int, read_json, read_lines, read_text, short
from bioprop_cli.rules import available_rules
from bioprop_cli.runs import process_alive

RUN_FILES = ("summary.json", "config.yaml", "metrics.jsonl")
BETA_SWEEP_FILES = ("beta_sweep.jsonl", "summary.json")
IGNORED_KEYS = ("seed", "experiment", "results_dir", "data.data_dir")
ALWAYS_KEYS = ("rule", "model.depth")
ARCH_KEY, MLP = "model.arch", "mlp"  # runs from before conv nets have no model.arch: MLPs
STATUSES = ("completed", "diverged", "interrupted")  # the runs that count; the order is the preference among duplicates
RULE_ORDER = tuple(available_rules())  # the registry's order
# a difference counts as "more than the margin" only beyond round-off (0.98 - 0.97 is 0.010000000000000009)
MARGIN_TOLERANCE = 1e-9
MAX_LISTED = 8  # findings name at most this many groups in one sentence
# A group whose mean validation accuracy (test accuracy where the runs hold out no validation set) rose by more
# than this in its last epoch is still learning: its final accuracy, and a breaking depth read from it, may move
# with more epochs. 0.002 = 0.2 percentage points, 10 of MNIST's 5,000 validation examples.
STILL_RISING = 0.002


# --- loading ----------------------------------------------------------------------------------


@dataclass
class Run:
    path: Path
    config: dict  # config.yaml, nested
    flat: dict  # config flattened to dotted keys
    summary: dict
    metrics: list[dict]
    alignment: list[dict]

    @property
    def seed(self) -> Any:
        return self.flat.get("seed", self.summary.get("seed"))


@dataclass
class BetaSweep:
    path: Path
    config: dict
    summary: dict
    rows: list[dict]

    @property
    def slopes(self) -> dict:
        return self.summary.get("slopes") or {}


def _status(path: Path) -> Any:
    """summary.json's status, or None where it cannot be read (load_run reports that)."""
    try:
        return json.loads((path / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def is_run_dir(path: Path) -> bool:
    """A run folder: RUN_FILES; or summary.json and config.yaml alone for a run that ended or was
    killed before its first epoch (status running, interrupted or failed), so that it is named."""
    if not (path.is_dir() and all((path / name).is_file() for name in RUN_FILES[:2])):
        return False
    return (path / "metrics.jsonl").is_file() or _status(path) in ("running", "interrupted", "failed")


def is_beta_sweep_dir(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in BETA_SWEEP_FILES)


def find_folders(paths: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """Every run folder and beta-sweep folder at or below `paths` (recursively), each once, sorted.
    Raises UserError for a path that does not exist or is not a folder."""
    runs, sweeps = set(), set()
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise UserError(f"{p}: no such file or folder")
        if not p.is_dir():
            raise UserError(f"{p}: not a folder (give run folders, sweep folders or any folder above them)")
        candidates = [p, *(s.parent for s in p.rglob("summary.json"))]
        for c in candidates:
            if is_run_dir(c):
                runs.add(c.resolve())
            elif is_beta_sweep_dir(c):
                sweeps.add(c.resolve())
    return sorted(runs), sorted(sweeps)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"model": {"depth": 2}} -> {"model.depth": 2}; lists stay values."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _read_yaml(path: Path) -> dict:
    try:
        value = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise UserError(f"{path}: {where}not valid YAML") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a mapping of config keys, got {short(value)}")
    return value


def load_run(path: Path) -> Run:
    path = Path(path)
    config = _read_yaml(path / "config.yaml")
    try:
        check_stored(config)
    except UserError as e:
        raise UserError(f"{path / 'config.yaml'}: {e}") from None
    summary = read_json(path / "summary.json")
    records.check_summary(summary, str(path / "summary.json"))
    metrics = read_lines(path / "metrics.jsonl", records.check_metrics)
    alignment = read_lines(path / "alignment.jsonl", records.check_alignment)
    return Run(path=path, config=config, flat=flatten(config), summary=summary, metrics=metrics, alignment=alignment)


def load_beta_sweep(path: Path) -> BetaSweep:
    path = Path(path)
    config = _read_yaml(path / "config.yaml") if (path / "config.yaml").is_file() else {}
    sweep = BetaSweep(path=path, config=config, summary=read_json(path / "summary.json"),
                      rows=read_lines(path / "beta_sweep.jsonl", records.check_beta_row))
    records.check_beta_slopes(sweep.summary, str(path / "summary.json"))
    return sweep


# --- what counts: finished runs, the manifest's run per (point, seed), one run per seed ---------


@dataclass
class Excluded:
    path: Path
    reason: str  # one of REASONS
    detail: str = ""  # e.g. the run kept instead of a duplicate


REASONS = {
    "stale": "stale, not counted: summary.json says running but its process is gone (killed or crashed)",
    "running": "still running, not counted",
    "unknown": "running on another host (cannot tell whether it still runs), not counted",
    "manifest": "not counted: not the run its sweep's manifest.json names for that point and seed (an earlier attempt)",
    "duplicate": "not counted: the same grouping keys and seed as a run that is counted",
    "status": "not counted: a status other than completed, diverged or interrupted (no result)",
}


def outside_manifests(run_dirs: list[Path]) -> tuple[list[Path], list[Excluded]]:
    """Splits run folders into those that count and those inside a sweep folder whose manifest names another."""
    listed: dict[Path, set[Path]] = {}
    keep, excluded = [], []
    for d in run_dirs:
        sweep = experiment_folder(d)
        if sweep is not None and sweep not in listed:
            listed[sweep] = named_run_dirs(sweep)
        if sweep is None or d.resolve() in listed[sweep]:
            keep.append(d)
        else:
            excluded.append(Excluded(d, "manifest"))
    return keep, excluded


def ended(runs: list[Run]) -> tuple[list[Run], list[Excluded]]:
    """The runs that ended (STATUSES); the others, with why: running, stale (process gone) or another status."""
    keep, excluded = [], []
    for run in runs:
        status = run.summary.get("status")
        if status in STATUSES:
            keep.append(run)
        elif status == "running":
            alive = process_alive(run.summary)
            reason = {True: "running", False: "stale", None: "unknown"}[alive]
            excluded.append(Excluded(run.path, reason, f"pid {run.summary.get('pid', 'not recorded')}"))
        else:
            excluded.append(Excluded(run.path, "status", f"status {status!r}"))
    return keep, excluded


def _preference(run: Run) -> tuple:
    """Which of several runs of one seed counts: the best status (completed first), then the latest start."""
    started = run.summary.get("started_at")
    return (-STATUSES.index(run.summary["status"]), started if isinstance(started, str) else "", run.path.name)


def one_per_seed(runs: list[Run], keys: list[str]) -> tuple[list[Run], list[Excluded]]:
    """One run per (grouping keys, seed): the latest completed one; the others are duplicates."""
    by_ident: dict[tuple, list[Run]] = {}
    for run in runs:
        seed = _hashable(run.seed) if run.seed is not None else str(run.path)  # no seed recorded: not a duplicate
        ident = (tuple(_hashable(key_value(run, k)) for k in keys), seed)
        by_ident.setdefault(ident, []).append(run)
    keep, excluded = [], []
    for same in by_ident.values():
        best = max(same, key=_preference)
        keep.append(best)
        excluded += [Excluded(r.path, "duplicate", f"seed {r.seed}, counted instead: {best.path}") for r in same if r is not best]
    return keep, excluded


def exclusion_findings(excluded: list[Excluded]) -> list[str]:
    """One sentence per reason, naming the run folders (at most MAX_LISTED)."""
    lines = []
    for reason, text in REASONS.items():
        mine = [e for e in excluded if e.reason == reason]
        if not mine:
            continue
        named = "; ".join(f"{e.path} ({e.detail})" if e.detail else str(e.path) for e in mine[:MAX_LISTED])
        more = f"; and {len(mine) - MAX_LISTED} more" if len(mine) > MAX_LISTED else ""
        lines.append(f"{len(mine)} run{'s' if len(mine) > 1 else ''} {text}: {named}{more}.")
    return lines


# --- grouping ---------------------------------------------------------------------------------


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return value


def _sort_value(value: Any) -> tuple:
    if value is None:
        return (0, 0, "")
    if isinstance(value, bool):
        return (1, int(value), "")
    if isinstance(value, (int, float)):
        return (1, value, "")
    return (2, 0, str(value))


def differing_keys(runs: list[Run]) -> list[str]:
    """The grouping keys: `rule` and `model.depth` (when present), `model.arch` where some run is a conv net,
    then, sorted, every other config key whose value differs between the runs (a key missing from some
    runs differs), except IGNORED_KEYS."""
    all_keys = set().union(*(r.flat for r in runs)) if runs else set()
    conv = any(key_value(r, ARCH_KEY) != MLP for r in runs)
    differing = sorted(
        k for k in all_keys
        if k not in IGNORED_KEYS and k not in ALWAYS_KEYS and k != ARCH_KEY
        and len({_hashable(r.flat.get(k)) for r in runs}) > 1
    )
    return [k for k in ALWAYS_KEYS if k in all_keys] + ([ARCH_KEY] if conv else []) + differing


def key_value(run: Run, key: str) -> Any:
    """The run's value of a config key (None where its config lacks it; model.arch: mlp)."""
    return run.flat.get(key, MLP if key == ARCH_KEY else None)


def _rule_rank(rule: Any) -> tuple:
    return (RULE_ORDER.index(rule), "") if rule in RULE_ORDER else (len(RULE_ORDER), str(rule))


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def group_label(keys: dict) -> str:
    """'fa d3 optimizer.lr=0.01': the rule, the depth (an MLP's) or the architecture (a conv net's, e.g.
    'fa lenet'), then key=value for the other grouping keys."""
    parts = []
    conv = keys.get(ARCH_KEY, MLP) != MLP
    for k, v in keys.items():
        if k == "rule":
            parts.append(str(v))
        elif k == "model.depth":
            if not conv:
                parts.append(f"d{v}")
        elif k == ARCH_KEY:
            if conv:
                parts.append(str(v))
        else:
            parts.append(f"{k}={format_value(v)}")
    return " ".join(parts) or "all runs"


@dataclass
class Group:
    keys: dict  # grouping key -> value
    runs: list[Run]
    stats: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return group_label(self.keys)

    @property
    def rule(self) -> Any:
        return self.keys.get("rule")

    @property
    def depth(self) -> Any:
        """The MLP's depth; None for a conv net (model.depth does not apply)."""
        return self.keys.get("model.depth") if self.keys.get(ARCH_KEY, MLP) == MLP else None

    @property
    def context(self) -> tuple:
        """The grouping keys other than rule and depth: groups compare across rules and depths within one context."""
        return tuple((k, _hashable(v)) for k, v in self.keys.items() if k not in ALWAYS_KEYS)


def group_runs(runs: list[Run], keys: list[str]) -> list[Group]:
    """One group per distinct combination of `keys`; ordered by rule (bp, fa, dfa, ...), depth, then the rest."""
    groups: dict[tuple, Group] = {}
    for run in sorted(runs, key=lambda r: (_sort_value(r.seed), str(r.path))):
        values = {k: key_value(run, k) for k in keys}
        ident = tuple(_hashable(v) for v in values.values())
        groups.setdefault(ident, Group(keys=values, runs=[])).runs.append(run)

    def order(g: Group):
        rest = tuple(_sort_value(_hashable(v)) for k, v in g.keys.items() if k != "rule")
        return (_rule_rank(g.rule), rest)

    return sorted(groups.values(), key=order)


# --- statistics -------------------------------------------------------------------------------


def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def mean_std(values: Iterable[Any]) -> tuple[Optional[float], Optional[float], int]:
    """Mean and sample std (n - 1 in the denominator, as `statistics.stdev`) of the finite numbers among
    `values` (std None for fewer than two), and their count: the one "mean ± std over seeds" of every report."""
    xs = _finite(values)
    if not xs:
        return None, None, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None), len(xs)


def _int_layer(record: dict) -> bool:
    return is_int(record.get("layer"))


def final_update_angles(run: Run) -> dict[int, float]:
    """Per integer layer: `update_angle` of the run's last alignment measurement (largest step)."""
    records = [r for r in run.alignment if _int_layer(r) and isinstance(r.get("step"), int)]
    if not records:
        return {}
    last = max(r["step"] for r in records)
    return {r["layer"]: float(r["update_angle"]) for r in records
            if r["step"] == last and _finite([r.get("update_angle")])}


def selected_test_accuracy(run: Run) -> dict:
    """The test accuracy of the epoch chosen on the validation set (summary.json's best_val_epoch: its first
    best), and the best test accuracy over the epochs: the epoch chosen on the test set itself, as biotorch's
    published tables choose it (optimistic: the test set then selects as well as measures)."""
    by_epoch = {m["epoch"]: m["test_accuracy"] for m in run.metrics
                if "epoch" in m and _finite([m.get("test_accuracy")])}
    return {"test_at_best_val": by_epoch.get(run.summary.get("best_val_epoch")),
            "best_test": max(by_epoch.values()) if by_epoch else None}


def reach_target(run: Run, target: float) -> tuple[Optional[int], Optional[float]]:
    """(epoch, wall_time_s) of the first metrics line whose test_accuracy >= target; (None, None) if none."""
    for m in run.metrics:
        acc = m.get("test_accuracy")
        if _finite([acc]) and acc >= target:
            return m.get("epoch"), m.get("wall_time_s")
    return None, None


def data_label(run: Run) -> str:
    """'cifar100 (100 classes)': the run's dataset and class count (its summary's, else its config's and its
    output layer's, for runs written before the summary held them)."""
    name = run.summary.get("dataset", run.flat.get("data.dataset", "mnist"))
    sizes = run.summary.get("layer_sizes") or [None]
    classes = run.summary.get("num_classes", sizes[-1])
    return f"{name} ({classes} classes)" if classes is not None else str(name)


def group_stats(group: Group, target: float) -> dict:
    runs = group.runs
    s = [r.summary for r in runs]
    test_mean, test_std, test_n = mean_std(x.get("test_accuracy") for x in s)
    top5_mean, top5_std, _ = mean_std(x.get("test_top5_accuracy") for x in s)
    final_val_mean, final_val_std, _ = mean_std(x.get("val_accuracy") for x in s)
    val_mean, val_std, _ = mean_std(x.get("best_val_accuracy") for x in s)
    selected = [selected_test_accuracy(r) for r in runs]
    at_val_mean, at_val_std, _ = mean_std(x["test_at_best_val"] for x in selected)
    best_test_mean, best_test_std, _ = mean_std(x["best_test"] for x in selected)
    statuses = [x.get("status", "unknown") for x in s]
    status_counts = {k: statuses.count(k) for k in STATUSES}
    for other in sorted(set(statuses) - set(STATUSES)):
        status_counts[other] = statuses.count(other)
    reached = [reach_target(r, target) for r in runs]
    hit = [(e, t) for e, t in reached if e is not None]
    per_run_angles = [final_update_angles(r) for r in runs]
    layers = sorted(set().union(*per_run_angles)) if per_run_angles else []
    return {
        "n_runs": len(runs),
        "seeds": [r.seed for r in runs],
        "test_accuracy_mean": test_mean,
        "test_accuracy_std": test_std,
        "test_accuracy_n": test_n,
        "test_top5_accuracy_mean": top5_mean,  # datasets of more than ten classes (train.TOP_K_FROM)
        "test_top5_accuracy_std": top5_std,
        "data": ", ".join(sorted({data_label(r) for r in runs})),
        "val_accuracy_mean": final_val_mean,  # the last epoch's, like test_accuracy: what hyperparameters are chosen on
        "val_accuracy_std": final_val_std,
        "best_val_accuracy_mean": val_mean,
        "best_val_accuracy_std": val_std,
        "test_at_best_val_mean": at_val_mean,  # the test accuracy of each run's best validation epoch
        "test_at_best_val_std": at_val_std,
        "best_test_accuracy_mean": best_test_mean,  # each run's best epoch on the test set (biotorch's tables)
        "best_test_accuracy_std": best_test_std,
        "status": status_counts,
        "wall_time_s_mean": mean_std(x.get("wall_time_s") for x in s)[0],
        "examples_per_s_mean": mean_std(x.get("examples_per_s") for x in s)[0],
        "final_update_angle": {l: mean_std(a.get(l) for a in per_run_angles)[0] for l in layers},
        "target": target,
        "target_reached": len(hit),
        "epochs_to_target_mean": mean_std(e for e, _ in hit)[0],
        "seconds_to_target_mean": mean_std(t for _, t in hit)[0],
        "runs": [str(r.path) for r in runs],
        **last_epoch_rise(runs),
    }


def last_epoch_rise(runs: list[Run]) -> dict:
    """How much the runs' mean validation accuracy (test accuracy without a validation set) rose from the
    next-to-last epoch to the last: {"last_epoch_rise", "last_epoch_rise_of", "still_rising" (> STILL_RISING)}."""
    for key in ("val_accuracy", "test_accuracy"):
        curve = _curve([{m["epoch"]: m[key] for m in r.metrics if "epoch" in m and _finite([m.get(key)])} for r in runs])
        if len(curve["x"]) >= 2:
            rise = curve["mean"][-1] - curve["mean"][-2]
            return {"last_epoch_rise": rise, "last_epoch_rise_of": key, "still_rising": rise > STILL_RISING}
    return {"last_epoch_rise": None, "last_epoch_rise_of": None, "still_rising": False}


# --- curves -----------------------------------------------------------------------------------


def _curve(per_run: list[dict]) -> dict:
    """Per-run {x: value} -> {"x", "mean", "std", "n"} over the x present in any run (std None where n < 2)."""
    xs = sorted(set().union(*per_run)) if per_run else []
    curve = {"x": [], "mean": [], "std": [], "n": []}
    for x in xs:
        mean, std, n = mean_std(run.get(x) for run in per_run)
        if n:
            curve["x"].append(x)
            curve["mean"].append(mean)
            curve["std"].append(std)
            curve["n"].append(n)
    return curve


def accuracy_by_epoch(run: Run) -> dict:
    return {m["epoch"]: m["test_accuracy"] for m in run.metrics if "epoch" in m and _finite([m.get("test_accuracy")])}


def update_angle_by_epoch(run: Run) -> dict:
    """`mean_update_angle` per epoch from metrics.jsonl; epoch 0 from alignment.jsonl's layer "all" at step 0."""
    out = {}
    for r in run.alignment:
        if r.get("layer") == "all" and r.get("epoch") == 0 and r.get("step", 0) == 0 and _finite([r.get("mean_update_angle")]):
            out[0] = float(r["mean_update_angle"])
    for m in run.metrics:
        if "epoch" in m and _finite([m.get("mean_update_angle")]):
            out[m["epoch"]] = float(m["mean_update_angle"])
    return out


def feedback_angle_by_epoch(run: Run) -> dict:
    """Mean over the integer layers of the non-null `feedback_angle`, per epoch, from the epoch-end
    measurements only: step == epoch * steps_per_epoch (without steps_per_epoch in summary.json: the
    smallest step of each epoch label, which is the epoch-end one, since in-epoch measurements of
    epoch E + 1 are labelled E with later steps)."""
    spe = run.summary.get("steps_per_epoch")
    records = [r for r in run.alignment if _int_layer(r) and isinstance(r.get("epoch"), int) and isinstance(r.get("step"), int)]
    if isinstance(spe, int):
        keep = [r for r in records if r["step"] == r["epoch"] * spe]
    else:
        first = {}
        for r in records:
            first[r["epoch"]] = min(first.get(r["epoch"], r["step"]), r["step"])
        keep = [r for r in records if r["step"] == first[r["epoch"]]]
    by_epoch: dict[int, dict] = {}
    for r in keep:
        if _finite([r.get("feedback_angle")]):
            by_epoch.setdefault(r["epoch"], {})[r["layer"]] = float(r["feedback_angle"])  # one value per layer
    return {e: statistics.fmean(v.values()) for e, v in by_epoch.items()}


def accuracy_by_wall_time(run: Run) -> dict:
    """Per epoch: (wall_time_s, test_accuracy)."""
    return {m["epoch"]: (float(m["wall_time_s"]), float(m["test_accuracy"])) for m in run.metrics
            if "epoch" in m and _finite([m.get("wall_time_s")]) and _finite([m.get("test_accuracy")])}


def group_curves(group: Group) -> dict:
    timed = [accuracy_by_wall_time(r) for r in group.runs]
    wall = _curve([{e: v[0] for e, v in t.items()} for t in timed])
    acc = _curve([{e: v[1] for e, v in t.items()} for t in timed])
    return {
        "test_accuracy": _curve([accuracy_by_epoch(r) for r in group.runs]),
        "update_angle": _curve([update_angle_by_epoch(r) for r in group.runs]),
        "feedback_angle": _curve([feedback_angle_by_epoch(r) for r in group.runs]),
        # mean wall time and mean test accuracy at each epoch (same epochs in both)
        "accuracy_vs_time": {"epoch": wall["x"], "wall_time_s": wall["mean"], "mean": acc["mean"], "std": acc["std"]}
        if wall["x"] == acc["x"] else {"epoch": [], "wall_time_s": [], "mean": [], "std": []},
    }


# --- comparisons across groups ----------------------------------------------------------------


def depth_table(groups: list[Group]) -> dict[tuple, dict[Any, dict[Any, float]]]:
    """{context: {rule: {depth: mean final test accuracy}}} for the groups with a rule, a depth and an accuracy."""
    table: dict[tuple, dict] = {}
    for g in groups:
        acc = g.stats.get("test_accuracy_mean")
        if g.rule is None or g.depth is None or acc is None:
            continue
        table.setdefault(g.context, {}).setdefault(g.rule, {})[g.depth] = acc
    return table


def breaking_depths(groups: list[Group], margin: float = 0.01, baseline: str = "bp") -> dict[tuple, dict[Any, Optional[Any]]]:
    """{context: {rule: the smallest depth at which the rule's mean final test accuracy is more than
    `margin` below the baseline's at the same depth, or None}} for every rule other than the baseline.
    Only depths where both were run count; None for every rule where the baseline is absent."""
    out = {}
    for context, by_rule in depth_table(groups).items():
        base = by_rule.get(baseline, {})
        out[context] = {}
        for rule, by_depth in by_rule.items():
            if rule == baseline:
                continue
            broken = [d for d in sorted(by_depth, key=_sort_value)
                      if d in base and base[d] - by_depth[d] - margin > MARGIN_TOLERANCE]
            out[context][rule] = broken[0] if broken else None
    return out


def _rising_warning(groups: list[Group], context: tuple, rules: tuple, depth: Any) -> str:
    """' Warning: ...' when a group a breaking depth is read from (either rule, at that depth) was still rising."""
    rising = [g.label for g in groups if g.context == context and g.rule in rules and g.depth == depth
              and g.stats.get("still_rising")]
    if not rising:
        return ""
    return (f" Warning: {' and '.join(rising)} still rose more than {100 * STILL_RISING:.2f} points in the last epoch; "
            "this breaking depth may move with more epochs.")


def context_label(context: tuple) -> str:
    return ", ".join(f"{k}={v if isinstance(v, str) else format_value(v)}" for k, v in context)


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def findings(groups: list[Group], sweeps: list[BetaSweep], target: float, margin: float, baseline: str = "bp",
             axes: Iterable[str] = ()) -> list[str]:
    """Sentences generated from the data: best rule per depth, breaking depths, target, divergence, beta-sweep slopes.
    With swept hyperparameter `axes`, contexts that hold one depth are left to the axis findings (report/axes.py)."""
    lines = []
    table = depth_table(groups)
    breaks = breaking_depths(groups, margin, baseline)
    for context, by_rule in table.items():
        where = f" ({context_label(context)})" if context else ""
        depths = sorted({d for by_depth in by_rule.values() for d in by_depth}, key=_sort_value)
        if axes and len(depths) < 2:
            continue
        for d in depths:
            ranked = sorted(((acc[d], rule) for rule, acc in by_rule.items() if d in acc), key=lambda t: -t[0])
            best_acc, best = ranked[0]
            if len(ranked) == 1:
                lines.append(f"Depth {d}{where}: only {best} was run ({_pct(best_acc)} mean final test accuracy).")
            else:
                rest = ", ".join(f"{r} {_pct(a)}" for a, r in ranked[1:])
                lines.append(f"Depth {d}{where}: the best rule is {best} with {_pct(best_acc)} mean final test accuracy (then {rest}).")
        rules = [r for r in sorted(by_rule, key=_rule_rank) if r != baseline]
        if rules and baseline not in by_rule:
            lines.append(f"Breaking depths{where}: not defined, no {baseline} runs to compare with.")
        if len(depths) == 1 and baseline in by_rule and rules:
            d = depths[0]
            gaps = ", ".join(f"{r} {100 * (by_rule[baseline][d] - by_rule[r][d]):.2f}" for r in rules if d in by_rule[r])
            lines.append(f"Gap to {baseline} at depth {d}{where} (points; negative = better than {baseline}): {gaps}. "
                         f"One depth only, so no breaking depth (sweep model.depth for one).")
        for rule in rules:
            base = by_rule.get(baseline)
            if base is None:
                continue
            shared = sorted((d for d in by_rule[rule] if d in base), key=_sort_value)
            if not shared:
                lines.append(f"{rule}{where}: no depth in common with {baseline}, so no breaking depth.")
                continue
            if len(depths) == 1:
                continue  # one depth: the gap line below, no breaking depth
            d = breaks[context][rule]
            if d is None:
                lines.append(f"{rule}{where} does not break: within {100 * margin:.2f} points of {baseline} at every depth "
                             f"run ({', '.join(str(x) for x in shared)}).")
            else:
                gap = 100 * (base[d] - by_rule[rule][d])
                lines.append(f"{rule}{where} breaks at depth {d}: {_pct(by_rule[rule][d])} against {baseline}'s "
                             f"{_pct(base[d])} ({gap:.2f} points below, margin {100 * margin:.2f})."
                             + _rising_warning(groups, context, (rule, baseline), d))
    rising = [f"{g.label} (+{100 * g.stats['last_epoch_rise']:.2f})" for g in groups if g.stats.get("still_rising")]
    if rising:
        listed = ", ".join(rising[:MAX_LISTED]) + (f" and {len(rising) - MAX_LISTED} more" if len(rising) > MAX_LISTED else "")
        lines.append(f"Warning: still rising at the last epoch (mean validation accuracy, else test accuracy, up more "
                     f"than {100 * STILL_RISING:.2f} points in it; points in brackets): {listed}. Their final accuracies "
                     f"may change with more epochs.")
    reached = [g for g in groups if g.stats.get("target_reached")]
    if groups:
        if reached:
            fastest = min(reached, key=lambda g: (g.stats["seconds_to_target_mean"] is None, g.stats["seconds_to_target_mean"] or 0))
            s = fastest.stats
            secs = "-" if s["seconds_to_target_mean"] is None else f"{s['seconds_to_target_mean']:.1f} s"
            lines.append(f"Fastest to {_pct(target)} test accuracy: {fastest.label} ({s['epochs_to_target_mean']:.1f} epochs, "
                         f"{secs} on average over the {s['target_reached']} of {s['n_runs']} runs that reached it).")
        never = [g.label for g in groups if not g.stats.get("target_reached")]
        if len(never) > MAX_LISTED:
            lines.append(f"{len(never)} of {len(groups)} groups never reached {_pct(target)} test accuracy (see the target table).")
        elif never:
            lines.append(f"Never reached {_pct(target)} test accuracy: {', '.join(never)}.")
    diverged = [f"{g.label} ({g.stats['status']['diverged']} of {g.stats['n_runs']})" for g in groups if g.stats.get("status", {}).get("diverged")]
    if diverged:
        lines.append(f"Diverged runs: {', '.join(diverged)}.")
    for sweep in sweeps:
        parts = []
        for estimator, s in sweep.slopes.items():
            if not isinstance(s, dict):
                continue
            if s.get("slope") is None:
                parts.append(f"{estimator}: no slope ({s.get('reason', 'not fitted')})")
            else:
                betas = s.get("betas") or []
                span = f" over beta in [{min(betas):g}, {max(betas):g}]" if betas else ""
                parts.append(f"{estimator}: slope {s['slope']:.2f}{span}")
        precision = sweep.summary.get("precision")
        what = f"Beta sweep {sweep.path.name}" + (f" ({precision})" if precision else "")
        lines.append(f"{what}, log-log slope of the bias against beta: " + ("; ".join(parts) if parts else "no slopes recorded") + ".")
    return lines
