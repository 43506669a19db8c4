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
    RULE_ORDER, BetaSweep, _rule_rank, _sort_value, context_label, depth_table, format_value,
)
from bioprop_cli.report.axes import axis_slices, curve_panels, stable  # noqa: E402
from bioprop_cli.report.comparison import Comparison  # noqa: E402
from bioprop_cli.report.study_figures import plot_beta_bias  # noqa: E402
from bioprop_cli.runs import save_figure  # noqa: E402


def _colours(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def rule_colours(rules: list) -> dict:
    """One colour per rule, the same in every figure: the known rules by their place in RULE_ORDER
    (bp blue, fa orange, dfa green, usf red, ...) from one palette whatever else is plotted; names the
    registry does not know (runs of another bioprop version) after them, from a second palette."""
    ranked = sorted(rules, key=_rule_rank)
    palette = _colours(len(RULE_ORDER))
    out = {r: palette[RULE_ORDER.index(r)] for r in ranked if r in RULE_ORDER}
    other = plt.get_cmap("Dark2")
    out.update({r: other(i % other.N) for i, r in enumerate(r for r in ranked if r not in RULE_ORDER)})
    return out


# Lines of one rule in one axes (groups that differ in another key) keep the rule's colour and differ in these.
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")


def rule_styles(items: list) -> list[tuple]:
    """(colour, line style, marker) for each (rule, anything) of `items`, in order: the rule's colour
    (rule_colours), and the k-th line of one rule the k-th line style and marker."""
    colour = rule_colours(sorted({rule for rule, _ in items}, key=_rule_rank))
    seen: dict = {}
    out = []
    for rule, _ in items:
        k = seen[rule] = seen.get(rule, -1) + 1
        out.append((colour[rule], LINE_STYLES[k % len(LINE_STYLES)], MARKERS[k % len(MARKERS)]))
    return out


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
    save_figure(fig, path, 120)
    plt.close(fig)
    return Path(path)


Panels = list  # [(panel title, [Group, ...])], from report.axes.curve_panels


def _band_plot(panels: Panels, curve: str, path: Path, ylabel: str, title: str, scale: float = 1.0,
               xkey: str = "x", xlabel: str = "epoch") -> Optional[Path]:
    """Mean line and mean ± std band per group for `group.curves[curve]`, one axes per panel. One panel:
    lines labelled by group; several: each rule once per panel, one colour per rule, one legend."""
    panels = [(t, [g for g in gs if g.curves.get(curve, {}).get(xkey)]) for t, gs in panels]
    panels = [(t, gs) for t, gs in panels if gs]
    if not panels:
        return None
    single = len(panels) == 1
    if single:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        axes = [ax]
        style_of = dict(zip((id(g) for g in panels[0][1]), rule_styles([(g.rule, g) for g in panels[0][1]])))
    else:
        ncols = min(3, len(panels))
        nrows = math.ceil(len(panels) / ncols)
        fig, grid = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 1.0, 3.4 * nrows), sharex=True, sharey=True,
                                 squeeze=False, layout="constrained")
        axes = list(grid.flat)
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        rules = sorted({g.rule for _, gs in panels for g in gs}, key=_rule_rank)
        by_rule = rule_colours(rules)
        style_of = {id(g): (by_rule[g.rule], "-", "o") for _, gs in panels for g in gs}
    labelled = set()
    for ax, (panel_title, gs) in zip(axes, panels):
        for g in gs:
            c = g.curves[curve]
            x = c[xkey]
            mean = [scale * m for m in c["mean"]]
            std = [scale * s if s is not None else math.nan for s in c["std"]]
            n = max(g.stats.get("n_runs", 1), 1)
            label = f"{g.label} (n={n})" if single else str(g.rule)
            colour, line_style, marker = style_of[id(g)]
            ax.plot(x, mean, color=colour, ls=line_style, marker=marker, ms=3, label=None if label in labelled else label)
            if not single:
                labelled.add(label)
            if any(not math.isnan(s) for s in std):
                lo = [m - s for m, s in zip(mean, std)]
                hi = [m + s for m, s in zip(mean, std)]
                ax.fill_between(x, lo, hi, color=colour, alpha=0.2, linewidth=0)
        if xkey == "x":  # epochs
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if not single:
            ax.set_title(panel_title, fontsize=9)
            ax.grid(True, alpha=0.3)
    if single:
        return _finish(fig, axes[0], path, xlabel, ylabel, title)
    for k, ax in enumerate(axes[:len(panels)]):
        ax.set_xlabel(xlabel)
        if k % ncols == 0:
            ax.set_ylabel(ylabel)
    handles, labels = [], []
    for ax in axes[:len(panels)]:
        for h, l in zip(*ax.get_legend_handles_labels()):
            handles.append(h)
            labels.append(l)
    order = sorted(range(len(labels)), key=lambda k: _rule_rank(labels[k]))
    fig.legend([handles[k] for k in order], [labels[k] for k in order], loc="outside right center", fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path, 120)
    plt.close(fig)
    return Path(path)


