"""Examples per CPU-second of the CLI's compiled epoch (train.seed_batched's chunk, as `bioprop sweep` trains a
group) for one seed alone and for N seeds trained together, vmapped and one after another (lax.map,
train.runs_one_after_another), per rule; compilation excluded, the best of REPEATS epochs timed round-robin.

    ARCH=lenet XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" taskset -c 0 \\
        python benchmarks/seeds_together.py bp,fa,usf,dfa 1,3 3 [key=value ...]

ARCH: lenet (batch 64, relu, momentum: configs/experiments/lenet_mnist.yaml's settings), cnn (the same settings), or
mlp (the default config). The training split is data.train_limit=11400 images less the 5000 of validation (100
steps of 64). One JSON line per (rule, seeds, mode); ex_per_cpu_s counts every seed's examples.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import yaml

import bioprop_cli
from bioprop_cli.config import load_config
from bioprop_cli.datasets import load_dataset
from bioprop_cli.splits import derive_keys, make_splits
from bioprop_cli.train import build_program, seed_batched


def settings(arch: str) -> list:
    conv = [("model.arch", arch), ("train.batch_size", 64), ("model.activation", "relu"), ("optimizer.name", "momentum")]
    return ([] if arch == "mlp" else conv) + [("data.train_limit", 11400)]


def main() -> None:
    rules, counts, repeats = sys.argv[1].split(","), [int(n) for n in sys.argv[2].split(",")], int(sys.argv[3])
    overrides = settings(os.environ.get("ARCH", "lenet")) + [(k, yaml.safe_load(v)) for k, v in
                                                             (a.split("=", 1) for a in sys.argv[4:])]
    config = lambda rule: load_config(overrides=[("rule", rule)] + overrides)
    splits = make_splits(config("bp"), load_dataset("mnist", None), keep_uint8=config("bp").data.storage == "uint8")
    entries = []
    for rule in rules:
        c = config(rule)
        program = build_program(c, splits.x_train.shape[0], splits.x_train.shape[1], splits.pixels)
        for n, mode in [(n, m) for n in counts for m in (["vmap", "one after another"] if n > 1 else ["alone"])]:
            batched = seed_batched(program, c.alignment.probe_size, n, mode == "one after another")
            seeds = jnp.arange(n)
            keys = jax.vmap(derive_keys)(seeds)
            args = (batched.init(seeds, {}), splits.x_train, splits.y_train,
                    *batched.probe(keys.probe, splits.x_train, splits.y_train), keys, batched.order(keys, 0), 0, 0)
            t0 = time.perf_counter()
            epoch = batched.chunk.lower(*args).compile()
            compile_s = time.perf_counter() - t0
            jax.block_until_ready(epoch(*args))
            entries.append({"rule": rule, "seeds": n, "mode": mode, "run": lambda f=epoch, a=args: f(*a),
                            "examples": program.steps_per_epoch * c.train.batch_size * n, "compile_s": compile_s})
    times = [[] for _ in entries]
    for _ in range(repeats):
        for entry, spent in zip(entries, times):
            t0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(entry["run"]())
            spent.append((time.perf_counter() - t0, time.process_time() - c0))
    tree = bioprop_cli.__file__.rsplit("/", 2)[0]
    for entry, spent in zip(entries, times):
        wall, cpu = min(t[0] for t in spent), min(t[1] for t in spent)
        print(json.dumps({"tree": tree, "rule": entry["rule"], "seeds": entry["seeds"], "mode": entry["mode"],
                          "examples": entry["examples"], "ex_per_s": round(entry["examples"] / wall),
                          "ex_per_cpu_s": round(entry["examples"] / cpu), "compile_s": round(entry["compile_s"], 1)}))


if __name__ == "__main__":
    main()
