"""The figures of `bioprop compare` (matplotlib, headless). Each function writes one PNG and returns its
path, or returns None without writing when there is no data for the figure."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from bioprop_cli.report.aggregate import (  # noqa: E402
    BetaSweep, Comparison, Group, _rule_rank, _sort_value, context_label, depth_table, format_value,
)
from bioprop_cli.report.axes import axis_slices, stable  # noqa: E402


def _colours(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _nan(values) -> list[float]:
    return [math.nan if v is None else v for v in values]


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, legend: bool = True) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _band_plot(groups: list[Group], curve: str, path: Path, ylabel: str, title: str, scale: float = 1.0,
               xkey: str = "x", xlabel: str = "epoch") -> Optional[Path]:
    """Mean line and mean ± std band per group for `group.curves[curve]`."""
    drawn = [g for g in groups if g.curves.get(curve, {}).get(xkey)]
    if not drawn:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for colour, g in zip(_colours(len(drawn)), drawn):
        c = g.curves[curve]
        x = c[xkey]
        mean = [scale * m for m in c["mean"]]
        std = [scale * s if s is not None else math.nan for s in c["std"]]
        n = max(g.stats.get("n_runs", 1), 1)
        ax.plot(x, mean, color=colour, marker="o", ms=3, label=f"{g.label} (n={n})")
        if any(not math.isnan(s) for s in std):
            lo = [m - s for m, s in zip(mean, std)]
            hi = [m + s for m, s in zip(mean, std)]
            ax.fill_between(x, lo, hi, color=colour, alpha=0.2, linewidth=0)
    if xkey == "x":  # epochs
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _finish(fig, ax, path, xlabel, ylabel, title)


def plot_accuracy_vs_epoch(groups: list[Group], path: Path) -> Optional[Path]:
    return _band_plot(groups, "test_accuracy", path, "test accuracy (%)", "Test accuracy per epoch (mean ± std over seeds)", 100.0)


def plot_update_angle(groups: list[Group], path: Path) -> Optional[Path]:
    return _band_plot(groups, "update_angle", path, "mean update angle to the gradient (°)",
                      "Update angle, mean over hidden layers (mean ± std over seeds)")


def plot_feedback_angle(groups: list[Group], path: Path) -> Optional[Path]:
    """Only the groups that have feedback angles (not bp, not ep)."""
    return _band_plot(groups, "feedback_angle", path, "angle between B and W^T (°)",
                      "W-to-B feedback angle, mean over layers (mean ± std over seeds)")


def plot_accuracy_vs_time(groups: list[Group], path: Path) -> Optional[Path]:
    return _band_plot(groups, "accuracy_vs_time", path, "test accuracy (%)",
                      "Test accuracy against wall-clock time (means over seeds)", 100.0,
                      xkey="wall_time_s", xlabel="wall-clock time (s)")


def plot_accuracy_vs_depth(comparison: Comparison, path: Path) -> Optional[Path]:
    """Mean final test accuracy against depth, one line per rule (and context), error bars = std over
    seeds; a rule's breaking depth is a dotted vertical line in its colour, labelled."""
    table = depth_table(comparison.groups)
    depths = {d for by_rule in table.values() for acc in by_rule.values() for d in acc}
    if len(depths) < 2:
        return None
    std = {(g.context, g.rule, g.depth): g.stats.get("test_accuracy_std") for g in comparison.groups}
    lines = [(context, rule) for context, by_rule in table.items() for rule in sorted(by_rule, key=_rule_rank)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for colour, (context, rule) in zip(_colours(len(lines)), lines):
        acc = table[context][rule]
        ds = sorted(acc, key=_sort_value)
        label = f"{rule}" + (f" ({context_label(context)})" if context else "")
        err = [100 * (std.get((context, rule, d)) or 0.0) for d in ds]
        ax.errorbar(ds, [100 * acc[d] for d in ds], yerr=err, color=colour, marker="o", ms=4, capsize=2, label=label)
        broken = comparison.breaking.get(context, {}).get(rule)
        if broken is not None:
            ax.axvline(broken, color=colour, ls=":", lw=1.5)
            ax.annotate(f"{rule} breaks (d={broken})", xy=(broken, 100 * acc[broken]), xytext=(4, -12),
                        textcoords="offset points", color=colour, fontsize=8)
    title = f"Final test accuracy against depth (breaking depth: > {100 * comparison.margin:.2f} points below bp)"
    ax.set_xticks(sorted(depths, key=_sort_value))
    return _finish(fig, ax, path, "hidden layers (model.depth)", "final test accuracy (%)", title)


def axis_figure_name(key: str) -> str:
    return "accuracy_vs_" + "".join(ch if ch.isalnum() else "_" for ch in key) + ".png"


def plot_accuracy_vs_axis(comparison: Comparison, key: str, path: Path) -> Optional[Path]:
    """Mean final test accuracy against a swept hyperparameter (error bars: std over seeds), one panel per
    slice (the other grouping keys), one line per rule with the same colour in every panel. A log x axis
    when the values are positive and span a factor of 4 or more (learning rates, batch sizes)."""
    slices = [s for s in axis_slices(comparison.groups, key) if len(s.values) > 1]
    if not slices:
        return None
    rules = sorted({r for s in slices for r in s.by_rule}, key=_rule_rank)
    colour = dict(zip(rules, _colours(len(rules))))
    ncols = min(3, len(slices))
    nrows = math.ceil(len(slices) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 1.0, 3.8 * nrows), sharey=True, squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(slices):]:
        ax.set_visible(False)
    for ax, s in zip(axes.flat, slices):
        for rule, by_value in s.by_rule.items():
            shown = [v for v in s.values if v in by_value and by_value[v].stats.get("test_accuracy_mean") is not None]
            xs = [v for v in shown if stable(by_value[v])]
            ys = [100 * by_value[v].stats["test_accuracy_mean"] for v in xs]
            err = [100 * (by_value[v].stats.get("test_accuracy_std") or 0.0) for v in xs]
            ax.errorbar(xs, ys, yerr=err, color=colour[rule], marker="o", ms=4, capsize=2, label=str(rule))
            bad = [v for v in shown if not stable(by_value[v])]  # some seed diverged: a cross, off the line
            ax.plot(bad, [100 * by_value[v].stats["test_accuracy_mean"] for v in bad], ls="none", marker="x", ms=7,
                    color=colour[rule])
        if min(s.values) > 0 and max(s.values) / min(s.values) >= 4:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(s.values)
        ax.set_xticklabels([format_value(v) for v in s.values])
        ax.set_xlabel(key)
        ax.set_title(s.label or "all runs", fontsize=9)
        ax.grid(True, alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("final test accuracy (%)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    fig.suptitle(f"Final test accuracy against {key} (mean ± std over seeds; ×: some seeds diverged)")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_beta_sweep(sweep: BetaSweep, path: Path) -> Optional[Path]:
    """Bias and std against beta, log-log (the plot of `bioprop sweep beta`)."""
    needed = ("estimator", "beta", "bias_seed_mean", "bias_seed_std", "std_seed_mean", "std_seed_std")
    rows = [r for r in sweep.rows if all(k in r for k in needed)]
    if not rows:
        return None
    from bioprop_cli.sweep.beta import plot

    title = f"EP estimate vs exact gradient: {sweep.path.name}"
    plot(rows, sweep.slopes, path, title)
    return Path(path)


def make_figures(comparison: Comparison, out: Path) -> list[tuple[str, Path]]:
    """Writes every figure there is data for into `out`; returns (caption, path) pairs."""
    out = Path(out)
    groups = comparison.groups
    figures = [
        ("Test accuracy per epoch", plot_accuracy_vs_epoch(groups, out / "accuracy_vs_epoch.png")),
        ("Final test accuracy against depth", plot_accuracy_vs_depth(comparison, out / "accuracy_vs_depth.png")),
        ("Update angle per epoch", plot_update_angle(groups, out / "update_angle_vs_epoch.png")),
        ("W-to-B feedback angle per epoch", plot_feedback_angle(groups, out / "feedback_angle_vs_epoch.png")),
        ("Test accuracy against wall-clock time", plot_accuracy_vs_time(groups, out / "accuracy_vs_time.png")),
    ]
    for key in comparison.axes:
        figures.append((f"Final test accuracy against {key}", plot_accuracy_vs_axis(comparison, key, out / axis_figure_name(key))))
    for i, sweep in enumerate(comparison.sweeps):
        figures.append((f"Beta sweep {sweep.path.name}: bias and std against beta",
                        plot_beta_sweep(sweep, out / f"beta_sweep_{i}.png")))
    return [(caption, path) for caption, path in figures if path is not None]
