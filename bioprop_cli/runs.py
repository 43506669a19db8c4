"""The results store: one folder per run, plain files, atomic writes, nothing overwritten.

    <results_dir>/<experiment>/<run-id>/
        config.yaml      the fully resolved config
        metrics.jsonl    one JSON object per epoch
        alignment.jsonl  one JSON object per (measurement, layer)
        summary.json     final figures and status (running / completed / diverged / interrupted)
        params.npz       the trained parameters, once training has ended (not for a diverged run)

JSON files are replaced atomically (write to a temporary file, then rename). JSON-lines files are
appended with one write() per batch of complete lines, so a killed process leaves whole lines only;
`read_jsonl` also ignores a trailing line without its newline. params.npz is written the same way
as the JSON files (temporary file, then rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml

from bioprop_cli.errors import UserError


def _clean(value: Any) -> Any:
    """NaN and infinities are not JSON: they are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n")


def write_yaml(path: Path, obj: Any) -> None:
    write_atomic(path, yaml.safe_dump(obj, sort_keys=False))


def write_params(path: Path, params) -> None:
    """Writes a parameter pytree (a list of per-layer dicts of arrays) as an .npz file with keys
    '<layer>.<name>' (e.g. '0.w', '0.b', '1.fb'), atomically, each array in its own dtype."""
    arrays = {f"{l}.{name}": np.asarray(value) for l, layer in enumerate(params) for name, value in layer.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_params(run_dir: str | Path) -> list[dict]:
    """The parameters a run stored (RUN/params.npz) as the training pytree: a list, one dict of jnp
    arrays per layer. A missing or malformed file is a UserError naming it."""
    import zipfile

    import jax.numpy as jnp

    path = Path(run_dir) / "params.npz"
    if not path.is_file():
        raise UserError(f"{path}: not found (the run stored no parameters)")
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: not a readable .npz file ({err})") from None
    layers: dict[int, dict] = {}
    for key, value in arrays.items():
        layer, _, name = key.partition(".")
        if not layer.isdigit() or not name:
            raise UserError(f"{path}: unexpected entry {key!r} (expected '<layer>.<name>', e.g. '0.w')")
        layers.setdefault(int(layer), {})[name] = jnp.asarray(value)
    if not layers or sorted(layers) != list(range(len(layers))):
        raise UserError(f"{path}: expected layers 0 .. L-1, found {sorted(layers)}")
    return [layers[l] for l in range(len(layers))]


def append_jsonl(path: Path, records: Iterable[dict]) -> None:
    text = "".join(json.dumps(_clean(r), allow_nan=False) + "\n" for r in records)
    if not text:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = text.encode()
        written = os.write(fd, data)
        while written < len(data):  # regular files write everything at once; this is for safety
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict]:
    text = Path(path).read_text()
    lines = text.split("\n")
    complete = lines[:-1]  # the part after the last newline is empty or an unfinished line
    return [json.loads(line) for line in complete if line.strip()]


def run_id(rule: str, depth: int, seed: int, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{rule}-d{depth}-s{seed}"


def create_run_dir(results_dir: str | Path, experiment: str, name: str) -> Path:
    """Creates a new, empty run folder; never reuses an existing one (adds -1, -2, ... instead)."""
    parent = Path(results_dir) / experiment
    parent.mkdir(parents=True, exist_ok=True)
    for suffix in ["", *(f"-{i}" for i in range(1, 10_000))]:
        path = parent / f"{name}{suffix}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run folder under {parent}")


@contextlib.contextmanager
def folder_lock(folder: Path):
    """Holds the exclusive lock of `folder` (the file .lock in it, which records the holder's PID).
    A second holder, in this process or another, gets a UserError naming the PID. The operating
    system releases the lock when its holder dies, even by kill -9: a stale .lock blocks nothing."""
    path = Path(folder) / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(f"{folder} is in use by another bioprop process (PID {holder}); "
                            "wait for it to finish or stop it, then run the command again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class RunWriter:
    """Writes one run's files. Each method is a complete, atomic update of the run folder."""

    def __init__(self, path: Path):
        self.path = path

    def config(self, config_dict: dict) -> None:
        write_yaml(self.path / "config.yaml", config_dict)

    def metrics(self, record: dict) -> None:
        append_jsonl(self.path / "metrics.jsonl", [record])

    def alignment(self, records: list[dict]) -> None:
        append_jsonl(self.path / "alignment.jsonl", records)

    def summary(self, summary: dict) -> None:
        write_json(self.path / "summary.json", summary)

    def params(self, params) -> None:
        """params.npz: the run's parameters (a list of per-layer dicts), keys '<layer>.<name>'."""
        write_params(self.path / "params.npz", params)
