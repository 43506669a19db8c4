"""Training examples/s and memory of the two storages of the splits (data.storage: uint8, float32) on MNIST.

Both train the same runs (the same metrics, tests/test_datasets.py); this measures what uint8 storage costs or
saves: the per-step conversion inside the compiled epoch against 4x the memory of the resident training split.
The examples/s are train.py's own (summary.json's examples_per_s: the epochs' time, compilation excluded); the
device bytes are those of the splits' arrays (x and y of every split), the host bytes those of the dataset's
arrays as read.

    PYTHONPATH=. BIOPROP_DATA_DIR=... python benchmarks/storage.py [--repeats 3] [--epochs 2] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import jax

from bioprop_cli.config import load_config
from bioprop_cli.datasets import load_dataset
from bioprop_cli.runs import RunWriter
from bioprop_cli.splits import make_splits
from bioprop_cli.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    dataset = load_dataset("mnist")
    host_bytes = sum(getattr(dataset, f).nbytes for f in ("x_train", "y_train", "x_test", "y_test"))
    result = {"device": jax.devices()[0].device_kind, "host_dataset_bytes": host_bytes, "runs": {}}
    configs, rates = {}, {"float32": [], "uint8": []}
    for storage in rates:
        configs[storage] = load_config(None, [("data.storage", storage), ("data.normalization", "per_channel"),
                                              ("train.epochs", args.epochs), ("rule", "fa"),
                                              ("alignment.enabled", False), ("train.save_params", False)])
    for _ in range(args.repeats):  # round-robin: a slow spell of a shared machine falls on both
        for storage, config in configs.items():
            with tempfile.TemporaryDirectory() as folder:  # the run's files, as `bioprop train` writes them
                summary = train(config, dataset, RunWriter(Path(folder)))
            rates[storage].append(summary["examples_per_s"])
    for storage, config in configs.items():
        splits = make_splits(config, dataset, keep_uint8=storage == "uint8")
        device_bytes = sum(a.nbytes for a in splits[:8])
        result["runs"][storage] = {"examples_per_s": rates[storage], "best": max(rates[storage]),
                                   "device_split_bytes": device_bytes}
        print(storage, f"best {max(rates[storage]):,.0f} examples/s of {[round(r) for r in rates[storage]]}, "
                       f"splits on the device {device_bytes / 2**20:.1f} MiB", flush=True)
    print(f"host: the dataset's arrays {host_bytes / 2**20:.1f} MiB")
    if args.out:
        with open(args.out, "w") as file:
            json.dump(result, file, indent=2)


if __name__ == "__main__":
    main()
