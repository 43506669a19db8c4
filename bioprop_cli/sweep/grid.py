"""`bioprop sweep AXIS` / `--grid key=v1,v2`: the Cartesian product of config values, N seeds each.

A sweep folder <results_dir>/<experiment>/<sweep-name>/ holds
    config.yaml      the base config (every point starts from it)
    manifest.json    the grid, the seeds, and one entry per (point, seed): its values, run folder, status
    runs/<point>-s<seed>/   ordinary run folders (config.yaml, metrics.jsonl, alignment.jsonl, summary.json)
The sweep's name is derived from the base config, the grid and the seeds, so the same command finds
the same folder again: completed and diverged runs are kept, interrupted, failed or missing ones
run (again, into a new folder). Runs that differ only in their seed and in values that change no
array shape (config.BATCHABLE_KEYS: learning rate, beta, scales) train together as one vmapped
program, compiled once: a sweep over 4 learning rates x 4 seeds is one program of 16 runs.
Every point's config is validated before anything is written; a point that fails at run time
(for example a batch larger than the data) is recorded as failed and the sweep goes on.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bioprop_cli.config import Config, load_config, shape_key, to_dict
from bioprop_cli.errors import UserError
from bioprop_cli.runs import RunWriter, create_run_dir, write_json, write_yaml

# axis name -> (config key, default values)
AXES: dict[str, tuple[str, list]] = {
    "depth": ("model.depth", [1, 2, 3, 4, 5, 6, 7]),
    "rule": ("rule", ["bp", "fa", "dfa", "usf", "frsf", "brsf", "kp", "wm"]),
    "feedback": ("rule", ["bp", "fa", "dfa", "usf", "frsf", "brsf", "kp", "wm"]),
    "lr": ("optimizer.lr", [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]),
    "batch-size": ("train.batch_size", [16, 32, 64, 128, 256]),
    "width": ("model.width", [64, 128, 256, 512]),
    "init-scale": ("model.init.scale", [0.25, 0.5, 1.0, 2.0]),
}
FINISHED = ("completed", "diverged")


def parse_values(text: str) -> list:
    """'1,2,3' -> [1, 2, 3]; each value read as YAML (numbers, names, true/false)."""
    import yaml

    values = [yaml.safe_load(v.strip()) for v in text.split(",") if v.strip()]
    if not values:
        raise UserError(f"expected comma-separated values, got {text!r}")
    return values


def parse_grid_option(text: str) -> tuple[str, list]:
    """'depth=1,2' or 'model.depth=1,2' -> ('model.depth', [1, 2])."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--grid {text!r}: expected KEY=V1,V2,... e.g. --grid depth=1,2")
    key = key.strip()
    return AXES[key][0] if key in AXES else key, parse_values(values)


@dataclass(frozen=True)
class Point:
    values: tuple[tuple[str, Any], ...]  # (config key, value) in grid order

    @property
    def name(self) -> str:
        return "_".join(f"{k.split('.')[-1]}-{v}" for k, v in self.values) or "base"


def points(grid: dict[str, list]) -> list[Point]:
    keys = list(grid)
    return [Point(tuple(zip(keys, combo))) for combo in itertools.product(*(grid[k] for k in keys))]


def point_config(base_tree: dict, point: Point, seed: int) -> Config:
    """The base config with the point's values and the seed; validated (bad values: UserError)."""
    overrides = [(k, v) for k, v in point.values] + [("seed", seed)]
    return load_config(None, _tree_overrides(base_tree) + overrides)


