"""`bioprop reproduce`: the published results, run as ordinary sweeps, side by side with ours.

A preset is configs/papers/<name>.yaml: an ordinary experiment (config keys, a `sweep:` section with
the grid of variants the paper compares, per-variant overrides (`where`: each rule at its own
learning rate, say) and the seeds), plus a `paper:` section that only this module reads:

    paper:
      title: Scellier & Bengio 2017, 784-500-10   # what the table calls the preset
      source: the paper (journal, year)
      tolerance: 0.5                           # default allowed |ours - published|, in the quantity's unit
      published:                               # one entry per number the paper reports
        - quantity: val_error                  # QUANTITIES below
          where: {rule: fa}                    # the grid point (omit with no grid)
          layer: 1                             # per-layer quantities only
          value: 2.5                           # null: the paper's number was not found (said in `note`)
          spread: 0.1                          # the paper's own spread (std over its runs), if given
          tolerance: 0.3                       # this entry's, instead of the preset's
          source: Fig. 3                       # table or figure
          checked: false                       # the value was not read from the paper itself (default true):
                                               # the verdict says so
          note: ...                            # how the number was read, what it is not
      quick:                                   # `--quick`: a short version that checks the direction
        seeds: 1
        set: {train.epochs: 1, data.train_limit: 3000}
        progress: 0.5                          # see quick_verdict

`run` trains the grid x seeds through the sweep machinery (bioprop_cli/sweep/grid.py: resumable, one
folder, runs of one shape trained together), `compare` reads each run folder's numbers and pools them
over seeds, and the verdicts are pure functions of the numbers (tested on hand-made ones).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bioprop_cli.config import Config, load_config, read_yaml
from bioprop_cli.errors import UserError
from bioprop_cli.report.aggregate import mean_std

PAPERS = Path(__file__).resolve().parents[2] / "configs" / "papers"

# quantity -> (unit, the value of an untrained network: where a quick run starts from)
QUANTITIES: dict[str, tuple[str, float]] = {
    "test_error": ("%", 90.0),
    "val_error": ("%", 90.0),
    "feedback_angle": ("°", 90.0),  # B_l against W_l^T (alignment.jsonl, last measurement)
    "delta_angle": ("°", 90.0),  # the rule's error signal against backprop's, per layer
    "update_angle": ("°", 90.0),  # the rule's weight update against the exact gradient (layer, or "all")
}
PUBLISHED_KEYS = ("quantity", "where", "layer", "value", "spread", "tolerance", "source", "checked", "note")
PAPER_KEYS = ("title", "source", "code", "tolerance", "published", "quick")
QUICK_KEYS = ("seeds", "set", "progress")


def preset_names(folder: Path = PAPERS) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def preset_path(name: str, folder: Path = PAPERS) -> Path:
    names = preset_names(folder)
    if name not in names:
        raise UserError(f"unknown preset {name!r}; known: {', '.join(names)}")
    return folder / f"{name}.yaml"


@dataclass(frozen=True)
class Preset:
    name: str
    path: Path
    paper: dict
    published: list[dict]
    grid: dict
    where: list  # the sweep section's per-point overrides (bioprop_cli/sweep/grid.py: read_where)
    seeds: int


def load_preset(name: str, folder: Path = PAPERS) -> Preset:
    """The preset's paper section, checked strictly (a bad key is a UserError naming it)."""
    from bioprop_cli.sweep.grid import axis_key, check_where, points, read_sweep_section, require_matches

    path = preset_path(name, folder)
    tree = read_yaml(path)
    paper = tree.get("paper")
    if not isinstance(paper, dict):
        raise UserError(f"{path.name}: expected a 'paper:' section")
    _known(paper, PAPER_KEYS, "paper")
    _known(paper.get("quick") or {}, QUICK_KEYS, "paper.quick")
    published = paper.get("published") or []
    if not published:
        raise UserError(f"{path.name}: 'paper.published' lists no number")
    for i, entry in enumerate(published):
        _known(entry, PUBLISHED_KEYS, f"paper.published[{i}]")
        if entry.get("quantity") not in QUANTITIES:
            raise UserError(f"{path.name}: paper.published[{i}].quantity: expected one of {', '.join(QUANTITIES)}, "
                            f"got {entry.get('quantity')!r}")
    grid, where, seeds = read_sweep_section(tree.get("sweep"))
    check_where(grid, where, points(grid))
    require_matches(grid, where)
    for i, entry in enumerate(published):
        named = {axis_key(str(k)) for k in (entry.get("where") or {})}
        if named != set(grid):  # each number belongs to one grid point
            raise UserError(f"{path.name}: paper.published[{i}].where: expected a value for each sweep axis "
                            f"({', '.join(grid) or 'none'}), got {sorted(named) or 'none'}")
    return Preset(name, path, paper, published, grid, where, seeds or 1)


