"""Training examples/s and memory of the resident and the streamed training split (data.stream: never, always).

Both train the same run (tests/train/test_streaming.py); this measures what streaming costs: each chunk's examples
gathered on the host and sent to the device (overlapping the previous chunk's compute) against the whole split
resident. Each measurement is a fresh process (its own peak memory), the two modes round-robin (a slow spell of a
shared machine falls on both). Per run: examples/s (train.py's own: summary.json's examples_per_s, the epochs' time,
compilation excluded), the process's CPU seconds over training, its peak resident memory (the host's: ru_maxrss,
which includes the dataset as read and jax itself), and the device memory: jax's peak_bytes_in_use where the device
reports memory statistics, else the largest total of the live jax arrays seen after each chunk (the CPU).

    PYTHONPATH=. BIOPROP_DATA_DIR=... python benchmarks/streaming.py [--repeats 3] [--epochs 2] [--set KEY=VALUE ...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("never", "always")


def settings(mode: str, epochs: int, sets: list[str]) -> list[tuple[str, object]]:
    from bioprop_cli.config import parse_override

    return [("data.stream", mode), ("data.normalization", "per_channel"), ("train.epochs", epochs), ("rule", "fa"),
            ("alignment.enabled", False), ("train.save_params", False), *map(parse_override, sets)]


def one_run(mode: str, epochs: int, sets: list[str]) -> dict:
    """Trains once in this process; what it measured."""
    import jax

    from bioprop_cli.config import load_config
    from bioprop_cli.datasets import load_dataset
    from bioprop_cli.splits import device_memory_bytes, feed_plan
    from bioprop_cli.runs import RunWriter
    from bioprop_cli.train import train

    config = load_config(None, settings(mode, epochs, sets))
    dataset = load_dataset(config.data.dataset, config.data.data_dir, config.data)
    host_dataset = sum(getattr(dataset, f).nbytes for f in ("x_train", "y_train", "x_test", "y_test"))
    live = [0]

    def on_progress(epoch, step, steps):
        live[0] = max(live[0], sum(a.nbytes for a in jax.live_arrays()))

    with tempfile.TemporaryDirectory() as folder:  # the run's files, as bioprop train writes them
        cpu, wall = time.process_time(), time.perf_counter()
        summary = train(config, dataset, RunWriter(Path(folder)), on_progress=on_progress)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    stats = jax.devices()[0].memory_stats()
    return {
        "mode": mode, "plan": feed_plan(config, dataset, device_memory_bytes()).line(),
        "examples_per_s": summary["examples_per_s"], "train_time_s": summary["train_time_s"],
        "compile_time_s": summary["compile_time_s"], "process_cpu_s": cpu, "process_wall_s": wall,
        "test_accuracy": summary["test_accuracy"], "host_dataset_bytes": host_dataset,
        "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "device_peak_bytes": stats.get("peak_bytes_in_use") if stats else None,
        "device_live_arrays_peak_bytes": live[0], "device": jax.devices()[0].device_kind,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=None)
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # a measurement process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one, args.epochs, args.sets)))
        return
    runs = []
    for _ in range(args.repeats):
        for mode in MODES:
            command = [sys.executable, __file__, "--one", mode, "--epochs", str(args.epochs),
                       *(f"--set={s}" for s in args.sets)]
            run = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            runs.append(run)
            print(f"{mode:6s} {run['examples_per_s']:9,.0f} examples/s  cpu {run['process_cpu_s']:6.1f} s  "
                  f"train {run['train_time_s']:6.1f} s  host peak {run['host_peak_rss_bytes'] / 2**20:7.1f} MiB  "
                  f"device {(run['device_peak_bytes'] or run['device_live_arrays_peak_bytes']) / 2**20:7.1f} MiB  "
                  f"test acc {run['test_accuracy']:.4f}", flush=True)
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        print(mine[0]["plan"])
        print(f"{mode}: examples/s {[round(r['examples_per_s']) for r in mine]}, best {max(r['examples_per_s'] for r in mine):,.0f}")
    if args.out:
        with open(args.out, "w") as file:
            json.dump(runs, file, indent=2)


if __name__ == "__main__":
    main()
