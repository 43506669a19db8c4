"""Tables of the studies that are written as text as well as printed (rich)."""

from __future__ import annotations

import io
import math

from rich.console import Console
from rich.table import Table


def as_text(renderables: list, width: int = 160) -> str:
    """What printing `renderables` on a terminal `width` columns wide shows, as plain text."""
    recorder = Console(record=True, width=width, file=io.StringIO())
    for r in renderables:
        recorder.print(r)
    return recorder.export_text()


def _fmt(v) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.2f}"


def jtranspose_tables(records: list[dict], asym_beta: float, title: str) -> list[Table | str]:
    """`bioprop jtranspose`: the symmetric network over beta, then the asymmetric ones at asym_beta (a conv
    net has none, metrics/jtranspose.run_jtranspose: one line says why)."""
    layers = sorted({r["layer"]: r["layer_name"] for r in records}.items())
    settled = lambda rs: max(max(r["free_residual"], r["nudged_residual"]) for r in rs)
    sym = Table(title=f"symmetric feedback (B = W^T): angle(shift, -J^T e) in degrees / relative error, per layer — {title}")
    sym.add_column("beta", justify="right")
    for _, n in layers:
        sym.add_column(n, justify="right")
    for beta in sorted({r["beta"] for r in records}):
        row = {r["layer"]: r for r in records if r["feedback"] == "symmetric" and r["beta"] == beta}
        sym.add_row(f"{beta:g}", *(f"{_fmt(row[k]['angle'])}° / {row[k]['rel_error']:.2g}" for k, _ in layers))
    if all(r["feedback"] == "symmetric" for r in records):
        return [sym, "no asymmetric table: conv EP has only symmetric feedback (ep.feedback symmetric: errors go back "
                     "through the transposed convolution of W)"]
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



def _opt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def sweep_table(folder, manifest: dict) -> Table:
    """`bioprop sweep`: each run of the manifest, its status and test accuracy."""
    table = Table(title=f"sweep {folder.name}: {len(manifest['runs'])} runs")
    for name in ("run", "status", "test acc."):
        table.add_column(name)
    for name, entry in manifest["runs"].items():
        acc = entry.get("test_accuracy")
        table.add_row(name, entry["status"] + (f" ({entry['error']})" if entry.get("error") else ""), "-" if acc is None else f"{acc:.4f}")
    return table


def beta_table(result: dict) -> Table:
    """`bioprop sweep beta`: bias, spread and angle per estimator and beta."""
    table = Table(title=result["title"])
    for name in ("estimator", "beta", "bias", "std", "angle (°)"):
        table.add_column(name, justify="left" if name == "estimator" else "right")
    for r in result["rows"]:
        angle = "-" if r["angle_mean"] is None else f"{r['angle_mean']:.2f}"
        table.add_row(r["estimator"], f"{r['beta']:g}", f"{r['bias']:.3e}", f"{r['std']:.3e}", angle)
    return table


def beta_training_table(result: dict, estimator: str, epochs: int) -> Table:
    """`bioprop sweep beta --train`: each beta's run."""
    rows = result["rows"]
    table = Table(title=f"EP trained per beta ({estimator}, {epochs} epochs)")
    for name in ("beta", "status", "test acc.", "best val acc.", "final train loss"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(f"{r['beta']:g}", r["status"], f"{r['test_accuracy'] or float('nan'):.4f}",
                      f"{r['best_val_accuracy'] or float('nan'):.4f}", f"{r['train_loss'][-1]:.4f}" if r["train_loss"] else "-")
    return table


def condition_tables(rows: list[dict], summary: dict) -> list[Table]:
    """`bioprop sweep condition`: the angle and accuracy per knob value, then each knob's cost."""
    table = Table(title=f"EP update vs implicit gradient, one condition broken at a time ({summary['precision']}, probe {summary['probe_size']})")
    n_layers = len(rows[0]["angle_per_layer"])
    for name in ("knob", "cond.", "value", *(f"angle L{l} (°)" for l in range(n_layers)), "angle all (°)", "rel. err. all",
                 "free resid.", "test acc."):
        table.add_column(name, justify="left" if name in ("knob", "value") else "right")
    for r in rows:
        table.add_row(r["knob"], "-" if r["condition"] is None else str(r["condition"]),
                      "base" if r["value"] is None else (r["value"] if isinstance(r["value"], str) else f"{r['value']:g}"),
                      *(_opt(a, ".2f") for a in r["angle_per_layer"]), _opt(r["update_angle"], ".2f"),
                      _opt(r["update_rel_error"], ".2e"), _opt(r["free_residual"], ".1e"),
                      _opt(None if r["test_accuracy"] is None else 100 * r["test_accuracy"], ".2f"))
    cost = Table(title="cost of breaking each condition (max over the knob's values, relative to the baseline)")
    for name in ("knob", "condition", "angle cost (°)", "at", "accuracy cost (points)", "at"):
        cost.add_column(name, justify="left" if name in ("knob", "condition") else "right")
    for name, c in summary["costs"].items():
        cost.add_row(name, f"({c['condition']}) {c['condition_name']}", _opt(c.get("angle_cost_deg"), "+.2f"),
                     "-" if c.get("angle_worst_value") is None else str(c["angle_worst_value"]),
                     _opt(c.get("accuracy_cost_pp"), "+.2f"),
                     "-" if c.get("accuracy_worst_value") is None else str(c["accuracy_worst_value"]))
    return [table, cost]


def pc_table(result: dict) -> Table:
    """`bioprop sweep pc`: relative error and angles per gamma and step count."""
    table = Table(title=result["title"])
    n_layers = len(result["rows"][0]["update_angle_per_layer_mean"])
    for name in ("gamma", "steps", "rel.err.", "±seeds", "angle°", *(f"L{l}°" for l in range(n_layers))):
        table.add_column(name, justify="right")
    angle = lambda a: "-" if a is None else f"{a:.2f}"  # a zero update has no angle
    for r in result["rows"]:
        table.add_row(f"{r['gamma']:.3g}", str(r["inference_steps"]), f"{r['update_rel_error_mean']:.2e}",
                      f"{r['update_rel_error_std']:.0e}", angle(r["update_angle_mean"]),
                      *(angle(a) for a in r["update_angle_per_layer_mean"]))
    return table
