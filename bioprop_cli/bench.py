"""Throughput benchmark: one epoch of each rule, after compilation, against the matmul peak.

Network 784-256x5-10 tanh, batch 128, plain SGD (the cheapest optimiser, so that the rules'
own cost is what shows). For every rule: examples/s, achieved GFLOP/s (matrix products only,
counted analytically), that as a fraction of this machine's float32 matmul peak measured in the
same process (the best over square products and the networks' own product shapes), the ratio to a plain `jax.grad` backprop epoch written here, and compile time.
Alignment logging is timed at its default interval (once per epoch on the probe batch).
Equilibrium propagation runs Laborieux et al. 2021's MNIST setting instead: 784-512-10, batch 50,
T1 = 30, T2 = 10, symmetric nudging (settling steps per second counted per example).
`--set model.arch=lenet` (or cnn) benchmarks a conv net: the reference is then jax.grad of the same
network (models.layers.forward), and GFLOP/s count conv layers by rules/flops.py.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bioprop_cli.config import Config, load_config
from bioprop_cli.models.arch import Architecture, Dense
from bioprop_cli.models.layers import forward
from bioprop_cli.models.mlp import ACTIVATIONS, LOSSES
from bioprop_cli.rules import ENERGY, available_rules, flops, rule_info
from bioprop_cli.interrupt import check as check_interrupt
from bioprop_cli.splits import derive_keys, make_splits, probe_batch
from bioprop_cli.train import build_program

BENCH_OVERRIDES = [
    ("model.depth", 5),
    ("model.width", 256),
    ("model.activation", "tanh"),
    ("train.batch_size", 128),
    ("optimizer.name", "sgd"),
    ("optimizer.lr", 0.01),
    ("optimizer.schedule.name", "constant"),
]


# Laborieux et al. 2021's MNIST configuration for equilibrium propagation.
EP_BENCH_OVERRIDES = [
    ("model.depth", 1),
    ("model.width", 512),
    ("train.batch_size", 50),
    ("ep.free_steps", 30),
    ("ep.nudged_steps", 10),
    ("ep.estimator", "symmetric"),
    ("optimizer.layer_lr", []),
]


def synthetic_mnist(seed: int = 0) -> SimpleNamespace:
    """Random arrays of MNIST's shapes, for machines without the data (throughput only)."""
    rng = np.random.default_rng(seed)
    return SimpleNamespace(
        name="synthetic",
        source="random arrays of MNIST's shapes",
        x_train=rng.random((60000, 784), dtype=np.float32),
        y_train=rng.integers(0, 10, 60000).astype(np.int32),
        x_test=rng.random((10000, 784), dtype=np.float32),
        y_test=rng.integers(0, 10, 10000).astype(np.int32),
    )


PEAK_SQUARE_SIZES = (2048, 4096)
PEAK_FLOPS_PER_CALL = 2**30  # small products run this many FLOPs per compiled call, so dispatch does not count
PEAK_MAX_PRODUCTS_PER_CALL = 64


def network_shapes(arch: Architecture, batch: int) -> set[tuple[int, int, int]]:
    """(m, k, n) of the matrix products of one training step's dense layers: forward x W, weight
    gradient x^T delta, error path delta W^T."""
    pairs = [(layer.op.n_in, layer.op.n_out) for layer in arch.layers if isinstance(layer.op, Dense)]
    return {shape for a, b in pairs for shape in ((batch, a, b), (a, batch, b), (batch, b, a))}


