"""`bioprop conditions`: which of the seven conditions of gradient equivalence hold for a rule and setup.

The study is bioprop_cli/studies/conditions.py (the measurements: bioprop_cli/metrics/conditions.py).
Output: a rich table (one row per condition), the per-layer gradient equivalence beneath it, and
conditions.json written into the run folder (`--run`) or into `--out`, never over an existing one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from bioprop_cli.cli.common import (
    X64, ConfigFile, RunFolder, Sets, config_file, config_from_flags, console, run_config_file, run_flags, stored_params,
    user_errors_exit_2,
)
from bioprop_cli.errors import UserError

STATUS_STYLE = {"holds": "green", "partial": "yellow", "fails": "red", "n/a": "dim"}


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def conditions_rich_table(result: dict) -> Table:
    s = result["setup"]
    title = (f"conditions for gradient equivalence · {s['rule']} · {'-'.join(map(str, s['layer_sizes']))} "
             f"{s['activation']} · {s['precision']} · probe {s['probe_size']}")
    table = Table(title=title, show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("condition")
    table.add_column("status")
    table.add_column("measured", overflow="fold")
    table.add_column("threshold", overflow="fold")
    table.add_column("reason", overflow="fold")
    for r in result["conditions"]:
        style = STATUS_STYLE.get(r["status"], "")
        table.add_row(str(r["condition"]), r["name"], f"[{style}]{r['status']}[/]", r["measured"], r["threshold"], r["reason"])
    return table


def equivalence_rich_table(result: dict) -> Table:
    eq = result["gradient_equivalence"]
    style = STATUS_STYLE.get(eq["status"], "")
    worst = f"worst: layer {eq['worst_layer']}, {_fmt(eq['worst_angle'], '.2f')}°"
    table = Table(title=f"gradient equivalence: [{style}]{eq['status']}[/] (graded on {eq['graded_on']}; {worst})",
                  caption=f"update vs {eq['reference']}; {eq['threshold']}; the whole network (all) is shown, not graded")
    table.add_column("layer", justify="right")
    table.add_column("angle (°)", justify="right")
    table.add_column("rel. error", justify="right")
    for row in eq["layers"]:
        graded = "" if row["layer"] in eq["graded_layers"] else " (not graded)"
        table.add_row(f"{row['layer']}{graded}", _fmt(row["update_angle"], ".2f"), _fmt(row["update_rel_error"], ".3e"))
    net = eq["network"]
    table.add_row("all", _fmt(net.get("update_angle"), ".2f"), _fmt(net.get("update_rel_error"), ".3e"))
    return table


@user_errors_exit_2
@run_flags("rule", "depth", "width", "seed", "data_dir")
def conditions(
    run: RunFolder = None,  # conditions.json goes there
    config: ConfigFile = None,
    set_: Sets = [],
    probe_size: int = typer.Option(256, min=1, help="Training examples in the probe batch."),
    x64: X64 = False,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for conditions.json (default: the --run folder; else nothing is written)."),
    *,
    flags: dict,
) -> None:
    """Which of the seven conditions that make a local rule's update equal backprop's hold for this rule and setup, measured."""
    from bioprop_cli.config import check_against_data
    from bioprop_cli.datasets import load_dataset
    from bioprop_cli.studies import conditions as study

    config = config_file(config)
    if run is not None and config is not None:
        raise UserError("give --run RUN_FOLDER or --config FILE, not both")
    if run is not None:
        config = run_config_file(run)
    if out is not None:
        from bioprop_cli.runs import check_folder

        check_folder(out, "--out")
    cfg = config_from_flags(config, set_, **flags)
    from bioprop_cli.rules.equilibrium import require_mse_cost

    require_mse_cost(cfg, "bioprop conditions")
    dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data)
    n_train = check_against_data(cfg, len(dataset.x_train))
    probe = min(probe_size, n_train)
    params = stored_params(run)
    with console.status(f"measuring the conditions of {cfg.rule} on {probe} probe examples..."):
        result = study.run(cfg, dataset, probe, x64, params=params, source=f"--run {run}/params.npz", run_folder=run)
    console.print(conditions_rich_table(result))
    console.print(equivalence_rich_table(result))
    s = result["setup"]
    applicable = [r for r in result["conditions"] if r["status"] != "n/a"]
    holding = [r for r in applicable if r["status"] == "holds"]
    console.print(
        f"{len(holding)} of {len(applicable)} applicable conditions hold; measured on {s['probe']} "
        f"({s['precision']}, {s['seconds']:.1f} s)", highlight=False)
    final = (result.get("run") or {}).get("final_alignment")
    if final:
        angles = ", ".join(f"{r['layer']}: {_fmt(r['update_angle'], '.1f')}°" for r in final["layers"])
        console.print(f"the run's own last measurement (epoch {final['epoch']}): update angle per layer {angles}",
                      highlight=False)
    folder = out if out is not None else run
    if folder is not None:
        path = study.write(result, folder)
        note = "" if path.name == "conditions.json" else " (conditions.json exists: not overwritten)"
        console.print(f"written: {path}{note}", highlight=False)