def plot_accuracy_vs_epoch(panels: Panels, path: Path, note: str = "") -> Optional[Path]:
    return _band_plot(panels, "test_accuracy", path, "test accuracy (%)", _title("Test accuracy per epoch (mean ± std over seeds)", note), 100.0)


def plot_update_angle(panels: Panels, path: Path, note: str = "") -> Optional[Path]:
    return _band_plot(panels, "update_angle", path, "mean update angle to the gradient (°)",
                      _title("Update angle, mean over hidden layers (mean ± std over seeds)", note))


def plot_feedback_angle(panels: Panels, path: Path, note: str = "") -> Optional[Path]:
    """Only the groups that have feedback angles (not bp, not ep)."""
    return _band_plot(panels, "feedback_angle", path, "angle between B and W^T (°)",
                      _title("W-to-B feedback angle, mean over layers (mean ± std over seeds)", note))


def plot_accuracy_vs_time(panels: Panels, path: Path, note: str = "") -> Optional[Path]:
    return _band_plot(panels, "accuracy_vs_time", path, "test accuracy (%)",
                      _title("Test accuracy against wall-clock time (means over seeds)", note), 100.0,
                      xkey="wall_time_s", xlabel="wall-clock time (s)")


def _title(title: str, note: str) -> str:
    return f"{title}\n{note}" if note else title


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
    for (colour, line_style, marker), (context, rule) in zip(rule_styles([(rule, c) for c, rule in lines]), lines):
        acc = table[context][rule]
        ds = sorted(acc, key=_sort_value)
        label = f"{rule}" + (f" ({context_label(context)})" if context else "")
        err = [100 * (std.get((context, rule, d)) or 0.0) for d in ds]
        ax.errorbar(ds, [100 * acc[d] for d in ds], yerr=err, color=colour, ls=line_style, marker=marker, ms=4, capsize=2,
                    label=label)
        broken = comparison.breaking.get(context, {}).get(rule)
        if broken is not None:
            ax.axvline(broken, color=colour, ls=":", lw=1.5)
            ax.annotate(f"{rule} breaks (d={broken})", xy=(broken, 100 * acc[broken]), xytext=(4, -12),
                        textcoords="offset points", color=colour, fontsize=8)
    title = f"Final test accuracy against depth (breaking depth: > {100 * comparison.margin:.2f} points below {comparison.baseline})"
    ax.set_xticks(sorted(depths, key=_sort_value))
    return _finish(fig, ax, path, "hidden layers (model.depth)", "final test accuracy (%)", title)


def axis_figure_name(key: str) -> str:
    return "accuracy_vs_" + "".join(ch if ch.isalnum() else "_" for ch in key) + ".png"


