"""A process that is still running at a random moment: the shared draw of sigint_sweep.py,
sigint_commands.py and kill9.py."""

import random
import subprocess
import time
from pathlib import Path
from typing import Callable


def alive_at_random_moment(start: Callable[[int], tuple[subprocess.Popen, Path]], rng: random.Random, span: float,
                           ready: Callable[[subprocess.Popen, Path], None] = lambda proc, folder: None):
    """Starts a process with `start(redraws)`, waits until `ready` returns, then a delay drawn uniformly
    from [0, span] seconds, and returns (proc, folder, delay, redraws)
    with the process still running. One that ended before its moment is no try: it is started again
    (redraws counts those)."""
    redraws = 0
    while True:
        proc, folder = start(redraws)
        ready(proc, folder)
        delay = rng.uniform(0, span)
        time.sleep(delay)
        if proc.poll() is None:
            return proc, folder, delay, redraws
        redraws += 1
