"""`bioprop jtranspose`: the nudged state shift of a layered EP network against backprop's J^T e.

See bioprop_cli/metrics/jtranspose.py for the definitions and the derivation.
"""

from __future__ import annotations

import io
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from bioprop_cli.cli.common import X64, ConfigFile, DataDir, Depth, RunFolder, Seed, Sets, Width, console, user_errors_exit_2
from bioprop_cli.errors import UserError


def _numbers(text: str, name: str, low: float, high: float, low_open: bool) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{name}: expected comma-separated numbers, got {text!r}") from None
    bad = [v for v in values if not math.isfinite(v) or v > high or (v <= low if low_open else v < low)]
    if not values or bad:
        where = f"in ({low:g}, {high:g}]" if low_open else f"in [{low:g}, {high:g}]"
        raise UserError(f"{name}: expected comma-separated numbers {where}, got {text!r}")
    return sorted(set(values))


def _positive_int(text: str, flag: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{flag}: expected a positive integer, got {text!r}")
    return value


def _load_config(run: Optional[Path], config: Optional[Path], sets: list[str], flags: dict):
    from bioprop_cli.config import load_config, parse_override

    if run is not None:
        if config is not None:
            raise UserError("--run and --config: give one (the run's config.yaml is its config)")
        if not (run / "config.yaml").is_file():
            raise UserError(f"--run {run}: not a run folder (no config.yaml)")
        config = run / "config.yaml"
    overrides = [parse_override(s) for s in sets] + [("rule", "ep")]
    overrides += [(key, value) for key, value in flags.items() if value is not None]
    return load_config(config, overrides)


def _run_params(run: Optional[Path], fresh, dtype):
    """The run's trained parameters (params.npz, runs.load_params: w and b of each layer; a learned
    "fb" is not used here), else `fresh`; with a note of which it is."""
    import jax.numpy as jnp

    from bioprop_cli.runs import load_params

    if run is None:
        return fresh, "fresh network"
    path = run / "params.npz"
    if not path.is_file():
        console.print(f"[yellow]note:[/] the run {run} stored no parameters; using a fresh network of its config")
        return fresh, "fresh network of the run's config (the run stored no parameters)"
    stored = load_params(run)
    if len(stored) != len(fresh):
        raise UserError(f"--run {run}: params.npz has {len(stored)} layers, the config's network {len(fresh)}")
    params = []
    for l, layer in enumerate(fresh):
        entry = {}
        for name, value in layer.items():
            key = f"{l}.{name}"
            if name not in stored[l] or stored[l][name].shape != value.shape:
                raise UserError(f"--run {run}: params.npz lacks '{key}' of shape {tuple(value.shape)}")
            entry[name] = jnp.asarray(stored[l][name], dtype)
        params.append(entry)
    console.print(f"trained parameters from {path}", highlight=False)
    return params, f"trained parameters of {run}"


def jtranspose(
    run: RunFolder = None,
    config: ConfigFile = None,  # rule ep is implied
    depth: Depth = None,
    width: Width = None,
    activation: Optional[str] = typer.Option(None, help="hard_sigmoid (EP default), sigmoid or tanh."),
    seed: Seed = None,
    batch: str = typer.Option("100", help="Number of MNIST training images in the input batch."),
    betas: Optional[str] = typer.Option(None, help="Comma-separated nudging strengths (default 1e-3 .. 1, log-spaced)."),
    angles: Optional[str] = typer.Option(None, help="Asymmetry angles a in degrees (default 0,15,...,90)."),
    asymmetry_beta: Optional[float] = typer.Option(None, help="The beta of the asymmetry table and panel (default: the smallest)."),
    max_steps: str = typer.Option("20000", help="Settling budget of every phase; each stops once its step is below "
                                  "ep.reference_tolerance (a fresh 784-500-10 network needs ~3000: spectral radius 0.994)."),
    x64: X64 = False,
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default RESULTS_DIR/jtranspose/<time>-...; never overwritten)."),
    data_dir: DataDir = None,
    set_: Sets = [],
) -> None:
    """The nudged network's state shift (s^beta - s^0)/beta against backprop's error signal J^T e, per layer,
    for symmetric feedback over beta and for feedback B = cos(a) W^T + sin(a) R and sign(W^T)."""
    from bioprop_cli.metrics.jtranspose import DEFAULT_ANGLES, DEFAULT_BETAS

    if out is not None:
        from bioprop_cli.runs import check_folder

        check_folder(out, "--out", file_ok=True)
    n_batch = _positive_int(batch, "--batch")
    n_steps = _positive_int(max_steps, "--max-steps")
    beta_list = _numbers(betas, "--betas", 0.0, math.inf, True) if betas else list(DEFAULT_BETAS)
    angle_list = _numbers(angles, "--angles", 0.0, 180.0, False) if angles else list(DEFAULT_ANGLES)
    asym_beta = min(beta_list) if asymmetry_beta is None else asymmetry_beta
    if asym_beta not in beta_list:
        raise UserError(f"--asymmetry-beta: must be one of the betas ({', '.join(f'{b:g}' for b in beta_list)}), got {asym_beta!r}")
    flags = {"model.depth": depth, "model.width": width, "model.activation": activation, "seed": seed,
             "data.data_dir": data_dir}
    cfg = _load_config(run, config, set_, flags)
    from dataclasses import replace

    cfg = replace(cfg, ep=replace(cfg.ep, reference_steps=n_steps))  # the budget of this command's settling
    from bioprop_cli.rules.equilibrium import require_mse_cost

    require_mse_cost(cfg, "bioprop jtranspose")
    if cfg.model.activation not in ("hard_sigmoid", "sigmoid", "tanh"):
        raise UserError(f"config key 'model.activation': must be hard_sigmoid, sigmoid or tanh, got {cfg.model.activation!r}")

    from bioprop_cli.datasets import load_dataset

    dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir)
    if n_batch > len(dataset.x_train):
        raise UserError(f"--batch: at most the {len(dataset.x_train)} training images, got {n_batch}")
    _measure(cfg, dataset, run, n_batch, beta_list, angle_list, asym_beta, x64, out)


