"""Ctrl-C at random moments of a sweep: every try must exit 130 and leave a resumable manifest.

    BIOPROP_DATA_DIR=/path/to/mnist python benchmarks/sigint_sweep.py --tries 20 --results-dir /tmp/sigint-sweep

One uninterrupted sweep (`bioprop sweep --grid depth=1,2,3 --epochs 3`, small data) measures how
long the sweep runs once its manifest exists; then each try starts the same sweep in a fresh
folder, waits for its manifest, sends SIGINT after a random delay within that span and checks:
- exit code 130 (a sweep that ended before its signal was due is not a try: it is drawn again);
  a signal that lands after the sweep recorded everything, while the interpreter shuts down, kills
  the process by SIGINT (returncode -2, which a shell reports as 130): allowed, and tallied apart;
- every manifest entry is completed, interrupted or queued, in that order along the groups, with
  at most one group interrupted (the one that was training);
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


def start(folder: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bioprop_cli", *SWEEP, "--results-dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for_manifest(proc: subprocess.Popen, folder: Path) -> float:
    while proc.poll() is None and not list(folder.glob("default/*/manifest.json")):
        time.sleep(0.01)
    return time.perf_counter()


def problems(rc: int, stderr: str, folder: Path) -> tuple[str, list[str]]:
    """(the manifest's statuses in grid order, what is wrong)."""
    wrong = [f"stderr: {word}" for word in ("Traceback", "Exception ignored") if word in stderr]
    (manifest_path,) = folder.glob("default/*/manifest.json")
    runs = json.loads(manifest_path.read_text())["runs"]
    statuses = [runs[f"depth-{d}-s0"]["status"] for d in (1, 2, 3)]
    if any(s not in ORDER for s in statuses) or [ORDER[s] for s in statuses] != sorted(ORDER[s] for s in statuses):
        wrong.append(f"statuses out of order: {statuses}")
    if statuses.count("interrupted") > 1:
        wrong.append("more than one group interrupted")
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
    args = parser.parse_args()
    # children inherit an ignored SIGINT (a background job of a script), and bioprop respects it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    root = Path(args.results_dir)
    root.mkdir(parents=True, exist_ok=False)
    rng = random.Random(args.seed)

    calibration = start(root / "calibration")
    began = wait_for_manifest(calibration, root / "calibration")
    assert calibration.wait() == 0, calibration.stderr.read().decode()
    span = time.perf_counter() - began
    print(f"uninterrupted sweep: {span:.1f} s from its manifest to its exit")

    tally, failures, late = Counter(), 0, 0
    for i in range(args.tries):
        proc, folder, delay, redraws = alive_at_random_moment(
            lambda r: (start(root / f"try-{i:02d}-{r}"), root / f"try-{i:02d}-{r}"), rng, span, wait_for_manifest)
        late += redraws
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=300)
        statuses, wrong = problems(rc, proc.stderr.read().decode(), folder)
        tally[(rc, statuses)] += 1
        failures += bool(wrong)
        print(f"try {i:2d}: SIGINT {delay:5.2f} s after the manifest -> exit {rc}, {statuses}"
              + (f"  PROBLEMS: {'; '.join(wrong)}" if wrong else ""))
    print("tally (exit code, statuses of depth 1, 2, 3):")
    for (rc, statuses), n in sorted(tally.items()):
        print(f"  {n:2d} x exit {rc}: {statuses}")
    print(f"{args.tries - failures}/{args.tries} tries kept every rule ({late} sweeps ended before their signal, drawn again)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
