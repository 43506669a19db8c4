"""Ctrl-C at random moments of a sweep: every try must exit 130 and leave a resumable manifest.

    BIOPROP_DATA_DIR=/path/to/mnist python benchmarks/sigint_sweep.py --tries 20 --results-dir /tmp/sigint-sweep
    BIOPROP_DATA_DIR=/path/to/mnist python benchmarks/sigint_sweep.py --tries 20 --jobs 2 --results-dir /tmp/sigint-jobs2

One uninterrupted sweep (`bioprop sweep --grid depth=1,2,3 --epochs 3`, small data) measures how
long the sweep runs once its manifest exists; then each try starts the same sweep in a fresh
folder, waits for its manifest, sends SIGINT after a random delay within that span and checks:
- exit code 130 (a sweep that ended before its signal was due is not a try: it is drawn again);
  a signal that lands after the sweep recorded everything, while the interpreter shuts down, kills
  the process by SIGINT (returncode -2, which a shell reports as 130): allowed, and tallied apart;
- every manifest entry is completed, interrupted or queued, in that order along the groups, with
  at most one group interrupted (the one that was training); with --jobs N (N worker processes) in
  any order (groups in training end in any order, and one whose worker was signalled before it
  began training stays queued), at most N interrupted;
- with --jobs N, no worker process of the sweep is alive a second after it exited (the processes
  whose parent it was when the signal was sent);
- each run folder's summary.json agrees with the manifest (never left `running`);
- nothing on stderr says "Traceback" or "Exception ignored".
Prints one line per try and a tally; exits 1 if any try broke a rule.
"""

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from random_moment import alive_at_random_moment

SWEEP = ["sweep", "--grid", "depth=1,2,3", "--epochs", "3", "--width", "16", "--set", "data.train_limit=3000",
         "--set", "data.validation_size=500", "--set", "data.test_limit=500", "--set", "alignment.probe_size=32"]
ORDER = {"completed": 0, "interrupted": 1, "queued": 2}


def start(folder: Path, jobs: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bioprop_cli", *SWEEP, "--jobs", str(jobs), "--results-dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def children_of(pid: int) -> set[int]:
    """The processes whose parent is `pid` (Linux's /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for_manifest(proc: subprocess.Popen, folder: Path) -> float:
    while proc.poll() is None and not list(folder.glob("default/*/manifest.json")):
        time.sleep(0.01)
    return time.perf_counter()


def problems(rc: int, stderr: str, folder: Path, jobs: int = 1) -> tuple[str, list[str]]:
    """(the manifest's statuses in grid order, what is wrong)."""
    wrong = [f"stderr: {word}" for word in ("Traceback", "Exception ignored") if word in stderr]
    (manifest_path,) = folder.glob("default/*/manifest.json")
    runs = json.loads(manifest_path.read_text())["runs"]
    statuses = [runs[f"depth-{d}-s0"]["status"] for d in (1, 2, 3)]
    if any(s not in ORDER for s in statuses):
        wrong.append(f"statuses not completed, interrupted or queued: {statuses}")
    elif jobs == 1 and [ORDER[s] for s in statuses] != sorted(ORDER[s] for s in statuses):
        wrong.append(f"statuses out of order: {statuses}")
    if statuses.count("interrupted") > jobs:
        wrong.append(f"more than {jobs} group(s) interrupted")
    finished = statuses == ["completed"] * 3
    if rc != 130 and not (rc == -signal.SIGINT and finished):
        wrong.append(f"exit code {rc}, expected 130")
    for name, entry in runs.items():
        summary = manifest_path.parent / entry["run_dir"] / "summary.json"
        if summary.exists() and json.loads(summary.read_text())["status"] != entry["status"]:
            wrong.append(f"{name}: summary says {json.loads(summary.read_text())['status']}, manifest {entry['status']}")
        if not summary.exists() and entry["status"] != "queued":
            wrong.append(f"{name}: {entry['status']} without a summary")
    return " ".join(statuses), wrong


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", default="/tmp/sigint-sweep")
    parser.add_argument("--jobs", type=int, default=1, help="the sweep's --jobs")
    args = parser.parse_args()
    # children inherit an ignored SIGINT (a background job of a script), and bioprop respects it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    root = Path(args.results_dir)
    root.mkdir(parents=True, exist_ok=False)
    rng = random.Random(args.seed)

    calibration = start(root / "calibration", args.jobs)
    began = wait_for_manifest(calibration, root / "calibration")
    assert calibration.wait() == 0, calibration.stderr.read().decode()
    span = time.perf_counter() - began
    print(f"uninterrupted sweep: {span:.1f} s from its manifest to its exit")

    tally, failures, late = Counter(), 0, 0
    for i in range(args.tries):
        proc, folder, delay, redraws = alive_at_random_moment(
            lambda r: (start(root / f"try-{i:02d}-{r}", args.jobs), root / f"try-{i:02d}-{r}"), rng, span, wait_for_manifest)
        late += redraws
        workers = children_of(proc.pid)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=300)
        time.sleep(1.0)
        statuses, wrong = problems(rc, proc.stderr.read().decode(), folder, args.jobs)
        wrong += [f"worker {pid} alive after the sweep exited" for pid in workers if alive(pid)]
        tally[(rc, statuses)] += 1
        failures += bool(wrong)
        print(f"try {i:2d}: SIGINT {delay:5.2f} s after the manifest ({len(workers)} workers) -> exit {rc}, {statuses}"
              + (f"  PROBLEMS: {'; '.join(wrong)}" if wrong else ""))
    print("tally (exit code, statuses of depth 1, 2, 3):")
    for (rc, statuses), n in sorted(tally.items()):
        print(f"  {n:2d} x exit {rc}: {statuses}")
    print(f"{args.tries - failures}/{args.tries} tries kept every rule ({late} sweeps ended before their signal, drawn again)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
