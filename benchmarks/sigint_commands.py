"""Ctrl-C at random moments of every long command: each try must exit 130, print no traceback and
leave no run `running`.

    BIOPROP_DATA_DIR=/path/to/mnist python benchmarks/sigint_commands.py --tries 20 --results-dir /tmp/sigint-commands

For each command (tiny settings: seconds to a minute each), each try starts it in a fresh results
folder and sends SIGINT after a delay drawn uniformly from [0, --window] seconds after the process
started: start-up and imports, compilation, measurement and training are all hit. A command that
ended before its signal was due is not a try: it is drawn again (and counted). `--double` sends a
second SIGINT 50 ms after the first. A try keeps every rule when:
- the exit code is 130 (not 139, a crash; not 0, a swallowed Ctrl-C; not 1, a traceback); a
  signal that lands in the interpreter's own start-up (before any of bioprop's code runs) or after
  the command ended (launch.py gives SIGINT its default action back) kills the process by SIGINT
  with nothing printed (returncode -2, which a shell reports as 130): allowed, and tallied apart;
- stderr says none of "Traceback", "Exception ignored", "Fatal Python error";
- no summary.json under its results folder says `running` (a run left behind); not checked with
  --double, whose second Ctrl-C exits at once without recording.
Prints one line per try and a tally per command; exits 1 if any try broke a rule.
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

SMALL = ["--set", "data.train_limit=1500", "--set", "data.validation_size=300", "--set", "data.test_limit=300"]
COMMANDS = {
    "train": ["train", "--rule", "fa", "--depth", "1", "--epochs", "3", "--width", "16", "--no-progress", *SMALL],
    "sweep": ["sweep", "--grid", "depth=1,2", "--epochs", "3", "--width", "16", "--set", "alignment.probe_size=32", *SMALL],
    "reproduce": ["reproduce", "--quick", "lillicrap-2016"],
    "sweep-beta-train": ["sweep", "beta", "--train", "--values", "0.1,0.5", "--epochs", "2", "--width", "16", *SMALL],
    "conditions": ["conditions", "--rule", "ep", "--depth", "1", "--width", "16", "--probe-size", "32"],
    "bench": ["bench", "--rules", "fa", "--repeats", "2", "--synthetic"],
}
BAD_WORDS = ("Traceback", "Exception ignored", "Fatal Python error")


def start(command: list[str], folder: Path) -> subprocess.Popen:
    folder.mkdir(parents=True)
    extra = [] if command[0] in ("bench", "conditions") else ["--results-dir", str(folder)]
    return subprocess.Popen([sys.executable, "-m", "bioprop_cli", *command, *extra], cwd=folder,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def problems(rc: int, stderr: str, folder: Path, double: bool) -> list[str]:
    wrong = [f"stderr: {word}" for word in BAD_WORDS if word in stderr]
    if rc != 130 and not (rc == -signal.SIGINT and not stderr):
        wrong.append(f"exit code {rc}")
    if not double:
        for path in folder.rglob("summary.json"):
            try:
                status = json.loads(path.read_text()).get("status")
            except (OSError, json.JSONDecodeError):
                status = "unreadable"
            if status in ("running", "unreadable"):
                wrong.append(f"{path.relative_to(folder)}: {status}")
    return wrong


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--window", type=float, default=15.0, help="seconds after the start within which SIGINT lands")
    parser.add_argument("--commands", default="sweep,reproduce,sweep-beta-train,conditions,bench")
    parser.add_argument("--double", action="store_true", help="a second SIGINT 50 ms after the first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", default="/tmp/sigint-commands")
    args = parser.parse_args()
    # children inherit an ignored SIGINT (a background job of a script), and bioprop respects it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    root = Path(args.results_dir)
    root.mkdir(parents=True, exist_ok=False)
    rng = random.Random(args.seed)
    failures = 0
    for name in args.commands.split(","):
        tally, late, broken = Counter(), 0, 0
        for i in range(args.tries):
            proc, folder, delay, redraws = alive_at_random_moment(
                lambda r: (start(COMMANDS[name], root / name / f"try-{i:02d}-{r}"), root / name / f"try-{i:02d}-{r}"),
                rng, args.window)
            late += redraws
            proc.send_signal(signal.SIGINT)
            if args.double:
                time.sleep(0.05)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            sent = time.perf_counter()
            rc = proc.wait(timeout=600)
            stderr = proc.stderr.read().decode()
            (folder / "stderr.txt").write_text(stderr)
            wrong = problems(rc, stderr, folder, args.double)
            tally[f"exit {rc}" + (" (broke a rule)" if wrong else "")] += 1
            broken += bool(wrong)
            print(f"{name} try {i:2d}: SIGINT {delay:5.2f} s after start -> exit {rc} "
                  f"{time.perf_counter() - sent:5.1f} s later" + (f"  PROBLEMS: {'; '.join(wrong)}" if wrong else ""),
                  flush=True)
        failures += broken
        print(f"{name}: {args.tries - broken}/{args.tries} kept every rule; {dict(tally)}; "
              f"{late} runs ended before their signal (drawn again)", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
