"""The figures of the studies (bioprop_cli/studies/; matplotlib, headless): each function draws one PNG at `path`."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bioprop_cli.runs import save_figure  # noqa: E402


def plot_beta_bias(rows: list[dict], slopes: dict, path, title: str) -> None:
    """Log-log plot: bias (solid) and std (dashed) against beta, one colour per estimator,
    error bars across seeds."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for colour, e in zip((f"C{i}" for i in range(10)), sorted({r["estimator"] for r in rows})):
        rs = sorted((r for r in rows if r["estimator"] == e), key=lambda r: r["beta"])
        betas = [r["beta"] for r in rs]
        slope = slopes.get(e, {}).get("slope")
        label = f"{e} bias" + (f" (slope {slope:.2f})" if slope is not None else "")
        ax.errorbar(betas, [r["bias_seed_mean"] for r in rs], yerr=[r["bias_seed_std"] for r in rs],
                    color=colour, marker="o", ms=3, capsize=2, label=label)
        ax.errorbar(betas, [r["std_seed_mean"] for r in rs], yerr=[r["std_seed_std"] for r in rs],
                    color=colour, marker="s", ms=3, capsize=2, ls="--", label=f"{e} std")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("beta")
    ax.set_ylabel("relative to |exact gradient|")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, 120)
    plt.close(fig)


