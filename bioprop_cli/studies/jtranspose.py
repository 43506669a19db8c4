"""`bioprop jtranspose`: the nudged state shift of a layered EP network against backprop's J^T e.

The network is the one the config and seed initialise (network.init_state, drawn in float32; `--x64`
casts it), or a run's trained weights; the input batch is `n_batch` training images drawn from the
seed. The measurement and its derivation are bioprop_cli/metrics/jtranspose.py.
Files: config.yaml, jtranspose.jsonl (one record per network, beta and layer), jtranspose.png,
table.txt (the tables as printed), summary.json.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bioprop_cli.config import Config, to_dict
from bioprop_cli.errors import UserError
from bioprop_cli.experiment.probe import batch, measuring
from bioprop_cli.metrics.jtranspose import run_jtranspose
from bioprop_cli.ep import dynamics_architecture, neuron_model
from bioprop_cli.network import architecture, init_state
from bioprop_cli.precision import cast_floats
from bioprop_cli.report.study_figures import plot_jtranspose
from bioprop_cli.report.study_tables import as_text, jtranspose_tables
from bioprop_cli.runs import append_jsonl, create_run_dir, create_stamped_dir, write_atomic, write_json, write_yaml
from bioprop_cli.splits import derive_keys


def network_name(config: Config, dataset) -> str:
    """The layer sizes joined by dashes, e.g. 784-500-10 (a conv net: its description, models/arch.py)."""
    return architecture(config, dataset.x_train.shape[1]).describe()


def new_folder(config: Config, dataset, x64: bool, out: Path | None) -> Path:
    """`out` (or the next free name beside it), else RESULTS_DIR/jtranspose/<time>-<sizes>-<activation>-s<seed>-<precision>/."""
    if out is not None:
        return create_run_dir(out.parent, "", out.name)
    precision = "float64" if x64 else "float32"
    return create_stamped_dir(config.results_dir, "jtranspose",
                              f"{network_name(config, dataset)}-{config.model.activation}-s{config.seed}-{precision}")


def _with_stored(fresh, stored, run_folder: Path, dtype) -> list[dict]:
    """The run's stored w and b of each layer (a learned "fb" is not used here) as `dtype`,
    checked against the config's network `fresh`."""
    if len(stored) != len(fresh):
        raise UserError(f"--run {run_folder}: params.npz has {len(stored)} layers, the config's network {len(fresh)}")
    params = []
    for l, layer in enumerate(fresh):
        entry = {}
        for name, value in layer.items():
            if name not in stored[l] or stored[l][name].shape != value.shape:
                raise UserError(f"--run {run_folder}: params.npz lacks '{l}.{name}' of shape {tuple(value.shape)}")
            entry[name] = jnp.asarray(stored[l][name], dtype)
        params.append(entry)
    return params


def run(config: Config, dataset, n_batch: int, betas: list[float], angles: list[float], asym_beta: float,
        x64: bool, stored=None, run_folder: Path | None = None) -> dict:
    """The measurement on the config's fresh network, or on `stored` (a run's parameters,
    runs.load_params, from `run_folder`); the records, the summary and the convergence note."""
    precision = "float64" if x64 else "float32"
    m = config.model
    network = architecture(config, dataset.x_train.shape[1])
    _, initial, _ = init_state(config, network, config.seed)  # drawn in float32: --x64 casts the same network
    with measuring(x64) as dtype:
        params = cast_floats(initial, dtype)
        if stored is not None:
            params, source = _with_stored(params, stored, run_folder, dtype), f"trained parameters of {run_folder}"
        else:
            source = "fresh network" if run_folder is None else "fresh network of the run's config (the run stored no parameters)"
        idx = np.sort(np.random.default_rng(config.seed).choice(len(dataset.x_train), n_batch, replace=False))
        x, y = batch(dataset.x_train[idx], dataset.y_train[idx], network.sizes[-1], dtype)
        records = run_jtranspose(params, x, y, neuron_model(config), config.ep, betas, angles,
                                 jax.random.fold_in(derive_keys(config.seed).rule, 2), dynamics_architecture(config))
    for r in records:
        r["precision"] = precision
    ep = config.ep
    worst = max(max(r["free_residual"], r["nudged_residual"]) for r in records)
    converged = worst < ep.reference_tolerance
    note = (f"settling residuals <= {worst:.1e} (tolerance ep.reference_tolerance = {ep.reference_tolerance:g}, "
            f"budget --max-steps {ep.reference_steps}); largest adjoint misfit "
            f"{max(r['adjoint_misfit'] for r in records):.1e}")
    if not converged:
        unsettled = sorted({f"{r['feedback']} {r['asymmetry_deg']:.0f}°" for r in records
                            if max(r["free_residual"], r["nudged_residual"]) >= ep.reference_tolerance})
        note += f"; NOT CONVERGED: {', '.join(unsettled)} (raise --max-steps; float32 may not reach a tolerance below ~1e-6)"
    title = f"{network_name(config, dataset)} {m.activation}, {source}, batch {n_batch}, {precision}"
    summary = {
        "sizes": list(network.sizes), "activation": m.activation, "source": source, "batch": n_batch, "precision": precision,
        "betas": betas, "angles": angles, "asymmetry_beta": asym_beta, "converged": bool(converged),
        "max_steps": ep.reference_steps, "tolerance": ep.reference_tolerance, "max_residual": worst,
    }
    return {"config": to_dict(config), "records": records, "title": title, "note": note, "summary": summary}


def tables(result: dict) -> list:
    """The tables printed and written to table.txt (report/study_tables.py)."""
    return jtranspose_tables(result["records"], result["summary"]["asymmetry_beta"], result["title"])


def write(result: dict, folder: Path) -> None:
    write_yaml(folder / "config.yaml", result["config"])
    append_jsonl(folder / "jtranspose.jsonl", result["records"])
    plot_jtranspose(result["records"], folder / "jtranspose.png", result["summary"]["asymmetry_beta"],
                    f"J^T e made visible: {result['title']}")
    write_atomic(folder / "table.txt", as_text([*tables(result), result["note"]]))
    write_json(folder / "summary.json", result["summary"])
