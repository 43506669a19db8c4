"""One worker of `--jobs N` (jobs.py): `python -m bioprop_cli.experiment.worker CORES PARENT_PID` pins itself to
CORES (comma-separated) before JAX is imported, reads the pickled (group, dataset loader) on stdin,
trains the group (runner.train_point) and writes the pickled summaries on its stdout. Ctrl-C (the
parent's one SIGINT) ends its runs `interrupted` at the next boundary, as in `bioprop train`; it exits
when its parent is gone (its parent's pid is no longer its parent's)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time


def main(cores: str, parent: int) -> None:
    if hasattr(os, "sched_setaffinity"):  # first: XLA sizes its thread pools from the affinity mask
        os.sched_setaffinity(0, {int(c) for c in cores.split(",")})
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the parent decides, even where it ignores SIGINT
    from bioprop_cli import interrupt
    from bioprop_cli.experiment.jobs import WATCH_PARENT_S

    interrupt.install()
    threading.Thread(target=_exit_without_parent, args=(parent, WATCH_PARENT_S), daemon=True).start()
    result = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever the training prints goes to stderr; stdout carries the result alone
    import pickle

    group, dataset_loader = pickle.load(sys.stdin.buffer)
    from bioprop_cli.experiment.runner import train_point

    summaries = train_point(group, dataset_loader)
    result.write(pickle.dumps(summaries))
    result.flush()
    sys.stderr.flush()
    os._exit(0)  # no interpreter shutdown under XLA's threads


def _exit_without_parent(parent: int, every_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(128 + signal.SIGHUP)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
