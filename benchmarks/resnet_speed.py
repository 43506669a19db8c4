"""The training speed of a ResNet on MNIST: usf and bp through the library's layers (the step `bioprop train` runs,
rules/library.py) against plain jax.grad of the same ResNet with exact layers (models/graph.EXACT).

    python benchmarks/resnet_speed.py [--depth 20] [--width 16] [--batch 128] [--steps 20] [--tries 3] [--loop]

Each variant is one compiled program: `steps` SGD steps in a lax.scan (as train.py's epoch; --loop: one jitted
step called per batch), on the first
steps x batch MNIST training images (the CLI's per-channel normalisation is left out: the speed does not depend
on the pixel values). The variants run interleaved, `tries` times each, after one warm-up call each (compilation
excluded); the table gives each variant's median time per step and examples per second.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from bioprop_cli.config import load_config
from bioprop_cli.datasets import load_dataset
from bioprop_cli.models.graph import EXACT, init_stats
from bioprop_cli.models.mlp import LOSSES
from bioprop_cli.network import architecture, init_state


def scan_program(step, params, state, x, y, loop=False):
    """The steps as one lax.scan (train.py's epoch), or (loop) a jitted step called once per batch from Python."""
    if loop:
        one = jax.jit(step)

        def run(params, state, x, y):
            for i in range(x.shape[0]):
                params, state = one(params, state, x[i], y[i])
            return params, state

        return run

    def body(carry, batch):
        params, state = carry
        return step(params, state, *batch), None

    return jax.jit(lambda params, state, x, y: jax.lax.scan(body, (params, state), (x, y))[0])


def rule_step(rule, lr):
    def step(params, state, x, y):
        est = rule.estimate(params, state, x, y, jax.random.PRNGKey(0))
        return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, est.grads), est.state

    return step


def exact_step(network, lr):
    loss = LOSSES["cross_entropy"]

    def step(params, stats, x, y):
        def value(p):
            logits, new = network.apply(p, stats["stats"], [None] * len(network.weights), x, True, EXACT)
            return loss.value(logits, y), new

        grads, new = jax.grad(value, has_aux=True)(params)
        return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads), {**stats, "stats": new}

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--loop", action="store_true", help="a jitted step per batch instead of one lax.scan")
    args = parser.parse_args()
    overrides = [("model.arch", "resnet"), ("model.resnet.depth", args.depth), ("model.resnet.width", args.width)]
    data = load_dataset("mnist")
    n = args.steps * args.batch
    x = jnp.asarray(data.x_train[:n]).reshape(args.steps, args.batch, -1)
    y = jax.nn.one_hot(jnp.asarray(data.y_train[:n]), 10).reshape(args.steps, args.batch, 10)
    programs = {}
    for rule in ("usf", "bp"):
        config = load_config(overrides=[("rule", rule), *overrides])
        network = architecture(config, x.shape[-1])
        impl, params, state = init_state(config, network, 0)
        programs[f"{rule} (library layers)"] = (scan_program(rule_step(impl, 0.01), params, state, x, y, args.loop), params, state)
    programs["jax.grad (exact layers)"] = (scan_program(exact_step(network, 0.01), params, state, x, y, args.loop), params,
                                           {"stats": init_stats(network)})
    print(f"ResNet-{args.depth} (width {args.width}) on MNIST, batch {args.batch}, {args.steps} steps per call, "
          f"{args.tries} tries, {'a jitted step per batch' if args.loop else 'one lax.scan'}; {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, {platform.python_version()}, "
          f"jax {jax.__version__}", flush=True)
    times = {name: [] for name in programs}
    for name, (program, params, state) in programs.items():  # compile and warm up
        t0 = time.perf_counter()
        jax.block_until_ready(program(params, state, x, y))
        print(f"{name}: compiled and warmed up in {time.perf_counter() - t0:.0f} s", flush=True)
    for _ in range(args.tries):
        for name, (program, params, state) in programs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(program(params, state, x, y))
            times[name].append((time.perf_counter() - t0) / args.steps)
            print(f"{name}: {1000 * times[name][-1]:.0f} ms per step", flush=True)
    print("| variant | ms per step (median) | tries (ms) | examples/s |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"| {name} | {1000 * median:.0f} | {', '.join(f'{1000 * t:.0f}' for t in ts)} | "
              f"{args.batch / median:.0f} |")


if __name__ == "__main__":
    main()
