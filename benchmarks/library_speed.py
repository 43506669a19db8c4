"""The library's update (bioprop.update on a model written with bioprop's layers) against the CLI's own
rule.estimate, on the CLI's networks: the same parameters and batches, steps of SGD inside one compiled
lax.scan (as the CLI's epochs run), the median of a few timed scans after one compiling run.

    python benchmarks/library_speed.py --arch lenet --rules bp,fa,dfa,kp --batch 128 --steps 20 --repeats 5
Prints a Markdown table (ms per step, and the library's time over the CLI's).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_lib_rules import ARCHS, MASK, cli_model, library_state, loss, plain, setup  # noqa: E402

import bioprop  # noqa: E402


def scans(cli, rule, arch, params, state, lib_state, xs, ys, lr=0.01):
    def cli_step(carry, batch):
        p, key = carry
        key, k = jax.random.split(key)
        g = cli.estimate(p, state, batch[0], batch[1], k).grads
        return (jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g), key), None

    model = cli_model(arch)

    def lib_step(carry, batch):
        p, s, key = carry
        key, k = jax.random.split(key)
        up = bioprop.update(rule, model, loss, p, s, k, batch[0], batch[1], mask=MASK(p))
        p = jax.tree_util.tree_map(lambda a, b: a - lr * b, p, up.grads)
        s = jax.tree_util.tree_map(lambda a, b: a - lr * b, s, up.feedback_grads)
        return (p, s, key), None

    key = jax.random.PRNGKey(0)
    run_cli = jax.jit(lambda p: jax.lax.scan(cli_step, (p, key), (xs, ys))[0][0])
    run_lib = jax.jit(lambda p, s: jax.lax.scan(lib_step, (p, s, key), (xs, ys))[0][0])
    return (lambda: run_cli(params)), (lambda: run_lib(plain(params), lib_state))


def timed(f, repeats):
    jax.block_until_ready(f())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="lenet", choices=list(ARCHS))
    parser.add_argument("--rules", default="bp,fa,dfa,kp")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{args.arch}, batch {args.batch}, {args.steps} SGD steps per scan, median of {args.repeats}, "
          f"{jax.devices()[0].platform}")
    print("| rule | CLI ms/step | library ms/step | library / CLI |\n|---|---|---|---|")
    for name in args.rules.split(","):
        config, arch, cli, params, state, _, _ = setup(name, ARCHS[args.arch], n=args.batch)
        kx, ky = jax.random.split(jax.random.PRNGKey(1))
        xs = jax.random.normal(kx, (args.steps, args.batch, arch.sizes[0]))
        ys = jax.nn.one_hot(jax.random.randint(ky, (args.steps, args.batch), 0, 10), 10)
        run_cli, run_lib = scans(cli, bioprop.rule(name), arch, params, state, library_state(name, params, state),
                                 xs, ys)
        t_cli, t_lib = timed(run_cli, args.repeats), timed(run_lib, args.repeats)
        print(f"| {name} | {1e3 * t_cli / args.steps:.2f} | {1e3 * t_lib / args.steps:.2f} | {t_lib / t_cli:.2f} |")


if __name__ == "__main__":
    main()
