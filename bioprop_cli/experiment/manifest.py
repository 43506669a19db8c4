"""An experiment folder's manifest.json, read in one place: by the runner that writes it (runner.py) and
by `bioprop compare` (report/aggregate.py), which counts, of the run folders in an experiment folder, the
one its manifest names per run (earlier attempts and a resumed experiment's leftovers are no results).
Every multi-run command (sweep, reproduce, sweep beta --train, sweep condition --train) writes one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bioprop_cli.errors import UserError

MANIFEST = "manifest.json"


def load_manifest(folder: Path) -> dict | None:
    """The folder's manifest, None if there is none; one that is not a manifest is a UserError naming it and why."""
    path = Path(folder) / MANIFEST
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
        raise UserError(f"{path}: not a sweep manifest ({problem})")
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


def experiment_folder(run_dir: Path) -> Path | None:
    """The experiment folder (with a manifest) that holds `run_dir`, if any."""
    return next((p for p in Path(run_dir).parents if (p / MANIFEST).is_file()), None)


def named_run_dirs(folder: Path) -> set[Path]:
    """The run folders (resolved) that the folder's manifest names, one per run; UserError for a damaged manifest."""
    manifest = load_manifest(folder) or {"runs": {}}
    return {(Path(folder) / e["run_dir"]).resolve() for e in manifest["runs"].values() if "run_dir" in e}