def peak_shapes(network: set[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    return sorted({(n, n, n) for n in PEAK_SQUARE_SIZES} | network)


def measure_matmul_gflops(m: int, k: int, n: int, repeats: int = 5) -> float:
    """Best float32 GFLOP/s of (m x k) @ (k x n) products: one compiled call runs `count` of them
    on distinct inputs (lax.map), as a training epoch's scan does."""
    check_interrupt()
    flops = 2 * m * k * n
    count = max(1, min(PEAK_MAX_PRODUCTS_PER_CALL, PEAK_FLOPS_PER_CALL // flops))
    a = jax.random.normal(jax.random.PRNGKey(0), (count, m, k), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (k, n), jnp.float32)
    products = jax.jit(lambda a, b: jax.lax.map(lambda x: x @ b, a)).lower(a, b).compile()
    products(a, b).block_until_ready()
    return count * flops / _best_time(lambda: products(a, b).block_until_ready(), repeats) / 1e9


def measure_matmul_peak(shapes: list[tuple[int, int, int]], repeats: int = 5) -> dict[str, float]:
    """{"MxKxN": best GFLOP/s} for each shape."""
    return {"x".join(map(str, shape)): measure_matmul_gflops(*shape, repeats=repeats) for shape in shapes}


def _best_time(fn: Callable, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        check_interrupt()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def reference_epoch(config: Config, arch: Architecture, steps_per_epoch: int) -> Callable:
    """Plain backprop with jax.grad and optax SGD: what a user would write without bioprop."""
    act, loss = ACTIVATIONS[config.model.activation], LOSSES[config.model.loss]
    optimizer = optax.sgd(config.optimizer.lr)
    bs = config.train.batch_size

    def objective(params, x, y):
        return loss.value(forward(arch, params, x, act).logits, y)

    def epoch(params, opt_state, x_train, y_train, key):
        order = jax.random.permutation(key, x_train.shape[0])[: steps_per_epoch * bs].reshape(steps_per_epoch, bs)

        def step(carry, idx):
            params, opt_state = carry
            value, grads = jax.value_and_grad(objective)(params, x_train[idx], jax.nn.one_hot(y_train[idx], arch.sizes[-1]))
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        return jax.lax.scan(step, (params, opt_state), order)

    return jax.jit(epoch), optimizer


def compile_rule(config: Config, splits) -> dict:
    """Compiles the rule's epoch and measurement; returns what timing them needs."""
    check_interrupt()
    n_train = splits.x_train.shape[0]
    program = build_program(config, n_train, splits.x_train.shape[1], splits.pixels)  # as train.py builds it
    keys = derive_keys(config.seed)
    probe_x, probe_y, _ = probe_batch(config, splits, keys)
    state = program.init(config.seed)
    args = (splits.x_train, splits.y_train, probe_x, probe_y, keys)
    t0 = time.perf_counter()
    epoch = program.epoch.lower(state, *args, 0).compile()
    compile_s = time.perf_counter() - t0
    measure = program.measure.lower(state, probe_x, probe_y, keys.probe).compile()
    jax.block_until_ready(epoch(state, *args, 0))  # warm-up
    energy = rule_info(config.rule).family == ENERGY
    return {
        "rule": config.rule,
        "arch": program.arch,
        "shapes": network_shapes(program.arch, config.train.batch_size),
        "flops_per_example": rule_info(config.rule).flops(program.arch, config),
        "settling_steps": flops.settling_steps(config) if energy else None,
        "steps_per_epoch": program.steps_per_epoch,
        "examples": program.steps_per_epoch * config.train.batch_size,
        "compile_s": compile_s,
        "run_epoch": lambda: jax.block_until_ready(epoch(state, *args, 0)),
        "run_measure": lambda: jax.block_until_ready(measure(state, probe_x, probe_y, keys.probe)),
    }


def compile_reference(config: Config, splits, arch: Architecture, steps_per_epoch: int) -> dict:
    check_interrupt()
    epoch, optimizer = reference_epoch(config, arch, steps_per_epoch)
    program = build_program(config, *splits.x_train.shape)
    params = program.init(config.seed).params
    args = (params, optimizer.init(params), splits.x_train, splits.y_train, jax.random.PRNGKey(0))
    t0 = time.perf_counter()
    compiled = epoch.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))
    return {
        "rule": "jax.grad ref.",
        "arch": arch,
        "shapes": network_shapes(arch, config.train.batch_size),
        "flops_per_example": rule_info("bp").flops(arch, config),
        "examples": steps_per_epoch * config.train.batch_size,
        "compile_s": compile_s,
        "run_epoch": lambda: jax.block_until_ready(compiled(*args)),
    }


def run_benchmark(dataset, rules: list[str] | None = None, repeats: int = 3, overrides=()) -> dict:
    """Compiles everything, then times the epochs round-robin (best of `repeats` per entry), so
    that a slow spell of a shared machine does not fall on one rule only."""
    rules = rules or available_rules()

    def config(rule):
        base = EP_BENCH_OVERRIDES if rule_info(rule).family == ENERGY else BENCH_OVERRIDES
        return load_config(overrides=[("rule", rule)] + base + list(overrides))

    # the splits as training stores them (data.storage); the jax.grad reference reads float32 inputs
    splits = make_splits(config("bp"), dataset, keep_uint8=config("bp").data.storage == "uint8")
    entries = [compile_rule(config(r), splits) for r in rules]
    mlp = next((e for e in entries if rule_info(e["rule"]).family != ENERGY), None) or compile_rule(config("bp"), splits)
    reference_splits = make_splits(config("bp"), dataset) if splits.pixels is not None else splits
    entries.append(compile_reference(config("bp"), reference_splits, mlp["arch"], mlp["steps_per_epoch"]))
    epoch_s = {i: [] for i in range(len(entries))}
    shapes = peak_shapes(set().union(*(e["shapes"] for e in entries)))
    before = measure_matmul_peak(shapes)  # before and after the epochs: the best of both per shape
    for _ in range(repeats):
        for i, entry in enumerate(entries):
            epoch_s[i].append(_best_time(entry["run_epoch"], 1))
    after = measure_matmul_peak(shapes)
    peak_by_shape = {shape: max(before[shape], after[shape]) for shape in before}
    peak = max(peak_by_shape.values())
    results = []
    for i, entry in enumerate(entries):
        seconds = min(epoch_s[i])
        result = {
            "rule": entry["rule"],
            "network": entry["arch"].describe(),
            "epoch_s": seconds,
            "examples_per_s": entry["examples"] / seconds,
            "gflops": entry["flops_per_example"] * entry["examples"] / seconds / 1e9,
            "compile_s": entry["compile_s"],
        }
        if entry.get("settling_steps"):
            result["settling_steps_per_s"] = entry["settling_steps"] * entry["examples"] / seconds
        if "run_measure" in entry:  # one measurement per epoch: the default interval
            result["alignment_overhead"] = _best_time(entry["run_measure"], repeats) / seconds
        results.append(result)
    reference = results.pop()
    bp = next((r for r in results if r["rule"] == "bp"), None)
    for r in results + [reference]:
        same_network = r["network"] == reference["network"]
        r["fraction_of_peak"] = r["gflops"] / peak
        r["vs_reference"] = r["examples_per_s"] / reference["examples_per_s"] if same_network else None
        r["vs_bp"] = r["examples_per_s"] / bp["examples_per_s"] if bp and same_network else None
    return {
        "device": f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform})",
        "jax": jax.__version__,
        "data": dataset.name,
        "matmul_peak_gflops": peak,
        "matmul_peak_by_shape": peak_by_shape,
        "results": results,
        "reference": reference,
    }
