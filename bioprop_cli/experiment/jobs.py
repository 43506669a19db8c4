"""`--jobs N`: the local executor's groups trained in N worker processes at a time, each pinned to its
own cores with XLA's threads set to match.

The usable cores (os.sched_getaffinity) are split into min(N, groups) contiguous slices, one per
worker slot; a group starts in the first free slot, in the order of the groups. A worker is a fresh
`python -m bioprop_cli.experiment.worker` (worker.py) per group: it pins itself to its slot's cores
before JAX is imported, and on one core XLA runs single-threaded (XLA_FLAGS
--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1, OMP_NUM_THREADS=1, as
benchmarks/pinned.py's sides do). It reads the pickled (group, dataset loader) on stdin, loads its
own data, trains the group through runner.train_point and writes the pickled summaries on its stdout.
The parent alone writes the manifest, as each group's summaries arrive.

A worker that dies without summaries (a crash, the kernel's OOM killer) marks its runs failed, with
its exit code and the last line of its stderr; the other workers go on. Ctrl-C: the parent sends each
running worker one SIGINT (workers run in their own session, so a terminal's Ctrl-C reaches the parent
alone) and starts no more groups; each worker ends its runs `interrupted` at the next epoch boundary
and returns them, then the command exits 130. A worker whose parent is gone (a second Ctrl-C, kill -9)
exits within WATCH_PARENT_S; leaving the executor early (an exception, a full disk) kills the workers
still running: none outlives the command.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bioprop_cli.errors import UserError
from bioprop_cli.runs import mark_failed

ONE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
WATCH_PARENT_S = 0.2  # how often a worker checks that its parent is alive
POLL_S = 0.2  # how often the parent checks Ctrl-C while workers train
ENDED = ("completed", "diverged", "interrupted", "failed")


def usable_cores() -> list[int]:
    """The cores this process may run on (its affinity mask; all of os.cpu_count() where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def parse_jobs(text: str | int, cores: int | None = None) -> int:
    """--jobs: a whole number from 1 to the usable cores, or auto (all of them)."""
    cores = cores if cores is not None else len(usable_cores())
    text = str(text).strip()
    if text == "auto":
        return cores
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise UserError(f"--jobs: expected a whole number from 1 to {cores} (the usable cores) or auto, got {text!r}")
    if jobs > cores:
        raise UserError(f"--jobs: {jobs} workers, each on its own core, need {jobs} cores; this process may use "
                        f"{cores} (os.sched_getaffinity): give 1 to {cores} or auto")
    return jobs


def core_slices(cores: list[int], slots: int) -> list[tuple[int, ...]]:
    """`cores` cut into `slots` contiguous slices of (nearly) equal size, the larger ones first."""
    size, extra = divmod(len(cores), slots)
    out, start = [], 0
    for i in range(slots):
        end = start + size + (i < extra)
        out.append(tuple(cores[start:end]))
        start = end
    return out


def worker_env(cores: tuple[int, ...], base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker on `cores`: on one core, XLA and OpenMP single-threaded."""
    env = dict(os.environ if base is None else base)
    if len(cores) == 1:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {ONE_THREAD_XLA_FLAGS}".strip()
        env["OMP_NUM_THREADS"] = "1"
    return env


@dataclass
class Worker:
    group: Any
    cores: tuple[int, ...]
    proc: subprocess.Popen
    future: Any = None  # the thread's communicate(): (stdout, stderr)


def start_worker(group, dataset_loader: Callable, cores: tuple[int, ...], pool: ThreadPoolExecutor) -> Worker:
    payload = pickle.dumps((group, dataset_loader))
    proc = subprocess.Popen([sys.executable, "-m", "bioprop_cli.experiment.worker", ",".join(map(str, cores)),
                             str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=worker_env(cores), start_new_session=True)
    worker = Worker(group, cores, proc)
    worker.future = pool.submit(proc.communicate, payload)
    return worker


def summaries_of(worker: Worker, stopping: bool) -> list[dict]:
    """The worker's summaries; a worker that returned none: its runs as their folders tell (lost_runs)."""
    try:
        out, err = worker.future.result()
    except Exception as e:  # the pipe broke (the worker died while reading its group)
        out, err = b"", str(e).encode()
    if worker.proc.returncode == 0:
        try:
            summaries = pickle.loads(out)
            if isinstance(summaries, list) and len(summaries) == len(worker.group.run_dirs):
                return summaries
        except Exception:
            pass
    lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
    reason = f"worker process (cores {','.join(map(str, worker.cores))}) exited with code {worker.proc.returncode}" + (
        f": {lines[-1].strip()}" if lines else "")
    return lost_runs(worker.group, reason, stopping)


def lost_runs(group, reason: str, stopping: bool) -> list[dict]:
    """The summaries of a group whose worker returned none: a run that ended says so in its folder; one
    that never started (no summary.json) is failed, or still queued after Ctrl-C; one that started is
    marked failed with `reason`."""
    out = []
    for run_dir in group.run_dirs:
        summary = _summary(Path(run_dir))
        if summary.get("status") in ENDED:
            out.append(summary)
        elif not summary and stopping:
            out.append({"status": "queued"})
        else:
            if summary:
                mark_failed(Path(run_dir), reason)
            out.append({"status": "failed", "error": reason})
    return out


def _summary(run_dir: Path) -> dict:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return summary if isinstance(summary, dict) else {}


def run_in_workers(groups, dataset_loader: Callable, report: Callable[[str], None], interrupted: Callable[[], bool],
                   jobs: int, cores: list[int] | None = None):
    """Yields (group, summaries) as the workers finish, at most `jobs` at a time (see the module's text)."""
    queue = deque(groups)
    slots = core_slices(cores or usable_cores(), min(jobs, len(queue)) or 1)
    free, running, stopping = list(range(len(slots))), {}, False
    pool = ThreadPoolExecutor(len(slots), thread_name_prefix="bioprop-worker")
    try:
        while queue or running:
            if interrupted() and not stopping:
                stopping = True
                for worker in running.values():
                    _signal(worker.proc, signal.SIGINT)
            while queue and free and not stopping:
                slot = free.pop(0)
                group = queue.popleft()
                running[slot] = start_worker(group, dataset_loader, slots[slot], pool)
                report(f"{group.label}: training {len(group.configs)} runs together in a worker on cores "
                       f"{','.join(map(str, slots[slot]))} ({len(running)} of {len(slots)} workers busy, {len(queue)} groups waiting)")
            if not running:
                return
            wait([w.future for w in running.values()], timeout=POLL_S, return_when=FIRST_COMPLETED)
            for slot in [s for s, w in running.items() if w.future.done()]:
                worker = running.pop(slot)
                free.append(slot)
                free.sort()
                yield worker.group, summaries_of(worker, stopping)
    finally:
        for worker in running.values():  # left early: an exception, a full disk, the consumer gone
            _signal(worker.proc, signal.SIGKILL)
            worker.proc.wait()
        pool.shutdown(wait=True)


def _signal(proc: subprocess.Popen, signum: int) -> None:
    try:
        proc.send_signal(signum)
    except (ProcessLookupError, OSError):  # it has exited already
        pass
