"""Checkpoints: a run's whole training state, to stop and continue exactly where it stopped.

    <run>/checkpoints/last.npz   the latest checkpoint (train.checkpoint_every, Ctrl-C, train.max_minutes, the end)
    <run>/checkpoints/best.npz   the state at the best validation accuracy so far

One .npz file each, written atomically (runs.atomic_file): the training state's arrays in jax.tree_util
order ('state/<i>': parameters, rule state such as learned feedback and ep's persistent particles,
optimizer state, the batched hyper-values), the arrays of an epoch stopped inside ('partial/<i>': its
per-step outputs so far) and the host-side bookkeeping as JSON ('meta': position, metrics so far, the
sizes of the JSON-lines logs, config, code version). The data order, dropout and augmentation keys are
not stored: they derive from the seed and the epoch or step (splits.derive_keys), which the meta holds.
Plain npz rather than orbax-checkpoint: measured 10x faster to write for the default MLP (docs/long_runs.md).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import io
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bioprop_cli.errors import UserError
from bioprop_cli.runs import CHECKPOINTS

FORMAT = 1
FOLDER = CHECKPOINTS  # the run folder's checkpoints/ (runs.py writes them: RunWriter.checkpoint)
# config keys that steer how a run is run, not what it computes: they may change on --resume without --force
RUN_CONTROL_KEYS = ("results_dir", "experiment", "data.data_dir", "train.checkpoint_every", "train.max_minutes",
                    "log.live", "train.save_params")


class Checkpoint(NamedTuple):
    state: list[np.ndarray]  # the TrainState's leaves (jax.tree_util order)
    partial: list[np.ndarray]  # the leaves of the outputs of the current epoch's steps so far ([] at an epoch's end)
    meta: dict


def path(run_dir: str | Path, name: str = "last") -> Path:
    return Path(run_dir) / FOLDER / f"{name}.npz"


def to_bytes(state_leaves: list, partial_leaves: list, meta: dict) -> bytes:
    arrays = {f"state/{i}": np.asarray(v) for i, v in enumerate(state_leaves)}
    arrays.update({f"partial/{i}": np.asarray(v) for i, v in enumerate(partial_leaves)})
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps({"format": FORMAT, **meta}, allow_nan=True)), **arrays)
    return buffer.getvalue()


def read(run_dir: str | Path, name: str = "last") -> Checkpoint:
    """The checkpoint RUN/checkpoints/NAME.npz; a missing or unreadable one is a UserError naming it."""
    import zipfile

    file = path(run_dir, name)
    if not file.is_file():
        raise UserError(f"{file}: not found (the run wrote no checkpoint; it stopped before its first one)")
    try:
        with np.load(file, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            leaves = {key: stored[key] for key in stored.files if key != "meta"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as err:
        raise UserError(f"{file}: not a readable checkpoint ({err})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{file}: checkpoint format {meta.get('format')!r}; this bioprop reads format {FORMAT}")

    def numbered(prefix: str) -> list[np.ndarray]:
        count = sum(key.startswith(prefix) for key in leaves)
        return [leaves[f"{prefix}{i}"] for i in range(count)]

    return Checkpoint(numbered("state/"), numbered("partial/"), meta)


def restore(template, leaves: list[np.ndarray], what: str):
    """The pytree `template` (arrays or ShapeDtypeStructs) with the stored leaves in its place; a UserError
    when they do not fit (another network or rule)."""
    import jax

    expected, treedef = jax.tree_util.tree_flatten(template)
    shapes = [(tuple(v.shape), np.dtype(v.dtype)) for v in expected]
    stored = [(tuple(v.shape), v.dtype) for v in leaves]
    if shapes != stored:
        raise UserError(f"{what}: the stored arrays do not fit this run's network and rule "
                        f"({len(stored)} arrays stored, {len(shapes)} expected)")
    return jax.tree_util.tree_unflatten(treedef, leaves)


def differences(stored: dict, current: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two config dicts (to_dict), as 'key: old -> new'."""
    found = []
    for key in sorted(set(stored) | set(current)):
        name = f"{prefix}{key}"
        old, new = stored.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += differences(old, new, f"{name}.")
        elif old != new and name not in RUN_CONTROL_KEYS:
            found.append(f"{name}: {old!r} -> {new!r}")
    return found


def load_for_resume(run_dir: str | Path, config: dict, force: bool) -> tuple[Checkpoint, list[str]]:
    """RUN/checkpoints/last.npz and what differs between it and this config (to_dict) and code; a
    UserError naming the differences unless `force`."""
    stored = read(run_dir)
    found = what_differs(stored, config)
    if found and not force:
        raise UserError(f"{run_dir}: not resumed, the checkpoint's config or code differs: {'; '.join(found)} "
                        "(--force resumes anyway)")
    return stored, found


def what_differs(stored: Checkpoint, config: dict) -> list[str]:
    """What differs between the checkpoint and this config (to_dict) and code, one 'key: old -> new' each."""
    found = differences(stored.meta["config"], config)
    return found + [f"code {d}" for d in code_differences(stored.meta["code"], code_version())]


def code_differences(stored: dict, current: dict) -> list[str]:
    return [f"{name}: {stored.get(name)} -> {current.get(name)}" for name in sorted(set(stored) | set(current))
            if stored.get(name) != current.get(name)]


@functools.cache
def source_hash() -> str:
    """sha256 of bioprop_cli's Python sources (paths and contents): the code that trains, git or not."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def code_version() -> dict:
    """What decides a run's numbers besides its config: bioprop's sources and the numerical libraries."""
    import jax
    import jaxlib
    import optax

    from bioprop_cli import __version__

    return {"bioprop": __version__, "source_sha256": source_hash(), "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "optax": optax.__version__}


@functools.cache
def git_state(root: Path = Path(__file__).resolve().parent.parent) -> dict:
    """The git commit of the folder `root` (bioprop's sources) and whether its tracked files differ from it
    (dirty); nulls outside a git checkout or without git."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


@functools.cache
def dependency_versions() -> dict[str, str]:
    """{distribution: version} of bioprop's installed dependencies, followed transitively (extras aside);
    every installed distribution when bioprop itself is not installed."""
    try:
        importlib.metadata.distribution("bioprop")
    except importlib.metadata.PackageNotFoundError:
        return {d.metadata["Name"]: d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}
    found: dict[str, str] = {}
    todo = ["bioprop"]
    while todo:
        name = todo.pop()
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        key = dist.metadata["Name"] or name
        if key in found:
            continue
        found[key] = dist.version
        for requirement in dist.requires or []:
            if "extra ==" in requirement.replace('extra==', 'extra =='):
                continue
            match = _NAME.match(requirement)
            if match:
                todo.append(match.group(0))
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def provenance() -> dict[str, Any]:
    """For summary.json: the git commit (and whether the tree was dirty), the code version and every
    dependency's version, so that a number can be traced to its code."""
    return {"git": git_state(), "code": code_version(), "dependencies": dependency_versions()}
