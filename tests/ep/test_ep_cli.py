"""Equilibrium propagation through the CLI: `bioprop train --rule ep` and `bioprop sweep beta`."""

import json

import jax
import pytest
from typer.testing import CliRunner

from bioprop_cli.models.arch import dense
from bioprop_cli.cli import app
from bioprop_cli.config import load_config
from bioprop_cli.datasets import load_dataset
from bioprop_cli.network import init_state
from bioprop_cli.runs import load_params, read_jsonl
from bioprop_cli.splits import derive_keys, draw_probe, make_splits
from bioprop_cli.studies.beta import default_betas, fit_slopes
from bioprop_cli.metrics.measure import make_measure

SMALL = [
    "--set", "data.train_limit=2000", "--set", "data.validation_size=500", "--set", "data.test_limit=500",
    "--width", "32",
]


def invoke(args):
    result = CliRunner().invoke(app, args)
    return result


def test_train_ep_writes_the_ep_measurements(tmp_path, mnist_dir):
    result = invoke(["train", "--rule", "ep", "--epochs", "2", "--results-dir", str(tmp_path), "--data-dir", mnist_dir,
                     "--no-progress", "--set", "ep.free_steps=15", "--set", "ep.nudged_steps=6",
                     "--set", "alignment.probe_size=64", "--set", "ep.reference_steps=300", *SMALL])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "default").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["layer_sizes"] == [784, 32, 10]
    assert summary["test_accuracy"] > 0.6
    metrics = read_jsonl(run / "metrics.jsonl")
    for name in ("spectral_radius", "free_residual", "free_steps", "nudged_steps", "update_angle", "bptt_update_angle"):
        assert name in metrics[-1], name
    assert metrics[-1]["free_steps"] == 15 and metrics[-1]["nudged_steps"] == 6
    lines = read_jsonl(run / "alignment.jsonl")
    assert [r["layer"] for r in lines if r["epoch"] == 0] == [0, 1, "all"]
    # the last measurement is that of the trained network: re-measured from params.npz on the probe
    # (the rule state rebuilt from the seed, the probe drawn from the seed's probe key)
    last = [r for r in lines if r["layer"] == "all"][-1]
    config = load_config(run / "config.yaml")
    splits = make_splits(config, load_dataset("mnist", mnist_dir))
    keys = derive_keys(config.seed)
    rule, _, state = init_state(config, dense((784, 32, 10)), config.seed, splits.x_train.shape[0])
    x, y, _ = draw_probe(keys.probe, splits.x_train, splits.y_train, 64)
    again = jax.jit(make_measure(config, dense((784, 32, 10)), rule))(load_params(run), state, x, jax.nn.one_hot(y, 10), keys.probe)["network"]
    for name in ("update_angle", "bptt_update_angle", "implicit_vs_bptt_angle", "free_residual", "reference_residual"):
        assert float(again[name]) == pytest.approx(last[name], rel=1e-3, abs=1e-4), name


def test_sweep_beta_writes_table_plot_and_slopes(tmp_path, mnist_dir):
    result = invoke(["sweep", "beta", "--values", "0.01,0.1,0.5", "--seeds", "2", "--batches", "2",
                     "--results-dir", str(tmp_path), "--data-dir", mnist_dir, "--width", "16",
                     "--set", "ep.free_steps=50", "--set", "ep.nudged_steps=50", "--set", "ep.reference_steps=300", *SMALL[:6]])
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "beta-sweep").iterdir()
    rows = read_jsonl(folder / "beta_sweep.jsonl")
    assert sorted((r["estimator"], r["beta"]) for r in rows) == sorted(
        (e, b) for e in ("one-sided", "symmetric", "random-sign") for b in (0.01, 0.1, 0.5))
    assert all(r["n_estimates"] == 4 for r in rows)
    at = {(r["estimator"], r["beta"]): r for r in rows}
    # 50 free steps leave the free phase moving: the one-sided estimate carries that relaxation / beta,
    # the symmetric one cancels it (and its bias is O(beta^2), not O(beta))
    assert at["symmetric", 0.01]["bias"] < at["one-sided", 0.01]["bias"] / 2
    assert at["symmetric", 0.01]["angle_mean"] < at["one-sided", 0.01]["angle_mean"]
    assert (folder / "beta_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["slopes"]) == {"one-sided", "symmetric", "random-sign"} and summary["precision"] == "float32"
    assert "slope" in result.output


def test_sweep_beta_rejects_bad_input(tmp_path):
    for args, word in ((["--estimators", "two-sided"], "--estimators"), (["--values", "0.1,-1"], "--values"),
                       (["--set", "ep.eps=2"], "ep.eps")):
        result = invoke(["sweep", "beta", "--results-dir", str(tmp_path), *args])
        assert result.exit_code == 2, result.output
        assert word in (result.stderr if hasattr(result, "stderr") else result.output)
    assert not (tmp_path / "beta-sweep").exists()


def test_sweep_beta_train_trains_one_model_per_beta(tmp_path, mnist_dir):
    result = invoke(["sweep", "beta", "--train", "--values", "0.2,1", "--epochs", "1", "--results-dir", str(tmp_path),
                     "--data-dir", mnist_dir, "--set", "ep.free_steps=10", "--set", "alignment.enabled=false", *SMALL])
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "beta-sweep").iterdir()
    rows = read_jsonl(folder / "beta_train.jsonl")
    assert [r["beta"] for r in rows] == [0.2, 1.0]
    assert all(r["status"] == "completed" and r["test_accuracy"] > 0.3 for r in rows)
    assert len(list((folder / "runs").iterdir())) == 2
    assert (folder / "beta_train.png").exists()


def test_default_betas():
    betas = default_betas()
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(1.0)
    for k in range(1, 10):
        assert any(b == pytest.approx(k / 1000) for b in betas)
    assert betas == sorted(betas) and len(set(betas)) == len(betas)


def test_fit_slopes_recovers_power_laws_above_the_sweet_spot():
    rows = []
    for beta in (1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 1.0):
        # systematic bias c beta^k plus a round-off floor 1e-9 / beta that wins at small beta
        rows.append({"estimator": "one-sided", "beta": beta, "bias": 0.5 * beta + 1e-9 / beta, "std": 0.0})
        rows.append({"estimator": "symmetric", "beta": beta, "bias": 0.3 * beta**2 + 1e-9 / beta, "std": 0.0})
    slopes = fit_slopes(rows)
    assert slopes["one-sided"]["sweet_spot"] == pytest.approx(1e-4)
    assert slopes["symmetric"]["sweet_spot"] == pytest.approx(1e-3)
    assert slopes["one-sided"]["slope"] == pytest.approx(1.0, abs=0.01)
    assert slopes["symmetric"]["slope"] == pytest.approx(2.0, abs=0.05)  # the floor still bends 3e-3 a little
    assert min(slopes["symmetric"]["betas"]) == pytest.approx(3e-3)  # above the sweet spot
    assert max(slopes["symmetric"]["betas"]) == pytest.approx(0.1)  # beta = 1 is outside the small-beta range
    few = fit_slopes([r for r in rows if r["beta"] <= 1e-3])
    assert few["one-sided"]["slope"] is None and "fewer than 3" in few["one-sided"]["reason"]
