"""Examples per CPU-second of `bioprop bench`'s compiled epoch (bench.compile_rule, batch 128 and bench's settings),
per rule, for whichever source tree is first on PYTHONPATH: run it alternately with two trees (two clones at the
commits compared) to compare them on a shared machine (docs/speed.md). One JSON line per rule; the best of
REPEATS epochs, timed round-robin over the rules.

    PYTHONPATH=/tmp/before taskset -c 1 python benchmarks/epoch_cpu.py bp,fa 3 model.arch=lenet data.train_limit=25600
"""

from __future__ import annotations

import json
import sys
import time

import yaml

import bioprop_cli
from bioprop_cli.bench import BENCH_OVERRIDES, compile_rule
from bioprop_cli.config import load_config
from bioprop_cli.datasets import load_dataset
from bioprop_cli.splits import make_splits


def main() -> None:
    rules, repeats = sys.argv[1].split(","), int(sys.argv[2])
    overrides = [(k, yaml.safe_load(v)) for k, v in (a.split("=", 1) for a in sys.argv[3:])]
    config = lambda rule: load_config(overrides=[("rule", rule)] + BENCH_OVERRIDES + overrides)
    splits = make_splits(config("bp"), load_dataset("mnist", None), keep_uint8=config("bp").data.storage == "uint8")
    entries = [compile_rule(config(rule), splits) for rule in rules]
    cpu = {rule: [] for rule in rules}
    for _ in range(repeats):
        for rule, entry in zip(rules, entries):
            t0 = time.process_time()
            entry["run_epoch"]()
            cpu[rule].append(time.process_time() - t0)
    tree = bioprop_cli.__file__.rsplit("/", 2)[0]
    for rule, entry in zip(rules, entries):
        print(json.dumps({"tree": tree, "rule": rule, "examples": entry["examples"],
                          "ex_per_cpu_s": entry["examples"] / min(cpu[rule]), "cpu_s": [round(t, 3) for t in cpu[rule]]}))


if __name__ == "__main__":
    main()
