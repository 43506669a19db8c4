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

