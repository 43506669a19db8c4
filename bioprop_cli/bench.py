"""Throughput benchmark: one epoch of each rule, after compilation, against the matmul peak.

Network 784-256x5-10 tanh, batch 128, plain SGD (the cheapest optimiser, so that the rules'
own cost is what shows). For every rule: examples/s, achieved GFLOP/s (matrix products only,
counted analytically), that as a fraction of this machine's float32 matmul peak measured in the
same process, the ratio to a plain `jax.grad` backprop epoch written here, and compile time.
Alignment logging is timed at its default interval (once per epoch on the probe batch).
Equilibrium propagation runs Laborieux et al. 2021's MNIST setting instead: 784-512-10, batch 50,
T1 = 30, T2 = 10, symmetric nudging (settling steps per second counted per example).
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
from bioprop_cli.models.mlp import ACTIVATIONS, LOSSES, forward
from bioprop_cli.rules import available_rules
from bioprop_cli.train import N_CLASSES, build_program, derive_keys, make_splits, probe_batch

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


def matmul_flops_per_example(sizes: tuple[int, ...], rule: str) -> int:
    """Multiply-adds x 2 of one training step, per example: forward, weight gradients, error path
    (and wm's mirror phase)."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    forward_flops = sum(2 * a * b for a, b in pairs)
    weight_grads = forward_flops
    if rule == "dfa":  # e (n_out) -> every hidden layer directly
        error_path = sum(2 * sizes[-1] * b for _, b in pairs[:-1])
    else:  # delta_{l+1} -> delta_l through an (n_{l+1} x n_l) matrix, for every layer but the first
        error_path = sum(2 * a * b for a, b in pairs[1:])
    # kp's feedback update is the transpose of W's (no product of its own); wm's mirror phase
    # sends noise through every W_l with feedback (x @ W_l) and forms y^T x: two products each
    mirror = sum(2 * 2 * a * b for a, b in pairs[1:]) if rule == "wm" else 0
    return forward_flops + weight_grads + error_path + mirror


def settling_steps(config: Config) -> int:
    """Settling steps per example and training step: T1, plus T2 per nudged phase."""
    ep = config.ep
    return ep.free_steps + ep.nudged_steps * (2 if ep.estimator == "symmetric" else 1)


def ep_flops_per_example(sizes: tuple[int, ...], config: Config) -> int:
    """Matrix products of one EP training step per example: the input drive once, every
    settling step's layer-to-layer drives, and the contrastive update."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    drive_once = 2 * pairs[0][0] * pairs[0][1]
    per_step = sum(2 * 2 * a * b for a, b in pairs[1:])  # each inner W_l drives both its layers
    update = drive_once + sum(2 * 2 * a * b for a, b in pairs[1:])  # x^T d rho_1, two products per inner W_l
    return drive_once + settling_steps(config) * per_step + update


def pc_flops_per_example(sizes: tuple[int, ...], config: Config) -> int:
    """Matrix products of one predictive-coding training step per example: the feedforward pass,
    each inference step's predictions from the free nodes (the clamped input's once, in the
    feedforward pass) and their errors sent down through W^T, the same once more where inference
    ends (energy and residual), and the weight gradients. fixed_prediction's steps send errors
    only; zero_divergence adds each layer's learning signal at its own step."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    forward_flops = sum(2 * a * b for a, b in pairs)
    inner = sum(2 * a * b for a, b in pairs[1:])
    pc = config.pc
    if pc.variant == "fixed_prediction":
        inference = (pc.inference_steps + 2) * inner
    elif pc.variant == "zero_divergence":
        inference = len(pairs) * 2 * inner + inner  # L-1 steps, then the end
    else:
        inference = (pc.inference_steps + 1) * 2 * inner
    return 2 * forward_flops + inference


def measure_matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Best float32 GFLOP/s of an n x n x n matrix product (jnp.dot, compiled)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    return 2 * n**3 / _best_time(lambda: dot(a, b).block_until_ready(), repeats) / 1e9


