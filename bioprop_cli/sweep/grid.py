"""`bioprop sweep AXIS` / `--grid key=v1,v2`: the Cartesian product of config values, N seeds each.

A config file's `sweep:` section may add `where:`, per-point overrides: a list of
{when: {AXIS: VALUE, ...}, set: {KEY: VALUE, ...}}; every entry whose `when` matches a point's grid
values sets its `set` values on top of them (a rule at its own learning rate). Point and run names
stay made of the grid values alone.

A sweep folder <results_dir>/<experiment>/<sweep-name>/ holds
    config.yaml      the base config (every point starts from it)
    manifest.json    the grid, the `where` overrides (when there are any), the seeds, and one entry
                     per (point, seed), named <point>-s<seed>:
                     values (the point's grid values), seed, run_dir (THE run of that point and seed),
                     status, test_accuracy, error (failed runs), previous_run_dirs (earlier,
                     unfinished attempts: not results)
    runs/<point>-s<seed>/   ordinary run folders (config.yaml, metrics.jsonl, alignment.jsonl, summary.json)
    .lock            held by the process that runs the sweep (runs.folder_lock): one writer at a time
The sweep's name is derived from the base config, the grid, the overrides (none: the name of the
sweeps made before `where` existed) and the seeds, so the same command finds the same folder
again: completed and diverged runs are kept, interrupted, failed or missing ones run (again, into
a new folder). A run whose summary says it finished although the manifest does
not (the process was killed between the two writes) is taken as it is, not trained again. Runs
that differ only in their seed and in values that change no array shape (config.BATCHABLE_KEYS:
learning rate, beta, scales) train together as one vmapped program, compiled once: a sweep over
4 learning rates x 4 seeds is one program of 16 runs. Every point's config is validated, and the data
loaded and checked against it (as `bioprop train` does: missing or truncated files, a batch larger
than the data), before anything is written: bad input is one UserError, no folder. A point that
fails at run time is recorded as failed and the sweep goes on; a full disk marks the group in
training failed (its summaries and the manifest say why) and stops the sweep with a UserError. Ctrl-C stops at the next boundary: the group in training
is recorded as interrupted, the groups not started stay queued.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bioprop_cli.config import Config, check_against_data, keys_overlap, load_config, shape_key, to_dict
from bioprop_cli.errors import DiskFull, UserError
from bioprop_cli.rules import FEEDFORWARD, available_rules
from bioprop_cli.runs import (
    RunWriter, check_folder, create_run_dir, disk_full_reason, folder_lock, make_folder, mark_failed, write_json,
    write_status, write_yaml,
)

# axis name -> (config key, default values)
AXES: dict[str, tuple[str, list]] = {
    "depth": ("model.depth", [1, 2, 3, 4, 5, 6, 7]),
    "arch": ("model.arch", ["mlp", "lenet"]),
    "rule": ("rule", available_rules(FEEDFORWARD)),
    "feedback": ("rule", available_rules(FEEDFORWARD)),
    "lr": ("optimizer.lr", [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]),
    "batch-size": ("train.batch_size", [16, 32, 64, 128, 256]),
    "width": ("model.width", [64, 128, 256, 512]),
    "init-scale": ("model.init.scale", [0.25, 0.5, 1.0, 2.0]),
}
FINISHED = ("completed", "diverged")
# Where a sweep writes and reads is not what it trains: these keys are no axes (their values would
# become folder names).
NOT_AXES = ("results_dir", "experiment", "data.data_dir")
SECTION_KEYS = ("grid", "where", "seeds")
WHERE_KEYS = ("when", "set")


def config_key(name: str) -> str:
    """An axis name (AXES) or config key -> the config key."""
    return AXES[name][0] if name in AXES else name


def axis_key(name: str, source: str = "--grid") -> str:
    """An axis name or config key -> the config key; the seed and the keys of NOT_AXES (or a
    section holding one) are refused (`source` names where the axis came from)."""
    key = config_key(name)
    if key == "seed":
        raise UserError(f"{source} {name}: the seeds are no grid axis; use --seeds N or `bioprop sweep seed --values S1,S2`")
    refused = [k for k in NOT_AXES if key == k or k.startswith(key + ".")]
    if refused:
        raise UserError(f"{source} {name}: {refused[0]} is not a sweep axis (it says where results and data are, "
                        f"not what is trained); set it for the whole sweep with --results-dir, --experiment or --data-dir")
    return key


def parse_values(text: str, name: str = "--values") -> list:
    """'1,2,3' -> [1, 2, 3]; each value read as YAML (numbers, names, true/false)."""
    import yaml

    try:
        values = [yaml.safe_load(v.strip()) for v in text.split(",") if v.strip()]
    except yaml.YAMLError:
        raise UserError(f"{name}: {text!r} holds a value that is not valid YAML") from None
    if not values:
        raise UserError(f"{name}: expected comma-separated values, got {text!r}")
    return values


def parse_grid_option(text: str) -> tuple[str, list]:
    """'depth=1,2' or 'model.depth=1,2' -> ('model.depth', [1, 2])."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--grid {text!r}: expected KEY=V1,V2,... e.g. --grid depth=1,2")
    return axis_key(key.strip()), parse_values(values, f"--grid {key.strip()}")


