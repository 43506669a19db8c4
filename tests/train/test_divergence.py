"""Divergence beyond NaN: a mean epoch loss above train.divergence_factor x the initial loss."""

import io
import math

import numpy as np
import pytest

from bioprop_cli.config import load_config
from bioprop_cli.errors import UserError
from bioprop_cli.runs import RunWriter, read_jsonl
from bioprop_cli.train import divergence_reason, train_group
from helpers import clusters, run, small_config


def test_reason_by_hand():
    losses = np.array([1.0, 2.0, 3.0])  # mean 2
    assert divergence_reason(losses, initial_loss=0.19, factor=10.0) == "loss above 10 x initial"
    assert divergence_reason(losses, initial_loss=0.2, factor=10.0) is None  # 2 is not above 10 x 0.2
    assert divergence_reason(losses, initial_loss=0.01, factor=None) is None
    assert divergence_reason(np.array([1.0, np.inf]), initial_loss=1.0, factor=None) == "non-finite loss"
    assert divergence_reason(np.array([np.nan, 0.1]), initial_loss=1.0, factor=10.0) == "non-finite loss"


@pytest.mark.parametrize("value", [1, 0.5, -3, "abc"])
def test_factor_must_be_above_one_or_null(value):
    with pytest.raises(UserError, match="train.divergence_factor"):
        load_config(overrides=[("train.divergence_factor", value)])
    assert load_config(overrides=[("train.divergence_factor", None)]).train.divergence_factor is None


# A tiny initialisation makes the logits ~0, so the initial loss is ln 10 to 1e-3 (cross-entropy,
# 10 classes); SGD at lr 1e6 then gives a finite loss of order 1e6: diverged by the factor, not by NaN.
HUGE_LR = {"optimizer.name": "sgd", "optimizer.lr": 1e6, "model.init.scale": 1e-3}


def test_a_huge_learning_rate_with_a_finite_loss_diverges_with_the_reason(tmp_path):
    summary, metrics, _ = run(tmp_path, small_config(**HUGE_LR))
    assert summary["status"] == "diverged" and summary["diverged_epoch"] == 1 == summary["epochs_completed"]
    d = summary["divergence"]
    assert d["reason"] == "loss above 1000 x initial" and d["epoch"] == 1
    assert d["initial_loss"] == pytest.approx(math.log(10), abs=1e-3)
    assert math.isfinite(d["loss"]) and d["loss"] == metrics[0]["train_loss"] > 1000 * d["initial_loss"]
    assert not (tmp_path / "params.npz").exists()


def test_with_the_factor_off_the_same_run_completes(tmp_path):
    summary, metrics, _ = run(tmp_path, small_config(**HUGE_LR, **{"train.divergence_factor": None}))
    assert summary["status"] == "completed" and summary["divergence"] is None
    assert all(math.isfinite(m["train_loss"]) for m in metrics)


def test_a_normal_run_does_not_diverge(tmp_path):
    summary, metrics, _ = run(tmp_path, small_config())
    assert summary["status"] == "completed" and summary["divergence"] is None
    assert len(metrics) == 3


def test_each_run_of_a_vmapped_group_decides_for_itself(tmp_path):
    lrs = [0.01, 1e6, 0.01]
    configs = [small_config(seed=s, **{**HUGE_LR, "optimizer.lr": lr}) for s, lr in enumerate(lrs)]
    dirs = [tmp_path / f"run{s}" for s in range(3)]
    for d in dirs:
        d.mkdir()
    summaries = train_group(configs, clusters(), [RunWriter(d) for d in dirs])
    assert [s["runs_trained_together"] for s in summaries] == [3, 3, 3]
    assert [s["status"] for s in summaries] == ["completed", "diverged", "completed"]
    assert summaries[1]["divergence"]["reason"] == "loss above 1000 x initial"
    assert summaries[0]["divergence"] is None and summaries[2]["divergence"] is None
    assert [len(read_jsonl(d / "metrics.jsonl")) for d in dirs] == [3, 1, 3]


def test_the_train_command_prints_why_a_run_diverged(tmp_path):
    from rich.console import Console

    from bioprop_cli.cli.train import summary_table

    summary, _, _ = run(tmp_path, small_config(**HUGE_LR))
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(summary_table(summary))
    assert "diverged (loss above 1000 x initial, epoch 1)" in console.export_text()