def _known(section: Any, keys: tuple, where: str) -> None:
    if not isinstance(section, dict):
        raise UserError(f"config key '{where}': expected a mapping, got {section!r}")
    unknown = [k for k in section if k not in keys]
    if unknown:
        raise UserError(f"unknown config key '{where}.{unknown[0]}'; allowed here: {', '.join(keys)}")


def base_config(preset: Preset, quick: bool, overrides: list[tuple[str, Any]] = ()) -> Config:
    """The preset's config, with the quick block's settings under --quick, then `overrides`
    (results_dir, data.data_dir). Its experiment: reproduce-<name>[-quick]."""
    sets = []
    if quick:
        for key, value in ((preset.paper.get("quick") or {}).get("set") or {}).items():
            sets.append((str(key), value))
    experiment = f"reproduce-{preset.name}" + ("-quick" if quick else "")
    return load_config(preset.path, sets + [("experiment", experiment)] + list(overrides))


def seed_count(preset: Preset, quick: bool, seeds: int | None) -> int:
    if seeds is not None:
        return seeds
    return int((preset.paper.get("quick") or {}).get("seeds", 1)) if quick else preset.seeds


def check_data(preset: Preset, quick: bool, overrides, dataset_loader: Callable) -> None:
    """The preset's data, loaded and checked against each of its points (sweep.grid.load_checked_data):
    a missing or truncated data folder is a UserError before anything is written."""
    from bioprop_cli.config import to_dict
    from bioprop_cli.sweep.grid import load_checked_data, point_config, points

    base = base_config(preset, quick, overrides)
    tree = to_dict(base)
    load_checked_data([point_config(tree, p, base.seed, preset.where) for p in points(preset.grid)], dataset_loader)


def run(preset: Preset, quick: bool, seeds: int | None, dataset_loader: Callable, overrides=(),
        report: Callable[[str], None] = lambda m: None, interrupted: Callable[[], bool] = lambda: False) -> dict:
    """Trains the preset (a sweep: grid x seeds, resumable) and compares it with the published numbers."""
    from bioprop_cli.sweep.grid import run_sweep

    base = base_config(preset, quick, overrides)
    seed_values = [base.seed + k for k in range(seed_count(preset, quick, seeds))]
    t0 = time.perf_counter()
    folder, manifest = run_sweep(base, preset.grid, seed_values, dataset_loader, preset.where, report=report,
                                 interrupted=interrupted)
    wall = time.perf_counter() - t0
    rows = compare(preset, folder, manifest, quick)
    return {
        "preset": preset.name,
        "title": preset.paper.get("title", preset.name),
        "paper": preset.paper.get("source"),
        "code": preset.paper.get("code"),
        "mode": "quick" if quick else "full",
        "seeds": seed_values,
        "sweep_folder": str(folder),
        "wall_time_s": wall,  # this invocation (a resumed sweep trains only what was left)
        "training_wall_time_s": training_wall_time(folder, manifest),
        "rows": rows,
    }


def training_wall_time(folder: Path, manifest: dict) -> float | None:
    """The runs' own training time: each group's wall time once (runs trained together share it)."""
    total, seen = 0.0, False
    for entry in manifest["runs"].values():
        summary = _summary(folder, entry)
        if summary and summary.get("wall_time_s") is not None:
            total += summary["wall_time_s"] / max(summary.get("runs_trained_together") or 1, 1)
            seen = True
    return total if seen else None


