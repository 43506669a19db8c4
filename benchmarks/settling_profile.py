"""Where a conv EP settling step's time goes, op by op inside the compiled loop: the free phase of Laborieux et al.'s
MNIST conv net (configs/experiments/ep_cnn_mnist_laborieux.yaml; batch 100, `--steps` steps, as the CLI's training
settles it: ep.free_phase) traced with jax.profiler, and each XLA operation's CPU milliseconds per step (the fusions
XLA made, named as in the compiled HLO; `--hlo FILE` writes that HLO to look them up). docs/speed.md ("Conv EP
against Laborieux's P_CNN") reads it.

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" taskset -c 1 \\
        python benchmarks/settling_profile.py
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from bioprop_cli import ep as eqprop
from bioprop_cli.config import load_config
from bioprop_cli.models.energy import zero_states
from bioprop_cli.models.layers import init_params

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "experiments" / "ep_cnn_mnist_laborieux.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--top", type=int, default=20, help="operations listed")
    parser.add_argument("--hlo", help="write the compiled program's HLO here")
    args = parser.parse_args()
    config = load_config(CONFIG, [])
    arch = eqprop.dynamics_architecture(config)
    params = init_params(jax.random.PRNGKey(0), arch, "lecun_uniform", 0.577, "fan_in_uniform")
    n = config.train.batch_size
    x = jax.random.uniform(jax.random.PRNGKey(1), (n, arch.sizes[0]))
    x = jnp.where(x < 0.8, 0.0, x)  # MNIST-like: mostly background
    y = jax.nn.one_hot(jnp.arange(n) % 10, 10)
    rho = eqprop.neuron_model(config)
    start = zero_states(params, n, jnp.float32, arch)

    @jax.jit
    def free(params, x, y):
        net = eqprop.Network(params, params, None, None, rho, arch)
        return eqprop.free_phase(config, net, x, y, start, args.steps, 0.0)

    if args.hlo:
        Path(args.hlo).write_text(free.lower(params, x, y).compile().as_text())
    jax.block_until_ready(free(params, x, y))
    with tempfile.TemporaryDirectory() as trace:
        with jax.profiler.trace(trace, create_perfetto_trace=True):
            jax.block_until_ready(free(params, x, y))
        events = json.load(gzip.open(sorted(glob.glob(f"{trace}/**/*.trace.json.gz", recursive=True))[-1]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    total, calls = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("ph") == "X" and "dur" in event:
            total[event["name"]] += event["dur"]
            calls[event["name"]] += 1
    loop = max((name for name in total if name.startswith("while")), key=total.get)
    print(f"settling step: {total[loop] / args.steps / 1e3:.3f} ms ({loop}, {args.steps} steps)")
    per_step = [(name, t) for name, t in total.most_common() if calls[name] >= args.steps - 1
                and not name.startswith("ThunkExecutor")]
    for name, t in per_step[:args.top]:
        print(f"{t / calls[name] / 1e3:8.3f} ms  {name}")


if __name__ == "__main__":
    main()
