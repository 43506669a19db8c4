"""What logging every 10 steps and checkpointing every epoch cost (issue 24's budget: at most 3% of the epoch time).

The same run, interleaved over repeats: `off` (log.every_steps 0; checkpoint_every null: last.npz only when the
run stops), `on` (log.every_steps 10: a steps.jsonl line per 10 steps, written at the epoch's end;
checkpoint_every 1: last.npz every epoch) and, with --modes, `on-chunked` (also train.chunk_steps 10: the epoch
called in chunks of 10 steps, each logged as it ends), `steps-only`, `checkpoints-only`. best.npz is written at each new best
validation accuracy in both. An epoch's time is the wall time between consecutive epochs' records (training,
evaluation, alignment measurement, the writes), epochs 2..N (the first includes compilation), in wall time and
in the process's CPU time (all threads: less moved by other processes on a shared machine than wall time);
the figures are medians over epochs and repeats.

    python benchmarks/long_run_overhead.py mlp --repeats 3 --epochs 4
    python benchmarks/long_run_overhead.py ep-cnn --repeats 1 --epochs 3 --train-limit 2000 --modes off on-chunked
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bioprop_cli.config import load_config
from bioprop_cli.datasets import load_dataset
from bioprop_cli.runs import RunWriter
from bioprop_cli.train import train

SETUPS = {
    "mlp": (None, []),  # the default run: configs/default.yaml
    # smaller splits than the experiment's, for a benchmark that fits a shared machine (with --train-limit); no
    # alignment measurement (its exact-gradient reference, 1000 settling steps, would dwarf the epoch and so the overhead)
    "ep-cnn": ("configs/experiments/ep_cnn_mnist.yaml", [("data.validation_size", 500), ("data.test_limit", 1000),
                                                         ("alignment.enabled", False)]),
}
MODES = {
    "off": [("log.every_steps", 0), ("train.checkpoint_every", None)],
    "on": [("log.every_steps", 10), ("train.checkpoint_every", 1)],
    "steps-only": [("log.every_steps", 10), ("train.checkpoint_every", None)],  # --modes: the two parts apart
    "checkpoints-only": [("log.every_steps", 0), ("train.checkpoint_every", 1)],
    "on-chunked": [("log.every_steps", 10), ("train.chunk_steps", 10), ("train.checkpoint_every", 1)],  # live inside epochs
}


def differences(values: list[float]) -> list[float]:
    return [b - a for a, b in zip(values, values[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("setup", choices=sorted(SETUPS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    parser.add_argument("--modes", nargs="+", default=["off", "on"], choices=sorted(MODES))
    args = parser.parse_args()
    path, extra = SETUPS[args.setup]
    base = [*extra, ("train.epochs", args.epochs), ("data.train_limit", args.train_limit)]
    config = load_config(path, base)
    dataset = load_dataset(config.data.dataset, config.data.data_dir)
    times = {mode: [] for mode in args.modes}
    cpu = {mode: [] for mode in args.modes}
    load = []
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for mode in args.modes:
                overrides = MODES[mode]
                run_dir = Path(folder) / f"{mode}-{repeat}"
                run_dir.mkdir()
                clocks = []  # (wall, CPU) as each epoch is reported
                summary = train(load_config(path, base + overrides), dataset, RunWriter(run_dir),
                                lambda report: clocks.append((time.perf_counter(), time.process_time())))
                assert summary["status"] == "completed", summary["status"]
                walls, cpus = differences([c[0] for c in clocks]), differences([c[1] for c in clocks])
                times[mode] += walls
                cpu[mode] += cpus
                load.append(os.getloadavg()[0])
                print(f"repeat {repeat} {mode}: epoch wall {[round(t, 2) for t in walls]} s, "
                      f"CPU {[round(t, 2) for t in cpus]} s, load {load[-1]:.1f}", flush=True)
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    cpu_medians = {mode: statistics.median(values) for mode, values in cpu.items()}
    result = {
        "setup": args.setup, "epochs": args.epochs, "repeats": args.repeats, "train_limit": args.train_limit,
        "steps_per_epoch": summary["steps_per_epoch"], "median_epoch_s": medians,
        "overhead_percent": {m: 100 * (medians[m] / medians["off"] - 1) for m in medians if m != "off"},
        "median_epoch_cpu_s": cpu_medians,
        "cpu_overhead_percent": {m: 100 * (cpu_medians[m] / cpu_medians["off"] - 1) for m in cpu_medians if m != "off"},
        "epoch_times_s": times,
        "epoch_cpu_s": cpu,
        "load_average_1min": load, "cpus": os.cpu_count(),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "epoch_times_s"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