def add_axis(grid: dict[str, list], key: str, values: list, source: str) -> None:
    """Adds an axis to `grid`; the same config key twice (through an alias too) is an error."""
    if key in grid:
        raise UserError(f"{source}: {key} is swept twice; give its values once (V1,V2,...)")
    grid[key] = values


def read_sweep_section(section: Any) -> tuple[dict[str, list], list[dict], int | None]:
    """A config file's `sweep:` section -> (grid, where, seeds or None). Strict: every problem is a
    UserError naming the key."""
    if section is None:
        return {}, [], None
    if not isinstance(section, dict):
        raise UserError(f"config key 'sweep': expected a mapping with {', '.join(SECTION_KEYS)}, got {section!r}")
    unknown = [k for k in section if k not in SECTION_KEYS]
    if unknown:
        raise UserError(f"unknown config key 'sweep.{unknown[0]}'; allowed here: "
                        + ", ".join(f"sweep.{k}" for k in SECTION_KEYS))
    seeds = section.get("seeds")
    if seeds is not None and (not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1):
        raise UserError(f"config key 'sweep.seeds': expected a positive integer (seeds per point), got {seeds!r}")
    axes = section.get("grid") or {}
    if not isinstance(axes, dict):
        raise UserError(f"config key 'sweep.grid': expected a mapping of config keys to lists of values, got {axes!r}")
    grid: dict[str, list] = {}
    for name, values in axes.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise UserError(f"config key 'sweep.grid.{name}': expected at least one value, got []")
        add_axis(grid, axis_key(str(name), "config key 'sweep.grid':"), values, "config key 'sweep.grid'")
    return grid, read_where(section.get("where")), seeds


def read_where(entries: Any) -> list[dict]:
    """`sweep.where` -> [{"when": {config key: value}, "set": {config key: value}}, ...]. Its shape
    is checked here; the entries against the grid by check_where (the grid may change on the
    command line)."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise UserError(f"config key 'sweep.where': expected a list of {{when: {{AXIS: VALUE}}, set: {{KEY: VALUE}}}} "
                        f"entries, got {entries!r}")
    return [_where_entry(entry, f"sweep.where[{i}]") for i, entry in enumerate(entries)]


def _where_entry(entry: Any, name: str) -> dict:
    if not isinstance(entry, dict) or sorted(map(str, entry)) != sorted(WHERE_KEYS):
        raise UserError(f"config key '{name}': expected a mapping with exactly the keys when and set, got {entry!r}")
    for part in WHERE_KEYS:
        if not isinstance(entry[part], dict) or not entry[part]:
            raise UserError(f"config key '{name}.{part}': expected a non-empty mapping of config keys to values, "
                            f"got {entry[part]!r}")
    when = _resolved(entry["when"].items(), f"{name}.when", lambda k: axis_key(k, f"config key '{name}.when':"))
    sets = _tree_overrides({str(k): v for k, v in entry["set"].items()})  # {optimizer: {lr: ..}} sets optimizer.lr only
    return {"when": when, "set": _resolved(sets, f"{name}.set", lambda k: _set_key(k, f"{name}.set"))}


def _resolved(pairs, name: str, resolve: Callable[[str], str]) -> dict:
    """The (key, value) pairs as a mapping with the keys resolved to config keys; one key named
    twice (also through an alias) is an error."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        key = resolve(str(k))
        if key in out:
            raise UserError(f"config key '{name}': {key} is named twice; give it once")
        out[key] = v
    return out


