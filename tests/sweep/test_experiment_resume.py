"""Every multi-run command trains through the one runner (bioprop_cli/experiment/runner.py): killed in
the middle, the same command again trains only what did not finish, leaves the finished runs' files
as they were, and ends with the outputs of a command never killed.

The kill is injected: train_group trains k groups, then the next call raises Killed, a BaseException
that nothing in bioprop catches (as SIGKILL: nothing recorded for the group in training). Real
signals (SIGINT, kill -9) are tested on the sweep in test_interrupt.py and test_disk_and_data.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import make_fake_dataset

from bioprop_cli.cli import app
from bioprop_cli.runs import read_jsonl

SMALL = ["--width", "8", "--set", "data.validation_size=100", "--set", "data.test_limit=100",
         "--set", "train.batch_size=50"]


class Killed(BaseException):
    """Not an Exception, not a KeyboardInterrupt: no handler in bioprop catches it."""


@pytest.fixture
def fake_data(monkeypatch):
    monkeypatch.setattr("bioprop_cli.datasets.load_dataset", lambda name, data_dir=None, options=None: make_fake_dataset())


@pytest.fixture
def groups(monkeypatch):
    """The names of the runs each train_group call trained (per call, the run folders' names);
    `groups.kill_after = k` makes call k+1 raise Killed before it trains."""
    import bioprop_cli.train as train

    real = train.train_group

    class Groups(list):
        kill_after = None

    trained = Groups()

    def counting(configs, dataset, writers, *args, **kwargs):
        if trained.kill_after is not None and len(trained) == trained.kill_after:
            raise Killed
        trained.append(sorted(Path(w.path).name for w in writers))
        return real(configs, dataset, writers, *args, **kwargs)

    monkeypatch.setattr(train, "train_group", counting)
    return trained


def invoke(args, results_dir):
    return CliRunner().invoke(app, [*args, "--results-dir", str(results_dir)])


def killed(args, results_dir, groups, after: int) -> None:
    groups.kill_after = after
    with pytest.raises(Killed):
        invoke(args, results_dir)
    groups.kill_after = None
    groups.clear()


def stamps(folder: Path) -> dict:
    """Every file under `folder`: its modification time and bytes."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def only(pattern: str, root: Path) -> Path:
    (found,) = list(root.glob(pattern))
    return found


def run_numbers(folder: Path) -> dict:
    """Per manifest entry: status, test accuracy and the metrics without their times."""
    manifest = json.loads((folder / "manifest.json").read_text())
    out = {}
    for name, entry in manifest["runs"].items():
        metrics = read_jsonl(folder / entry["run_dir"] / "metrics.jsonl")
        out[name] = (entry["status"], entry["test_accuracy"],
                     [{k: v for k, v in m.items() if not k.endswith("time_s")} for m in metrics])
    return out


@pytest.mark.slow  # 10-45 s on 2 cores
def test_sweep_killed_resumes_without_retraining(tmp_path, fake_data, groups):
    args = ["sweep", "--grid", "depth=1,2", "--epochs", "1", *SMALL]
    killed(args, tmp_path / "killed", groups, after=1)
    folder = only("default/sweep-*", tmp_path / "killed")
    finished = stamps(folder / "runs" / "depth-1-s0")
    result = invoke(args, tmp_path / "killed")
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output
    assert groups == [["depth-2-s0-1"]]  # the killed run anew; depth 1 not trained again
    assert stamps(folder / "runs" / "depth-1-s0") == finished
    reference = invoke(args, tmp_path / "reference")
    assert reference.exit_code == 0, reference.output
    assert run_numbers(folder) == run_numbers(only("default/sweep-*", tmp_path / "reference"))


@pytest.mark.slow  # 10-45 s on 2 cores
def test_reproduce_killed_resumes_without_retraining(tmp_path, groups):
    from bioprop_cli.studies import reproduce as study

    preset = tmp_path / "presets" / "tiny.yaml"
    preset.parent.mkdir()
    preset.write_text(
        "model: {width: 8, depth: 1}\ntrain: {epochs: 1, batch_size: 50}\n"
        "data: {validation_size: 100, test_limit: 100}\nalignment: {probe_size: 16}\n"
        "sweep: {grid: {rule: [bp, fa]}, seeds: 1}\n"
        "paper: {title: tiny, tolerance: 1, published: [{quantity: test_error, where: {rule: fa}, value: 90}]}\n")
    loaded = study.load_preset("tiny", preset.parent)

    def reproduce(results_dir):
        return study.run(loaded, False, None, lambda cfg: make_fake_dataset(), [("results_dir", str(results_dir))])

    groups.kill_after = 1
    with pytest.raises(Killed):
        reproduce(tmp_path / "killed")
    groups.kill_after = None
    groups.clear()
    folder = only("reproduce-tiny/sweep-*", tmp_path / "killed")
    finished = stamps(folder / "runs" / "rule-bp-s0")
    resumed = reproduce(tmp_path / "killed")
    assert groups == [["rule-fa-s0-1"]]
    assert stamps(folder / "runs" / "rule-bp-s0") == finished
    reference = reproduce(tmp_path / "reference")
    assert resumed["rows"] == reference["rows"] and resumed["rows"][0]["runs_completed"] == 1
    assert run_numbers(folder) == run_numbers(Path(reference["sweep_folder"]))


def test_sweep_beta_train_killed_resumes_and_a_finished_one_trains_nothing(tmp_path, fake_data, groups):
    args = ["sweep", "beta", "--train", "--values", "0.1,0.5", "--epochs", "1", "--set", "ep.free_steps=10",
            "--set", "ep.nudged_steps=5", "--set", "alignment.enabled=false", *SMALL]
    killed(args, tmp_path / "killed", groups, after=0)  # the betas train as one group: killed, none finished
    folder = only("beta-sweep/beta-train-*", tmp_path / "killed")
    result = invoke(args, tmp_path / "killed")
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output
    assert groups == [["beta-0.1-s0-1", "beta-0.5-s0-1"]]
    reference = invoke(args, tmp_path / "reference")
    assert reference.exit_code == 0, reference.output
    assert "resuming" not in reference.output
    reference_folder = only("beta-sweep/beta-train-*", tmp_path / "reference")
    assert folder.name == reference_folder.name  # the folder is named by what it trains

    def rows(folder):
        return [{k: v for k, v in r.items() if k != "run_dir"} for r in read_jsonl(folder / "beta_train.jsonl")]

    assert rows(folder) == rows(reference_folder) and [r["status"] for r in rows(folder)] == ["completed"] * 2
    assert run_numbers(folder) == run_numbers(reference_folder)
    groups.clear()
    before = stamps(folder / "runs")
    again = invoke(args, tmp_path / "killed")
    assert again.exit_code == 0, again.output
    assert groups == [] and stamps(folder / "runs") == before
    assert rows(folder) == rows(reference_folder)


@pytest.mark.slow  # 10-45 s on 2 cores
def test_sweep_condition_killed_resumes_without_retraining(tmp_path, fake_data, groups):
    args = ["sweep", "condition", "--knobs", "beta", "--beta", "0.01,0.1", "--train-limit", "600", "--probe-size", "16",
            "--set", "ep.free_steps=20", "--set", "ep.nudged_steps=10", *SMALL]
    killed(args, tmp_path / "killed", groups, after=1)  # the baseline trained, the beta knob's group killed
    folder = only("condition-sweep/condition-*", tmp_path / "killed")
    assert [r["knob"] for r in read_jsonl(folder / "condition_sweep.jsonl")] == ["baseline"]
    finished = stamps(folder / "runs" / "baseline-base-s0")
    result = invoke(args, tmp_path / "killed")
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output
    assert groups == [["beta-0.01-s0-1", "beta-0.1-s0-1"]]
    assert stamps(folder / "runs" / "baseline-base-s0") == finished
    reference = invoke(args, tmp_path / "reference")
    assert reference.exit_code == 0, reference.output
    reference_folder = only("condition-sweep/condition-*", tmp_path / "reference")

    def rows(folder):
        return [{k: v for k, v in r.items() if k != "run_dirs"} for r in read_jsonl(folder / "condition_sweep.jsonl")]

    assert rows(folder) == rows(reference_folder) and len(rows(folder)) == 3
    assert (json.loads((folder / "summary.json").read_text())
            == json.loads((reference_folder / "summary.json").read_text()))
