"""`bioprop reproduce`: the published results, run as ordinary sweeps, side by side with ours.

A preset is configs/papers/<name>.yaml: an ordinary experiment (config keys, a `sweep:` section with
the grid of variants the paper compares, per-variant overrides (`where`: each rule at its own
learning rate, say) and the seeds), plus a `paper:` section that only this module reads:

    paper:
      title: Scellier & Bengio 2017, 784-500-10   # what the table calls the preset
      source: the paper (journal, year)
      checked: ..., reason: ...                # optional, as in an entry (below)
      tolerance: 0.5                           # default allowed |ours - published|, in the quantity's unit
      published:                               # one entry per number the paper reports
        - quantity: val_error                  # QUANTITIES below
          where: {rule: fa}                    # the grid point (omit with no grid)
          layer: 1                             # per-layer quantities only
          value: 2.5                           # null: the paper's number was not found (said in `note`)
          spread: 0.1                          # the paper's own spread (std over its runs), if given
          tolerance: 0.3                       # this entry's, instead of the preset's
          source: Fig. 3                       # table or figure
          checked: false                       # not checked against the paper or the authors' published files
                                               # (default true; `note` says why): the verdict says so
          reason: ...                          # why the number is what it is (optional text)
          note: ...                            # how the number was read, what it is not
      quick:                                   # `--quick`: a short version that checks the direction
        seeds: 1
        set: {train.epochs: 1, data.train_limit: 3000}
        progress: 0.5                          # see quick_verdict

`run` trains the grid x seeds through the sweep machinery (bioprop_cli/experiment/grid.py and runner.py: resumable, one
folder, runs of one shape trained together), `compare` reads each run folder's numbers and pools them
over seeds, and the verdicts are pure functions of the numbers (tested on hand-made ones).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from bioprop_cli.config import Config, _build, _check, load_config, read_yaml
from bioprop_cli.errors import UserError
from bioprop_cli.report.aggregate import mean_std
from bioprop_cli.rules import check_config

PAPERS = Path(__file__).resolve().parents[2] / "configs" / "papers"

# quantity -> (unit, the value of an untrained network: where a quick run starts from)
QUANTITIES: dict[str, tuple[str, float]] = {
    "test_error": ("%", 90.0),
    "val_error": ("%", 90.0),
    "feedback_angle": ("°", 90.0),  # B_l against W_l^T (alignment.jsonl, last measurement)
    "delta_angle": ("°", 90.0),  # the rule's error signal against backprop's, per layer
    "update_angle": ("°", 90.0),  # the rule's weight update against the exact gradient (layer, or "all")
}
Quantity = Literal[tuple(QUANTITIES)]
PER_LAYER = ("feedback_angle", "delta_angle", "update_angle")


@dataclass(frozen=True)
class PublishedNumber:
    """One number the paper reports (paper.published[i]); see the module docstring."""

    quantity: Quantity
    where: dict = field(default_factory=dict)
    layer: int | str | None = None  # per-layer quantities: a layer index, or "all"
    value: float | None = None
    spread: float | None = None
    tolerance: float | None = None
    source: str | None = None
    checked: bool | str = True  # false: not read from the paper itself; text: how it was checked
    reason: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class QuickSettings:
    seeds: int = 1
    set: dict = field(default_factory=dict)
    progress: float = 0.5


@dataclass(frozen=True)
class PaperSection:
    title: str | None = None
    source: str | None = None
    code: str | None = None
    checked: bool | str | None = None
    reason: str | None = None
    tolerance: float | None = None
    published: tuple[PublishedNumber, ...] = ()
    quick: QuickSettings = field(default_factory=QuickSettings)


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
    paper: PaperSection
    grid: dict
    where: list  # the sweep section's per-point overrides (bioprop_cli/experiment/grid.py: read_where)
    seeds: int

    @property
    def published(self) -> tuple[PublishedNumber, ...]:
        return self.paper.published


def load_preset(name: str, folder: Path = PAPERS) -> Preset:
    """The preset, checked by the config's typed loader: a bad key or value is a UserError naming the
    file and the key (`paper.published[0].value`), before anything runs."""
    from bioprop_cli.experiment.grid import axis_key, check_where, points, read_sweep_section, require_matches

    path = preset_path(name, folder)
    tree = read_yaml(path)
    try:
        paper = read_paper(tree.get("paper"))
        grid, where, seeds = read_sweep_section(tree.get("sweep"))
        check_where(grid, where, points(grid))
        require_matches(grid, where)
        for i, entry in enumerate(paper.published):
            named = {axis_key(str(k)) for k in entry.where}
            if named != set(grid):  # each number belongs to one grid point
                raise UserError(f"config key 'paper.published[{i}].where': expected a value for each sweep axis "
                                f"({', '.join(grid) or 'none'}), got {sorted(named) or 'none'}")
    except UserError as e:
        raise UserError(f"{path.name}: {e}") from None
    return Preset(name, path, paper, grid, where, seeds or 1)


def read_paper(section: Any) -> PaperSection:
    """The `paper:` section, typed (config._build) and range-checked."""
    if not isinstance(section, dict):
        raise UserError(f"config key 'paper': expected a mapping (title, source, tolerance, published, quick), "
                        f"got {section!r}")
    published = section.get("published")
    if not isinstance(published, list) or not published:
        raise UserError(f"config key 'paper.published': expected a list of the paper's numbers, got {published!r}")
    numbers = tuple(_build(PublishedNumber, entry, f"paper.published[{i}].") if isinstance(entry, dict)
                    else _not_a_mapping(f"paper.published[{i}]", entry) for i, entry in enumerate(published))
    quick = section.get("quick") or {}
    if not isinstance(quick, dict):
        _not_a_mapping("paper.quick", quick)
    paper = _build(PaperSection, {**section, "published": (), "quick": quick}, "paper.")
    paper = dataclasses.replace(paper, published=numbers)
    _check(paper.tolerance is None or paper.tolerance >= 0, "paper.tolerance", ">= 0 or null", paper.tolerance)
    _check(paper.quick.seeds >= 1, "paper.quick.seeds", ">= 1", paper.quick.seeds)
    _check(0 <= paper.quick.progress <= 1, "paper.quick.progress",
           "in [0, 1] (the fraction of the way from an untrained network to the published number)", paper.quick.progress)
    for i, n in enumerate(numbers):
        key = f"paper.published[{i}]"
        _check(n.spread is None or n.spread >= 0, f"{key}.spread", ">= 0 or null", n.spread)
        _check(n.tolerance is None or n.tolerance >= 0, f"{key}.tolerance", ">= 0 or null", n.tolerance)
        if n.quantity in PER_LAYER:
            _check(n.layer is None or n.layer == "all" or (isinstance(n.layer, int) and n.layer >= 0),
                   f"{key}.layer", "a layer index >= 0, \"all\" or null", n.layer)
        else:
            _check(n.layer is None, f"{key}.layer", f"null ({n.quantity} is not per layer)", n.layer)
    return paper


def _not_a_mapping(key: str, value: Any):
    raise UserError(f"config key '{key}': expected a mapping, got {value!r}")


def base_config(preset: Preset, quick: bool, overrides: list[tuple[str, Any]] = ()) -> Config:
    """The preset's config, with the quick block's settings under --quick, then `overrides`
    (results_dir, data.data_dir). Its experiment: reproduce-<name>[-quick]."""
    sets = [(str(key), value) for key, value in preset.paper.quick.set.items()] if quick else []
    experiment = f"reproduce-{preset.name}" + ("-quick" if quick else "")
    try:
        config = load_config(preset.path, sets + [("experiment", experiment)] + list(overrides))
        check_config(config)
        return config
    except UserError as e:
        raise UserError(f"{preset.path.name}{' (its quick settings)' if quick else ''}: {e}") from None


def seed_count(preset: Preset, quick: bool, seeds: int | None) -> int:
    if seeds is not None:
        return seeds
    return preset.paper.quick.seeds if quick else preset.seeds


def check_data(preset: Preset, quick: bool, overrides, dataset_loader: Callable) -> None:
    """The preset's data, loaded and checked against each of its points (experiment.runner.load_checked_data):
    a missing or truncated data folder is a UserError before anything is written."""
    from bioprop_cli.config import to_dict
    from bioprop_cli.experiment.grid import point_config, points
    from bioprop_cli.experiment.runner import load_checked_data

    base = base_config(preset, quick, overrides)
    tree = to_dict(base)
    load_checked_data([point_config(tree, p, base.seed, preset.where) for p in points(preset.grid)], dataset_loader)


def run(preset: Preset, quick: bool, seeds: int | None, dataset_loader: Callable, overrides=(),
        report: Callable[[str], None] = lambda m: None, interrupted: Callable[[], bool] = lambda: False,
        notice: Callable[[str], None] | None = None, jobs: int = 1) -> dict:
    """Trains the preset (a sweep: grid x seeds, resumable; `jobs`: worker processes, --jobs) and compares
    it with the published numbers."""
    from bioprop_cli.experiment.grid import run_sweep

    base = base_config(preset, quick, overrides)
    seed_values = [base.seed + k for k in range(seed_count(preset, quick, seeds))]
    t0 = time.perf_counter()
    folder, manifest = run_sweep(base, preset.grid, seed_values, dataset_loader, preset.where, report=report,
                                 interrupted=interrupted, notice=notice, jobs=jobs)
    wall = time.perf_counter() - t0
    rows = compare(preset, folder, manifest, quick)
    return {
        "preset": preset.name,
        "title": preset.paper.title or preset.name,
        "paper": preset.paper.source,
        "code": preset.paper.code,
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
    """The run's summary.json, checked (a damaged one is a UserError naming it and the key); None if absent."""
    from bioprop_cli.records import check_summary, read_json

    path = folder / entry["run_dir"] / "summary.json" if isinstance(entry.get("run_dir"), str) else None
    if path is None or not path.is_file():
        return None
    summary = read_json(path)
    check_summary(summary, str(path))
    return summary


