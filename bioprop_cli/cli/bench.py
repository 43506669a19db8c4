"""`bioprop bench`: throughput of every rule against the machine's matmul peak."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from bioprop_cli.cli.common import DataDir, Sets, console, refuse_given, user_errors_exit_2
from bioprop_cli.config import parse_override


@user_errors_exit_2
def bench(
    ctx: typer.Context,
    rules: Optional[str] = typer.Option(None, help="Comma-separated rules (default: all)."),
    repeats: int = typer.Option(3, min=1, max=100, help="Timed epochs per rule; the best is reported."),
    data_dir: DataDir = None,
    synthetic: bool = typer.Option(False, help="Use random arrays of MNIST's shapes instead of MNIST."),
    set_: Sets = [],
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """One epoch of MNIST per rule (784-256x5-10 tanh, batch 128, SGD; ep: 784-512-10, batch 50, T1=30, T2=10) after compilation."""
    from bioprop_cli.bench import run_benchmark, synthetic_mnist
    from bioprop_cli.datasets import load_dataset
    from bioprop_cli.runs import check_new_file

    if synthetic:
        refuse_given(ctx, ["data_dir"], "--synthetic reads no data; drop it")
    if json_out is not None:
        check_new_file(json_out, "--json")  # before the benchmark, not after minutes of it

    dataset = synthetic_mnist() if synthetic else load_dataset("mnist", data_dir)
    report = run_benchmark(
        dataset, rules.split(",") if rules else None, repeats, [parse_override(s) for s in set_]
    )
    console.print(report_table(report))
    for r in report["results"]:
        if r.get("settling_steps_per_s"):
            console.print(f"{r['rule']}: {r['settling_steps_per_s']:,.0f} settling steps/s (per example)")
    if json_out is not None:
        from bioprop_cli.runs import write_json

        write_json(json_out, report)
        console.print(f"figures written to {json_out}")


def report_table(report: dict) -> Table:
    table = Table(
        title=f"bioprop bench · {report['device']} · jax {report['jax']} · "
        f"matmul peak {report['matmul_peak_gflops']:.0f} GFLOP/s"
    )
    for name in ("rule", "network", "ex/s", "GFLOP/s", "peak", "÷ jax.grad", "÷ bp", "align.", "compile s"):
        table.add_column(name, justify="right" if name not in ("rule", "network") else "left")
    for r in report["results"] + [report["reference"]]:
        table.add_row(
            r["rule"],
            r["network"],
            f"{r['examples_per_s']:,.0f}",
            f"{r['gflops']:.1f}",
            f"{100 * r['fraction_of_peak']:.0f}%",
            "-" if r.get("vs_reference") is None else f"{r['vs_reference']:.2f}",
            "-" if r.get("vs_bp") is None else f"{r['vs_bp']:.2f}",
            "-" if "alignment_overhead" not in r else f"{100 * r['alignment_overhead']:.1f}%",
            f"{r['compile_s']:.2f}",
        )
    return table
