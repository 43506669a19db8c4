"""The Study protocol: a measurement over named points (e.g. seeds), and the one function that runs it.

A study says
    name                 its files' stem: <name>.jsonl (the summarised rows), <name>.points.jsonl
    title                its figure's and table's title
    points()             the names of its points, in order (one path component each, e.g. "s0")
    measure(point)       -> Measured: the point's row (JSON) and arrays (saved beside it, .npz)
    summarise(measured)  -> (rows, summary) from every point's Measured, in the order of points()
    figures(rows, summary, folder)   its figures (drawn by bioprop_cli/report/)
and `run_study(study, folder, header, config_tree)` runs it in an experiment folder (runner.open_experiment:
made if new with config.yaml and a manifest.json of `header`, locked while it runs) that holds
    <name>.points.jsonl  one line per measured point, {"point": name, **row}, appended as it is measured
    <name>.points/       <point>.npz: the point's arrays, written (atomically) before its line
    <name>.jsonl, summary.json and the figures: written from all the points once every point is measured
A point whose line is on disk is not measured again: after Ctrl-C (exit 130) or kill -9 the same
command (the same folder: its name is the hash of what it measures, runner.identity_name) measures
the missing points only and writes the same final files as a run never stopped. A line cut short
by a kill is dropped (that point is measured again).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from bioprop_cli.errors import UserError
from bioprop_cli.experiment.manifest import MANIFEST
from bioprop_cli.experiment.runner import open_experiment
from bioprop_cli.interrupt import check as check_interrupt
from bioprop_cli.runs import append_jsonl, atomic_file, make_folder, write_json, write_jsonl


@dataclass(frozen=True)
class Measured:
    """One point's measurement: `row` (plain JSON) and `arrays` (name -> array, kept exactly)."""

    row: dict
    arrays: dict = field(default_factory=dict)


class Study(Protocol):
    name: str
    title: str

    def points(self) -> list[str]: ...

    def measure(self, point: str) -> Measured: ...

    def summarise(self, measured: list[Measured]) -> tuple[list[dict], dict]: ...

    def figures(self, rows: list[dict], summary: dict, folder: Path) -> None: ...


def points_file(folder: Path, name: str) -> Path:
    return Path(folder) / f"{name}.points.jsonl"


def _arrays_file(folder: Path, name: str, point: str) -> Path:
    return Path(folder) / f"{name}.points" / f"{point}.npz"


def _complete_lines(path: Path) -> list[dict]:
    """The file's complete lines; a last line cut short by a kill is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        os.truncate(path, end)
    try:
        return [json.loads(line) for line in data[:end].decode().splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not JSON lines ({e}); move the folder aside to measure afresh") from None


def measured_points(folder: Path, name: str) -> dict[str, Measured]:
    """The points measured in `folder` so far: {point: Measured}."""
    done = {}
    for line in _complete_lines(points_file(folder, name)):
        point = line.pop("point")
        arrays_path = _arrays_file(folder, name, point)
        arrays = {}
        if arrays_path.exists():
            with np.load(arrays_path, allow_pickle=False) as stored:
                arrays = {key: stored[key] for key in stored.files}
        done[point] = Measured(line, arrays)
    return done


def record_point(folder: Path, name: str, point: str, measured: Measured) -> None:
    """The point's arrays (atomically), then its line: the line says the point is measured."""
    if measured.arrays:
        path = _arrays_file(folder, name, point)
        make_folder(path.parent)
        with atomic_file(path, "wb", suffix=".npz") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in measured.arrays.items()})
    append_jsonl(points_file(folder, name), [{"point": point, **measured.row}])


def run_study(study: Study, folder: Path, header: dict, config_tree: dict,
              report: Callable[[str], None] = lambda m: None) -> dict:
    """Measures the study's points not yet measured in `folder`, then summarises all of them into
    <name>.jsonl, summary.json and the figures; returns {"rows", "summary", "title"}. Ctrl-C: Interrupted
    at the next point (those measured stay on disk)."""
    with open_experiment(folder, header, config_tree, what=f"{study.name} study") as experiment:
        if not (folder / MANIFEST).exists():
            write_json(folder / MANIFEST, experiment.manifest)
        done = measured_points(folder, study.name)
        for point in study.points():
            if point in done:
                report(f"{point}: measured before")
                continue
            check_interrupt()
            done[point] = study.measure(point)
            record_point(folder, study.name, point, done[point])
        rows, summary = study.summarise([done[point] for point in study.points()])
        write_jsonl(folder / f"{study.name}.jsonl", rows)
        write_json(folder / "summary.json", summary)
        study.figures(rows, summary, folder)
    return {"rows": rows, "summary": summary, "title": study.title}
