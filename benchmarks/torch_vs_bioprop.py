"""bioprop against the PyTorch reference (benchmarks/torch_reference.py), side by side in one invocation:
LeNet-5 on MNIST (configs/experiments/lenet_mnist.yaml) and the benchmark MLP (784-256x5-10, batch 128), rules bp,
fa and usf, each process pinned to one core with one thread (taskset -c 0; OMP_NUM_THREADS=1,
torch.set_num_threads(1), XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1) and
on two cores with two threads. The two sides alternate, `--rounds` times; the table gives the median examples/s
by wall time and by CPU time (time.process_time around the timed steps: what a loaded machine steals from the
wall clock does not count) and bioprop's ratio to torch.

    BIOPROP_DATA_DIR=/work/shared/datasets/mnist python benchmarks/torch_vs_bioprop.py \
        --nets lenet,mlp --rules bp,fa,usf --threads 1,2 --rounds 3 --steps 300

bioprop's side (`--side bioprop`, run by this script in a child process) times the CLI's compiled epoch
(bioprop_cli.train.build_program, as `bioprop train` runs it) after a compiling run, on the first
steps x batch + 5000 training images (so that an epoch is `--steps` steps; 0: the whole split); torch's side
times the same number of steps after as many warm-up steps as bioprop's compiling epoch has (so that the two
`last_loss` values are after the same number of steps; each side at the rule's learning rate from the config).
Needs the torch venv (docs/speed.md).
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
TRAIN_STEPS = {"lenet": 55_000 // 64, "mlp": 55_000 // 128}  # one epoch of bioprop's default training split
LENET_CONFIG = HERE.parent / "configs" / "experiments" / "lenet_mnist.yaml"


def lenet_overrides(rule: str) -> list[tuple[str, object]]:
    """The config of `rule`'s point of lenet_mnist.yaml's sweep: the rule and what sweep.where sets for it (its
    learning rate), the one source of both sides' rates."""
    import yaml

    from bioprop_cli.experiment.grid import read_where

    sets: dict = {}
    for entry in read_where(yaml.safe_load(LENET_CONFIG.read_text()).get("sweep", {}).get("where")):
        if entry["when"] == {"rule": rule}:
            sets.update(entry["set"])
    return [("rule", rule)] + list(sets.items())


def lenet_flags(rule: str) -> list[str]:
    """torch_reference.py's flags for the config's rate and network (linear_fc1)."""
    from bioprop_cli.config import load_config

    config = load_config(LENET_CONFIG, lenet_overrides(rule))
    return ["--lr", str(config.optimizer.lr)] + (["--linear-fc1"] if config.model.lenet.linear_fc1 else [])


def bioprop_side(net: str, rule: str, steps: int) -> dict:
    """Compile the CLI's epoch for `rule` on `net`, run it once, then time one epoch."""
    import jax

    from bioprop_cli.bench import BENCH_OVERRIDES
    from bioprop_cli.config import load_config
    from bioprop_cli.datasets import load_dataset
    from bioprop_cli.splits import derive_keys, make_splits, probe_batch
    from bioprop_cli.train import build_program

    if net == "lenet":
        overrides, path = lenet_overrides(rule), LENET_CONFIG
    else:
        overrides, path = [("rule", rule)] + BENCH_OVERRIDES, None
    probe = load_config(path, overrides)
    if steps:
        overrides.append(("data.train_limit", steps * probe.train.batch_size + probe.data.validation_size))
    config = load_config(path, overrides)
    dataset = load_dataset(config.data.dataset, os.environ.get("BIOPROP_DATA_DIR"), config.data)
    splits = make_splits(config, dataset, keep_uint8=config.data.storage == "uint8")
    program = build_program(config, splits.x_train.shape[0], splits.x_train.shape[1], splits.pixels)
    keys = derive_keys(config.seed)
    probe_x, probe_y, _ = probe_batch(config, splits, keys)
    state = program.init(config.seed)
    args = (splits.x_train, splits.y_train, probe_x, probe_y, keys)
    epoch = program.epoch.lower(state, *args, 0).compile()
    state, _ = jax.block_until_ready(epoch(state, *args, 0))  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    state, out = jax.block_until_ready(epoch(state, *args, 1))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    examples = program.steps_per_epoch * config.train.batch_size
    return {"side": "bioprop", "jax": jax.__version__, "net": net, "rule": rule, "steps": program.steps_per_epoch,
            "batch": config.train.batch_size, "wall_s": wall, "cpu_s": cpu, "examples_per_s": examples / wall,
            "examples_per_cpu_s": examples / cpu, "last_loss": float(out["loss"][-1])}


def run_side(side: str, net: str, rule: str, threads: int, steps: int, torch_python: str, first_core: int) -> dict:
    cores = ",".join(str(first_core + c) for c in range(threads))
    if side == "bioprop":
        command = [sys.executable, str(Path(__file__).resolve()), "--side", "bioprop", "--nets", net, "--rules", rule,
                   "--steps", str(steps)]
    else:
        command = [torch_python, str(HERE / "torch_reference.py"), "--net", net, "--rule", rule, "--threads",
                   str(threads), "--steps", str(steps or 0), "--warmup", str(steps or TRAIN_STEPS[net])]
        command += lenet_flags(rule) if net == "lenet" else []
    result = run_pinned(cores, command, thread_env(threads), f"{side} {net} {rule}")
    result["threads"] = threads
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", default="lenet,mlp")
    parser.add_argument("--rules", default="bp,fa,usf")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per run (0: a whole epoch)")
    parser.add_argument("--first-core", type=int, default=0, help="the cores pinned: first-core onwards")
    parser.add_argument("--torch-python", default="/work/venvs/torch/bin/python")
    parser.add_argument("--side", choices=["bioprop"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(bioprop_side(args.nets, args.rules, args.steps)))
        return

    print("load before:", os.getloadavg())
    results = []
    cases = [(n, r, int(t)) for n in args.nets.split(",") for r in args.rules.split(",")
             for t in args.threads.split(",")]
    for i in range(args.rounds):
        for net, rule, threads in cases:
            sides = ("bioprop", "torch") if i % 2 == 0 else ("torch", "bioprop")
            for side in sides:
                r = run_side(side, net, rule, threads, args.steps, args.torch_python, args.first_core)
                print(json.dumps(r), flush=True)
                results.append(r)
    print("load after:", os.getloadavg())
    print()
    print("| net | rule | threads | bioprop ex/s (wall) | torch ex/s (wall) | ratio (wall) | bioprop ex/CPU-s | torch ex/CPU-s | ratio (CPU) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for net, rule, threads in cases:
        def median(side, key):
            return statistics.median(r[key] for r in results
                                     if (r["side"], r["net"], r["rule"], r["threads"]) == (side, net, rule, threads))
        b, t = median("bioprop", "examples_per_s"), median("torch", "examples_per_s")
        bc, tc = median("bioprop", "examples_per_cpu_s"), median("torch", "examples_per_cpu_s")
        print(f"| {net} | {rule} | {threads} | {b:,.0f} | {t:,.0f} | {b / t:.2f} | {bc:,.0f} | {tc:,.0f} | {bc / tc:.2f} |")


if __name__ == "__main__":
    main()
