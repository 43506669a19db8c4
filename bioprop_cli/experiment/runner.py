"""The one runner of many training runs: `bioprop sweep`, `reproduce`, `sweep beta --train` and
`sweep condition --train` all train through it.

An experiment folder (its name derived from what it trains: identity_name, so the same command
finds the same folder again) holds
    config.yaml      the base config (written once, when the folder is made)
    manifest.json    the command's header (a sweep's grid and seeds, a study's settings) and one entry
                     per run, under the run's name: values (what the caller says of the run: a grid
                     point's values, a knob's value), seed, run_dir (THE run of that name), status,
                     test_accuracy, error (failed runs), previous_run_dirs (earlier, unfinished
                     attempts: not results)
    runs/<name>/     ordinary run folders (config.yaml, metrics.jsonl, alignment.jsonl, summary.json)
    .lock            held by the process that trains (runs.folder_lock): one writer at a time
Resuming: completed and diverged runs are kept; an unfinished run whose folder holds a usable
checkpoint (resumable_checkpoint) continues from it in its own folder, appending to its logs as
`bioprop train --resume` does; interrupted, failed or missing runs without one run again, into a new
folder. A checkpoint whose config or code differs from the run's now is not used: the run is
trained afresh (a new folder; one line says why). Runs train with train.checkpoint_every=1 unless
their config sets it, so that a kill -9 loses at most the epoch in training. A run whose summary
says it finished although the manifest does not (the process was killed between the two writes) is
taken as it is, not trained again. Runs that differ only in
their seed and in values that change no array shape (config.BATCHABLE_KEYS) train together as one
vmapped program, compiled once (group_runs). A run that fails at run time is recorded as failed and
the others go on; a full disk marks the group in training failed and stops with a UserError.
Ctrl-C stops at the next group: the group in training is recorded as interrupted, the groups not
started stay queued.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from bioprop_cli import checkpoint
from bioprop_cli.config import Config, check_against_data, derive, shape_key, to_dict
from bioprop_cli.errors import DiskFull, UserError
from bioprop_cli.experiment.manifest import MANIFEST, load_manifest
from bioprop_cli.runs import (
    RunWriter, check_folder, create_run_dir, disk_full_reason, folder_lock, make_folder, mark_failed, write_json,
    write_status, write_yaml,
)

FINISHED = ("completed", "diverged")

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def name_part(value: Any) -> str:
    """A value as part of a folder name: one path component, whatever the value."""
    return _UNSAFE.sub("_", str(value)).lstrip(".") or "_"


def identity_name(prefix: str, spec: dict) -> str:
    """<prefix>-<8 hex digits of the spec's hash>: the same spec, the same folder name."""
    identity = json.dumps(spec, sort_keys=True, default=str)
    return f"{prefix}-{hashlib.sha1(identity.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class RunSpec:
    """One run: its manifest name (one path component, also its folder's), its config, and what the
    manifest records of it (`values`)."""

    name: str
    config: Config
    values: dict = field(default_factory=dict)


def resuming(folder: Path) -> bool:
    """Whether `folder` holds an experiment begun before (its manifest): the same command resumes it."""
    return (Path(folder) / MANIFEST).is_file()


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


def _requeue(entry: dict | None, spec: RunSpec, run_dir: Path, folder: Path) -> dict:
    """The run's entry pointing at a new run folder; the earlier unfinished attempt is kept in
    previous_run_dirs (its folder stays, it is no result)."""
    previous = list((entry or {}).get("previous_run_dirs", []))
    if entry and entry.get("run_dir"):
        previous.append(entry["run_dir"])
    new = {"values": spec.values, "seed": spec.config.seed, "run_dir": str(run_dir.relative_to(folder)),
           "status": "queued"}
    return {**new, "previous_run_dirs": previous} if previous else new