def _summary(folder: Path, entry: dict) -> dict | None:
    import json

    if "run_dir" not in entry:
        return None
    try:
        return json.loads((folder / entry["run_dir"] / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def compare(preset: Preset, folder: Path, manifest: dict, quick: bool) -> list[dict]:
    """One row per published number: ours per seed, mean, std, difference and verdict."""
    quick_progress = float((preset.paper.get("quick") or {}).get("progress", 0.5))
    rows = []
    for entry in preset.published:
        quantity = entry["quantity"]
        runs = [e for e in manifest["runs"].values() if _matches(e.get("values", {}), entry.get("where") or {})]
        values = [v for v in (measure(folder / e["run_dir"], quantity, entry.get("layer")) for e in runs
                              if e.get("status") == "completed" and "run_dir" in e) if v is not None]
        mean, std, _ = mean_std(values)
        published = entry.get("value")
        tolerance, tolerance_source = allowed_difference(entry, preset.paper.get("tolerance"))
        unit, untrained = QUANTITIES[quantity]
        verdict = (quick_verdict(published, mean, untrained, quick_progress) if quick
                   else full_verdict(published, mean, tolerance))
        if published is not None and entry.get("checked") is False:
            verdict += " (published number unchecked)"
        rows.append({
            "quantity": quantity, "unit": unit, "where": entry.get("where") or {}, "layer": entry.get("layer"),
            "published": published, "spread": entry.get("spread"), "source": entry.get("source"),
            "checked": entry.get("checked", True), "note": entry.get("note"), "ours": values, "mean": mean, "std": std,
            "difference": None if mean is None or published is None else mean - published,
            "tolerance": tolerance, "tolerance_source": tolerance_source, "verdict": verdict,
            "runs": len(runs), "runs_completed": sum(e.get("status") == "completed" for e in runs),
        })
    return rows


def _matches(values: dict, where: dict) -> bool:
    from bioprop_cli.sweep.grid import axis_key

    return all(values.get(axis_key(str(k))) == v for k, v in where.items())


def allowed_difference(entry: dict, preset_tolerance) -> tuple[float | None, str]:
    """The larger of the paper's spread and the stated tolerance (the entry's, else the preset's)."""
    tolerance = entry.get("tolerance", preset_tolerance)
    spread = entry.get("spread")
    options = [(float(spread), "paper's spread")] if spread is not None else []
    options += [(float(tolerance), "stated tolerance")] if tolerance is not None else []
    if not options:
        return None, "none"
    return max(options)


def full_verdict(published, mean, tolerance) -> str:
    """'reproduced' when |ours - published| <= the allowed difference, else 'not reproduced'."""
    if published is None:
        return "no published number"
    if mean is None:
        return "no result"
    if tolerance is None:
        return "no tolerance"
    # (1 + 1e-9): a difference that prints as the tolerance (2.1 - 1.8 = 0.30000000000000027) is within it
    return "reproduced" if abs(mean - published) <= tolerance * (1 + 1e-9) else "not reproduced"


def quick_verdict(published, mean, untrained: float, progress: float) -> str:
    """A short run checks the direction only: ours has covered at least `progress` of the way from
    an untrained network's value towards the published one. Never 'reproduced'."""
    if published is None:
        return "quick check: no published number"
    if mean is None:
        return "quick check: no result"
    ok = abs(mean - published) <= (1.0 - progress) * abs(untrained - published)
    return "quick check: towards published" if ok else "quick check: not towards published"


def measure(run_dir: Path, quantity: str, layer=None) -> float | None:
    """The run's value of `quantity` (QUANTITIES): from summary.json, or the last alignment measurement."""
    import json

    from bioprop_cli.runs import read_jsonl

    if quantity in ("test_error", "val_error"):
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            return None
        acc = summary.get("test_accuracy" if quantity == "test_error" else "val_accuracy")
        return None if acc is None else 100.0 * (1.0 - acc)
    path = run_dir / "alignment.jsonl"
    records = read_jsonl(path) if path.exists() else []
    wanted = "all" if layer is None else layer
    mine = [r for r in records if r.get("layer") == wanted and r.get(quantity) is not None]
    if not mine:
        return None
    value = mine[-1][quantity]
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def write(result: dict, folder: Path) -> Path:
    """reproduce.json and its table as text (reproduce-2.json, ... on a rerun: nothing is overwritten),
    in the sweep folder."""
    from bioprop_cli.report.reproduce_table import reproduce_table
    from bioprop_cli.report.study_tables import as_text
    from bioprop_cli.runs import write_atomic, write_new_json

    path = write_new_json(folder, "reproduce", result)
    write_atomic(path.with_suffix(".txt"), as_text([reproduce_table([result])]))
    return path
