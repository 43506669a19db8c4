"""Seeds trained together (one vmapped program) against the same seeds trained one by one.

    python benchmarks/batched_seeds.py --seeds 8 --rule fa --depth 5 --results-dir /tmp/bench-seeds

Both sides are real command lines, timed from outside (process start, data loading and
compilation included):
- separate: N processes `bioprop train --seed s --epochs 1`, one after another (`--separate K`:
  only the first K, and the N-process figures are K's scaled by N/K);
- together: one process `bioprop sweep seed --values 0..N-1 --epochs 1` (all N seeds as one program).
The per-epoch times without compilation come from the runs' own summaries (train_time_s).
Prints a Markdown table and writes <results-dir>/batched_seeds.json; also the ratio of the N
seeds together to one seed alone (the GPU target: at most 2 for 8 seeds).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def run(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bioprop_cli", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def summaries(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("summary.json"))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--rule", default="fa")
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--results-dir", default="results/bench-seeds")
    parser.add_argument("--separate", type=int, default=None, help="seeds trained alone (default: all N)")
    args = parser.parse_args()
    n_alone = min(args.separate or args.seeds, args.seeds)
    out = Path(args.results_dir)
    common = ["--rule", args.rule, "--depth", str(args.depth), "--width", str(args.width), "--epochs", str(args.epochs)]

    separate_wall = sum(
        run(["train", *common, "--seed", str(s), "--no-progress", "--results-dir", str(out), "--experiment", "separate"])
        for s in range(n_alone)
    )
    values = ",".join(str(s) for s in range(args.seeds))
    together_wall = run(["sweep", "seed", "--values", values, *common, "--results-dir", str(out), "--experiment", "together"])

    alone, batched = summaries(out / "separate"), summaries(out / "together")
    assert len(alone) == n_alone and len(batched) == args.seeds and all(s["runs_trained_together"] == args.seeds for s in batched)
    result = {
        "config": f"{args.rule} 784-{args.width}x{args.depth}-10, {args.epochs} epoch(s), {args.seeds} seeds",
        "device": batched[0]["device"],
        "seeds_trained_alone": n_alone,
        "separate_wall_s": separate_wall * args.seeds / n_alone,
        "together_wall_s": together_wall,
        "separate_train_s": sum(s["train_time_s"] for s in alone) * args.seeds / n_alone,
        "together_train_s": batched[0]["train_time_s"],
        "separate_compile_s": sum(s["compile_time_s"] for s in alone) * args.seeds / n_alone,
        "together_compile_s": batched[0]["compile_time_s"],
    }
    result["wall_ratio"] = together_wall / result["separate_wall_s"]
    result["train_ratio"] = result["together_train_s"] / result["separate_train_s"]
    # the GPU target: N seeds together against ONE seed alone (epochs only, mean of the separate runs)
    result["together_vs_one_seed"] = result["together_train_s"] / (result["separate_train_s"] / args.seeds)
    (out / "batched_seeds.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['config']} on {result['device']['kind']} ({result['device']['platform']})")
    print("| | separate (N processes) | together (one program) | ratio |")
    print("|---|---|---|---|")
    print(f"| wall clock, process start and compilation included (s) | {result['separate_wall_s']:.1f} | {together_wall:.1f} | {result['wall_ratio']:.2f} |")
    print(f"| training epochs only (s) | {result['separate_train_s']:.2f} | {result['together_train_s']:.2f} | {result['train_ratio']:.2f} |")
    print(f"| compilation (s) | {result['separate_compile_s']:.2f} | {result['together_compile_s']:.2f} | |")
    print(f"{args.seeds} seeds together take {result['together_vs_one_seed']:.2f} times one seed alone (epochs only)")


if __name__ == "__main__":
    main()
