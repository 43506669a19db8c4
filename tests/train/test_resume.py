"""Checkpoints and --resume: a run stopped (at an epoch's end, inside an epoch) and resumed writes
what the same run writes uninterrupted."""

import json
import os
import signal

import numpy as np
import pytest

from typer.testing import CliRunner

from bioprop_cli import checkpoint
from bioprop_cli.cli import app
from bioprop_cli.errors import UserError
from bioprop_cli.runs import RunWriter, read_jsonl
from bioprop_cli.train import resume_run, train
from helpers import clusters, small_config

TIMING = ("epoch_time_s", "wall_time_s")


@pytest.fixture(autouse=True)
def sigint_as_in_a_terminal():
    """Python's own SIGINT handler (the runner may have been started with SIGINT ignored, which bioprop respects)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)
LOGS = ("metrics.jsonl", "alignment.jsonl", "steps.jsonl")


def _untimed(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _written(folder):
    logs = {name: _untimed(read_jsonl(folder / name)) for name in LOGS if (folder / name).exists()}
    with np.load(folder / "params.npz") as stored:
        params = {key: stored[key] for key in stored.files}
    return logs, params


def _ctrl_c(**at):
    """Callbacks that press Ctrl-C (a real SIGINT to this process) once the run reaches `at`:
    epoch=E (after epoch E is logged) or step=(E, S) (S steps into epoch E)."""
    def on_epoch(report):
        if report.record["epoch"] == at.get("epoch"):
            os.kill(os.getpid(), signal.SIGINT)

    def on_progress(epoch, step, steps_per_epoch):
        if (epoch, step) == at.get("step"):
            os.kill(os.getpid(), signal.SIGINT)

    return on_epoch, on_progress


CASES = {
    "bp": {"rule": "bp", "alignment.enabled": False},
    "fa": {"rule": "fa"},
    "kp": {"rule": "kp", "optimizer.name": "momentum", "alignment.enabled": False},
    "ep-persistent": {"rule": "ep", "ep.persistent": True, "ep.free_steps": 5, "ep.nudged_steps": 2,
                      "model.depth": 1},
    "bn-resnet": {"rule": "bp", "model.arch": "resnet", "model.resnet.depth": 8, "model.resnet.width": 4},
}


# bn-resnet and ep-persistent are slow (8-22 s); cheap twins: kp (a rule state through the checkpoint),
# test_ep_energy's persistent particles, test_sweep_checkpoint_resume. bp is slow too: fa (the same loop with
# the alignment logs) and kp (alignment off, an optimizer and rule state) cover its path
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in ("bn-resnet", "ep-persistent", "bp") else c
                                  for c in CASES])
def test_stopped_twice_and_resumed_equals_uninterrupted(tmp_path, case):
    """Ctrl-C after epoch 1, resume; Ctrl-C 2 steps into epoch 3 (the chunk then in flight finishes: the
    stop is 4 steps in), resume: the logs and parameters are those of the run trained in one go, to the bit."""
    config = small_config(**{"log.every_steps": 2, "train.chunk_steps": 2, "data.validation_size": 100, **CASES[case]})
    data = clusters(n_train=400, n_test=100, dim=784 if "resnet" in case else 20)  # 6 steps of 50 an epoch: 3 chunks of 2
    full, cut = tmp_path / "full", tmp_path / "cut"
    full.mkdir(), cut.mkdir()
    assert train(config, data, RunWriter(full))["status"] == "completed"

    on_epoch, on_progress = _ctrl_c(epoch=1)
    stopped = train(config, data, RunWriter(cut), on_epoch, on_progress=on_progress)
    assert stopped["status"] == "interrupted" and stopped["stopped_by"] == "Ctrl-C"
    meta = checkpoint.read(cut).meta
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 0)

    on_epoch, on_progress = _ctrl_c(step=(3, 2))
    stopped = resume_run(cut, data, config, on_epoch=on_epoch, on_progress=on_progress)
    assert stopped["status"] == "interrupted" and stopped["epochs_completed"] == 2
    meta = checkpoint.read(cut).meta
    assert (meta["epoch"], meta["step_in_epoch"]) == (2, 4)

    resumed = resume_run(cut, data, config)
    assert resumed["status"] == "completed" and resumed["epochs_completed"] == 3
    assert [r["from_epoch"] for r in resumed["resumed"]] == [1, 2]
    assert _written(cut)[0] == _written(full)[0]
    for key, value in _written(full)[1].items():
        np.testing.assert_array_equal(_written(cut)[1][key], value)


SMALL = ["--rule", "fa", "--width", "16", "--epochs", "2", "--set", "data.train_limit=1000",
         "--set", "data.validation_size=200", "--set", "data.test_limit=200", "--set", "alignment.probe_size=32"]


def test_time_budget_then_resume_from_the_command_line(tmp_path, mnist_dir):
    """train.max_minutes spent: a checkpoint, status interrupted (stopped_by train.max_minutes), exit 0.
    --resume with a changed key: refused in one line naming it (exit 2, nothing written); with --force:
    trained on and recorded."""
    runner = CliRunner()
    result = runner.invoke(app, ["train", *SMALL, "--data-dir", mnist_dir, "--results-dir", str(tmp_path),
                                 "--no-progress", "--set", "train.max_minutes=0.0001"])
    assert result.exit_code == 0, result.output
    (run,) = tmp_path.glob("default/*")
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["stopped_by"], summary["epochs_completed"]) == ("interrupted", "train.max_minutes", 0)
    assert summary["provenance"]["git"]["commit"] and "jax" in summary["provenance"]["dependencies"]
    assert "--resume" in result.output

    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    refused = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "3"])
    assert refused.exit_code == 2
    assert "train.epochs: 2 -> 3" in refused.output and "--force" in refused.output
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before

    forced = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "3", "--force", "--no-progress",
                                 "--set", "train.max_minutes=null"])
    assert forced.exit_code == 0, forced.output
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["epochs_completed"]) == ("completed", 3)
    assert summary["resumed"][-1]["forced"] == ["train.epochs: 2 -> 3"]
    assert [m["epoch"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    assert checkpoint.read(run).meta["epoch"] == 3 and checkpoint.path(run, "best").is_file()

    done = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "3"])
    assert done.exit_code == 2 and "nothing to resume" in done.output


def test_provenance_outside_a_git_checkout_is_null_not_a_crash(tmp_path):
    assert checkpoint.git_state(tmp_path) == {"commit": None, "dirty": None}
    here = checkpoint.git_state()
    assert len(here["commit"]) == 40 and isinstance(here["dirty"], bool)


def test_a_changed_config_is_named_and_run_control_keys_are_free():
    stored = {"train": {"epochs": 2, "max_minutes": None}, "optimizer": {"lr": 0.1}, "results_dir": "a"}
    current = {"train": {"epochs": 2, "max_minutes": 30.0}, "optimizer": {"lr": 0.2}, "results_dir": "b"}
    assert checkpoint.differences(stored, current) == ["optimizer.lr: 0.1 -> 0.2"]
