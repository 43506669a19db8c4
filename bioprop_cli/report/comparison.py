"""Everything at once: `aggregate` loads, groups and summarises the folders below some paths (report/aggregate.py),
finds the swept hyperparameter axes (report/axes.py) and gathers the findings of both into one Comparison."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from bioprop_cli.errors import UserError
from bioprop_cli.report.aggregate import (
    BetaSweep, Excluded, Group, breaking_depths, differing_keys, ended, exclusion_findings, find_folders, findings,
    format_value, group_curves, group_runs, group_stats, load_beta_sweep, load_run, one_per_seed, outside_manifests,
)
from bioprop_cli.report.axes import axis_findings, axis_keys


@dataclass
class Comparison:
    paths: list[Path]
    target: float
    margin: float
    keys: list[str]  # the grouping keys
    groups: list[Group]
    sweeps: list[BetaSweep]
    breaking: dict  # {context: {rule: depth or None}}
    findings: list[str]
    axes: list[str] = field(default_factory=list)  # numeric hyperparameter keys swept (report/axes.py)
    baseline: str = "bp"  # the rule the others are measured against (breaking depths, gaps)
    excluded: list[Excluded] = field(default_factory=list)  # run folders found but not counted, with why


def aggregate(paths: Iterable[Path], target: float = 0.97, margin: float = 0.01, baseline: str = "bp") -> Comparison:
    """Finds, loads and aggregates everything below `paths`. UserError when a path is missing or nothing is found."""
    paths = [Path(p) for p in paths]
    run_dirs, sweep_dirs = find_folders(paths)
    if not run_dirs and not sweep_dirs:
        raise UserError(f"no run folders (summary.json + config.yaml + metrics.jsonl) or beta sweeps under {', '.join(map(str, paths))}")
    run_dirs, excluded = outside_manifests(run_dirs)
    runs, not_ended = ended([load_run(p) for p in run_dirs])
    sweeps = [load_beta_sweep(p) for p in sweep_dirs]
    keys = differing_keys(runs)
    runs, duplicates = one_per_seed(runs, keys)
    excluded += not_ended + duplicates
    if not runs and not sweeps:
        raise UserError(f"no finished runs under {', '.join(map(str, paths))}: "
                        + " ".join(exclusion_findings(excluded)))
    groups = group_runs(runs, keys)
    for g in groups:
        g.stats = group_stats(g, target)
        g.curves = group_curves(g)
    axes = axis_keys(groups, keys)
    return Comparison(
        paths=paths, target=target, margin=margin, keys=keys, groups=groups, sweeps=sweeps,
        breaking=breaking_depths(groups, margin, baseline),
        findings=exclusion_findings(excluded) + findings(groups, sweeps, target, margin, baseline, axes)
        + axis_findings(groups, axes, baseline),
        axes=axes, baseline=baseline, excluded=excluded,
    )


def group_table(comparison: Comparison) -> list[dict]:
    """One flat row per group (for groups.csv / groups.json): grouping keys, then the statistics."""
    layers = sorted({l for g in comparison.groups for l in g.stats["final_update_angle"]})
    rows = []
    for g in comparison.groups:
        s = g.stats
        row = {"group": g.label, **{k: (format_value(v) if isinstance(v, (list, dict)) else v) for k, v in g.keys.items()}}
        row.update({
            "n_runs": s["n_runs"],
            "seeds": " ".join(str(x) for x in s["seeds"]),
            "test_accuracy_mean": s["test_accuracy_mean"],
            "test_accuracy_std": s["test_accuracy_std"],
            "test_top5_accuracy_mean": s["test_top5_accuracy_mean"],
            "test_top5_accuracy_std": s["test_top5_accuracy_std"],
            "data": s["data"],
            "val_accuracy_mean": s["val_accuracy_mean"],
            "val_accuracy_std": s["val_accuracy_std"],
            "best_val_accuracy_mean": s["best_val_accuracy_mean"],
            "best_val_accuracy_std": s["best_val_accuracy_std"],
            "test_at_best_val_mean": s["test_at_best_val_mean"],
            "test_at_best_val_std": s["test_at_best_val_std"],
            "best_test_accuracy_mean": s["best_test_accuracy_mean"],
            "best_test_accuracy_std": s["best_test_accuracy_std"],
            **{f"n_{k}": v for k, v in s["status"].items()},
            "wall_time_s_mean": s["wall_time_s_mean"],
            "examples_per_s_mean": s["examples_per_s_mean"],
            "target": s["target"],
            "target_reached": s["target_reached"],
            "epochs_to_target_mean": s["epochs_to_target_mean"],
            "seconds_to_target_mean": s["seconds_to_target_mean"],
            **{f"update_angle_layer_{l}": s["final_update_angle"].get(l) for l in layers},
            "last_epoch_rise": s["last_epoch_rise"],
            "last_epoch_rise_of": s["last_epoch_rise_of"],
            "still_rising": s["still_rising"],
        })
        rows.append(row)
    return rows
