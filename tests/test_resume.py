"""Checkpoints and --resume: a run stopped (at an epoch's end, inside an epoch) and resumed writes
what the same run writes uninterrupted."""

import json
import os
import signal

import numpy as np
import pytest

from bioprop_cli import checkpoint
from bioprop_cli.errors import UserError
from bioprop_cli.runs import RunWriter, read_jsonl
from bioprop_cli.train import resume_run, train
from test_train import clusters, small_config

TIMING = ("epoch_time_s", "wall_time_s")
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
}


@pytest.mark.parametrize("case", CASES)
def test_stopped_twice_and_resumed_equals_uninterrupted(tmp_path, case):
    """Ctrl-C after epoch 1, resume; Ctrl-C 4 steps into epoch 3, resume: the logs and parameters are
    those of the run trained in one go, to the bit."""
    config = small_config(**{"log.every_steps": 4, "data.validation_size": 100, **CASES[case]})
    data = clusters(n_train=400, n_test=100)  # 6 steps of 50 an epoch: chunks of 4 and 2
    full, cut = tmp_path / "full", tmp_path / "cut"
    full.mkdir(), cut.mkdir()
    assert train(config, data, RunWriter(full))["status"] == "completed"

    on_epoch, on_progress = _ctrl_c(epoch=1)
    stopped = train(config, data, RunWriter(cut), on_epoch, on_progress=on_progress)
    assert stopped["status"] == "interrupted" and stopped["stopped_by"] == "Ctrl-C"
    meta = checkpoint.read(cut).meta
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 0)

    on_epoch, on_progress = _ctrl_c(step=(3, 4))
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