def _measure(cfg, dataset, run, n_batch, beta_list, angle_list, asym_beta, x64, out) -> None:
    from contextlib import nullcontext

    import jax
    import jax.numpy as jnp
    import numpy as np

    from bioprop_cli.config import to_dict
    from bioprop_cli.metrics.jtranspose import plot, run_jtranspose
    from bioprop_cli.models.energy import RHOS
    from bioprop_cli.metrics.conditions import cast_floats
    from bioprop_cli.models.mlp import layer_sizes
    from bioprop_cli.network import init_state
    from bioprop_cli.precision import float64
    from bioprop_cli.runs import append_jsonl, create_run_dir, write_atomic, write_json, write_yaml
    from bioprop_cli.train import N_CLASSES, derive_keys

    precision = "float64" if x64 else "float32"
    m = cfg.model
    sizes = layer_sizes(dataset.x_train.shape[1], m.depth, m.width, N_CLASSES)
    name = "-".join(str(n) for n in sizes)
    now = datetime.now(timezone.utc)
    if out is None:
        folder = create_run_dir(cfg.results_dir, "jtranspose", f"{now:%Y%m%d-%H%M%S}-{name}-{m.activation}-s{cfg.seed}-{precision}")
    else:
        folder = create_run_dir(out.parent, "", out.name)
    keys = derive_keys(cfg.seed)
    _, initial, _ = init_state(cfg, sizes, keys)  # drawn in float32: --x64 casts the same network
    with float64() if x64 else nullcontext():
        dtype = jnp.float64 if x64 else jnp.float32
        fresh = cast_floats(initial, dtype)
        params, source = _run_params(run, fresh, dtype)
        idx = np.sort(np.random.default_rng(cfg.seed).choice(len(dataset.x_train), n_batch, replace=False))
        x = jnp.asarray(dataset.x_train[idx], dtype)
        y = jax.nn.one_hot(jnp.asarray(dataset.y_train[idx]), N_CLASSES, dtype=dtype)
        with console.status(f"settling {name} ({precision}): {1 + len(angle_list) + 1} networks x {len(beta_list)} betas..."):
            records = run_jtranspose(params, x, y, RHOS[m.activation], cfg.ep, beta_list, angle_list,
                                     jax.random.fold_in(keys.rule, 2))
    for r in records:
        r["precision"] = precision
    write_yaml(folder / "config.yaml", to_dict(cfg))
    append_jsonl(folder / "jtranspose.jsonl", records)
    title = f"{name} {m.activation}, {source}, batch {n_batch}, {precision}"
    plot(records, folder / "jtranspose.png", asym_beta, f"J^T e made visible: {title}")

    recorder = Console(record=True, width=160, file=io.StringIO())  # the table.txt copy, not printed
    tables = _tables(records, asym_beta, title)
    for table in tables:
        console.print(table)
        recorder.print(table)
    worst = max(max(r["free_residual"], r["nudged_residual"]) for r in records)
    converged = worst < cfg.ep.reference_tolerance
    note = (f"settling residuals <= {worst:.1e} (tolerance ep.reference_tolerance = {cfg.ep.reference_tolerance:g}, "
            f"budget --max-steps {cfg.ep.reference_steps}); largest adjoint misfit "
            f"{max(r['adjoint_misfit'] for r in records):.1e}")
    if not converged:
        unsettled = sorted({f"{r['feedback']} {r['asymmetry_deg']:.0f}°" for r in records
                            if max(r["free_residual"], r["nudged_residual"]) >= cfg.ep.reference_tolerance})
        note += f"; NOT CONVERGED: {', '.join(unsettled)} (raise --max-steps; float32 may not reach a tolerance below ~1e-6)"
    console.print(note, style=None if converged else "yellow")
    recorder.print(note)
    write_atomic(folder / "table.txt", recorder.export_text())
    write_json(folder / "summary.json", {
        "sizes": list(sizes), "activation": m.activation, "source": source, "batch": n_batch, "precision": precision,
        "betas": beta_list, "angles": angle_list, "asymmetry_beta": asym_beta, "converged": bool(converged),
        "max_steps": cfg.ep.reference_steps, "tolerance": cfg.ep.reference_tolerance, "max_residual": worst,
    })
    console.print(f"written: {folder}/table.txt, jtranspose.jsonl, jtranspose.png, summary.json")