def _set_key(name: str, source: str) -> str:
    key = config_key(name)
    if key == "seed" or any(keys_overlap(key, k) for k in NOT_AXES):
        raise UserError(f"config key '{source}.{name}': seed, {', '.join(NOT_AXES)} are set for the whole sweep, "
                        "not per point; set other config keys here")
    return key


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def _name_part(value: Any) -> str:
    """A value as part of a folder name: one path component, whatever the value."""
    return _UNSAFE.sub("_", str(value)).lstrip(".") or "_"


@dataclass(frozen=True)
class Point:
    values: tuple[tuple[str, Any], ...]  # (config key, value) in grid order

    @property
    def name(self) -> str:
        return "_".join(f"{_name_part(k.split('.')[-1])}-{_name_part(v)}" for k, v in self.values) or "base"


def points(grid: dict[str, list]) -> list[Point]:
    keys = list(grid)
    return [Point(tuple(zip(keys, combo))) for combo in itertools.product(*(grid[k] for k in keys))]


def check_where(grid: dict[str, list], where: list[dict], all_points: list[Point]) -> list[int]:
    """The entries of `where` against the final grid: `when` names grid axes only, `set` none, and
    no two entries set one key of a point. Returns the entries that match no point (the command
    line may have narrowed an axis: not applied, not an error; see require_matches)."""
    for i, entry in enumerate(where):
        _check_where_entry(grid, entry, f"sweep.where[{i}]")
    for point in all_points:
        point_sets(point, where)
    return [i for i, entry in enumerate(where) if not any(_matches(point, entry["when"]) for point in all_points)]


def require_matches(grid: dict[str, list], where: list[dict]) -> None:
    """Every entry of `where` matches a point of `grid` (a grid no command line changes: a reproduce
    preset's)."""
    all_points = points(grid)
    for i, entry in enumerate(where):
        if not any(_matches(p, entry["when"]) for p in all_points):
            axes = "; ".join(f"{k}: {grid[k]}" for k in entry["when"])
            raise UserError(f"config key 'sweep.where[{i}].when': {entry['when']} matches no point of the grid ({axes})")


def _check_where_entry(grid: dict[str, list], entry: dict, name: str) -> None:
    for key, value in entry["when"].items():
        if key not in grid:
            raise UserError(f"config key '{name}.when.{key}': not a grid axis; `when` names grid axes "
                            f"({', '.join(grid) or 'none'})")
        try:
            load_config(None, [(key, value)])  # a value no config can take is a typo, not a point left out
        except UserError as e:
            raise UserError(f"config key '{name}.when.{key}': {e}") from None
    for key in entry["set"]:
        axis = next((a for a in grid if keys_overlap(key, a)), None)
        if axis is not None:
            raise UserError(f"config key '{name}.set.{key}': {axis} is a grid axis (its values come from the grid); "
                            "set keys that are no axes")


def _matches(point: Point, when: dict) -> bool:
    values = dict(point.values)
    return all(k in values and values[k] == v for k, v in when.items())


def point_sets(point: Point, where: list[dict]) -> list[tuple[str, Any]]:
    """The `set` values of the entries of `where` that match the point; one key set by two
    entries is a UserError."""
    chosen: dict[str, int] = {}  # key -> the entry that sets it
    out = []
    for i, entry in enumerate(where):
        if not _matches(point, entry["when"]):
            continue
        for key, value in entry["set"].items():
            other = next((k for k in chosen if keys_overlap(k, key)), None)
            if other is not None:
                raise UserError(f"config key 'sweep.where[{i}].set.{key}': sweep.where[{chosen[other]}] also sets {other} "
                                f"on point {point.name}; set each key of a point once")
            chosen[key] = i
            out.append((key, value))
    return out


def point_config(base_tree: dict, point: Point, seed: int, where: list[dict] = ()) -> Config:
    """The base config with the point's values, the `where` values that match it and the seed;
    validated (bad values: UserError)."""
    overrides = list(point.values) + point_sets(point, where) + [("seed", seed)]
    return load_config(None, _tree_overrides(base_tree) + overrides)


