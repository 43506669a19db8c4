"""Where LeNet's time goes: each operation of one bioprop LeNet training step (MNIST, batch 64), timed alone
at LeNet's shapes inside a compiled lax.scan (as the epoch runs it), in CPU time per call.

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" taskset -c 0 \
        python benchmarks/lenet_ops.py --calls 100 --repeats 5

Each operation runs on `--calls` distinct inputs per compiled call (its output summed into the scan's carry so
that nothing is hoisted or dropped); the table gives the best of `--repeats` calls, in microseconds per
operation, and the whole step (bioprop's fa estimate + SGD momentum update) for scale.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from jax import lax

import bioprop.layers as L
from bioprop_cli.models.arch import Pool
from bioprop_cli.models.layers import pool

B = 64
CONV1 = L.conv_spec((28, 28), (5, 5), 1, 2)
CONV2 = L.conv_spec((14, 14), (5, 5), 1, 0)
POOL = Pool("max", 2, 2)


def ops() -> dict:
    """name: (function of one input tuple, shapes of its inputs)."""
    return {
        "conv1 forward (64,28,28,1)*(5,5,1,6)": (lambda x, w: L.convolve(CONV1, x, w), [(B, 28, 28, 1), (5, 5, 1, 6)]),
        "conv2 forward (64,14,14,6)*(5,5,6,16)": (lambda x, w: L.convolve(CONV2, x, w), [(B, 14, 14, 6), (5, 5, 6, 16)]),
        "conv1 kernel gradient": (lambda x, g: L.conv_kernel_vjp(CONV1, x, g, (5, 5, 1, 6)), [(B, 28, 28, 1), (B, 28, 28, 6)]),
        "conv2 kernel gradient": (lambda x, g: L.conv_kernel_vjp(CONV2, x, g, (5, 5, 6, 16)), [(B, 14, 14, 6), (B, 10, 10, 16)]),
        "conv2 transposed (input vjp)": (lambda g, w: L.conv_input_vjp(CONV2, g, w, (B, 14, 14, 6)), [(B, 10, 10, 16), (5, 5, 6, 16)]),
        "pool1 forward (64,28,28,6)": (lambda h: pool(POOL, h), [(B, 28, 28, 6)]),
        "pool1 vjp": (lambda h, g: jax.vjp(lambda z: pool(POOL, z), h)[1](g)[0], [(B, 28, 28, 6), (B, 14, 14, 6)]),
        "pool2 forward (64,10,10,16)": (lambda h: pool(POOL, h), [(B, 10, 10, 16)]),
        "pool2 vjp": (lambda h, g: jax.vjp(lambda z: pool(POOL, z), h)[1](g)[0], [(B, 10, 10, 16), (B, 5, 5, 16)]),
        "dense 400-120-84-10 forward": (lambda x, a, b, c: jnp.maximum(jnp.maximum(x @ a, 0) @ b, 0) @ c,
                                        [(B, 400), (400, 120), (120, 84), (84, 10)]),
    }


def timed(fn, shapes, calls: int, repeats: int) -> float:
    keys = jax.random.split(jax.random.PRNGKey(0), len(shapes))
    inputs = [jax.random.normal(k, (calls,) + s, jnp.float32) for k, s in zip(keys, shapes)]

    def body(total, args):
        out = fn(*args)
        return total + jnp.sum(out), None

    run = jax.jit(lambda *xs: lax.scan(body, 0.0, xs)[0])
    jax.block_until_ready(run(*inputs))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        jax.block_until_ready(run(*inputs))
        best = min(best, time.process_time() - t0)
    return best / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| operation | us per call (CPU) |")
    print("|---|---|")
    for name, (fn, shapes) in ops().items():
        print(f"| {name} | {timed(fn, shapes, args.calls, args.repeats):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