def resumable_checkpoint(run_dir: Path, config: Config) -> tuple[tuple[int, int] | None, str | None]:
    """Where the unfinished run in `run_dir` can continue from: ((epoch, step in epoch), None) when its
    checkpoints/last.npz is readable, short of train.epochs and made by this config and code; (None,
    why not) when it holds one that cannot be used; (None, None) when it holds none to continue from."""
    if not checkpoint.path(run_dir).is_file() or _finished_summary(run_dir) is not None:
        return None, None
    try:
        stored = checkpoint.read(run_dir)
    except UserError as e:
        return None, str(e)
    found = checkpoint.what_differs(stored, to_dict(config))
    if found:
        return None, f"its config or code differs: {'; '.join(found)}"
    if stored.meta["epoch"] >= config.train.epochs:
        return None, None
    return (stored.meta["epoch"], stored.meta["step_in_epoch"]), None


def checkpointed(config: Config) -> Config:
    """The config a run of an experiment trains with: a checkpoint every epoch unless it says otherwise."""
    return config if config.train.checkpoint_every is not None else derive(config, {"train.checkpoint_every": 1})


@dataclass(frozen=True)
class Group:
    """Pending runs of the same shapes: trained together (one vmapped program), one task for an
    executor. names[i] is run i's manifest entry. `resume`: the runs continue from their folders'
    checkpoints (all at one position), else they start anew."""

    names: tuple[str, ...]
    configs: tuple[Config, ...]
    run_dirs: tuple[Path, ...]
    resume: bool = False

    @property
    def label(self) -> str:
        points = list(dict.fromkeys(name.rsplit("-s", 1)[0] for name in self.names))
        return f"{points[0]} (+{len(points) - 1} points)" if len(points) > 1 else points[0]


def group_runs(runs: list[tuple[str, Config, Path]], positions: list[tuple[int, int] | None] | None = None) -> list[Group]:
    """Groups (name, config, run folder) by shape and by the checkpoint position each resumes from
    (`positions`, None: starts anew), in order of first appearance."""
    by_shape: dict[tuple, list] = {}
    for run, position in zip(runs, positions or [None] * len(runs)):
        by_shape.setdefault((shape_key(run[1]), position), []).append(run)
    return [Group(*map(tuple, zip(*members)), resume=position is not None)
            for (_, position), members in by_shape.items()]


def train_point(group: Group, dataset_loader: Callable, dataset=None) -> list[dict]:
    """Trains a group; a data-dependent failure becomes status 'failed' (the others go on)."""
    from bioprop_cli.train import train_group

    try:
        dataset = dataset if dataset is not None else dataset_loader(group.configs[0])
        resume = [checkpoint.read(d) for d in group.run_dirs] if group.resume else None
        return train_group(list(group.configs), dataset, [RunWriter(d) for d in group.run_dirs], resume=resume,
                           forced=[[] for _ in group.run_dirs])
    except DiskFull as e:  # each run says so in its summary (not left `running`); the runner stops
        reason = disk_full_reason(e)
        for run_dir in group.run_dirs:
            mark_failed(run_dir, reason)
        return [{"status": "failed", "error": reason, "disk_full": str(e)} for _ in group.configs]
    except UserError as e:
        return [{"status": "failed", "error": str(e)} for _ in group.configs]


def load_checked_data(configs: list[Config], dataset_loader: Callable) -> dict[tuple, Any]:
    """Each dataset the configs train on, loaded once and checked against every config that uses it
    (config.check_against_data, as `bioprop train` does): missing, truncated or too small data is a
    UserError before the experiment's folder exists. Returns {(dataset, data_dir): dataset}."""
    datasets: dict[tuple, Any] = {}
    for config in configs:
        where = (config.data.dataset, config.data.data_dir)
        if where not in datasets:
            datasets[where] = dataset_loader(config)
        check_against_data(config, len(datasets[where].x_train))
    return datasets


class LocalExecutor:
    """In-process, one group after another; each dataset is loaded once (`datasets`: those loaded
    already, load_checked_data's). `jobs` > 1 (`--jobs N`) with more than one group: the groups train
    in up to `jobs` worker processes at a time, each on its own cores (jobs.py; the loader is sent to
    the workers, each loads its own data)."""

    def __init__(self, datasets: dict[tuple, Any] | None = None, jobs: int = 1):
        self.datasets = dict(datasets or {})
        self.jobs = jobs

    def __call__(self, groups, dataset_loader, report, interrupted=lambda: False):
        if self.jobs > 1 and len(groups) > 1:
            from bioprop_cli.experiment.jobs import run_in_workers

            yield from run_in_workers(groups, dataset_loader, report, interrupted, self.jobs)
            return
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