def check_points(base_tree: dict, all_points: list[Point], seed: int, where: list[dict] = ()) -> None:
    """Every point is a valid config, a different run and a different folder name (one path
    component: no run folder lands outside the sweep's runs/)."""
    seen: dict[Any, Point] = {}
    names: dict[str, Point] = {}
    for point in all_points:
        if Path(point.name).name != point.name or point.name in (".", ".."):  # _name_part's promise
            raise RuntimeError(f"point name {point.name!r} is not one path component")
        config = point_config(base_tree, point, seed, where)
        twin = seen.get(config) or names.get(point.name)
        if twin is not None:
            raise UserError(f"--grid: {dict(twin.values)} and {dict(point.values)} are the same point "
                            "(a value given twice?); give each value once")
        seen[config], names[point.name] = point, point


def _tree_overrides(tree: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in tree.items():
        if isinstance(v, dict):
            out += _tree_overrides(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def sweep_name(base: Config, grid: dict[str, list], seeds: list[int], where: list[dict] = ()) -> str:
    location = ("results_dir", "experiment")  # where the sweep is written is not what it is
    content = {k: v for k, v in to_dict(base).items() if k not in location}
    spec = {"base": content, "grid": grid, "seeds": seeds}
    if where:  # absent without overrides: the names of the sweeps made before `where` existed stay
        spec["where"] = where
    identity = json.dumps(spec, sort_keys=True, default=str)
    axes = "-".join(_name_part(k.split(".")[-1]) for k in grid) or "base"
    return f"sweep-{axes}-{hashlib.sha1(identity.encode()).hexdigest()[:8]}"


def load_manifest(folder: Path) -> dict | None:
    """The sweep's manifest, None if there is none yet; an unreadable one is a UserError."""
    path = folder / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        problem = _manifest_problem(manifest)
    except OSError as e:
        problem = f"unreadable: {e.strerror or e}"
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        problem = f"not JSON: {e}"
    if problem:
        raise UserError(f"{path}: not a sweep manifest ({problem}); move it aside to start this sweep afresh "
                        "(its run folders stay where they are)")
    return manifest


def _manifest_problem(manifest: Any) -> str | None:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), dict):
        return "expected an object with 'runs'"
    for name, entry in manifest["runs"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("status"), str):
            return f"run {name!r} has no status"
        if not isinstance(entry.get("run_dir", ""), str):
            return f"run {name!r}: run_dir is not a string"
        if not isinstance(entry.get("previous_run_dirs", []), list):
            return f"run {name!r}: previous_run_dirs is not a list"
    return None


def _finished_summary(run_dir: Path) -> dict | None:
    """The run's summary.json if it says the run finished (completed or diverged), else None."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return summary if isinstance(summary, dict) and summary.get("status") in FINISHED else None


def _settle(entry: dict, folder: Path) -> None:
    """An entry that the manifest does not show finished, whose run folder says it finished (the
    process died between the two writes), takes the run's status: it is not trained again."""
    if entry["status"] in FINISHED or "run_dir" not in entry:
        return
    summary = _finished_summary(folder / entry["run_dir"])
    if summary is not None:
        entry["status"], entry["test_accuracy"] = summary["status"], summary.get("test_accuracy")


def _requeue(entry: dict | None, point: Point, seed: int, run_dir: Path, folder: Path) -> dict:
    """The (point, seed) entry pointing at a new run folder; the earlier unfinished attempt is kept
    in previous_run_dirs (its folder stays, it is no result)."""
    previous = list((entry or {}).get("previous_run_dirs", []))
    if entry and entry.get("run_dir"):
        previous.append(entry["run_dir"])
    new = {"values": dict(point.values), "seed": seed, "run_dir": str(run_dir.relative_to(folder)), "status": "queued"}
    return {**new, "previous_run_dirs": previous} if previous else new


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
    except DiskFull as e:  # each run says so in its summary (not left `running`); run_sweep stops
        reason = disk_full_reason(e)
        for run_dir in group.run_dirs:
            mark_failed(run_dir, reason)
        return [{"status": "failed", "error": reason, "disk_full": str(e)} for _ in group.configs]
    except UserError as e:
        return [{"status": "failed", "error": str(e)} for _ in group.configs]


