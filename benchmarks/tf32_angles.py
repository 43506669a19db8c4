"""How much the default float32 matrix product (TF32 on NVIDIA GPUs) moves the measured angles.

    python benchmarks/tf32_angles.py --data-dir DIR --out tf32.json [--quick]

Each quantity is computed three ways: at JAX's default matmul precision (what training uses),
at "highest" (full float32), and as bioprop measures it (precision.full_float32 around the
measurement, which must equal "highest"):
- bp and fa with B := W^T: the update and delta angles to jax.grad's gradient, 0 up to rounding
  (784-256x5-10 tanh, the bench's network, on a probe batch of MNIST);
- fa with its random B: the whole-network update angle (~90 degrees at initialisation);
- ep, symmetric nudging, sigmoid, phases settled to a tolerance: the slope of log(relative bias)
  against log(beta), about 2 (bioprop_cli/studies/beta.py's fit).
On a CPU the three agree (its float32 product is full precision); the script runs there too.
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext

import jax
import jax.numpy as jnp
import numpy as np

from bioprop_cli.config import load_config
from bioprop_cli.datasets.registry import num_classes
from bioprop_cli.datasets import load_dataset
from bioprop_cli.metrics.alignment import measure_alignment
from bioprop_cli.rules.base import model_functions
from bioprop_cli.splits import make_splits
from bioprop_cli.studies.beta import fit_slopes, make_batch_estimates
from bioprop_cli.studies.seeds import fixed_network
from bioprop_cli.train import build_program

PRECISIONS = ("default", "highest", "as_measured")


def precision_context(mode: str):
    return jax.default_matmul_precision("highest") if mode == "highest" else nullcontext()


def mlp_angles(config, splits, tie_feedback: bool, probe: int) -> dict:
    """{precision: {max_update_angle, max_delta_angle, network_update_angle}} at initialisation."""
    program = build_program(config, splits.x_train.shape[0], splits.x_train.shape[1])
    state = program.init(config.seed)
    params, rule_state = state.params, state.rule_state
    if tie_feedback:  # fa with B_l := W_l^T is backprop
        rule_state = [None] + [params[l]["w"].T for l in range(1, len(params))]
    from bioprop_cli.rules import make_rule

    rule = make_rule(config, program.arch, splits.x_train.shape[0])
    act, loss = model_functions(config)
    x, y = splits.x_train[:probe], jax.nn.one_hot(splits.y_train[:probe], num_classes(config))
    key = jax.random.PRNGKey(0)
    out = {}
    for mode in PRECISIONS:
        fn = measure_alignment if mode == "as_measured" else measure_alignment.__wrapped__
        with precision_context(mode):  # the precision is fixed when traced
            m = jax.jit(lambda p, s, x, y, k: fn(rule, program.arch, act, loss, p, s, x, y, k))(params, rule_state, x, y, key)
        out[mode] = {
            "max_update_angle": float(jnp.max(m["layers"]["update_angle"])),
            "max_delta_angle": float(jnp.nanmax(m["layers"]["delta_angle"])),
            "network_update_angle": float(m["network"]["update_angle"]),
        }
    return out


def ep_slope(config, splits, betas: list[float], n_batches: int) -> dict:
    """{precision: {slope, bias per beta}} of the symmetric estimator against the implicit gradient."""
    params, rule_state = fixed_network(config, splits, config.seed, 0)
    measured = make_batch_estimates(config, jnp.asarray(betas, jnp.float32), ("symmetric",))
    bs = config.train.batch_size
    out = {}
    for mode in PRECISIONS:
        fn = measured if mode == "as_measured" else jax.jit(measured.__wrapped__.__wrapped__)
        d_sum, g_norms = 0.0, []
        with precision_context(mode):
            for b in range(n_batches):
                x = splits.x_train[b * bs:(b + 1) * bs]
                y = jax.nn.one_hot(splits.y_train[b * bs:(b + 1) * bs], num_classes(config))
                exact, estimates, _ = fn(params, rule_state, x, y, jax.random.PRNGKey(b))
                d_sum = d_sum + (estimates["symmetric"] - exact[None, :])
                g_norms.append(float(jnp.linalg.norm(exact)))
        bias = np.linalg.norm(np.asarray(d_sum) / n_batches, axis=1) / np.mean(g_norms)
        rows = [{"estimator": "symmetric", "beta": beta, "bias": float(v)} for beta, v in zip(betas, bias)]
        out[mode] = {"slope": fit_slopes(rows)["symmetric"].get("slope"), "bias": dict(zip(map(str, betas), map(float, bias)))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="small networks and few batches (CPU)")
    args = parser.parse_args()
    dataset = load_dataset("mnist", args.data_dir)
    width, ep_width, n_batches = (32, 32, 2) if args.quick else (256, 500, 10)
    common = [("data.train_limit", 3000), ("data.validation_size", 500), ("alignment.probe_size", 64)]
    result = {"device": f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform})",
              "default_matmul_precision": jax.config.jax_default_matmul_precision}
    for name, rule, tie in (("bp", "bp", False), ("fa_tied", "fa", True), ("fa_random", "fa", False)):
        config = load_config(overrides=[("rule", rule), ("model.depth", 5), ("model.width", width)] + common)
        result[name] = mlp_angles(config, make_splits(config, dataset), tie, probe=512)
    ep = load_config(overrides=[
        ("rule", "ep"), ("model.width", ep_width), ("model.activation", "sigmoid"),
        ("ep.free_steps", 2000), ("ep.nudged_steps", 1000), ("ep.tolerance", 1e-6),
        ("ep.reference_steps", 4000), ("ep.reference_tolerance", 1e-6), ("ep.adjoint_steps", 2000),
    ] + common)
    result["ep_symmetric"] = ep_slope(ep, make_splits(ep, dataset), [0.003, 0.01, 0.02, 0.05, 0.1], n_batches)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
