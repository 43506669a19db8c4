"""The LeNet protocol's tables (configs/experiments/lenet_mnist.yaml and lenet_fashion_mnist.yaml, docs/results.md
"The whole protocol, 100 epochs" and "LeNet on Fashion-MNIST") from a finished sweep folder, through `bioprop
compare`'s own aggregation, beside biotorch's published errors on the sweep's dataset (Benchmarks.md: the best test
epoch of 100):

    python benchmarks/lenet_protocol_table.py results/lenet-mnist/sweep-rule-XXXXXXXX

Prints two Markdown tables: test error (%) per seed after the last epoch, then mean ± sample std over seeds read at
the last epoch, at each run's best validation epoch and at its best test epoch; and the mean test error at chosen
epochs with the mean training loss of the last epoch (where the schedule's decays at 50 and 75 act).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bioprop_cli.report.comparison import aggregate

BIOTORCH = {  # % test error, LeNet MNIST, per dataset
    "mnist": {"bp": 0.91, "fa": 1.7, "dfa": 1.61, "usf": 0.94, "frsf": 0.97, "brsf": 0.91},
    "fashion_mnist": {"bp": 9.2, "fa": 13.06, "dfa": 12.81, "usf": 9.69, "frsf": 9.61, "brsf": 10.02},
}
EPOCHS = (1, 10, 25, 50, 51, 75, 100)


def error(mean, std=None) -> str:
    if mean is None:
        return "-"
    return f"{100 - 100 * mean:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sweep", type=Path)
    args = parser.parse_args()
    groups = aggregate([args.sweep]).groups
    published = BIOTORCH.get(groups[0].runs[0].flat["data.dataset"], {})
    print("| rule | lr | last epoch, seeds " + " / ".join(str(s) for s in sorted(groups[0].stats["seeds"]))
          + " | last epoch | best-validation epoch | best test epoch | biotorch | hidden-layer update angle | group time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for g in groups:
        s, runs = g.stats, sorted(g.runs, key=lambda r: r.seed)
        angles = [s["final_update_angle"][layer] for layer in sorted(s["final_update_angle"])][:-1]  # the output's is exact
        print(f"| {g.rule} | {runs[0].flat['optimizer.lr']:g} | {' / '.join(error(r.summary['test_accuracy']) for r in runs)} | "
              f"{error(s['test_accuracy_mean'], s['test_accuracy_std'])} | {error(s['test_at_best_val_mean'], s['test_at_best_val_std'])} | "
              f"{error(s['best_test_accuracy_mean'], s['best_test_accuracy_std'])} | {published.get(g.rule, '-')} | "
              f"{statistics.mean(angles):.1f}° | {max(r.summary['wall_time_s'] for r in runs) / 60:.0f} min |")
    print()
    print("| rule | " + " | ".join(f"epoch {e}" for e in EPOCHS) + " | training loss, last epoch |")
    print("|---|" + "---|" * (len(EPOCHS) + 1))
    for g in groups:
        by_epoch = [{m["epoch"]: m for m in r.metrics} for r in g.runs]
        cells = [f"{statistics.mean(100 - 100 * m[e]['test_accuracy'] for m in by_epoch):.2f}" if all(e in m for m in by_epoch)
                 else "-" for e in EPOCHS]
        loss = statistics.mean(r.metrics[-1]["train_loss"] for r in g.runs)
        print(f"| {g.rule} | " + " | ".join(cells) + f" | {loss:.4f} |")


if __name__ == "__main__":
    main()
