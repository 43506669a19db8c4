"""Trains every rule at the given depths with the default config and prints a Markdown table.

    python benchmarks/accuracy_table.py --depths 2,6 --results-dir results
(the runs go to <results-dir>/accuracy-table/; each is an ordinary `bioprop train` run).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bioprop_cli.runs import read_jsonl

RULES = ["bp", "fa", "dfa", "usf", "frsf", "brsf"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--depths", default="2,6")
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--experiment", default="accuracy-table")
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    rules = args.rules.split(",")
    rows = {}
    for depth in depths:
        for rule in rules:
            before = set((Path(args.results_dir) / args.experiment).glob("*"))
            cmd = [sys.executable, "-m", "bioprop_cli", "train", "--rule", rule, "--depth", str(depth), "--no-progress",
                   "--results-dir", args.results_dir, "--experiment", args.experiment]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            (run_dir,) = set((Path(args.results_dir) / args.experiment).glob("*")) - before
            summary = json.loads((run_dir / "summary.json").read_text())
            metrics = read_jsonl(run_dir / "metrics.jsonl")
            rows[(rule, depth)] = (summary, metrics)
            print(f"{rule} depth {depth}: test {summary['test_accuracy']:.4f} ({run_dir})", file=sys.stderr)
    print("| rule | " + " | ".join(f"depth {d}: test acc. | angle" for d in depths) + " | time (s) |")
    print("|---|" + "---|---|" * len(depths) + "---|")
    for rule in rules:
        cells = []
        for d in depths:
            s, m = rows[(rule, d)]
            angle = s.get("final_mean_update_angle")
            cells += [f"{100 * s['test_accuracy']:.2f}%", "-" if angle is None else f"{angle:.1f}°"]
        times = "/".join(f"{rows[(rule, d)][0]['wall_time_s']:.0f}" for d in depths)
        print(f"| {rule} | " + " | ".join(cells) + f" | {times} |")


if __name__ == "__main__":
    main()
