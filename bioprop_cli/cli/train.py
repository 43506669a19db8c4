"""`bioprop train`: one training run, written to results/<experiment>/<run-id>/."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bioprop_cli.cli.common import (
    RUN_FLAGS, ConfigFile, Sets, config_file, config_from_flags, console, run_flags, user_errors_exit_2,
)
from bioprop_cli import checkpoint
from bioprop_cli.config import check_against_data
from bioprop_cli.errors import UserError
from bioprop_cli.live import require_live
from bioprop_cli.datasets import load_dataset
from bioprop_cli.models.arch import label
from bioprop_cli.splits import device_memory_bytes, feed_plan
from bioprop_cli.runs import RunWriter, create_run_dir, failed_if_out_of_resources, folder_lock, process_alive, run_id
from bioprop_cli.train import EpochReport, check_resume, resume_run, train as train_run


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@user_errors_exit_2
@run_flags(*RUN_FLAGS)
def train(
    config: ConfigFile = None,
    set_: Sets = [],
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="RUN_DIR", help="Continue this run from its "
                                          "checkpoint, into its folder (its config.yaml; flags change it only with --force)."),
    force: bool = typer.Option(False, "--force", help="With --resume: resume even where the config or code differs "
                               "from the checkpoint's (recorded in summary.json)."),
    log: List[str] = typer.Option([], "--log", metavar="KIND", help="Live curves: tensorboard | wandb (repeatable; log.live)."),
    *,
    flags: dict,
) -> None:
    """Train one network with one learning rule and log accuracy and alignment with backprop."""
    if resume is not None and config:
        raise UserError("--config: a resumed run's config is its config.yaml; change keys with --set and --force")
    if force and resume is None:
        raise UserError("--force: only with --resume RUN_DIR")
    base = config_file(config) if resume is None else resumed_config_file(resume)
    if log:
        set_ = [*set_, f"log.live=[{', '.join(log)}]"]
    cfg = config_from_flags(base, set_, **flags)
    require_live(cfg.log.live)
    checked = None if resume is None else check_resume(resume, cfg, force)
    dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data)
    check_against_data(cfg, len(dataset.x_train))  # before anything is written
    if resume is None:
        run_dir = create_run_dir(cfg.results_dir, cfg.experiment, run_id(cfg.rule, label(cfg.model), cfg.seed))
    else:
        run_dir = resume
    network = f"depth={cfg.model.depth} width={cfg.model.width}" if cfg.model.arch == "mlp" else f"arch={cfg.model.arch}"
    console.print(f"[bold]bioprop train[/] rule={cfg.rule} {network} data={dataset.name} ({dataset.source})")
    console.print(feed_plan(cfg, dataset, device_memory_bytes()).line(), highlight=False)
    bar = Progress(
        TextColumn("epoch"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not progress,
    )
    task = bar.add_task("train", total=cfg.train.epochs, status="compiling...")

    def on_epoch(report: EpochReport) -> None:
        r = report.record
        status = (
            f"loss {_fmt(r.get('train_loss'), '.4f')}  val acc {_fmt(r.get('val_accuracy'), '.4f')}  "
            f"angle {_fmt(r.get('mean_update_angle'), '.1f')}°"
        )
        bar.update(task, completed=r["epoch"], status=status)
        if not progress:
            console.print(f"epoch {r['epoch']}: {status}")

    def on_progress(epoch: int, step: int, steps_per_epoch: int) -> None:  # moves the bar inside an epoch
        if step < steps_per_epoch:
            bar.update(task, completed=epoch - 1 + step / steps_per_epoch)

    with bar, failed_if_out_of_resources(run_dir), (folder_lock(run_dir) if resume else contextlib.nullcontext()):
        if resume is None:
            summary = train_run(cfg, dataset, RunWriter(run_dir), on_epoch, on_progress=on_progress)
        else:
            summary = resume_run(run_dir, dataset, cfg, on_epoch=on_epoch, on_progress=on_progress, checked=checked)
    console.print(summary_table(summary))
    console.print(f"run folder: {run_dir}", highlight=False)  # on its own line, never wrapped: to be copied
    if summary["status"] == "interrupted" and summary.get("stopped_by") == "train.max_minutes":
        console.print(f"time budget spent (train.max_minutes); continue with: bioprop train --resume {run_dir}",
                      highlight=False)
    elif summary["status"] == "interrupted":
        raise typer.Exit(code=130)


def resumed_config_file(run_dir: Path) -> Path:
    """RUN_DIR/config.yaml of a run that can be resumed: a UserError where it is not a run folder or has no checkpoint."""
    if not run_dir.is_dir() or not (run_dir / "config.yaml").is_file():
        raise UserError(f"--resume {run_dir}: not a run folder (no config.yaml)")
    if not checkpoint.path(run_dir).is_file():
        raise UserError(f"--resume {run_dir}: no checkpoint ({checkpoint.path(run_dir)}); the run stopped before its first one")
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    if isinstance(summary, dict) and summary.get("status") == "running" and process_alive(summary):
        raise UserError(f"--resume {run_dir}: the run is still training (PID {summary.get('pid')} on {summary.get('host')})")
    return run_dir / "config.yaml"


def _divergence_note(divergence: dict | None) -> str:
    return f" ({divergence['reason']}, epoch {divergence['epoch']})" if divergence else ""


def summary_table(summary: dict) -> Table:
    conv = summary.get("architecture", "").startswith("conv")  # models.arch: a conv net's description
    network = summary["architecture"] if conv else f"depth {summary['depth']}"
    table = Table(title=f"{summary['rule']} · {network} · seed {summary['seed']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("status", summary["status"] + _divergence_note(summary.get("divergence"))),
        ("test accuracy", _fmt(summary.get("test_accuracy"), ".4f")),
        ("best val accuracy", f"{_fmt(summary.get('best_val_accuracy'), '.4f')} (epoch {summary.get('best_val_epoch')})"),
        ("mean update angle to bp", _fmt(summary.get("final_mean_update_angle"), ".1f") + "°"),
        ("epochs", str(summary.get("epochs_completed"))),
        ("examples/s", _fmt(summary.get("examples_per_s"), ",.0f")),
        ("compile / wall time", f"{summary['compile_time_s']:.1f} s / {summary['wall_time_s']:.1f} s"),
        ("device", f"{summary['device']['kind']} ({summary['device']['platform']})"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table
