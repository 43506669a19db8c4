"""`bioprop conditions` and `bioprop sweep condition`: the seven conditions of gradient equivalence."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bioprop_cli.cli import app
from bioprop_cli.config import load_config
from bioprop_cli.studies.conditions import run as measure_conditions
from bioprop_cli.runs import read_jsonl
from tests.conftest import make_fake_dataset

PNG = b"\x89PNG\r\n\x1a\n"
TINY_DATA = [("data.train_limit", 400), ("data.validation_size", 100), ("data.test_limit", 100)]
# A small EP network where every condition holds: smooth rho, contracting dynamics settled for
# far longer than they need, T2 >> L = 3, symmetric nudging at a small beta.
CONVERGED_EP = [("rule", "ep"), ("model.depth", 2), ("model.width", 4), ("model.activation", "sigmoid"),
                ("ep.estimator", "symmetric"), ("ep.beta", 1e-3), ("ep.free_steps", 150), ("ep.nudged_steps", 150),
                ("ep.reference_tolerance", 1e-10), ("ep.reference_steps", 2000), *TINY_DATA]


def _status(table, number):
    return next(r for r in table["conditions"] if r["condition"] == number)["status"]


@pytest.fixture(scope="module")
def dataset():
    return make_fake_dataset(n_train=400, n_test=100)


def test_converged_ep_holds_everything_and_one_free_step_fails_convergence(dataset):
    converged = measure_conditions(load_config(overrides=CONVERGED_EP), dataset, 8, x64=True)
    assert converged["all_applicable_hold"], [(r["condition"], r["status"], r["measured"]) for r in converged["conditions"]]
    assert [_status(converged, n) for n in range(1, 8)] == ["holds"] * 7
    assert converged["gradient_equivalence"]["status"] == "holds"
    assert converged["gradient_equivalence"]["network"]["update_rel_error"] < 1e-3
    one_step = measure_conditions(load_config(overrides=CONVERGED_EP + [("ep.free_steps", 1), ("ep.nudged_steps", 2),
                                                                        ("ep.reference_tolerance", 1e-6)]), dataset, 8)
    row = next(r for r in one_step["conditions"] if r["condition"] == 1)
    assert row["status"] == "fails" and row["values"]["free_residual"] > 1e-2
    assert _status(one_step, 7) == "fails"  # T2 = 2 < L = 3: the nudge does not reach W_0
    assert next(r for r in one_step["conditions"] if r["condition"] == 4)["values"]["unreached_layers"] == [0]


def test_conditions_command_with_run_and_with_flags(tmp_path, mnist_dir):
    from bioprop_cli.datasets import load_dataset
    from bioprop_cli.runs import RunWriter
    from bioprop_cli.train import train

    runner = CliRunner()
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(overrides=[("rule", "fa"), ("model.depth", 2), ("model.width", 16), ("data.data_dir", mnist_dir),
                                 ("data.train_limit", 1000), ("data.validation_size", 200), ("data.test_limit", 100),
                                 ("train.epochs", 1), ("train.batch_size", 25), ("optimizer.lr", 0.01),
                                 ("alignment.probe_size", 16)])
    train(cfg, load_dataset(cfg.data.dataset, cfg.data.data_dir), RunWriter(run))  # a tiny trained run
    args = ["conditions", "--run", str(run), "--probe-size", "32"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"trained parameters from {run / 'params.npz'}" in result.output.replace("\n", "")
    fa = json.loads((run / "conditions.json").read_text())
    assert fa["parameters"] == "trained"
    assert fa["rule"] == "fa" and fa["setup"]["probe_size"] == 32 and len(fa["conditions"]) == 7
    row = next(r for r in fa["conditions"] if r["condition"] == 4)  # random feedback: not W^T
    assert row["status"] in ("fails", "partial") and not fa["all_applicable_hold"]
    angle = row["values"]["max_feedback_angle"]
    assert 45 < angle < 135 and f"{angle:.2f}°" in row["measured"]
    assert _status(fa, 5) == "holds" and _status(fa, 3) == "holds"
    (run / "params.npz").rename(tmp_path / "params.npz")  # a run without params.npz: the fresh network
    result = runner.invoke(app, args)  # and conditions.json is never overwritten: the next free name
    assert result.exit_code == 0 and (run / "conditions-2.json").is_file() and "not overwritten" in result.output
    assert "stored no parameters" in result.output
    fresh = json.loads((run / "conditions-2.json").read_text())
    assert fresh["parameters"] == "initial"
    # the W-to-B angles: trained W against the B fa trained with (rebuilt from the seed) = the run's
    # own last measurement; the fresh network's = its measurement at initialisation
    measured = read_jsonl(run / "alignment.jsonl")
    angles = lambda table: next(r for r in table["conditions"] if r["condition"] == 4)["values"]["feedback_angles"]
    assert sorted(angles(fa)) == sorted(angles(fresh)) == ["1", "2"]
    for layer in ("1", "2"):
        at = {r["epoch"]: r["feedback_angle"] for r in measured if str(r["layer"]) == layer}
        assert angles(fa)[layer] == pytest.approx(at[1], abs=1e-3)
        assert angles(fresh)[layer] == pytest.approx(at[0], abs=1e-3)
        assert abs(at[1] - at[0]) > 0.1  # training moved W relative to B
    out = tmp_path / "out"
    result = runner.invoke(app, ["conditions", "--rule", "bp", "--depth", "2", "--width", "8", "--data-dir", mnist_dir,
                                 "--set", "data.train_limit=1000", "--set", "data.validation_size=200", "--probe-size", "16",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    bp = json.loads((out / "conditions.json").read_text())
    assert bp["all_applicable_hold"] and bp["gradient_equivalence"]["status"] == "holds"
    assert [_status(bp, n) for n in range(1, 8)] == ["n/a", "n/a", "holds", "holds", "n/a", "n/a", "n/a"]


def test_sweep_condition_end_to_end(tmp_path, mnist_dir):
    result = CliRunner().invoke(app, [
        "sweep", "condition", "--knobs", "t2", "--t2", "1", "--width", "8",
        "--train-limit", "600", "--set", "data.validation_size=100", "--set", "data.test_limit=200",
        "--set", "ep.free_steps=40", "--set", "ep.nudged_steps=30", "--probe-size", "16",
        "--results-dir", str(tmp_path), "--data-dir", mnist_dir])
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "condition-sweep").iterdir()
    rows = read_jsonl(folder / "condition_sweep.jsonl")
    assert [(r["knob"], r["value"]) for r in rows] == [("baseline", None), ("t2", 1)]
    assert all(len(r["angle_per_layer"]) == 3 and len(r["rel_error_per_layer"]) == 3 for r in rows)
    for r in rows:  # each point's accuracy is its runs' (one seed here)
        (run,) = r["run_dirs"]
        assert r["test_accuracy"] == json.loads((Path(run) / "summary.json").read_text())["test_accuracy"]
    t2 = rows[-1]
    assert t2["angle_per_layer"][:2] == [None, None] and t2["rel_error_per_layer"][:2] == [1.0, 1.0]  # not reached
    assert rows[0]["update_angle"] < 1 < t2["update_angle"]
    assert (folder / "condition_t2.png").read_bytes()[:8] == PNG
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["costs"]) == {"t2"} and summary["costliest"] == "t2"
    assert summary["costs"]["t2"]["angle_cost_deg"] > 1
    assert summary["sentence"] and "costs most" in result.output


@pytest.mark.parametrize("args, word", [
    (["sweep", "condition", "--knobs", "t1,speed"], "--knobs"),
    (["sweep", "condition", "--knobs", "beta", "--beta", "0.1,-1"], "--beta"),
    (["sweep", "condition", "--knobs", "beta", "--t1", "5"], "--t1"),
    (["conditions", "--run", "/nonexistent/run"], "--run"),
    (["conditions", "--rule", "ep", "--set", "ep.eps=2"], "ep.eps"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, word):
    result = CliRunner().invoke(app, args + (["--results-dir", str(tmp_path)] if args[0] == "sweep" else []))
    assert result.exit_code == 2, result.output
    text = result.stderr if hasattr(result, "stderr") else result.output
    assert word in text and len(text.strip().splitlines()) == 1
    assert not (tmp_path / "condition-sweep").exists()

