"""`bioprop conditions`: the seven conditions of gradient equivalence, measured for one config.

The network is the one the config and seed initialise (network.init_state), or a run's trained
parameters with the rule state as that run started training (fa's B and ep's random feedback from
the seed and the INITIAL weights); the probe batch is the one training draws from the seed
(splits.seed_probe). `--x64` casts the float32 network to float64 (the same weights, in higher
precision). The measurements and the grading are bioprop_cli/metrics/conditions.py.

conditions.json is never overwritten: the next free name conditions-2.json, conditions-3.json, ...
is taken instead (runs.write_new_json: created exclusively, atomically).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import jax
import jax.numpy as jnp

from bioprop_cli.datasets.registry import num_classes
from bioprop_cli.errors import UserError
from bioprop_cli.interrupt import check as check_interrupt
from bioprop_cli.metrics.conditions import conditions_table
from bioprop_cli.network import architecture, init_state
from bioprop_cli.precision import cast_floats, float64
from bioprop_cli.runs import make_folder, read_jsonl, write_new_json
from bioprop_cli.splits import derive_keys, make_splits, seed_probe


def check_params(params, expected, source: str) -> None:
    """UserError unless `params` has the layers, names and shapes of `expected` (the network the
    config defines)."""
    want = [{k: tuple(v.shape) for k, v in layer.items()} for layer in expected]
    have = [{k: tuple(v.shape) for k, v in layer.items()} for layer in params]
    if want != have:
        describe = lambda ls: "; ".join(f"{l}: " + ", ".join(f"{k} {s}" for k, s in sorted(d.items())) for l, d in enumerate(ls))
        raise UserError(f"{source}: parameters do not fit the config's network (stored {describe(have)}; "
                        f"expected {describe(want)})")


def final_alignment(run: Path) -> dict | None:
    """The run's last alignment measurement (alignment.jsonl), per layer: what training did."""
    path = run / "alignment.jsonl"
    if not path.is_file():
        return None
    try:
        lines = read_jsonl(path)
    except (OSError, ValueError):
        return None
    if not lines:
        return None
    last = max(r["step"] for r in lines)
    at = [r for r in lines if r["step"] == last]
    keep = ("update_angle", "update_rel_error", "feedback_angle")
    return {
        "epoch": at[0].get("epoch"),
        "step": last,
        "layers": [{"layer": r["layer"], **{k: r.get(k) for k in keep}} for r in at],
    }


def run(config, dataset, probe_size: int = 256, x64: bool = False, params=None, source: str = "params",
        run_folder: Path | None = None) -> dict:
    """The condition table of `config` on a probe batch of `probe_size` training examples; float64
    when `x64` (the float32 network cast). The network: `params` (e.g. a run's trained parameters,
    runs.load_params; checked against the config's network, `source` names them in the error) with
    the rule state as training started it, or, without `params`, the network at initialisation
    (seed config.seed). `run_folder`: the run the config came from (its last alignment measurement
    is reported beside the table)."""
    t0 = time.perf_counter()
    trained = params is not None
    splits = make_splits(config, dataset)
    n_train, n_in = splits.x_train.shape
    network = architecture(config, n_in)
    px, py, idx = seed_probe(splits, config.seed, probe_size)
    # drawn in float32 (--x64: the same network, in float64); the rule state is the one training
    # started from, rebuilt from the seed and the INITIAL params (ep's random feedback takes their norm)
    rule, initial, state = init_state(config, network, config.seed, n_train)
    if params is None:
        params = initial
    else:
        check_params(params, initial, source)
    with float64() if x64 else nullcontext():
        dtype = jnp.float64 if x64 else jnp.float32
        params, state = cast_floats(params, dtype), cast_floats(state, dtype)
        x = jnp.asarray(px, dtype)
        y = jax.nn.one_hot(py, num_classes(config), dtype=dtype)
        key = jax.random.fold_in(derive_keys(config.seed).probe, 7)
        check_interrupt()  # one compiled measurement: Ctrl-C is seen before and after it
        table = conditions_table(config, rule, params, state, x, y, key, idx)
        check_interrupt()
    table["setup"] = {
        "rule": config.rule,
        "layer_sizes": list(network.sizes),
        "depth": config.model.depth,
        "activation": config.model.activation,
        "loss": config.model.loss,
        "seed": config.seed,
        "precision": "float64" if x64 else "float32",
        "probe": f"{x.shape[0]} training examples drawn from the seed's probe key, "
                 f"{'trained network' if trained else 'network at initialisation'}",
        "parameters": "trained" if trained else "initial",
        "probe_size": int(x.shape[0]),
        "dataset": dataset.name,
        "ep": ({k: getattr(config.ep, k) for k in config.ep.__dataclass_fields__} if config.rule == "ep" else None),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    table["parameters"] = table["setup"]["parameters"]
    if run_folder is not None:
        note = ("measured on the run's trained parameters (params.npz), the rule state rebuilt from its seed"
                if trained else
                "the run stored no parameters (params.npz): the conditions are measured on the network the "
                "run's config and seed initialise")
        table["run"] = {"folder": str(run_folder), "final_alignment": final_alignment(run_folder),
                        "note": note + "; final_alignment is the run's own last measurement"}
    return table


def write(result: dict, folder: Path) -> Path:
    """conditions.json in `folder` (created if needed), or the next free name; returns the path written."""
    make_folder(folder)
    return write_new_json(folder, "conditions", result)
