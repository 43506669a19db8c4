"""`bioprop jtranspose`: the nudged state shift of a layered EP network against backprop's J^T e.

The study is bioprop_cli/studies/jtranspose.py; the definitions and the derivation are in
bioprop_cli/metrics/jtranspose.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from bioprop_cli.cli.common import (
    X64, ConfigFile, RunFolder, Sets, config_file, config_from_flags, console, refuse_other_rule, run_config_file,
    run_flags, stored_params, user_errors_exit_2,
)
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


@user_errors_exit_2
@run_flags("depth", "width", "seed", "data_dir")
def jtranspose(
    run: RunFolder = None,
    config: ConfigFile = None,  # rule ep is implied
    activation: Optional[str] = typer.Option(None, help="hard_sigmoid (EP default), sigmoid or tanh."),
    batch: int = typer.Option(100, min=1, help="Number of MNIST training images in the input batch."),
    betas: Optional[str] = typer.Option(None, help="Comma-separated nudging strengths (default 1e-3 .. 1, log-spaced)."),
    angles: Optional[str] = typer.Option(None, help="Asymmetry angles a in degrees (default 0,15,...,90)."),
    asymmetry_beta: Optional[float] = typer.Option(None, help="The beta of the asymmetry table and panel (default: the smallest)."),
    max_steps: int = typer.Option(20000, min=1, help="Settling budget of every phase; each stops once its step is below "
                                  "ep.reference_tolerance (a fresh 784-500-10 network needs ~3000: spectral radius 0.994)."),
    x64: X64 = False,
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default RESULTS_DIR/jtranspose/<time>-...; never overwritten)."),
    set_: Sets = [],
    *,
    flags: dict,
) -> None:
    """The nudged network's state shift (s^beta - s^0)/beta against backprop's error signal J^T e, per layer,
    for symmetric feedback over beta and for feedback B = cos(a) W^T + sin(a) R and sign(W^T)."""
    from bioprop_cli.metrics.jtranspose import DEFAULT_ANGLES, DEFAULT_BETAS

    if out is not None:
        from bioprop_cli.runs import check_folder

        check_folder(out, "--out", file_ok=True)
    beta_list = _numbers(betas, "--betas", 0.0, math.inf, True) if betas else list(DEFAULT_BETAS)
    from bioprop_cli.precision import float32_normal_problem

    for beta in beta_list:
        if float32_normal_problem(beta):
            raise UserError(f"--betas: {float32_normal_problem(beta)}")
    angle_list = _numbers(angles, "--angles", 0.0, 180.0, False) if angles else list(DEFAULT_ANGLES)
    asym_beta = min(beta_list) if asymmetry_beta is None else asymmetry_beta
    if asym_beta not in beta_list:
        raise UserError(f"--asymmetry-beta: must be one of the betas ({', '.join(f'{b:g}' for b in beta_list)}), got {asym_beta!r}")
    config = config_file(config)
    if run is not None:
        if config is not None:
            raise UserError("--run and --config: give one (the run's config.yaml is its config)")
        config = run_config_file(run)
    refuse_other_rule(set_, "ep", "jtranspose")
    cfg = config_from_flags(config, ["rule=ep"] + list(set_), activation=activation, **flags)
    from bioprop_cli.config import derive

    cfg = derive(cfg, {"ep.reference_steps": max_steps})  # the budget of this command's settling
    from bioprop_cli.rules.equilibrium import require_mse_cost

    require_mse_cost(cfg, "bioprop jtranspose")
    if cfg.model.activation not in ("hard_sigmoid", "sigmoid", "tanh"):
        raise UserError(f"config key 'model.activation': must be hard_sigmoid, sigmoid or tanh, got {cfg.model.activation!r}")
    if cfg.ep.dynamics != "gradient":
        raise UserError(f"config key 'ep.dynamics': bioprop jtranspose measures the gradient dynamics only, got {cfg.ep.dynamics!r}")

    from bioprop_cli.datasets import load_dataset

    dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data)
    if batch > len(dataset.x_train):
        raise UserError(f"--batch: at most the {len(dataset.x_train)} training images, got {batch}")
    _measure(cfg, dataset, run, batch, beta_list, angle_list, asym_beta, x64, out)


def _measure(cfg, dataset, run, n_batch, beta_list, angle_list, asym_beta, x64, out) -> None:
    from bioprop_cli.experiment.runner import resuming
    from bioprop_cli.studies import jtranspose as study

    stored = stored_params(run)  # a damaged params.npz: refused before the output folder exists
    measurement = study.JTransposeStudy(cfg, dataset, n_batch, beta_list, angle_list, asym_beta, x64, stored, run)
    folder = study.folder_for(measurement, out)
    if resuming(folder):
        console.print(f"resuming {folder}: the networks measured before are kept", soft_wrap=True, highlight=False)
    with console.status(f"settling {measurement.name_of_network} ({measurement.precision}): "
                        f"{len(measurement.points())} networks x {len(beta_list)} betas..."):
        result = study.run(measurement, folder)
    for table in study.tables(result):
        console.print(table)
    console.print(result["note"], style=None if result["summary"]["converged"] else "yellow")
    console.print(f"written: {folder}/table.txt, jtranspose.jsonl, jtranspose.png, summary.json")
