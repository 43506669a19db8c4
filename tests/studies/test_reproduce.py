"""`bioprop reproduce`: the paper presets, the verdicts, the command end to end."""

from __future__ import annotations

import json

import pytest

from helpers import make_fake_dataset

from bioprop_cli.cli import app
from bioprop_cli.errors import UserError
from bioprop_cli.studies import reproduce as study

PRESETS = study.preset_names()


def test_every_paper_preset_is_listed(runner):
    result = runner.invoke(app, ["reproduce", "--list"])
    assert result.exit_code == 0
    assert sorted(p.stem for p in study.PAPERS.glob("*.yaml")) == PRESETS
    for name in PRESETS:
        assert name in result.output
    for paper in ("scellier-bengio-2017-1h", "scellier-bengio-2017-2h", "scellier-bengio-2017-3h", "laborieux-2021-mlp",
                  "lillicrap-2016", "nokland-2016", "akrout-2019", "moskovitz-2018"):
        assert paper in PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_presets_are_valid_full_and_quick(name, tmp_path):
    preset = study.load_preset(name)
    for quick in (False, True):
        config = study.base_config(preset, quick, [("results_dir", str(tmp_path))])
        assert config.experiment == f"reproduce-{name}" + ("-quick" if quick else "")
    quick_config = study.base_config(preset, True)
    full_config = study.base_config(preset, False)
    assert quick_config.train.epochs <= 2 and quick_config.data.train_limit is not None
    assert full_config.data.train_limit is None  # the full run trains on the whole split


def test_scellier_bengio_presets_follow_their_code():
    """train_model.py net1/net2/net3 and model.py: random-sign one-sided nudging, persistent particles,
    the cost without the 1/2, eps 0.5, T1/T2, beta and the per-layer rates of each depth, batch 20."""
    expected = {  # depth: (T1, T2, beta, epochs, per-layer learning rates)
        1: (20, 4, 0.5, 25, [0.1, 0.05]),
        2: (150, 6, 1.0, 60, [0.4, 0.1, 0.01]),
        3: (500, 8, 1.0, 500, [0.128, 0.032, 0.008, 0.002]),
    }
    for depth, (t1, t2, beta, epochs, rates) in expected.items():
        c = study.base_config(study.load_preset(f"scellier-bengio-2017-{depth}h"), False)
        assert (c.ep.estimator, c.ep.persistent, c.ep.cost, c.ep.eps) == ("random-sign", True, "squared", 0.5)
        assert (c.ep.free_steps, c.ep.nudged_steps, c.ep.beta, c.train.epochs, c.train.batch_size) == (t1, t2, beta, epochs, 20)
        assert [c.optimizer.lr * m for m in c.optimizer.layer_lr] == pytest.approx(rates)
        assert (c.model.depth, c.model.width, c.model.activation, c.optimizer.name) == (depth, 500, "hard_sigmoid", "sgd")
        assert c.data.validation_size == 10000  # their 50,000 / 10,000 split


def test_full_verdict_on_hand_made_numbers():
    assert study.full_verdict(2.1, 2.3, 0.3) == "reproduced"
    assert study.full_verdict(2.1, 1.8, 0.3) == "reproduced"  # the edge counts
    assert study.full_verdict(2.1, 2.5, 0.3) == "not reproduced"
    assert study.full_verdict(None, 2.5, 0.3) == "no published number"
    assert study.full_verdict(2.1, None, 0.3) == "no result"
    # the allowed difference: the larger of the paper's spread and the stated tolerance
    assert study.allowed_difference(0.5, 0.3) == (0.5, "paper's spread")
    assert study.allowed_difference(0.1, 0.2) == (0.2, "stated tolerance")
    assert study.allowed_difference(None, 0.3) == (0.3, "stated tolerance")
    assert study.allowed_difference(None, None) == (None, "none")


def test_quick_verdict_checks_the_direction_only():
    # from an untrained 90% error towards a published 2%: half way is 46%
    assert study.quick_verdict(2.0, 40.0, 90.0, 0.5) == "quick check: towards published"
    assert study.quick_verdict(2.0, 60.0, 90.0, 0.5) == "quick check: not towards published"
    # angles fall from 90 degrees; a published 35 degrees, ours 50 after a short run
    assert study.quick_verdict(35.0, 50.0, 90.0, 0.5) == "quick check: towards published"
    for mean in (2.0, 2.1, 40.0):  # never "reproduced", however close
        assert "reproduced" not in study.quick_verdict(2.0, mean, 90.0, 0.5)


