"""`bioprop reproduce`'s table: published value and source beside ours (mean ± std over seeds), the
difference and the verdict, one row per published number."""

from __future__ import annotations

from rich.table import Table


def _number(v, unit: str = "") -> str:
    return "-" if v is None else f"{v:.2f}{unit}"


def _what(row: dict) -> str:
    where = ", ".join(f"{k}={v}" for k, v in row["where"].items())
    layer = "" if row["layer"] is None else f" L{row['layer']}"
    return f"{row['quantity']}{layer}" + (f" ({where})" if where else "")


def reproduce_table(results: list[dict]) -> Table:
    """One table for the presets in `results` (studies/reproduce.py's result dicts)."""
    modes = {r["mode"] for r in results}
    table = Table(title=f"bioprop reproduce ({', '.join(sorted(modes))}): published vs ours")
    for name in ("preset", "quantity", "published", "source", "ours (mean ± std)", "seeds", "difference", "allowed", "verdict"):
        table.add_column(name, justify="right" if name in ("published", "seeds", "difference", "allowed") else "left")
    for result in results:
        for row in result["rows"]:
            unit = row["unit"]
            published = _number(row["published"], unit) + ("" if row["spread"] is None else f" ± {row['spread']:g}")
            ours = "-" if row["mean"] is None else (
                f"{row['mean']:.2f}{unit}" if row["std"] is None else f"{row['mean']:.2f} ± {row['std']:.2f}{unit}")
            difference = "-" if row["difference"] is None else f"{row['difference']:+.2f}"
            allowed = "-" if row["tolerance"] is None or row["published"] is None else f"±{row['tolerance']:g} ({row['tolerance_source']})"
            table.add_row(result["preset"], _what(row), published, row["source"] or "-", ours, str(len(row["ours"])),
                          difference, allowed, row["verdict"])
    return table
