"""kill -9 at random moments of a sweep or a reproduce: the same command again must finish the work,
and its results must equal those of a run that was never killed.

    BIOPROP_DATA_DIR=/path/to/mnist python benchmarks/kill9.py sweep --tries 10 --results-dir /tmp/kill9-sweep
    BIOPROP_DATA_DIR=/path/to/mnist python benchmarks/kill9.py reproduce --tries 10 --results-dir /tmp/kill9-reproduce

First one uninterrupted run (the reference) measures how long the command runs, from its start to
its exit. Each try then starts the same command in a fresh folder, sends SIGKILL after a random
delay within that span (a command that ended first is no try: it is drawn again), runs the same
command again to its end and checks:
- the rerun exits 0 and prints no "Traceback" or "Exception ignored";
- every manifest entry is completed, and no run folder the manifest names says `running`;
- the results equal the reference's: per run, every metric of every epoch (metrics.jsonl, times
  left out) and the summary's accuracies; for reproduce, also reproduce.json's rows (our numbers,
  means, verdicts) of the rerun's report.
The groups of these commands are one run each (depth 1, 2, 3; rule bp, fa: different programs),
so a resumed group trains exactly the runs it trained before, and equality is exact.
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

SMALL = ["--set", "data.train_limit=2000", "--set", "data.validation_size=500", "--set", "data.test_limit=500",
         "--set", "alignment.probe_size=32"]
COMMANDS = {
    "sweep": ["sweep", "--grid", "depth=1,2,3", "--epochs", "2", "--width", "16", *SMALL],
    # the smallest preset's --quick: 784-1000-10, bp and fa, one epoch of 5,000 examples
    "reproduce": ["reproduce", "lillicrap-2016", "--quick"],
}
TIMES = ("epoch_time_s", "wall_time_s", "train_time_s", "compile_time_s", "examples_per_s", "pid", "started_at")
SUMMARY_KEYS = ("status", "epochs_completed", "test_accuracy", "test_loss", "val_accuracy", "best_val_accuracy",
                "best_val_epoch", "final_mean_update_angle", "diverged_epoch")


def command(what: str, folder: Path) -> list[str]:
    return [sys.executable, "-m", "bioprop_cli", *COMMANDS[what], "--results-dir", str(folder)]


def results(folder: Path) -> dict:
    """The numbers the command produced, by (point, seed): per epoch metrics without times, the
    summary's figures, and reproduce.json's rows (the newest report) where there is one."""
    (manifest_path,) = folder.glob("*/*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    out = {}
    for name, entry in sorted(manifest["runs"].items()):
        run = manifest_path.parent / entry["run_dir"]
        metrics = [{k: v for k, v in json.loads(line).items() if k not in TIMES}
                   for line in (run / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((run / "summary.json").read_text())
        out[name] = {"manifest": (entry["status"], entry.get("test_accuracy")), "metrics": metrics,
                     "summary": {k: summary.get(k) for k in SUMMARY_KEYS}}
    reports = sorted(manifest_path.parent.glob("reproduce*.json"), key=lambda p: p.stat().st_mtime)
    if reports:
        rows = json.loads(reports[-1].read_text())["rows"]
        out["reproduce rows"] = [{k: row[k] for k in ("quantity", "where", "ours", "mean", "std", "verdict")}
                                 for row in rows]
    return out


def problems(rc: int, stderr: str, folder: Path, reference: dict) -> list[str]:
    wrong = [f"stderr: {word}" for word in ("Traceback", "Exception ignored") if word in stderr]
    if rc != 0:
        wrong.append(f"rerun exit code {rc}: {stderr.strip().splitlines()[-1:]}")
        return wrong
    (manifest_path,) = folder.glob("*/*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    for name, entry in manifest["runs"].items():
        if entry["status"] != "completed":
            wrong.append(f"{name}: {entry['status']}")
        for run_dir in [entry["run_dir"], *entry.get("previous_run_dirs", [])]:
            summary = manifest_path.parent / run_dir / "summary.json"
            if run_dir == entry["run_dir"] and summary.exists() and json.loads(summary.read_text())["status"] == "running":
                wrong.append(f"{name}: {run_dir} left running")
    mine = results(folder)
    for key in sorted(set(mine) | set(reference)):
        if mine.get(key) != reference.get(key):
            wrong.append(f"{key}: differs from the uninterrupted run")
    return wrong


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=sorted(COMMANDS))
    parser.add_argument("--tries", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", required=True)
    args = parser.parse_args()
    root = Path(args.results_dir)
    root.mkdir(parents=True, exist_ok=False)
    rng = random.Random(args.seed)

    t0 = time.perf_counter()
    reference_run = subprocess.run(command(args.what, root / "reference"), capture_output=True, text=True)
    span = time.perf_counter() - t0
    assert reference_run.returncode == 0, reference_run.stderr
    reference = results(root / "reference")
    print(f"uninterrupted {args.what}: {span:.1f} s from start to exit, {len(reference)} result entries")

    tally, failures, early = Counter(), 0, 0
    for i in range(args.tries):
        proc, folder, delay, redraws = alive_at_random_moment(
            lambda r: (subprocess.Popen(command(args.what, root / f"try-{i:02d}-{r}"), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL), root / f"try-{i:02d}-{r}"), rng, span)
        early += redraws
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        manifests = list(folder.glob("*/*/manifest.json"))
        before = "no manifest" if not manifests else " ".join(
            e["status"] for _, e in sorted(json.loads(manifests[0].read_text())["runs"].items()))
        rerun = subprocess.run(command(args.what, folder), capture_output=True, text=True)
        wrong = problems(rerun.returncode, rerun.stderr, folder, reference)
        tally[before] += 1
        failures += bool(wrong)
        print(f"try {i:2d}: SIGKILL {delay:5.2f} s after the start ({before}) -> rerun exit {rerun.returncode}"
              + (f"  PROBLEMS: {'; '.join(wrong)}" if wrong else ", results equal"))
    print("tally (manifest at the kill):")
    for before, n in sorted(tally.items()):
        print(f"  {n:2d} x {before}")
    print(f"{args.tries - failures}/{args.tries} tries: rerun completed with results equal to the uninterrupted run's "
          f"({early} commands ended before their kill, drawn again)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