def _best_time(fn: Callable, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def reference_epoch(config: Config, sizes, steps_per_epoch: int) -> Callable:
    """Plain backprop with jax.grad and optax SGD: what a user would write without bioprop."""
    act, loss = ACTIVATIONS[config.model.activation], LOSSES[config.model.loss]
    optimizer = optax.sgd(config.optimizer.lr)
    bs = config.train.batch_size

    def objective(params, x, y):
        return loss.value(forward(params, x, act).logits, y)

    def epoch(params, opt_state, x_train, y_train, key):
        order = jax.random.permutation(key, x_train.shape[0])[: steps_per_epoch * bs].reshape(steps_per_epoch, bs)

        def step(carry, idx):
            params, opt_state = carry
            value, grads = jax.value_and_grad(objective)(params, x_train[idx], jax.nn.one_hot(y_train[idx], N_CLASSES))
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        return jax.lax.scan(step, (params, opt_state), order)

    return jax.jit(epoch), optimizer


def compile_rule(config: Config, splits) -> dict:
    """Compiles the rule's epoch and measurement; returns what timing them needs."""
    n_train = splits.x_train.shape[0]
    program = build_program(config, n_train, splits.x_train.shape[1])
    keys = derive_keys(config.seed)
    probe_x, probe_y = probe_batch(config, splits, keys)
    state = program.init(config.seed)
    args = (splits.x_train, splits.y_train, probe_x, probe_y, keys)
    t0 = time.perf_counter()
    epoch = program.epoch.lower(state, *args, 0).compile()
    compile_s = time.perf_counter() - t0
    measure = program.measure.lower(state, probe_x, probe_y, keys.probe).compile()
    jax.block_until_ready(epoch(state, *args, 0))  # warm-up
    flops = {"ep": ep_flops_per_example, "pc": pc_flops_per_example}.get(config.rule)
    flops = flops(program.sizes, config) if flops else matmul_flops_per_example(program.sizes, config.rule)
    return {
        "rule": config.rule,
        "sizes": program.sizes,
        "flops_per_example": flops,
        "settling_steps": settling_steps(config) if config.rule == "ep" else None,
        "steps_per_epoch": program.steps_per_epoch,
        "examples": program.steps_per_epoch * config.train.batch_size,
        "compile_s": compile_s,
        "run_epoch": lambda: jax.block_until_ready(epoch(state, *args, 0)),
        "run_measure": lambda: jax.block_until_ready(measure(state, probe_x, probe_y, keys.probe)),
    }


def compile_reference(config: Config, splits, sizes, steps_per_epoch: int) -> dict:
    epoch, optimizer = reference_epoch(config, sizes, steps_per_epoch)
    program = build_program(config, splits.x_train.shape[0], splits.x_train.shape[1])
    params = program.init(config.seed).params
    args = (params, optimizer.init(params), splits.x_train, splits.y_train, jax.random.PRNGKey(0))
    t0 = time.perf_counter()
    compiled = epoch.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))
    return {
        "rule": "jax.grad ref.",
        "sizes": sizes,
        "flops_per_example": matmul_flops_per_example(sizes, "bp"),
        "examples": steps_per_epoch * config.train.batch_size,
        "compile_s": compile_s,
        "run_epoch": lambda: jax.block_until_ready(compiled(*args)),
    }


def run_benchmark(dataset, rules: list[str] | None = None, repeats: int = 3, overrides=()) -> dict:
    """Compiles everything, then times the epochs round-robin (best of `repeats` per entry), so
    that a slow spell of a shared machine does not fall on one rule only."""
    rules = rules or available_rules()

    def config(rule):
        base = EP_BENCH_OVERRIDES if rule == "ep" else BENCH_OVERRIDES
        return load_config(overrides=[("rule", rule)] + base + list(overrides))

    splits = make_splits(config("bp"), dataset)
    entries = [compile_rule(config(r), splits) for r in rules]
    mlp = next((e for e in entries if e["rule"] != "ep"), None) or compile_rule(config("bp"), splits)
    entries.append(compile_reference(config("bp"), splits, mlp["sizes"], mlp["steps_per_epoch"]))
    epoch_s = {i: [] for i in range(len(entries))}
    peaks = [measure_matmul_peak()]
    for _ in range(repeats):
        for i, entry in enumerate(entries):
            epoch_s[i].append(_best_time(entry["run_epoch"], 1))
    peaks.append(measure_matmul_peak())
    peak = max(peaks)
    results = []
    for i, entry in enumerate(entries):
        seconds = min(epoch_s[i])
        result = {
            "rule": entry["rule"],
            "network": "-".join(map(str, entry["sizes"])),
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
        "results": results,
        "reference": reference,
    }
