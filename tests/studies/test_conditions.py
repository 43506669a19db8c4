"""`bioprop conditions` and `bioprop sweep condition`: the seven conditions of gradient equivalence."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bioprop_cli.cli import app
from bioprop_cli.config import load_config
from bioprop_cli.studies.conditions import run as measure_conditions
from bioprop_cli.runs import read_jsonl
from helpers import CONDITIONS_TINY_DATA, CONVERGED_EP, make_fake_dataset

PNG = b"\x89PNG\r\n\x1a\n"


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


# a real MNIST training, then three conditions tables; cheap twins: the next test (conditions --run),
# test_ep_once (a trained run's conditions, the feedback it trained with), the bp/fa/pc tables below
@pytest.mark.slow
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


def test_conditions_of_a_run_read_its_parameters_and_overwrite_nothing(tmp_path, monkeypatch, fake_dataset):
    """The default suite's `conditions --run` (the MNIST one above is slow): a tiny fa run's trained
    parameters are measured; without params.npz, the fresh network; conditions.json is never overwritten."""
    import bioprop_cli.datasets
    from bioprop_cli.runs import RunWriter
    from bioprop_cli.train import train

    monkeypatch.setattr(bioprop_cli.datasets, "load_dataset", lambda name, data_dir=None, options=None: fake_dataset)
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(overrides=[("rule", "fa"), ("model.depth", 1), ("model.width", 8), ("data.validation_size", 100),
                                 ("train.epochs", 1), ("alignment.probe_size", 16)])
    train(cfg, fake_dataset, RunWriter(run))
    args = ["conditions", "--run", str(run), "--probe-size", "16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"trained parameters from {run / 'params.npz'}" in result.output.replace("\n", "")
    fa = json.loads((run / "conditions.json").read_text())
    assert fa["parameters"] == "trained" and fa["rule"] == "fa" and len(fa["conditions"]) == 7
    assert fa["setup"]["probe_size"] == 16 and not fa["all_applicable_hold"]
    (run / "params.npz").rename(tmp_path / "params.npz")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and (run / "conditions-2.json").is_file() and "not overwritten" in result.output
    assert "stored no parameters" in result.output
    assert json.loads((run / "conditions-2.json").read_text())["parameters"] == "initial"
    assert json.loads((run / "conditions.json").read_text()) == fa


# trains two EP points on MNIST; cheap twin: test_experiment_resume::test_sweep_condition_killed_resumes_without_retraining
@pytest.mark.slow
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



def test_gradient_equivalence_is_graded_on_the_worst_hidden_layer():
    from bioprop_cli.metrics.conditions import gradient_equivalence

    # fa at initialisation (784-256x3-10): the exact output layer pulls the whole network to 79.1°
    fa = {"layers": {"update_angle": [88.9, 92.1, 90.1, 0.0], "update_rel_error": [1.4, 1.4, 1.4, 0.0]},
          "network": {"update_angle": 79.1, "update_rel_error": 0.9}}
    graded = gradient_equivalence(fa, exact_output=True)
    assert graded["status"] == "fails" and graded["graded_layers"] == [0, 1, 2]
    assert graded["worst_layer"] == 1 and graded["worst_angle"] == 92.1
    assert graded["network"]["update_angle"] == 79.1  # still reported
    aligned = {"layers": {"update_angle": [61.6, 58.3, 47.1, 0.0], "update_rel_error": [1.0, 1.0, 0.9, 0.0]},
               "network": {"update_angle": 56.7, "update_rel_error": 0.9}}
    assert gradient_equivalence(aligned, exact_output=True)["status"] == "partial"
    # ep: the output layer's update is no better than the others': every layer graded
    ep = {"layers": {"update_angle": [0.5, 0.4, 85.0], "update_rel_error": [0.01, 0.01, 1.0]},
          "network": {"update_angle": 0.9, "update_rel_error": 0.04}}
    assert gradient_equivalence(ep, exact_output=False)["status"] == "fails"
    assert gradient_equivalence(ep, exact_output=True)["status"] == "holds"
    unreached = {"layers": {"update_angle": [float("nan"), 0.2, 0.1], "update_rel_error": [1.0, 0.01, 0.01]},
                 "network": {"update_angle": 0.5, "update_rel_error": 0.3}}
    assert gradient_equivalence(unreached, exact_output=False)["status"] == "fails"


def test_fa_at_initialisation_fails_gradient_equivalence(dataset):
    table = measure_conditions(load_config(overrides=[("rule", "fa"), ("model.depth", 2), ("model.width", 128),
                                                      *CONDITIONS_TINY_DATA]), dataset, 64)
    eq = table["gradient_equivalence"]
    hidden = [r["update_angle"] for r in eq["layers"][:-1]]
    assert eq["status"] == "fails" and max(hidden) >= 80, eq
    assert eq["network"]["update_angle"] < max(hidden)  # the exact output layer flatters the whole network


def test_convergence_is_graded_on_the_distance_to_the_fixed_point():
    from bioprop_cli.metrics.conditions import convergence_status, distance_bound

    # a residual of 5e-5 passed the old absolute threshold (1e-4); at radius 0.997 the state can be
    # 5e-5 / 0.003 = 1.7e-2 from the fixed point
    assert distance_bound(0.997, 5e-5) == pytest.approx(5e-5 / 0.003)
    assert convergence_status(0.997, 0.0, 5e-5) == "fails"
    assert convergence_status(0.5, 0.0, 5e-5) == "partial"  # 1e-4 away
    assert convergence_status(0.5, 0.0, 1e-6) == "holds"
    assert convergence_status(0.9995, 1e-3, 1e-9) == "fails"  # not shown to contract: radius + error >= 1
    assert convergence_status(0.9995, None, 1e-9) == "holds"  # no error bound (separate feedback): the estimate
    assert distance_bound(1.0, 1e-9) is None


def test_small_perturbation_prints_a_beta_ladder(dataset):
    from bioprop_cli.metrics.conditions import ladder

    assert ladder(0.5) == pytest.approx([0.5, 0.05, 0.005, 5e-4, 1e-4])
    assert ladder(1e-3) == pytest.approx([1e-3, 1e-4]) and ladder(1e-4) == [1e-4]
    table = measure_conditions(load_config(overrides=CONVERGED_EP + [("ep.beta", 0.5), ("ep.estimator", "one-sided")]),
                               dataset, 8, x64=True)
    row = next(r for r in table["conditions"] if r["condition"] == 6)
    rungs = row["values"]["ladder"]
    assert [r["beta"] for r in rungs] == pytest.approx([0.5, 0.05, 0.005, 5e-4, 1e-4])
    errors = [r["rel_error"] for r in rungs]
    assert errors[0] == row["values"]["rel_error_vs_implicit"] and row["status"] != "holds"
    assert errors[-1] < errors[0] / 100  # one-sided: O(beta), down the ladder
    assert all(f"{r['beta']:g}: " in row["measured"] for r in rungs)
    assert "bias_vs_small_beta" not in json.dumps(table)


def test_pc_has_its_own_conditions_table(dataset):
    pc = [("rule", "pc"), ("model.depth", 2), ("model.width", 16), *CONDITIONS_TINY_DATA]
    standard = measure_conditions(load_config(overrides=pc), dataset, 16)
    rows = {r["condition"]: r for r in standard["conditions"]}
    assert rows[1]["values"]["converged_steps"] == 200 and rows[1]["values"]["inference_residual"] > 0
    assert rows[5]["status"] == "partial"  # the registry's locality: errors travel through W^T
    gammas = rows[6]["values"]["ladder"]
    assert [r["gamma"] for r in gammas] == pytest.approx([0.1, 0.01, 0.001])
    assert gammas[-1]["rel_error"] < gammas[0]["rel_error"]  # pc -> bp as gamma -> 0
    steps = rows[7]["values"]["steps_ladder"]
    assert [r["steps"] for r in steps] == [2, 20, 200] and steps[-1]["angle"] < steps[0]["angle"]
    assert rows[7]["status"] == "holds"
    one_step = measure_conditions(load_config(overrides=pc + [("pc.inference_steps", 1)]), dataset, 16)
    rows = {r["condition"]: r for r in one_step["conditions"]}
    assert rows[7]["status"] == "fails" and rows[4]["values"]["unreached_layers"] == [0]
    assert one_step["gradient_equivalence"]["status"] == "fails"  # layer 0 gets no update
    zil = measure_conditions(load_config(overrides=pc + [("pc.variant", "zero_divergence")]), dataset, 16)
    rows = {r["condition"]: r for r in zil["conditions"]}
    assert rows[1]["status"] == "n/a" and rows[6]["status"] == "holds" and rows[7]["status"] == "holds"
    assert zil["gradient_equivalence"]["status"] == "holds"
