"""Conv EP against Laborieux et al.'s own code (their P_CNN), side by side on their MNIST conv net: 1 -> 32 conv 5x5,
max pool 2, 32 -> 64 conv 5x5, max pool 2, 1024 -> 10; hard sigmoid, mean-squared cost, one-sided beta 0.4,
T1 200, T2 10, batch 100, Adam 5e-5 / 1e-5 / 8e-6 (their check/train_mnist_cnn.sh;
configs/experiments/ep_cnn_mnist_laborieux.yaml says every setting and its source). Each side runs in its own
process pinned to one core with one thread (taskset -c CORE; OMP_NUM_THREADS=1, torch.set_num_threads(1),
XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1); the sides alternate, `--rounds`
times. Reported: training examples/s by wall time and by CPU time (time.process_time around the timed batches:
what a loaded machine steals from the wall clock does not count), CPU s per batch, bioprop's ratio, the load.

    BIOPROP_DATA_DIR=/work/shared/datasets/mnist python benchmarks/laborieux_cnn.py --rounds 3 --batches 5

bioprop's side (`--side bioprop`, a child process) times the CLI's compiled epoch (bioprop_cli.train.build_program,
as `bioprop train` runs it) of `--batches` steps on the first batches x 100 training images, after a compiling
run and a warm-up epoch. Their side is benchmarks/laborieux_their_cnn.py run by `--their-python` with their
model_utils.py (commit 93660ed) imported from `--their-dir`: `--batches` batches after one warm-up batch.
`--free-steps/--nudged-steps` shorten both sides' phases alike (T1, T2) for a quicker look.

Their side's setup (a venv with torch's CPU build, and their model_utils.py, unmodified, from a clone of
https://github.com/Laborieux-Axel/Equilibrium-Propagation):

    python3 -m venv /work/venvs/laborieux && /work/venvs/laborieux/bin/pip install torch==2.13.0 numpy
    mkdir -p /work/venvs/laborieux/their
    git -C Equilibrium-Propagation show 93660ed:model_utils.py > /work/venvs/laborieux/their/model_utils.py

(torch 2.13.0's CPU wheel is in this machine's pip cache; other versions would fetch a CUDA build.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from pinned import run_pinned, thread_env

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "configs" / "experiments" / "ep_cnn_mnist_laborieux.yaml"
THEIR_DRIVER = HERE / "laborieux_their_cnn.py"


def bioprop_side(batches: int, free_steps: int, nudged_steps: int) -> dict:
    """Compile the CLI's epoch of `batches` steps, run it once, then time one epoch."""
    import jax

    from bioprop_cli.bench import compile_rule
    from bioprop_cli.config import load_config
    from bioprop_cli.datasets import load_dataset
    from bioprop_cli.splits import make_splits

    probe = load_config(CONFIG, [])
    overrides = [("alignment.enabled", False), ("ep.free_steps", free_steps), ("ep.nudged_steps", nudged_steps),
                 ("data.train_limit", batches * probe.train.batch_size + probe.data.validation_size)]
    config = load_config(CONFIG, overrides)
    dataset = load_dataset(config.data.dataset, os.environ.get("BIOPROP_DATA_DIR"), config.data)
    splits = make_splits(config, dataset, keep_uint8=config.data.storage == "uint8")
    entry = compile_rule(config, splits)  # bench's compiled epoch, warmed up
    wall, cpu = time.perf_counter(), time.process_time()
    entry["run_epoch"]()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    steps, examples = entry["steps_per_epoch"], entry["examples"]
    compile_s = entry["compile_s"]
    return {"side": "bioprop", "jax": jax.__version__, "batches": steps, "batch": config.train.batch_size,
            "T1": config.ep.free_steps, "T2": config.ep.nudged_steps, "wall_s": wall, "cpu_s": cpu,
            "examples_per_s": examples / wall, "examples_per_cpu_s": examples / cpu, "cpu_s_per_batch": cpu / steps,
            "compile_s": compile_s}


def run_side(side: str, args) -> dict:
    phases = ["--free-steps", str(args.free_steps), "--nudged-steps", str(args.nudged_steps)]
    if side == "bioprop":
        command = [sys.executable, str(Path(__file__).resolve()), "--side", "bioprop", "--batches", str(args.batches)]
        command += phases
    else:
        command = [args.their_python, str(THEIR_DRIVER), "--their-dir", args.their_dir, "--threads", "1",
                   "--batches", str(args.batches), "--T1", str(args.free_steps), "--T2", str(args.nudged_steps)]
    load = os.getloadavg()[0]
    result = run_pinned(str(args.core), command, thread_env(1), side)
    result["load_before"] = load
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=5, help="timed batches (of 100) per run")
    parser.add_argument("--free-steps", type=int, default=200)
    parser.add_argument("--nudged-steps", type=int, default=10)
    parser.add_argument("--core", type=int, default=1, help="the core both sides are pinned to")
    parser.add_argument("--their-python", default="/work/venvs/laborieux/bin/python")
    parser.add_argument("--their-dir", default="/work/venvs/laborieux/their",
                        help="the directory holding their model_utils.py (commit 93660ed)")
    parser.add_argument("--side", choices=["bioprop"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(bioprop_side(args.batches, args.free_steps, args.nudged_steps)))
        return

    print("load before:", os.getloadavg(), flush=True)
    results = []
    for i in range(args.rounds):
        for side in (("bioprop", "laborieux") if i % 2 == 0 else ("laborieux", "bioprop")):
            r = run_side(side, args)
            print(json.dumps(r), flush=True)
            results.append(r)
    print("load after:", os.getloadavg())
    print()
    median = lambda side, key: statistics.median(r[key] for r in results if r["side"] == side)
    print("| side | examples/s (wall) | examples/CPU-s | CPU s per batch | load (1 min) before each run |")
    print("|---|---|---|---|---|")
    for side in ("bioprop", "laborieux"):
        loads = ", ".join(f"{r['load_before']:.1f}" for r in results if r["side"] == side)
        print(f"| {side} | {median(side, 'examples_per_s'):.1f} | {median(side, 'examples_per_cpu_s'):.1f} | "
              f"{median(side, 'cpu_s_per_batch'):.3f} | {loads} |")
    ratio_wall = median("bioprop", "examples_per_s") / median("laborieux", "examples_per_s")
    ratio_cpu = median("bioprop", "examples_per_cpu_s") / median("laborieux", "examples_per_cpu_s")
    print(f"\nbioprop / laborieux (medians): {ratio_wall:.2f}x by wall time, {ratio_cpu:.2f}x by CPU time")


if __name__ == "__main__":
    main()
