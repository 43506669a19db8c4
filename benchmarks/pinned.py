"""One benchmark side in its own process pinned to `cores` (taskset); its last stdout line is its JSON result."""

from __future__ import annotations

import json
import subprocess


def run_pinned(cores: str, command: list[str], env: dict, label: str) -> dict:
    done = subprocess.run(["taskset", "-c", cores] + command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{label} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
