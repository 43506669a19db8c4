"""`bioprop sweep AXIS` / `--grid key=v1,v2`: the Cartesian product of config values, N seeds each.

A config file's `sweep:` section may add `where:`, per-point overrides: a list of
{when: {AXIS: VALUE, ...}, set: {KEY: VALUE, ...}}; every entry whose `when` matches a point's grid
values sets its `set` values on top of them (a rule at its own learning rate). Point and run names
stay made of the grid values alone.

A sweep folder is <results_dir>/<experiment>/<sweep-name>/, an experiment folder of the runner
(experiment/runner.py: config.yaml, manifest.json, runs/<point>-s<seed>/, .lock; resumable); its
manifest's header holds the grid, the `where` overrides (when there are any) and the seeds, and each
run's `values` are its point's grid values. The sweep's name is derived from the base config, the
grid, the overrides (none: the name of the sweeps made before `where` existed) and the seeds, so the
same command finds the same folder again. Every point's config is validated, and the data loaded and
checked against it (as `bioprop train` does: missing or truncated files, a batch larger than the
data), before anything is written: bad input is one UserError, no folder.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bioprop_cli.config import Config, keys_overlap, load_config, to_dict
from bioprop_cli.errors import UserError
from bioprop_cli.experiment.runner import LocalExecutor, RunSpec, identity_name, load_checked_data, name_part, open_experiment
from bioprop_cli.rules import FEEDFORWARD, available_rules, check_config

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
AXIS_COMMANDS = (*AXES, "seed")  # `bioprop sweep AXIS`: the axes, and the seeds
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


def plan_grid(axis: str | None, values: str | None, grid_options: list[str], file_grid: dict[str, list]) -> dict[str, list]:
    """The grid of `bioprop sweep [AXIS] [--values V1,V2] [--grid KEY=V1,V2 ...]`: the command line's axes
    replace the config file's (`file_grid`) axis of the same key; nothing to sweep is a UserError."""
    grid: dict[str, list] = {}
    if axis is not None and axis != "seed":
        key, default = AXES[axis]
        add_axis(grid, key, parse_values(values) if values else default, f"sweep {axis}")
    for text in grid_options:
        key, vals = parse_grid_option(text)
        add_axis(grid, key, vals, f"--grid {text.partition('=')[0].strip()}")
    grid = {**file_grid, **grid}
    if not grid and axis is None:
        raise UserError(f"nothing to sweep: name an AXIS ({', '.join(AXIS_COMMANDS)}) or give --grid KEY=V1,V2")
    return grid


def refuse_fixed_axes(grid: dict[str, list], where: list[dict], fixed: dict[str, str]) -> None:
    """A key fixed for the whole sweep (`fixed`: config key -> the flag or --set that fixed it) that is
    also a grid axis, or set per point by `where`, is a UserError naming both."""
    for key in grid:
        for other, source in fixed.items():
            if keys_overlap(key, other):
                raise UserError(f"{source}: {key} is a sweep axis (its values come from the grid); drop one of the two")
    for i, entry in enumerate(where):
        for key in entry["set"]:
            for other, source in fixed.items():
                if keys_overlap(key, other):
                    raise UserError(f"{source}: sweep.where[{i}] sets {key} on the points it matches; "
                                    "set it in the config file instead, or drop one of the two")


def plan_seeds(axis: str | None, values: str | None, seeds: int | None, file_seeds: int | None, base_seed: int) -> list[int]:
    """The seeds of every point: `sweep seed --values S1,S2` names them, else --seeds (or the file's
    sweep.seeds, else 1) seeds from the base config's seed (`sweep seed`: from 0)."""
    if axis == "seed" and values and seeds is not None:
        raise UserError("--seeds: `sweep seed --values` already names the seeds; give one of the two")
    n_seeds = seeds if seeds is not None else (file_seeds or 1)
    if axis == "seed":
        seed_values = parse_values(values) if values else list(range(n_seeds))
    else:
        seed_values = [base_seed + k for k in range(n_seeds)]
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in seed_values):
        raise UserError(f"seeds: expected non-negative integers, got {seed_values}")
    if len(set(seed_values)) < len(seed_values):
        raise UserError(f"seeds: {seed_values} names a seed twice; give each seed once")
    return seed_values


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


@dataclass(frozen=True)
class Point:
    values: tuple[tuple[str, Any], ...]  # (config key, value) in grid order

    @property
    def name(self) -> str:
        return "_".join(f"{name_part(k.split('.')[-1])}-{name_part(v)}" for k, v in self.values) or "base"


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
            check_config(load_config(None, [(key, value)]))  # a value no config can take is a typo, not a point left out
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
    config = load_config(None, _tree_overrides(base_tree) + overrides)
    check_config(config)
    return config


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
    axes = "-".join(name_part(k.split(".")[-1]) for k in grid) or "base"
    return identity_name(f"sweep-{axes}", spec)


def run_sweep(base: Config, grid: dict[str, list], seeds: list[int], dataset_loader: Callable,
              where: list[dict] = (), report: Callable[[str], None] = lambda m: None, executor=None,
              interrupted: Callable[[], bool] = lambda: False,
              notice: Callable[[str], None] | None = None, jobs: int = 1) -> tuple[Path, dict]:
    """Runs (or resumes) the sweep through the runner (experiment/runner.py); `where`: read_where's
    per-point overrides; `notice`: Experiment.train's; `jobs`: the local executor's worker processes
    (--jobs); returns its folder and manifest. Every point is checked, and its data, before
    anything is written."""
    base_tree = to_dict(base)
    all_points = points(grid)
    check_where(grid, where, all_points)  # before anything is written
    check_points(base_tree, all_points, seeds[0], where)
    datasets = load_checked_data([point_config(base_tree, p, seeds[0], where) for p in all_points], dataset_loader)
    folder = Path(base.results_dir) / base.experiment / sweep_name(base, grid, seeds, where)
    header = {"grid": grid, **({"where": where} if where else {}), "seeds": seeds}
    specs = [RunSpec(f"{p.name}-s{s}", point_config(base_tree, p, s, where), dict(p.values))
             for p in all_points for s in seeds]
    with open_experiment(folder, header, base_tree) as experiment:
        experiment.train(specs, dataset_loader, executor or LocalExecutor(datasets, jobs), report, interrupted, notice)
    return folder, experiment.manifest