def _fmt(v) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.2f}"


def _tables(records: list[dict], asym_beta: float, title: str) -> list[Table]:
    layers = sorted({r["layer"]: r["layer_name"] for r in records}.items())
    settled = lambda rs: max(max(r["free_residual"], r["nudged_residual"]) for r in rs)
    sym = Table(title=f"symmetric feedback (B = W^T): angle(shift, -J^T e) in degrees / relative error, per layer — {title}")
    sym.add_column("beta", justify="right")
    for _, n in layers:
        sym.add_column(n, justify="right")
    for beta in sorted({r["beta"] for r in records}):
        row = {r["layer"]: r for r in records if r["feedback"] == "symmetric" and r["beta"] == beta}
        sym.add_row(f"{beta:g}", *(f"{_fmt(row[k]['angle'])}° / {row[k]['rel_error']:.2g}" for k, _ in layers))
    asym = Table(title=f"feedback B != W^T at beta = {asym_beta:g}: angle(shift, -J^T e) in degrees / relative error")
    asym.add_column("feedback", justify="left")
    asym.add_column("angle(B, W^T)", justify="right")
    for _, n in layers:
        asym.add_column(n, justify="right")
    asym.add_column("residual", justify="right")  # of the settling (free and nudged): > the tolerance = not settled
    for kind in ("mixed", "sign"):
        for a in sorted({r["asymmetry_deg"] for r in records if r["feedback"] == kind}):
            row = {r["layer"]: r for r in records
                   if r["feedback"] == kind and r["asymmetry_deg"] == a and r["beta"] == asym_beta}
            label = f"cos(a) W^T + sin(a) R, a = {a:g}" if kind == "mixed" else "c sign(W^T)"
            asym.add_row(label, f"{a:.1f}°", *(f"{_fmt(row[k]['angle'])}° / {row[k]['rel_error']:.2g}" for k, _ in layers),
                         f"{settled(row.values()):.1e}")
    return [sym, asym]


jtranspose = user_errors_exit_2(jtranspose)
