"""report.md and a self-contained report.html (figures as base64 data URIs, inline CSS, nothing external).

Both are rendered from one list of blocks, so they say the same; the text tables are also what
`bioprop compare` prints.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bioprop_cli.report.aggregate import _rule_rank, _sort_value, context_label, depth_table, format_value
from bioprop_cli.report.axes import axis_slices, diverged, stable, tuned_best
from bioprop_cli.report.comparison import Comparison
from bioprop_cli.runs import write_atomic


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]


# --- number formats ---------------------------------------------------------------------------


def pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def pct_pm(mean: Optional[float], std: Optional[float]) -> str:
    """'98.00 ± 0.12%' (or '98.00%' for one seed)."""
    if mean is None:
        return "-"
    return f"{100 * mean:.2f}%" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}%"


def num(x: Optional[float], digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


# --- tables -----------------------------------------------------------------------------------


def accuracy_table(c: Comparison) -> Table:
    """One row per group; the dataset and its class count in the title (a column when groups differ in it), top-5
    accuracy where a group has it (more than ten classes)."""
    rows = []
    datas = {g.stats["data"] for g in c.groups}
    top5 = any(g.stats["test_top5_accuracy_mean"] is not None for g in c.groups)
    for g in c.groups:
        s = g.stats
        status = "/".join(str(s["status"].get(k, 0)) for k in ("completed", "diverged", "interrupted"))
        others = {k: v for k, v in s["status"].items() if k not in ("completed", "diverged", "interrupted") and v}
        if others:
            status += " (" + ", ".join(f"{v} {k}" for k, v in others.items()) + ")"
        rows.append([g.label, str(s["n_runs"]), pct_pm(s["test_accuracy_mean"], s["test_accuracy_std"]),
                     *([pct_pm(s["test_top5_accuracy_mean"], s["test_top5_accuracy_std"])] if top5 else []),
                     pct_pm(s["best_val_accuracy_mean"], s["best_val_accuracy_std"]), status,
                     num(s["wall_time_s_mean"]), num(s["examples_per_s_mean"], 0),
                     *([s["data"]] if len(datas) > 1 else [])])
    on = f" on {next(iter(datas))}" if len(datas) == 1 else ""
    return Table(f"Final test accuracy{on} (mean ± std over seeds; c/d/i: completed/diverged/interrupted runs)",
                 ["group", "seeds", "test acc.", *(["top-5 acc."] if top5 else []), "best val acc.", "c/d/i",
                  "wall s", "ex./s", *(["data"] if len(datas) > 1 else [])],
                 rows)


def selection_table(c: Comparison) -> Table:
    """Test accuracy by the epoch it is read at: the last, the best on validation, the best on the test set."""
    rows = [[g.label, pct_pm(g.stats["test_accuracy_mean"], g.stats["test_accuracy_std"]),
             pct_pm(g.stats["test_at_best_val_mean"], g.stats["test_at_best_val_std"]),
             pct_pm(g.stats["best_test_accuracy_mean"], g.stats["best_test_accuracy_std"])] for g in c.groups]
    return Table("Test accuracy by the epoch it is read at (mean ± std over seeds; the best test epoch is chosen on "
                 "the test set itself, as biotorch's tables are: optimistic)",
                 ["group", "last epoch", "best val. epoch", "best test epoch"], rows)


def target_table(c: Comparison) -> Table:
    rows = []
    for g in c.groups:
        s = g.stats
        rows.append([g.label, f"{s['target_reached']}/{s['n_runs']}", num(s["epochs_to_target_mean"]), num(s["seconds_to_target_mean"])])
    return Table(f"Reaching {pct(c.target)} test accuracy (means over the seeds that reached it)",
                 ["group", "reached", "epochs", "seconds"], rows)


def angle_table(c: Comparison) -> Table:
    layers = sorted({l for g in c.groups for l in g.stats["final_update_angle"]})
    rows = [[g.label, *(num(g.stats["final_update_angle"].get(l)) for l in layers)] for g in c.groups]
    return Table("Final update angle to the gradient per layer (°, mean over seeds; layer 0 = first weight matrix)",
                 ["group", *(f"layer {l}" for l in layers)], rows)


def depth_tables(c: Comparison) -> list[Table]:
    """One table per context; with swept hyperparameter axes, only the contexts that hold several depths
    (the one-depth tables would repeat the axis tables column by column)."""
    tables = []
    for context, by_rule in depth_table(c.groups).items():
        depths = sorted({d for acc in by_rule.values() for d in acc}, key=_sort_value)
        if c.axes and len(depths) < 2:
            continue
        breaking = c.breaking.get(context, {})
        rows = []
        for rule in sorted(by_rule, key=_rule_rank):
            b = "-" if rule not in breaking else ("never" if breaking[rule] is None else str(breaking[rule]))
            rows.append([str(rule), *(pct(by_rule[rule].get(d)) for d in depths), b])
        where = f" ({context_label(context)})" if context else ""
        tables.append(Table(f"Mean final test accuracy by rule and depth{where}; breaking depth: more than "
                            f"{100 * c.margin:.2f} points below {c.baseline}",
                            ["rule", *(f"depth {d}" for d in depths), "breaking depth"], rows))
    return tables


def _axis_cell(g) -> str:
    if g is None:
        return "-"
    cell = pct_pm(g.stats["test_accuracy_mean"], g.stats["test_accuracy_std"])
    return cell if stable(g) else f"{cell} ({diverged(g)}/{g.stats['n_runs']} diverged)"


def axis_tables(c: Comparison) -> list[Table]:
    """Per swept axis and slice: mean ± std final test accuracy per rule and axis value, and the best value."""
    tables = []
    for key in c.axes:
        for s in axis_slices(c.groups, key):
            rows = []
            for rule, by_value in s.by_rule.items():
                cells = [_axis_cell(by_value.get(v)) for v in s.values]
                best = s.best_value(rule)
                rows.append([str(rule), *cells, "-" if best is None else format_value(best[0])])
            where = f" ({s.label})" if s.context else ""
            tables.append(Table(f"Final test accuracy by rule and {key}{where} (mean ± std over seeds; a diverged "
                                f"run counts with its last finite epoch)",
                                ["rule", *(f"{key}={format_value(v)}" for v in s.values), "best (on val. acc.)"], rows))
    return tables


def tuned_table(c: Comparison) -> Optional[Table]:
    """Each rule at its own best setting of the swept axes, and its gap to the baseline's best in the same context."""
    if not c.axes:
        return None
    best = tuned_best(c.groups, c.axes)
    with_context = any(best)
    rows = []
    for context, by_rule in best.items():
        base = by_rule.get(c.baseline)
        for rule, g in by_rule.items():
            s = g.stats
            gap = "-" if base is None or rule == c.baseline else f"{100 * (base.stats['test_accuracy_mean'] - s['test_accuracy_mean']):.2f}"
            rows.append([str(rule), *([context_label(context)] if with_context else []),
                         *(format_value(g.keys.get(k)) for k in c.axes),
                         pct_pm(s["val_accuracy_mean"], s["val_accuracy_std"]),
                         pct_pm(s["test_accuracy_mean"], s["test_accuracy_std"]), gap])
    return Table(f"Each rule at its best setting (chosen on the highest mean final validation accuracy with no seed diverged; "
                 f"the test accuracy there; gap in test points below {c.baseline}'s)",
                 ["rule", *(["context"] if with_context else []), *c.axes, "val acc.", "test acc.", f"gap to {c.baseline}"], rows)


