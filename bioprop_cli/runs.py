"""The results store: one folder per run, plain files, atomic writes, nothing overwritten.

    <results_dir>/<experiment>/<run-id>/
        config.yaml      the fully resolved config
        metrics.jsonl    one JSON object per epoch
        alignment.jsonl  one JSON object per (measurement, layer)
        summary.json     final figures and status (running / completed / diverged / interrupted)
        params.npz       the trained parameters, once training has ended (not for a diverged run)
        steps.jsonl      training loss and accuracy every log.every_steps steps (when set)
        checkpoints/     last.npz and best.npz: the whole training state (bioprop_cli/checkpoint.py)

JSON files are replaced atomically (write to a temporary file, then rename). JSON-lines files are
appended with one write() per batch of complete lines, so a killed process leaves whole lines only;
`read_jsonl` also ignores a trailing line without its newline. params.npz is written the same way
as the JSON files (temporary file, then rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import os
import socket
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import yaml

from bioprop_cli.errors import DiskFull, UserError, free_bytes, is_disk_full

CHECKPOINTS = "checkpoints"  # a run folder's checkpoints (format: bioprop_cli/checkpoint.py)
LOGS = ("metrics.jsonl", "alignment.jsonl", "steps.jsonl")  # the JSON-lines logs a checkpoint records the sizes of


def _clean(value: Any) -> Any:
    """NaN and infinities are not JSON: they are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w", suffix: str = ".tmp", publish: Callable | None = None,
                size: int | None = None):
    """A file object whose content becomes `path` in one step once the block completes: it is written to a
    hidden temporary file beside `path`, flushed to disk, made readable by all, then `publish(temporary,
    path)` (default: a rename) puts it in place. If the block raises, nothing is left behind. A full disk
    is a DiskFull naming `path` and `size`, the bytes it needed (where the caller knows them)."""
    tmp = None
    try:
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
            with os.fdopen(fd, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes it private; results are meant to be shared
            (publish or os.replace)(tmp, path)
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)  # a no-op once renamed
    except OSError as e:
        if is_disk_full(e):  # after the unlink: the free space it reports is the space there is
            raise DiskFull(path, size) from None
        raise


def write_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_file(path, "wb", size=len(data)) as f:
        f.write(data)


def _json_text(obj: Any) -> str:
    return json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n"


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, _json_text(obj))


def write_status(path: Path, obj: Any) -> None:
    """write_json for a status record (summary.json, manifest.json) that must say how a run ended even on
    a full disk: when the atomic write finds no space, the file is rewritten in place if its new content
    fits in the blocks the old one already holds (a write there allocates nothing, so it cannot fail for
    want of space: never half-written); otherwise the DiskFull stands."""
    try:
        write_json(path, obj)
        return
    except DiskFull:
        data = _json_text(obj).encode()
        try:
            allocated = os.stat(path).st_blocks * 512
        except OSError:
            allocated = 0
        if len(data) > allocated:
            raise
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def write_yaml(path: Path, obj: Any) -> None:
    write_atomic(path, yaml.safe_dump(obj, sort_keys=False))


def save_figure(figure, path: Path, dpi: int) -> None:
    """A matplotlib figure as PNG at `path`, atomically (a full disk: DiskFull, no half-written image)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    write_bytes_atomic(path, buffer.getvalue())


def params_bytes(params) -> bytes:
    """A parameter pytree (a list of per-layer dicts of arrays) as the bytes of an .npz file with keys
    '<layer>.<name>' (e.g. '0.w', '0.b', '1.fb'), each array in its own dtype. A network on the library's
    layers (models/graph.py: a dict {"layers", "norms"}) has its leaves' paths as keys ('layers.0.w',
    'norms.3.scale', 'fb.layers.0.w')."""
    if isinstance(params, dict):
        arrays = dict(_leaves_by_path(params))
    else:
        arrays = {f"{l}.{name}": np.asarray(value) for l, layer in enumerate(params) for name, value in layer.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _leaves_by_path(tree, prefix: str = ""):
    """(dotted path, array) of every leaf of nested dicts, lists and tuples."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else None
    if items is None:
        yield prefix, np.asarray(tree)
        return
    for key, value in items:
        yield from _leaves_by_path(value, f"{prefix}.{key}" if prefix else str(key))


def write_params(path: Path, params) -> None:
    """params.npz (params_bytes), atomically."""
    write_bytes_atomic(path, params_bytes(params))