def run_sweep(base: Config, grid: dict[str, list], seeds: list[int], dataset_loader: Callable,
              where: list[dict] = (), report: Callable[[str], None] = lambda m: None, executor=None,
              interrupted: Callable[[], bool] = lambda: False) -> tuple[Path, dict]:
    """Runs (or resumes) the sweep (`where`: read_where's per-point overrides); returns its folder
    and manifest. `executor` (default: local,
    in-process, one group after another) takes the groups and yields (group, summaries); once
    `interrupted()` is true it starts no group and yields only what was running. The folder is
    locked (runs.folder_lock) while the sweep runs."""
    base_tree = to_dict(base)
    all_points = points(grid)
    check_where(grid, where, all_points)  # before anything is written
    check_points(base_tree, all_points, seeds[0], where)
    datasets = load_checked_data([point_config(base_tree, p, seeds[0], where) for p in all_points], dataset_loader)
    folder = Path(base.results_dir) / base.experiment / sweep_name(base, grid, seeds, where)
    check_folder(folder, "sweep folder")
    make_folder(folder)
    with folder_lock(folder):
        manifest = load_manifest(folder)
        if manifest is None:
            write_yaml(folder / "config.yaml", base_tree)
            manifest = {"grid": grid, **({"where": where} if where else {}), "seeds": seeds, "runs": {}}
        pending = _queue(manifest["runs"], all_points, seeds, base_tree, where, folder, report)
        write_json(folder / "manifest.json", manifest)
        runner = executor or LocalExecutor(datasets)
        for group, summaries in runner(group_runs(pending), dataset_loader, report, interrupted):
            _record(manifest["runs"], group, summaries, folder)
            full = next((s["disk_full"] for s in summaries if "disk_full" in s), None)
            if full is not None:  # the next group would fail the same way: stop, say where
                write_status(folder / "manifest.json", manifest)
                raise UserError(f"{full}; the sweep stopped, its group {group.label} is marked failed in "
                                f"{folder / 'manifest.json'} (the same command resumes it)")
            write_json(folder / "manifest.json", manifest)
    return folder, manifest


def load_checked_data(configs: list[Config], dataset_loader: Callable) -> dict[tuple, Any]:
    """Each dataset the configs train on, loaded once and checked against every config that uses it
    (config.check_against_data, as `bioprop train` does): missing, truncated or too small data is a
    UserError before the sweep's folder exists. Returns {(dataset, data_dir): dataset}."""
    datasets: dict[tuple, Any] = {}
    for config in configs:
        where = (config.data.dataset, config.data.data_dir)
        if where not in datasets:
            datasets[where] = dataset_loader(config)
        check_against_data(config, len(datasets[where].x_train))
    return datasets


def _queue(runs: dict, all_points: list[Point], seeds: list[int], base_tree: dict, where: list[dict], folder: Path,
           report) -> list:
    """Marks every unfinished (point, seed) queued, each with a new run folder; returns them as
    (name, config, run folder)."""
    pending = []
    for point in all_points:
        names = {s: f"{point.name}-s{s}" for s in seeds}
        for name in names.values():
            if name in runs:
                _settle(runs[name], folder)
        todo = [s for s, name in names.items() if runs.get(name, {}).get("status") not in FINISHED]
        if not todo:
            report(f"{point.name}: done")
        for s in todo:
            run_dir = create_run_dir(folder, "runs", names[s])
            runs[names[s]] = _requeue(runs.get(names[s]), point, s, run_dir, folder)
            pending.append((names[s], point_config(base_tree, point, s, where), run_dir))
    return pending


def _record(runs: dict, group: Group, summaries: list[dict], folder: Path) -> None:
    for name, summary in zip(group.names, summaries):
        entry = runs[name]
        entry["status"] = summary["status"]
        entry["test_accuracy"] = summary.get("test_accuracy")
        if "error" in summary:
            entry["error"] = summary["error"]
            run_dir = folder / entry["run_dir"]
            if run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()  # failed before it wrote anything
                del entry["run_dir"]


class LocalExecutor:
    """In-process, one group after another; each dataset is loaded once (`datasets`: those loaded
    already, load_checked_data's)."""

    def __init__(self, datasets: dict[tuple, Any] | None = None):
        self.datasets = dict(datasets or {})

    def __call__(self, groups, dataset_loader, report, interrupted=lambda: False):
        datasets = self.datasets
        for group in groups:
            if interrupted():
                return
            report(f"{group.label}: training {len(group.configs)} runs together")
            data = group.configs[0].data
            where = (data.dataset, data.data_dir)
            if where not in datasets:
                try:
                    datasets[where] = dataset_loader(group.configs[0])
                except UserError:
                    datasets[where] = None  # train_point records the failure
            yield group, train_point(group, dataset_loader, datasets[where])