def beta_table(c: Comparison) -> Optional[Table]:
    rows = []
    for sweep in c.sweeps:
        for estimator, s in sweep.slopes.items():
            if not isinstance(s, dict):
                continue
            betas = s.get("betas") or []
            rows.append([sweep.path.name, str(estimator), num(s.get("slope"), 2),
                         f"{min(betas):g} to {max(betas):g}" if betas else "-",
                         "-" if s.get("sweet_spot") is None else f"{s['sweet_spot']:g}"])
    if not rows:
        return None
    return Table("Beta sweeps: log-log slope of the bias against beta", ["sweep", "estimator", "slope", "betas fitted", "sweet spot"], rows)


def all_tables(c: Comparison) -> list[Table]:
    tables = []
    if c.groups:
        tables += [accuracy_table(c), selection_table(c), target_table(c)]
        if any(g.stats["final_update_angle"] for g in c.groups):
            tables.append(angle_table(c))
        tables += depth_tables(c)
        tables += axis_tables(c)
        tuned = tuned_table(c)
        if tuned:
            tables.append(tuned)
    beta = beta_table(c)
    if beta:
        tables.append(beta)
    return tables


# --- markdown and html ------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> str:
    lines = [f"### {t.title}", "", "| " + " | ".join(map(_md_cell, t.headers)) + " |",
             "|" + "|".join("---" for _ in t.headers) + "|"]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in t.rows]
    return "\n".join(lines) + "\n"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _sources(c: Comparison) -> str:
    n_runs = sum(g.stats["n_runs"] for g in c.groups)
    keys = ", ".join(f"`{k}`" for k in c.keys) or "none"
    return (f"{plural(n_runs, 'run')} in {plural(len(c.groups), 'group')} and {plural(len(c.sweeps), 'beta sweep')}, from "
            f"{', '.join(str(p) for p in c.paths)}. Grouped by: {keys}.")


def to_markdown(c: Comparison, figures: list[tuple[str, Path]], out: Path) -> str:
    parts = ["# bioprop compare", "", _sources(c), "", "## Findings", ""]
    parts += [f"- {line}" for line in c.findings] or ["- (nothing to compare)"]
    parts += ["", "## Tables", ""]
    parts += [_md_table(t) for t in all_tables(c)]
    if figures:
        parts += ["## Figures", ""]
        for caption, path in figures:
            rel = Path(path).relative_to(out) if Path(path).is_relative_to(out) else Path(path)
            parts += [f"### {caption}", "", f"![{caption}]({rel.as_posix()})", ""]
    return "\n".join(parts).rstrip() + "\n"


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; color: #222; }
h1, h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
img { max-width: 100%; }
code { background: #f4f4f4; padding: 0 .2em; }
""".strip()


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in t.rows)
    return f"<h3>{html.escape(t.title)}</h3>\n<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def to_html(c: Comparison, figures: list[tuple[str, Path]]) -> str:
    sources = html.escape(_sources(c)).replace("`", "")
    findings = "".join(f"<li>{html.escape(line)}</li>" for line in c.findings) or "<li>(nothing to compare)</li>"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', "<title>bioprop compare</title>",
        f"<style>\n{CSS}\n</style></head><body>", "<h1>bioprop compare</h1>", f"<p>{sources}</p>",
        "<h2>Findings</h2>", f"<ul>{findings}</ul>", "<h2>Tables</h2>",
        *(_html_table(t) for t in all_tables(c)),
    ]
    if figures:
        parts.append("<h2>Figures</h2>")
        for caption, path in figures:
            parts.append(f'<figure><img alt="{html.escape(caption)}" src="{_data_uri(path)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(c: Comparison, figures: list[tuple[str, Path]], out: Path) -> tuple[Path, Path]:
    """Writes out/report.md and out/report.html atomically; returns their paths."""
    out = Path(out)
    md, page = out / "report.md", out / "report.html"
    write_atomic(md, to_markdown(c, figures, out))
    write_atomic(page, to_html(c, figures))
    return md, page
