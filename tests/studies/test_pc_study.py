"""`bioprop sweep pc` (bioprop_cli/studies/pc.py): standard pc's update approaches jax.grad's as the
output precision shrinks (first order) and as inference runs longer; the CLI's files and its errors."""

import json

import pytest

import bioprop_cli.datasets
from bioprop_cli.cli import app
from bioprop_cli.config import load_config
from bioprop_cli.runs import read_jsonl
from bioprop_cli.studies import pc as study
from helpers import assert_nothing_written, assert_user_error, make_fake_dataset

TINY = [("rule", "pc"), ("model.depth", 2), ("model.width", 12), ("train.batch_size", 16),
        ("data.validation_size", 100), ("model.loss", "cross_entropy")]


def measure(folder, config, gammas, steps, seeds, n_batches, x64):
    return study.run(study.PcStudy(config, make_fake_dataset(), gammas, steps, seeds, n_batches, x64), folder)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Converged inference (1000 steps at rate 0.1) on a 784-12-12-10 network, float64."""
    config = load_config(overrides=TINY)
    return measure(tmp_path_factory.mktemp("pc"), config, [0.001, 0.01, 0.03, 0.1, 1.0], [1, 10, 100, 1000], [0], 1, True)


def _column(result, sweep, key, metric):
    rows = sorted((r for r in result["rows"] if r["sweep"] == sweep), key=lambda r: r[key])
    return [r[metric] for r in rows]


def test_the_relative_error_is_first_order_in_gamma(measured):
    errors = _column(measured, "gamma", "gamma", "update_rel_error_mean")
    angles = _column(measured, "gamma", "gamma", "update_angle_mean")
    assert all(a < b for a, b in zip(errors, errors[1:])), errors
    assert all(a < b for a, b in zip(angles, angles[1:])), angles
    fit = measured["summary"]["gamma_slope"]
    assert 0.8 < fit["slope"] < 1.2, fit
    assert max(fit["gammas"]) == 0.1 and len(fit["gammas"]) >= 3  # up to 0.1
    assert "gamma^" in measured["summary"]["slope_summary"]


def test_longer_inference_lowers_the_error_at_small_gamma(measured):
    errors = _column(measured, "steps", "inference_steps", "update_rel_error_mean")
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > 0.5 and errors[-1] < 0.01, errors
    per_layer = _column(measured, "steps", "inference_steps", "update_rel_error_per_layer_mean")
    assert len(per_layer[0]) == 3 and per_layer[-1][0] < per_layer[0][0]


def test_fit_ignores_the_floor_and_large_gammas():
    rows = [{"gamma": g, "update_rel_error_mean": e}
            for g, e in [(1e-4, 2e-3), (1e-3, 1e-3), (1e-2, 1e-2), (3e-2, 3e-2), (0.1, 0.1), (1.0, 0.4)]]
    fit = study.fit_gamma_slope(rows)
    assert fit["gammas"] == [1e-2, 3e-2, 0.1] and abs(fit["slope"] - 1) < 1e-9
    assert study.fit_gamma_slope(rows[:3])["slope"] is None
    falling = study.fit_gamma_slope(rows[1:])  # least error at the smallest gamma: no floor, it is fitted
    assert falling["gammas"] == [1e-3, 1e-2, 3e-2, 0.1]


def test_an_undefined_angle_is_none_not_nan(tmp_path):
    """After one inference step the first layer's error is still 0: a zero update has no angle."""
    config = load_config(overrides=TINY[:2] + [("model.width", 8)] + TINY[3:])
    result = measure(tmp_path, config, [0.1], [1], [0], 1, True)
    row = next(r for r in result["rows"] if r["sweep"] == "steps")
    assert row["update_angle_per_layer_mean"][0] is None and row["update_rel_error_per_layer_mean"][0] == 1.0
    assert row["update_angle_mean"] is not None


def _invoke(runner, monkeypatch, tmp_path, *args):
    monkeypatch.setattr(bioprop_cli.datasets, "load_dataset", lambda name, data_dir=None, options=None: make_fake_dataset())
    results_dir = tmp_path / "results"
    sets = [a for key, value in TINY[1:] for a in ("--set", f"{key}={value}")]
    return results_dir, runner.invoke(app, ["sweep", "pc", "--results-dir", str(results_dir), *sets, *args])


def test_cli_writes_the_rows_summary_and_figure(runner, monkeypatch, tmp_path):
    results_dir, result = _invoke(runner, monkeypatch, tmp_path, "--gammas", "0.01,0.1,1", "--steps", "2,50",
                                  "--seeds", "1", "--batches", "1", "--x64")
    assert result.exit_code == 0, result.output
    (folder,) = results_dir.glob("pc-sweep/pc-float64-*")
    rows = read_jsonl(folder / "pc_sweep.jsonl")
    assert [r["sweep"] for r in rows] == ["gamma"] * 3 + ["steps"] * 2
    assert all(r["inference_steps"] == 50 for r in rows[:3]) and all(r["gamma"] == 0.01 for r in rows[3:])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["precision"] == "float64" and summary["gammas"] == [0.01, 0.1, 1.0]
    assert (folder / "pc_sweep.png").stat().st_size > 0 and (folder / "config.yaml").is_file()
    assert "slope against gamma" in result.output


@pytest.mark.parametrize("args, flag", [(["--gammas", "0.1,-1"], "--gammas"), (["--gammas", "nan"], "--gammas"),
                                        (["--gammas", "0"], "--gammas"), (["--steps", "0,5"], "--steps"),
                                        (["--steps", "2.5"], "--steps")])
def test_cli_refuses_bad_values(runner, monkeypatch, tmp_path, args, flag):
    results_dir, result = _invoke(runner, monkeypatch, tmp_path, *args)
    assert_user_error(result, flag)
    assert_nothing_written(results_dir)