def compare(preset: Preset, folder: Path, manifest: dict, quick: bool) -> list[dict]:
    """One row per published number: ours per seed, mean, std, difference and verdict."""
    rows = []
    for entry in preset.published:
        quantity = entry.quantity
        runs = [e for e in manifest["runs"].values() if _matches(e.get("values", {}), entry.where)]
        values = [v for v in (measure(folder / e["run_dir"], quantity, entry.layer) for e in runs
                              if e.get("status") == "completed" and "run_dir" in e) if v is not None]
        mean, std, _ = mean_std(values)
        published = entry.value
        tolerance = entry.tolerance if entry.tolerance is not None else preset.paper.tolerance
        tolerance, tolerance_source = allowed_difference(entry.spread, tolerance)
        unit, untrained = QUANTITIES[quantity]
        verdict = (quick_verdict(published, mean, untrained, preset.paper.quick.progress) if quick
                   else full_verdict(published, mean, tolerance))
        if published is not None and entry.checked is False:
            verdict += " (published number unchecked)"
        rows.append({
            "quantity": quantity, "unit": unit, "where": entry.where, "layer": entry.layer,
            "published": published, "spread": entry.spread, "source": entry.source,
            "checked": entry.checked, "reason": entry.reason, "note": entry.note, "ours": values, "mean": mean, "std": std,
            "difference": None if mean is None or published is None else mean - published,
            "tolerance": tolerance, "tolerance_source": tolerance_source, "verdict": verdict,
            "runs": len(runs), "runs_completed": sum(e.get("status") == "completed" for e in runs),
        })
    return rows


def _matches(values: dict, where: dict) -> bool:
    from bioprop_cli.experiment.grid import axis_key

    return all(values.get(axis_key(str(k))) == v for k, v in where.items())


def allowed_difference(spread: float | None, tolerance: float | None) -> tuple[float | None, str]:
    """The larger of the paper's spread and the stated tolerance (the entry's, else the preset's)."""
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
    """The run's value of `quantity` (QUANTITIES): from summary.json, or the last alignment measurement.
    A damaged file is a UserError naming it, the line and the key (records.py's checks)."""
    from bioprop_cli.records import check_alignment, read_lines

    if quantity in ("test_error", "val_error"):
        summary = _summary(run_dir.parent, {"run_dir": run_dir.name})
        if summary is None:
            return None
        acc = summary.get("test_accuracy" if quantity == "test_error" else "val_accuracy")
        return None if acc is None else 100.0 * (1.0 - acc)
    path = run_dir / "alignment.jsonl"
    records = read_lines(path, check_alignment)
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