def make_folder(path: Path) -> None:
    """mkdir -p; a full disk is a DiskFull naming the folder."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFull(path, what="cannot create the folder") from None
        raise


def write_new_json(folder: Path, stem: str, obj: Any) -> Path:
    """Writes obj to folder/stem.json, or stem-2.json, stem-3.json, ... if taken; never overwrites."""
    published = []

    def link_to_a_free_name(tmp: str, _) -> None:
        for i in range(1, 10_000):
            path = folder / (f"{stem}.json" if i == 1 else f"{stem}-{i}.json")
            try:
                os.link(tmp, path)  # atomic, and fails if the name exists
                published.append(path)
                return
            except FileExistsError:
                continue
        raise UserError(f"{folder}: no free name for {stem}.json")

    data = _json_text(obj).encode()
    with atomic_file(folder / f"{stem}.json", "wb", publish=link_to_a_free_name, size=len(data)) as f:
        f.write(data)
    return published[0]


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
        if not np.issubdtype(value.dtype, np.floating):
            raise UserError(f"{path}: entry {key!r} holds {value.dtype} numbers; parameters are floating-point")
        layers.setdefault(int(layer), {})[name] = jnp.asarray(value)
    if not layers or sorted(layers) != list(range(len(layers))):
        raise UserError(f"{path}: expected layers 0 .. L-1, found {sorted(layers)}")
    return [layers[l] for l in range(len(layers))]


def append_jsonl(path: Path, records: Iterable[dict]) -> None:
    text = "".join(json.dumps(_clean(r), allow_nan=False) + "\n" for r in records)
    if not text:
        return
    data = text.encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFull(path, len(data)) from None
        raise
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            while written < len(data):  # regular files write everything at once; this is for safety
                written += os.write(fd, data[written:])
            os.fsync(fd)
        except OSError as e:
            if not is_disk_full(e):
                raise
            os.ftruncate(fd, size)  # no partial line: the file ends where it ended before
            if size == 0:
                Path(path).unlink(missing_ok=True)
            raise DiskFull(path, len(data)) from None
    finally:
        os.close(fd)


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    """The whole file at once, atomically: one JSON object a line (NaN and infinities as null)."""
    write_atomic(path, "".join(json.dumps(_clean(r), allow_nan=False) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict]:
    text = Path(path).read_text()
    lines = text.split("\n")
    complete = lines[:-1]  # the part after the last newline is empty or an unfinished line
    return [json.loads(line) for line in complete if line.strip()]


def check_folder(path: str | Path, what: str, file_ok: bool = False) -> None:
    """UserError (naming `what`, the flag or key) unless `path` is a folder or could be made one: neither
    it nor any folder above it may be a file. With `file_ok`, `path` itself may be a file (the caller
    then takes the next free name beside it). Nothing is created."""
    path = Path(path)
    for above in [path, *path.parents]:
        if above.is_dir():
            return
        if above == path and file_ok:
            continue
        if above.exists() or above.is_symlink():
            where = "is a file" if above == path else f"is under {above}, which is a file"
            raise UserError(f"{what}: {path} {where}, not a folder")


def check_results_folder(config) -> None:
    """Where a run of `config` is written, RESULTS_DIR/EXPERIMENT, can be a folder (check_folder), said by
    config key; a command checks it as it starts, before anything is written."""
    check_folder(config.results_dir, "config key 'results_dir'")
    check_folder(Path(config.results_dir) / config.experiment, "config key 'experiment'")


def check_new_file(path: str | Path, what: str) -> None:
    """UserError unless `path` names a file that can be written: not a folder, in a folder that exists."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what}: {path} is a folder; give a file name, e.g. {path / 'bench.json'}")
    if not path.parent.is_dir():
        check_folder(path.parent, what)
        raise UserError(f"{what}: the folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"{what}: the folder {path.parent} is not writable")


def process_stamp() -> dict:
    """Who is writing a run, for summary.json at its start: a `running` run whose process is gone
    (same host, no such pid) is stale, not in progress (bioprop compare)."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def process_alive(summary: dict) -> bool | None:
    """Whether the process that summary.json names still runs: True, False (gone, or no pid recorded),
    or None where it cannot be told (written on another host)."""
    pid = summary.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if summary.get("host") not in (None, socket.gethostname()):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def out_of_memory(error: BaseException) -> bool:
    """A failed allocation: Python's MemoryError, or XLA's RESOURCE_EXHAUSTED (device or host memory)."""
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error)


def mark_failed(run_dir: Path, reason: str) -> bool:
    """Records the run as `failed` with `reason` (summary.json: status, error; write_status, so a full
    disk does not stop it where the summary already has its room). False where it could not be written."""
    summary_path = Path(run_dir) / "summary.json"
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        summary = {}
    summary = summary if isinstance(summary, dict) else {}
    try:
        write_status(summary_path, {**summary, "status": "failed", "error": reason})
    except (DiskFull, OSError):
        return False
    return True


def disk_full_reason(error: DiskFull) -> str:
    return f"disk full: {error}"


@contextlib.contextmanager
def failed_if_out_of_resources(run_dir: Path):
    """A run that runs out of memory or disk space is recorded as `failed` (summary.json: status, error),
    not left `running`, and reported as a UserError naming its folder (and, for the disk, the path and
    the bytes the write needed); other errors pass through."""
    try:
        yield
    except DiskFull as e:
        marked = mark_failed(run_dir, disk_full_reason(e))
        state = "is marked failed" if marked else "could not even be marked failed"
        raise UserError(f"{e}; the run {run_dir} {state}") from None
    except Exception as e:
        if not out_of_memory(e):
            raise
        reason = " ".join(str(e).split())[:200] or e.__class__.__name__
        mark_failed(run_dir, f"out of memory: {reason}")
        raise UserError(f"out of memory (reduce model.width, model.depth or train.batch_size); the run {run_dir} "
                        f"is marked failed: {reason}") from None


def run_id(rule: str, network: str, seed: int, now: datetime | None = None) -> str:
    """<UTC time>-<rule>-<network>-s<seed>; network: models.arch.label (d<depth> for an MLP, else the arch)."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{rule}-{network}-s{seed}"


def create_stamped_dir(results_dir: str | Path, experiment: str, name: str) -> Path:
    """A new folder RESULTS_DIR/EXPERIMENT/<UTC time>-<name> (create_run_dir: never an existing one)."""
    return create_run_dir(results_dir, experiment, f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{name}")


def create_run_dir(results_dir: str | Path, experiment: str, name: str) -> Path:
    """Creates a new, empty run folder; never reuses an existing one (adds -1, -2, ... instead)."""
    parent = Path(results_dir) / experiment
    check_folder(parent, "results folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for suffix in ["", *(f"-{i}" for i in range(1, 10_000))]:
            path = parent / f"{name}{suffix}"
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as e:  # FileExistsError above is a name taken; anything else is the place itself
        if is_disk_full(e):
            raise DiskFull(parent, what="cannot create a run folder there") from None
        raise UserError(f"results folder {parent}: cannot create a folder there ({e.strerror or e})") from None
    raise RuntimeError(f"could not create a new run folder under {parent}")


@contextlib.contextmanager
def folder_lock(folder: Path):
    """Holds the exclusive lock of `folder` (the file .lock in it, which records the holder's PID).
    A second holder, in this process or another, gets a UserError naming the PID. The operating
    system releases the lock when its holder dies, even by kill -9: a stale .lock blocks nothing."""
    path = Path(folder) / ".lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFull(path, what="cannot create the lock file") from None
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(f"{folder} is in use by another bioprop process (PID {holder}); "
                            "wait for it to finish or stop it, then run the command again") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            if is_disk_full(e):
                raise DiskFull(path, what="cannot write the lock file") from None
            raise
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class RunWriter:
    """Writes one run's files. Each method is a complete, atomic update of the run folder. The kinds of the
    records' fields, which `bioprop compare` checks them by: records.py."""

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

    def reserve(self, params_bytes: int) -> None:
        """DiskFull unless the file system has room for params.npz (`params_bytes`, the arrays' bytes)."""
        free = free_bytes(self.path)
        if free is not None and free < params_bytes:
            raise DiskFull(self.path / "params.npz", params_bytes, what="no room for the parameters at the end of the run",
                           free=free)

    def params(self, params) -> None:
        """params.npz: the run's parameters (a list of per-layer dicts), keys '<layer>.<name>'."""
        write_params(self.path / "params.npz", params)

    def steps(self, records: list[dict]) -> None:
        """steps.jsonl: training loss and accuracy inside epochs (log.every_steps)."""
        append_jsonl(self.path / "steps.jsonl", records)

    def checkpoint(self, name: str, data: bytes) -> None:
        """checkpoints/<name>.npz (the format: bioprop_cli/checkpoint.py), atomically."""
        make_folder(self.path / CHECKPOINTS)
        write_bytes_atomic(self.path / CHECKPOINTS / f"{name}.npz", data)

    def link_checkpoint(self, source: str, target: str) -> None:
        """checkpoints/<target>.npz becomes the same file as <source>.npz (a hard link put in place by a rename: atomic)."""
        folder = self.path / CHECKPOINTS
        tmp = folder / f".{target}.link"
        tmp.unlink(missing_ok=True)
        os.link(folder / f"{source}.npz", tmp)
        os.replace(tmp, folder / f"{target}.npz")

    def log_sizes(self) -> dict[str, int]:
        """{JSON-lines log: its size in bytes}, for a checkpoint to record where the logs stood."""
        return {name: (self.path / name).stat().st_size if (self.path / name).is_file() else 0 for name in LOGS}

    def truncate_logs(self, sizes: dict[str, int]) -> None:
        """Cuts each JSON-lines log back to the size a checkpoint recorded: the lines after it are
        written again by the resumed run, so none is duplicated."""
        for name, size in sizes.items():
            path = self.path / name
            if path.is_file() and path.stat().st_size > size:
                os.truncate(path, size)

    def previous_summary(self) -> dict:
        """summary.json as the run left it ({} where there is none or it cannot be read)."""
        try:
            summary = json.loads((self.path / "summary.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return summary if isinstance(summary, dict) else {}
