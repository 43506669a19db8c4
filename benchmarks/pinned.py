"""One benchmark side in its own process pinned to `cores` (taskset); its last stdout line is its JSON result."""

from __future__ import annotations

import json
import subprocess

from bioprop_cli.experiment.jobs import worker_env


def run_pinned(cores: str, command: list[str], env: dict, label: str) -> dict:
    done = subprocess.run(["taskset", "-c", cores] + command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{label} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def thread_env(threads: int) -> dict:
    """A side's environment on `threads` cores: OpenMP and MKL to match, on one core XLA single-threaded as
    `--jobs` workers run (bioprop_cli/experiment/jobs.worker_env)."""
    return dict(worker_env(tuple(range(threads))), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