def _collapse_floor(slices) -> Optional[tuple[float, float]]:
    """(floor, top) of the y axis (%) when some setting collapsed: accuracy under half the median of all
    the figure's points (e.g. 10% = chance on MNIST), which would squash every other line into a band;
    None when nothing collapsed."""
    ys = [100 * g.stats["test_accuracy_mean"] for s in slices for by_value in s.by_rule.values()
          for g in by_value.values() if g.stats.get("test_accuracy_mean") is not None]
    if not ys:
        return None
    median = sorted(ys)[len(ys) // 2]
    rest = [y for y in ys if y >= 0.5 * median]
    if len(rest) == len(ys) or not rest:
        return None
    pad = 0.05 * (max(rest) - min(rest) + 1.0)
    return min(rest) - pad, max(rest) + pad


def _mark_collapsed(ax, s, colour: dict, floor: float) -> None:
    """Each point under the floor becomes a triangle on it, labelled with its accuracy."""
    for rule, by_value in s.by_rule.items():
        for v, g in by_value.items():
            acc = g.stats.get("test_accuracy_mean")
            if acc is not None and 100 * acc < floor:
                ax.plot([v], [floor], marker="v", ms=8, color=colour[rule], clip_on=False, zorder=5)
                ax.annotate(f"{rule} {100 * acc:.1f}%", xy=(v, floor), xytext=(0, 8), textcoords="offset points",
                            ha="center", fontsize=7, color=colour[rule])


def plot_accuracy_vs_axis(comparison: Comparison, key: str, path: Path) -> Optional[Path]:
    """Mean final test accuracy against a swept hyperparameter (error bars: std over seeds), one panel per
    slice (the other grouping keys), one line per rule with the same colour in every panel. A log x axis
    when the values are positive and span a factor of 4 or more (learning rates, batch sizes). Collapsed
    settings sit on the floor of the panels (_collapse_floor)."""
    slices = [s for s in axis_slices(comparison.groups, key) if len(s.values) > 1]
    if not slices:
        return None
    rules = sorted({r for s in slices for r in s.by_rule}, key=_rule_rank)
    colour = rule_colours(rules)
    ncols = min(3, len(slices))
    nrows = math.ceil(len(slices) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 1.0, 3.8 * nrows), sharey=True, squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(slices):]:
        ax.set_visible(False)
    limits = _collapse_floor(slices)
    if limits:
        axes.flat[0].set_ylim(*limits)  # shared by every panel
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
        if limits:
            _mark_collapsed(ax, s, colour, limits[0])
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
    save_figure(fig, path, 120)
    plt.close(fig)
    return Path(path)


def plot_beta_sweep(sweep: BetaSweep, path: Path) -> Optional[Path]:
    """Bias and std against beta, log-log (the plot of `bioprop sweep beta`)."""
    needed = ("estimator", "beta", "bias_seed_mean", "bias_seed_std", "std_seed_mean", "std_seed_std")
    rows = [r for r in sweep.rows if all(k in r for k in needed)]
    if not rows:
        return None
    title = f"EP estimate vs exact gradient: {sweep.path.name}"
    plot_beta_bias(rows, sweep.slopes, path, title)
    return Path(path)


def make_figures(comparison: Comparison, out: Path) -> list[tuple[str, Path]]:
    """Writes every figure there is data for into `out`; returns (caption, path) pairs."""
    out = Path(out)
    panels, note = curve_panels(comparison.groups, comparison.axes)
    suffix = f" ({note})" if note else ""
    figures = [
        ("Test accuracy per epoch" + suffix, plot_accuracy_vs_epoch(panels, out / "accuracy_vs_epoch.png", note)),
        ("Final test accuracy against depth", plot_accuracy_vs_depth(comparison, out / "accuracy_vs_depth.png")),
        ("Update angle per epoch" + suffix, plot_update_angle(panels, out / "update_angle_vs_epoch.png", note)),
        ("W-to-B feedback angle per epoch" + suffix, plot_feedback_angle(panels, out / "feedback_angle_vs_epoch.png", note)),
        ("Test accuracy against wall-clock time" + suffix, plot_accuracy_vs_time(panels, out / "accuracy_vs_time.png", note)),
    ]
    for key in comparison.axes:
        figures.append((f"Final test accuracy against {key}", plot_accuracy_vs_axis(comparison, key, out / axis_figure_name(key))))
    for i, sweep in enumerate(comparison.sweeps):
        figures.append((f"Beta sweep {sweep.path.name}: bias and std against beta",
                        plot_beta_sweep(sweep, out / f"beta_sweep_{i}.png")))
    return [(caption, path) for caption, path in figures if path is not None]