def test_compare_pools_seeds_per_variant(tmp_path):
    """Hand-made run folders: each variant's published number against its own runs' mean and std."""
    preset = study.load_preset("lillicrap-2016")
    runs = {}
    for rule, accs in (("fa", [0.979, 0.977]), ("bp", [0.970, 0.968])):
        for seed, acc in enumerate(accs):
            name = f"rule-{rule}-s{seed}"
            (tmp_path / name).mkdir()
            (tmp_path / name / "summary.json").write_text(json.dumps({"status": "completed", "test_accuracy": acc}))
            runs[name] = {"values": {"rule": rule}, "seed": seed, "run_dir": name, "status": "completed"}
    rows = study.compare(preset, tmp_path, {"runs": runs}, quick=False)
    fa, bp = (next(r for r in rows if r["where"] == {"rule": rule}) for rule in ("fa", "bp"))
    assert fa["mean"] == pytest.approx(2.2) and fa["std"] == pytest.approx(0.1414, abs=1e-3)
    assert fa["difference"] == pytest.approx(0.1) and fa["verdict"].startswith("reproduced")
    assert bp["mean"] == pytest.approx(3.1) and bp["verdict"].startswith("not reproduced")  # 0.7 off, tolerance 0.3


def test_unknown_preset_is_one_line_and_exit_2(runner, tmp_path):
    result = runner.invoke(app, ["reproduce", "lillicrap-2016", "no-such-paper", "--results-dir", str(tmp_path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "no-such-paper" in lines[0] and "lillicrap-2016" in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing written
    with pytest.raises(UserError):
        study.load_preset("no-such-paper")


def test_quick_preset_end_to_end(runner, tmp_path, monkeypatch):
    """The Scellier & Bengio preset's quick version through the CLI (a random dataset the size the quick
    block asks for): the sweep's run folders, reproduce.json and its table, quick verdicts only."""
    monkeypatch.setattr("bioprop_cli.cli.reproduce._load_dataset", lambda cfg: make_fake_dataset(3000, 1000))
    result = runner.invoke(app, ["reproduce", "scellier-bengio-2017-1h", "--quick", "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    [written] = list(tmp_path.glob("reproduce-scellier-bengio-2017-1h-quick/sweep-*/reproduce.json"))
    out = json.loads(written.read_text())
    assert out["mode"] == "quick" and out["seeds"] == [0] and out["wall_time_s"] > 0
    assert all(row["verdict"].startswith("quick check") for row in out["rows"])
    [val] = [r for r in out["rows"] if r["quantity"] == "val_error"]
    [run] = list(written.parent.glob("runs/*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert val["published"] == 2.5 and val["ours"] == [pytest.approx(100 * (1 - summary["val_accuracy"]))]
    assert val["mean"] == pytest.approx(val["ours"][0])
    assert "published vs ours" in written.with_suffix(".txt").read_text()


@pytest.mark.slow
def test_every_quick_preset_runs(runner, tmp_path, mnist_dir):
    """`bioprop reproduce --quick` for every preset on MNIST (CI runs the slow marker)."""
    result = runner.invoke(app, ["reproduce", "--quick", "--results-dir", str(tmp_path), "--data-dir", mnist_dir])
    assert result.exit_code == 0, result.output
    for name in PRESETS:
        [written] = list(tmp_path.glob(f"reproduce-{name}-quick/sweep-*/reproduce.json"))
        rows = json.loads(written.read_text())["rows"]
        assert all(row["runs_completed"] == row["runs"] > 0 for row in rows), name


def test_a_published_number_must_name_its_grid_point(tmp_path):
    text = (study.PAPERS / "lillicrap-2016.yaml").read_text().replace("      where: {rule: fa}\n", "", 1)
    (tmp_path / "broken.yaml").write_text(text)
    with pytest.raises(UserError, match=r"published\[0\]\.where"):
        study.load_preset("broken", tmp_path)


def test_a_number_not_read_from_the_paper_says_so_in_the_verdict(tmp_path):
    preset = study.load_preset("lillicrap-2016")  # its Fig. 2a values are marked checked: false
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "summary.json").write_text(json.dumps({"status": "completed", "test_accuracy": 0.979}))
    runs = {"rule-fa-s0": {"values": {"rule": "fa"}, "seed": 0, "run_dir": "r", "status": "completed"}}
    [fa] = [r for r in study.compare(preset, tmp_path, {"runs": runs}, quick=False) if r["where"] == {"rule": "fa"}]
    assert fa["verdict"] == "reproduced (published number unchecked)" and fa["checked"] is False