class Experiment:
    """An open, locked experiment folder and its manifest (open_experiment)."""

    def __init__(self, folder: Path, manifest: dict, what: str):
        self.folder, self.manifest, self.what = folder, manifest, what

    def train(self, specs: list[RunSpec], dataset_loader: Callable, executor=None,
              report: Callable[[str], None] = lambda m: None,
              interrupted: Callable[[], bool] = lambda: False,
              notice: Callable[[str], None] | None = None) -> list[dict]:
        """Trains the specs' runs that have not finished (each unfinished one from its checkpoint, in
        its folder, or anew into a new folder); returns the manifest entry of every spec, in order.
        `executor` (default LocalExecutor) takes the groups and yields (group, summaries); once `interrupted()` it starts no group. `notice`
        (default `report`): one line per run that continues from its checkpoint, or whose checkpoint
        is not used (also recorded in its entry, `checkpoint_not_used`)."""
        runs, folder = self.manifest["runs"], self.folder
        pending, positions = [], []
        for spec in specs:
            if spec.name in runs:
                _settle(runs[spec.name], folder)
            entry = runs.get(spec.name)
            if (entry or {}).get("status") in FINISHED:
                report(f"{spec.name}: done")
                continue
            config = checkpointed(spec.config)
            position, unusable = (None, None)
            if entry and entry.get("run_dir"):
                position, unusable = resumable_checkpoint(folder / entry["run_dir"], config)
            if unusable:
                (notice or report)(f"{spec.name}: checkpoint not used, trained afresh in a new folder ({unusable})")
            if position is not None:
                (notice or report)(f"{spec.name}: continues from its checkpoint (epoch {position[0]}, step {position[1]})")
                run_dir = folder / entry["run_dir"]
                runs[spec.name] = {**{k: v for k, v in entry.items() if k not in ("test_accuracy", "error")},
                                   "status": "queued"}
            else:
                run_dir = create_run_dir(folder, "runs", spec.name)
                runs[spec.name] = _requeue(entry, spec, run_dir, folder)
                if unusable:
                    runs[spec.name]["checkpoint_not_used"] = unusable
            pending.append((spec.name, config, run_dir))
            positions.append(position)
        write_json(folder / MANIFEST, self.manifest)
        groups = group_runs(pending, positions)
        for group, summaries in (executor or LocalExecutor())(groups, dataset_loader, report, interrupted):
            _record(runs, group, summaries, folder)
            full = next((s["disk_full"] for s in summaries if "disk_full" in s), None)
            if full is not None:  # the next group would fail the same way: stop, say where
                write_status(folder / MANIFEST, self.manifest)
                raise UserError(f"{full}; the {self.what} stopped, its group {group.label} is marked failed in "
                                f"{folder / MANIFEST} (the same command resumes it)")
            write_json(folder / MANIFEST, self.manifest)
        return [runs[spec.name] for spec in specs]


@contextlib.contextmanager
def open_experiment(folder: Path, header: dict, config_tree: dict, what: str = "sweep") -> Iterator[Experiment]:
    """The experiment folder, made if new (config.yaml from `config_tree`, a manifest of `header` and
    no runs), locked while the block runs. `what` names it in messages (sweep, study)."""
    check_folder(folder, f"{what} folder")
    make_folder(folder)
    with folder_lock(folder):
        try:
            manifest = load_manifest(folder)
        except UserError as e:
            raise UserError(f"{e}; move it aside to start this sweep afresh (its run folders stay where they are)") from None
        if manifest is None:
            write_yaml(folder / "config.yaml", config_tree)
            manifest = {**header, "runs": {}}
        yield Experiment(folder, manifest, what)


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