def _tree_overrides(tree: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in tree.items():
        if isinstance(v, dict):
            out += _tree_overrides(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def sweep_name(base: Config, grid: dict[str, list], seeds: list[int]) -> str:
    where = ("results_dir", "experiment")  # where the sweep is written is not what it is
    content = {k: v for k, v in to_dict(base).items() if k not in where}
    identity = json.dumps({"base": content, "grid": grid, "seeds": seeds}, sort_keys=True, default=str)
    axes = "-".join(k.split(".")[-1] for k in grid) or "base"
    return f"sweep-{axes}-{hashlib.sha1(identity.encode()).hexdigest()[:8]}"


def load_manifest(folder: Path) -> dict | None:
    path = folder / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


@dataclass(frozen=True)
class Group:
    """Pending runs of the same shapes: trained together (one vmapped program), one task for an
    executor. names[i] is run i's manifest entry (<point>-s<seed>)."""

    names: tuple[str, ...]
    configs: tuple[Config, ...]
    run_dirs: tuple[Path, ...]

    @property
    def label(self) -> str:
        points = list(dict.fromkeys(name.rsplit("-s", 1)[0] for name in self.names))
        return f"{points[0]} (+{len(points) - 1} points)" if len(points) > 1 else points[0]


def group_runs(runs: list[tuple[str, Config, Path]]) -> list[Group]:
    """Groups (name, config, run folder) by shape, in order of first appearance."""
    by_shape: dict[Config, list] = {}
    for run in runs:
        by_shape.setdefault(shape_key(run[1]), []).append(run)
    return [Group(*map(tuple, zip(*members))) for members in by_shape.values()]


def train_point(group: Group, dataset_loader: Callable, dataset=None) -> list[dict]:
    """Trains a group; a data-dependent failure becomes status 'failed' (the sweep goes on)."""
    from bioprop_cli.train import train_group

    try:
        dataset = dataset if dataset is not None else dataset_loader(group.configs[0])
        return train_group(list(group.configs), dataset, [RunWriter(d) for d in group.run_dirs])
    except UserError as e:
        return [{"status": "failed", "error": str(e)} for _ in group.configs]


def run_sweep(base: Config, grid: dict[str, list], seeds: list[int], dataset_loader: Callable,
              report: Callable[[str], None] = lambda m: None, executor=None) -> tuple[Path, dict]:
    """Runs (or resumes) the sweep; returns its folder and manifest. `executor` (default: local,
    in-process, one group after another) takes the groups and yields (group, summaries)."""
    base_tree = to_dict(base)
    all_points = points(grid)
    for point in all_points:  # every point's config is valid: checked before anything is written
        point_config(base_tree, point, seeds[0])
    folder = Path(base.results_dir) / base.experiment / sweep_name(base, grid, seeds)
    manifest = load_manifest(folder)
    if manifest is None:
        folder.mkdir(parents=True, exist_ok=True)
        write_yaml(folder / "config.yaml", base_tree)
        manifest = {"grid": grid, "seeds": seeds, "runs": {}}
    runs = manifest["runs"]
    pending = []
    for point in all_points:
        todo = [s for s in seeds if runs.get(f"{point.name}-s{s}", {}).get("status") not in FINISHED]
        if not todo:
            report(f"{point.name}: done")
        for s in todo:
            name = f"{point.name}-s{s}"
            run_dir = create_run_dir(folder, "runs", name)
            runs[name] = {"values": dict(point.values), "seed": s, "run_dir": str(run_dir.relative_to(folder)), "status": "queued"}
            pending.append((name, point_config(base_tree, point, s), run_dir))
    write_json(folder / "manifest.json", manifest)
    for group, summaries in (executor or LocalExecutor())(group_runs(pending), dataset_loader, report):
        for name, summary in zip(group.names, summaries):
            entry = runs[name]
            entry["status"] = summary["status"]
            entry["test_accuracy"] = summary.get("test_accuracy")
            if "error" in summary:
                entry["error"] = summary["error"]
                run_dir = folder / entry.pop("run_dir")
                if run_dir.is_dir() and not any(run_dir.iterdir()):
                    run_dir.rmdir()  # failed before it wrote anything
        write_json(folder / "manifest.json", manifest)
        if any(summary["status"] == "interrupted" for summary in summaries):
            raise KeyboardInterrupt
    return folder, manifest


class LocalExecutor:
    """In-process, one group after another; the data is loaded once."""

    def __call__(self, groups, dataset_loader, report):
        dataset = None
        for group in groups:
            report(f"{group.label}: training {len(group.configs)} runs together")
            if dataset is None:
                try:
                    dataset = dataset_loader(group.configs[0])
                except UserError:
                    pass  # train_point records the failure
            yield group, train_point(group, dataset_loader, dataset)
