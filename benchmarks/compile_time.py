"""CPU seconds XLA spends compiling bioprop's own small programs (every rule's gradient estimate on the MLP and on
LeNet, batch 8: the kind the test suite compiles by the thousand) under the suite's XLA_FLAGS (tests/conftest.py)
and under variants of them, each round in a fresh process per variant, variants in turn (docs/testing.md):

    python benchmarks/compile_time.py --rounds 3 --variant "split 32=--xla_cpu_parallel_codegen_split_count=32"

Prints one line per process: the variant's name, its flags, the CPU seconds of `.compile()` alone (tracing and
lowering excluded, the same in every variant).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

SUITE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
DEFAULT_VARIANTS = ["split 32 (XLA's default)=--xla_cpu_parallel_codegen_split_count=32",
                    "split 1 (the suite's)=--xla_cpu_parallel_codegen_split_count=1"]


def compile_seconds() -> float:
    import jax

    from bioprop_cli.config import load_config
    from bioprop_cli.network import architecture, init_state

    total = 0.0
    for arch_name in ("mlp", "lenet"):
        for rule in ("bp", "fa", "dfa", "usf", "frsf", "brsf", "kp", "wm"):
            config = load_config(overrides=[("rule", rule), ("model.width", 16)]
                                 + ([("model.arch", "lenet")] if arch_name == "lenet" else []))
            estimator, params, state = init_state(config, architecture(config), 0)
            x, y = jax.numpy.ones((8, 784)), jax.nn.one_hot(jax.numpy.arange(8) % 10, 10)
            lowered = jax.jit(lambda p, s: estimator.estimate(p, s, x, y, jax.random.PRNGKey(2))).lower(params, state)
            start = time.process_time()
            lowered.compile()
            total += time.process_time() - start
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", help="NAME=EXTRA_XLA_FLAGS (repeatable; default: split 32 and 1)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(f"{compile_seconds():.2f}")
        return
    for _ in range(args.rounds):
        for variant in args.variant or DEFAULT_VARIANTS:
            name, flags = variant.split("=", 1)
            env = {**os.environ, "XLA_FLAGS": f"{SUITE_FLAGS} {flags}", "JAX_ENABLE_COMPILATION_CACHE": "false"}
            out = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=True)
            print(f"{name} | {flags} | {out.stdout.strip()} CPU s", flush=True)


if __name__ == "__main__":
    main()
