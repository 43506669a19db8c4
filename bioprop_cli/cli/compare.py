"""`bioprop compare PATH...`: tables, findings, figures and a report over run folders and beta sweeps."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table as RichTable

from bioprop_cli.cli.common import console, user_errors_exit_2
from bioprop_cli.errors import UserError
from bioprop_cli.runs import check_folder, make_folder

FORMATS = ("csv", "json")


def report_dir(out: Path) -> Path:
    """`out` itself unless it already holds a report (report.md) or is not a folder; else out-1, out-2, ..."""
    for i in range(0, 10_000):
        candidate = out if i == 0 else out.with_name(f"{out.name}-{i}")
        if not candidate.exists() or (candidate.is_dir() and not (candidate / "report.md").exists()):
            return candidate
    raise UserError(f"{out}: could not find a free report folder name")


def _rich(table) -> RichTable:
    rt = RichTable(title=table.title)
    for i, h in enumerate(table.headers):
        rt.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
    for row in table.rows:
        rt.add_row(*row)
    return rt


def write_group_table(rows: list[dict], out: Path, fmt: str) -> Path:
    from bioprop_cli.runs import write_atomic, write_json

    if fmt == "json":
        path = out / "groups.json"
        write_json(path, rows)
        return path
    path = out / "groups.csv"
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields})
    write_atomic(path, buffer.getvalue())
    return path


@user_errors_exit_2
def compare(
    paths: List[Path] = typer.Argument(..., help="Run folders, sweep folders, or any folders above them (searched recursively)."),
    target: float = typer.Option(0.97, help="Test accuracy to reach (a fraction in (0, 1]): epochs and seconds to get there."),
    margin: float = typer.Option(0.01, help="A rule breaks at the first depth where it is more than this below the baseline (0.01 = 1 point)."),
    baseline: Optional[str] = typer.Option(None, help=escape("The rule the others are measured against: breaking depths and gaps [default: bp].")),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report folder (default: <first PATH>/report; never overwritten: -1, -2, ... instead)."),
    format: Optional[str] = typer.Option(None, "--format", help="Also write the group table as csv (groups.csv) or json (groups.json)."),
) -> None:
    """Compare runs: group them by the config keys that differ, aggregate over seeds, find the breaking depths, write a report."""
    from bioprop_cli.report.aggregate import _rule_rank
    from bioprop_cli.report.comparison import aggregate, group_table
    from bioprop_cli.report.plots import make_figures
    from bioprop_cli.report.render import all_tables, plural, write_report

    if not 0.0 < target <= 1.0:
        raise UserError(f"--target: must be a test accuracy in (0, 1], e.g. 0.97, got {target:g}")
    if not margin >= 0.0:
        raise UserError(f"--margin: must be >= 0 (0.01 = 1 percentage point), got {margin:g}")
    requested = Path(out) if out is not None else Path(paths[0]) / "report"
    check_folder(requested, "--out", file_ok=True)
    fmt = None
    if format is not None:
        fmt = format.strip().lower()
        if fmt not in FORMATS:
            raise UserError(f"--format: must be one of {', '.join(FORMATS)}, got {format!r}")

    comparison = aggregate(paths, target=target, margin=margin, baseline=baseline or "bp")
    rules = {g.rule for g in comparison.groups}
    if baseline is not None and baseline not in rules:
        known = ", ".join(sorted(map(str, rules), key=_rule_rank))
        raise UserError(f"--baseline: no {baseline!r} runs under the paths; the rules there are {known}")

    folder = report_dir(requested)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder")
    make_folder(folder)

    n_runs = sum(g.stats["n_runs"] for g in comparison.groups)
    left_out = f" ({len(comparison.excluded)} more not counted: see the findings)" if comparison.excluded else ""
    console.print(f"[bold]bioprop compare[/] {plural(n_runs, 'run')} in {plural(len(comparison.groups), 'group')}, "
                  f"{plural(len(comparison.sweeps), 'beta sweep')}; grouped by: {', '.join(comparison.keys) or 'nothing'}"
                  f"{left_out}", highlight=False)
    for table in all_tables(comparison):
        console.print(_rich(table))
    console.print("[bold]Findings[/]")
    for line in comparison.findings:
        console.print(f"- {line}", highlight=False)

    figures = make_figures(comparison, folder)
    md, page = write_report(comparison, figures, folder)
    written = [md.name, page.name, *(p.name for _, p in figures)]
    if fmt:
        written.append(write_group_table(group_table(comparison), folder, fmt).name)
    if folder != requested:
        console.print(f"{requested} already holds a report; writing to {folder} instead", highlight=False)
    console.print(f"report: {folder} ({', '.join(written)})", highlight=False)