def plot_beta_training(rows: list[dict], path) -> None:
    """Validation accuracy per epoch, one curve per beta (`bioprop sweep beta --train`)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.plot(range(1, len(r["val_accuracy"]) + 1), r["val_accuracy"], marker="o", ms=3, label=f"beta {r['beta']:g}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, 120)
    plt.close(fig)


def plot_condition_knob(rows: list[dict], baseline: dict, path, title: str, xlabel: str, categorical: bool,
                        log_x: bool) -> None:
    """Top: angle to the implicit gradient against the knob's value, per layer and whole network;
    bottom: test accuracy after the short training (when trained). `bioprop sweep condition`, one knob."""
    trained = any(r.get("test_accuracy") is not None for r in rows)
    fig, axes = plt.subplots(2 if trained else 1, 1, figsize=(7, 6.5 if trained else 4), sharex=True, squeeze=False)
    ax = axes[0][0]
    xs = list(range(len(rows))) if categorical else [r["value"] for r in rows]
    n_layers = len(rows[0]["angle_per_layer"])
    for l in range(n_layers):
        ys = [np.nan if r["angle_per_layer"][l] is None else r["angle_per_layer"][l] for r in rows]
        ax.plot(xs, ys, marker="o", ms=4, label=f"layer {l}")
    ax.plot(xs, [np.nan if r["update_angle"] is None else r["update_angle"] for r in rows], "k--", marker="s", ms=4, label="all")
    if baseline.get("update_angle") is not None:
        ax.axhline(baseline["update_angle"], color="grey", lw=0.8, ls=":", label="baseline (all)")
    ax.set_ylabel("angle to implicit gradient (°)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if trained:
        ax2 = axes[1][0]
        ax2.plot(xs, [np.nan if r.get("test_accuracy") is None else 100 * r["test_accuracy"] for r in rows], "C3", marker="o")
        if baseline.get("test_accuracy") is not None:
            ax2.axhline(100 * baseline["test_accuracy"], color="grey", lw=0.8, ls=":", label="baseline")
            ax2.legend(fontsize=8)
        ax2.set_ylabel("test accuracy (%)")
        ax2.grid(True, alpha=0.3)
    bottom = axes[-1][0]
    if categorical:
        bottom.set_xticks(xs)
        bottom.set_xticklabels([str(r["value"]) for r in rows])
    elif log_x:
        bottom.set_xscale("log")
    bottom.set_xlabel(xlabel)
    fig.tight_layout()
    save_figure(fig, path, 110)
    plt.close(fig)


def plot_jtranspose(records: list[dict], path, asym_beta: float, title: str) -> None:
    """Angle against beta per layer (symmetric feedback); where asymmetric networks were measured
    (not on conv nets), a second panel: angle against the asymmetry angle a per layer at beta =
    asym_beta, sign feedback as marked points at its W-to-B angle (`bioprop jtranspose`)."""
    layers = sorted({r["layer"] for r in records})
    names = {r["layer"]: r["layer_name"] for r in records}
    asymmetric = any(r["feedback"] != "symmetric" for r in records)
    fig, axes = plt.subplots(1, 2 if asymmetric else 1, figsize=(11 if asymmetric else 5.5, 4.5), squeeze=False)
    left = axes[0, 0]
    for c, k in enumerate(layers):
        rs = sorted((r for r in records if r["feedback"] == "symmetric" and r["layer"] == k), key=lambda r: r["beta"])
        left.plot([r["beta"] for r in rs], [r["angle"] for r in rs], marker="o", color=f"C{c}", label=names[k])
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("beta")
    left.set_ylabel("angle(shift, -J^T e) (degrees)")
    left.set_title("symmetric feedback B = W^T")
    if asymmetric:
        _plot_asymmetric(axes[0, 1], records, layers, names, asym_beta)
    for ax in axes[0]:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, 120)
    plt.close(fig)


def _plot_asymmetric(ax, records: list[dict], layers: list, names: dict, asym_beta: float) -> None:
    for c, k in enumerate(layers):
        mixed = sorted((r for r in records if r["feedback"] == "mixed" and r["layer"] == k and r["beta"] == asym_beta),
                       key=lambda r: r["asymmetry_deg"])
        ax.plot([r["asymmetry_deg"] for r in mixed], [r["angle"] for r in mixed], marker="o", color=f"C{c}",
                label=f"{names[k]}, mixed")
        sign = [r for r in records if r["feedback"] == "sign" and r["layer"] == k and r["beta"] == asym_beta]
        ax.plot([r["asymmetry_deg"] for r in sign], [r["angle"] for r in sign], marker="*", ms=14, ls="none",
                color=f"C{c}", markeredgecolor="black", label=f"{names[k]}, sign(W^T)")
    ax.set_xlabel("asymmetry: angle(B_l, W_l^T) (degrees)")
    ax.set_ylabel("angle(shift, -J^T e) (degrees)")
    ax.set_title(f"B = cos(a) W^T + sin(a) R, and sign(W^T); beta = {asym_beta:g}")


def plot_pc_sweep(rows: list[dict], summary: dict, path, title: str) -> None:
    """Two log-log panels of pc's update against the exact gradient: relative error (whole network with
    error bars across seeds, and per layer) against gamma at converged inference, with the fitted slope;
    and against the number of inference steps at the smallest gamma. `bioprop sweep pc`."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, sweep, key, xlabel in ((left, "gamma", "gamma", "output precision gamma"),
                                   (right, "steps", "inference_steps", "inference steps")):
        rs = sorted((r for r in rows if r["sweep"] == sweep), key=lambda r: r[key])
        xs = [r[key] for r in rs]
        ax.errorbar(xs, [r["update_rel_error_mean"] for r in rs], yerr=[r["update_rel_error_std"] for r in rs],
                    color="black", marker="o", ms=4, capsize=2, label="whole network")
        for l in range(len(rs[0]["update_rel_error_per_layer_mean"])):
            ax.plot(xs, [r["update_rel_error_per_layer_mean"][l] for r in rs], color=f"C{l}", marker=".", ls="--",
                    label=f"layer {l}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("relative error |g_pc - g| / |g|")
        ax.grid(True, which="both", alpha=0.3)
    fit = summary["gamma_slope"]
    if fit["slope"] is not None:
        gs = np.asarray(fit["gammas"])
        left.plot(gs, 10 ** (fit["intercept"] + fit["slope"] * np.log10(gs)), color="grey", lw=3, alpha=0.5,
                  label=f"fit: slope {fit['slope']:.2f}")
    left.set_title(f"{summary['gamma_sweep_steps']} inference steps", fontsize=10)
    right.set_title(f"gamma = {summary['steps_sweep_gamma']:g}", fontsize=10)
    for ax in (left, right):
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, 120)
    plt.close(fig)
