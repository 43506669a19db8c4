"""`bioprop train`: one training run, written to results/<experiment>/<run-id>/."""

from __future__ import annotations

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bioprop_cli.cli.common import (
    RUN_FLAGS, ConfigFile, Sets, config_file, config_from_flags, console, run_flags, user_errors_exit_2,
)
from bioprop_cli.config import check_against_data
from bioprop_cli.datasets import load_dataset
from bioprop_cli.models.arch import label
from bioprop_cli.runs import RunWriter, create_run_dir, failed_if_out_of_resources, run_id
from bioprop_cli.train import EpochReport, train as train_run


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@user_errors_exit_2
@run_flags(*RUN_FLAGS)
def train(
    config: ConfigFile = None,
    set_: Sets = [],
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    *,
    flags: dict,
) -> None:
    """Train one network with one learning rule and log accuracy and alignment with backprop."""
    cfg = config_from_flags(config_file(config), set_, **flags)
    dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data)
    check_against_data(cfg, len(dataset.x_train))  # before anything is written
    run_dir = create_run_dir(cfg.results_dir, cfg.experiment, run_id(cfg.rule, label(cfg.model), cfg.seed))
    network = f"depth={cfg.model.depth} width={cfg.model.width}" if cfg.model.arch == "mlp" else f"arch={cfg.model.arch}"
    console.print(f"[bold]bioprop train[/] rule={cfg.rule} {network} data={dataset.name} ({dataset.source})")
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
        bar.update(task, advance=1, status=status)
        if not progress:
            console.print(f"epoch {r['epoch']}: {status}")

    with bar, failed_if_out_of_resources(run_dir):
        summary = train_run(cfg, dataset, RunWriter(run_dir), on_epoch)
    console.print(summary_table(summary))
    console.print(f"run folder: {run_dir}", highlight=False)  # on its own line, never wrapped: to be copied
    if summary["status"] == "interrupted":
        raise typer.Exit(code=130)


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
