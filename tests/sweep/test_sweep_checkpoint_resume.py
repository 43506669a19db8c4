"""A sweep rerun after a kill continues each killed run from its checkpoint, in the run's own folder
(bioprop_cli/experiment/runner.py: resumable_checkpoint), and ends with the numbers of a sweep never
killed; a checkpoint of another config or code is not used (the run is trained afresh, one line says
so).

The kill is injected as in test_experiment_resume.py: Killed, a BaseException nothing in bioprop
catches (as SIGKILL: no summary, no manifest update), raised right after the run's epoch-1
checkpoint is written; or a real SIGINT there; or (slow) a real kill -9 of a subprocess there.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import make_fake_dataset

from bioprop_cli.cli import app
from bioprop_cli.runs import read_jsonl

ARGS = ["sweep", "--grid", "depth=1,2", "--epochs", "3", "--width", "8", "--set", "data.validation_size=100",
        "--set", "data.test_limit=100", "--set", "train.batch_size=50", "--set", "alignment.probe_size=16"]
KILLED_RUN = "depth-2-s0"  # the second group: depth 1 has finished when it is killed


class Killed(BaseException):
    """Not an Exception, not a KeyboardInterrupt: no handler in bioprop catches it."""


@pytest.fixture
def fake_data(monkeypatch):
    monkeypatch.setattr("bioprop_cli.datasets.load_dataset", lambda name, data_dir=None, options=None: make_fake_dataset())


@pytest.fixture
def trained(monkeypatch):
    """Per train_group call: (run folder names, the epoch each resumes from or None); `trained.kill`:
    the run folder name whose first checkpoint write is followed by `trained.stop` (raises Killed, or
    presses Ctrl-C: a real SIGINT to this process)."""
    import bioprop_cli.train as train

    real = train.train_group

    class Calls(list):
        kill, stop = None, None

    calls = Calls()

    def recording(configs, dataset, writers, *args, resume=None, **kwargs):
        calls.append(([Path(w.path).name for w in writers], None if resume is None else resume[0].meta["epoch"]))
        for writer in writers:
            if Path(writer.path).name == calls.kill:
                write = writer.checkpoint

                def write_then_die(name, data, write=write, stops=[calls.stop]):
                    write(name, data)
                    if stops:
                        stops.pop()()

                writer.checkpoint = write_then_die
        return real(configs, dataset, writers, *args, resume=resume, **kwargs)

    monkeypatch.setattr(train, "train_group", recording)
    return calls


def invoke(args, results_dir):
    return CliRunner().invoke(app, [*args, "--results-dir", str(results_dir)])


def stamps(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def sweep_folder(root: Path) -> Path:
    (found,) = list((root / "default").glob("sweep-*"))
    return found


def without_times(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in records]


def assert_close(a, b, where: str, atol: float = 1e-9) -> None:
    """a equals b, numbers to float32 rounding (rtol 1e-6, `atol`), everything else exactly."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_close(a[key], b[key], f"{where}.{key}", atol)
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{where}[{i}]", atol)
    elif isinstance(a, float) and isinstance(b, float):
        assert np.isclose(a, b, rtol=1e-6, atol=atol, equal_nan=True), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def params(run: Path) -> dict:
    with np.load(run / "params.npz") as stored:
        return {k: stored[k] for k in stored.files}


def kill():
    raise Killed


def ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(autouse=True)
def sigint_as_in_a_terminal():
    """Python's own SIGINT handler (the runner may have been started with SIGINT ignored, which bioprop respects)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def killed_after_epoch_1(results_dir: Path, trained, stop=kill) -> Path:
    trained.kill, trained.stop = KILLED_RUN, stop
    if stop is kill:
        with pytest.raises(Killed):
            invoke(ARGS, results_dir)
    else:
        assert invoke(ARGS, results_dir).exit_code == 130
    trained.kill = None
    trained.clear()
    folder = sweep_folder(results_dir)
    assert [m["epoch"] for m in read_jsonl(folder / "runs" / KILLED_RUN / "metrics.jsonl")] == [1]
    return folder


# [ctrl-c] is slow: the group test's [ctrl-c] below stops a sweep the same way in the default suite
@pytest.mark.parametrize("stop", [kill, pytest.param(ctrl_c, marks=pytest.mark.slow)], ids=["kill", "ctrl-c"])
def test_a_stopped_run_continues_from_its_checkpoint_in_its_own_folder(tmp_path, fake_data, trained, stop):
    folder = killed_after_epoch_1(tmp_path / "killed", trained, stop)
    finished = stamps(folder / "runs" / "depth-1-s0")

    result = invoke(ARGS, tmp_path / "killed")
    assert result.exit_code == 0, result.output
    assert f"{KILLED_RUN}: continues from its checkpoint (epoch 1, step 0)" in result.output
    assert trained == [([KILLED_RUN], 1)]  # only the killed run, from epoch 1, in its own folder
    assert stamps(folder / "runs" / "depth-1-s0") == finished
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["runs"][KILLED_RUN]
    assert entry["run_dir"] == f"runs/{KILLED_RUN}" and "previous_run_dirs" not in entry
    assert entry["status"] == "completed"
    run = folder / "runs" / KILLED_RUN
    assert [m["epoch"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    assert [r["from_epoch"] for r in json.loads((run / "summary.json").read_text())["resumed"]] == [1]

    reference_result = invoke(ARGS, tmp_path / "reference")
    assert reference_result.exit_code == 0, reference_result.output
    reference = sweep_folder(tmp_path / "reference")
    for name in ("depth-1-s0", KILLED_RUN):
        ours, theirs = folder / "runs" / name, reference / "runs" / name
        for log in ("metrics.jsonl", "alignment.jsonl"):
            mine, other = without_times(read_jsonl(ours / log)), without_times(read_jsonl(theirs / log))
            assert_close(mine, other, f"{name}/{log}")
        mine, other = params(ours), params(theirs)
        assert mine.keys() == other.keys()
        for key in mine:
            np.testing.assert_allclose(mine[key], other[key], rtol=1e-6, atol=1e-7)
    ref_manifest = json.loads((reference / "manifest.json").read_text())
    assert entry["test_accuracy"] == pytest.approx(ref_manifest["runs"][KILLED_RUN]["test_accuracy"])


def test_a_checkpoint_of_other_code_is_not_used_the_run_is_trained_afresh(tmp_path, fake_data, trained, monkeypatch):
    folder = killed_after_epoch_1(tmp_path, trained)
    import bioprop_cli.checkpoint as checkpoint

    real = checkpoint.code_version
    monkeypatch.setattr(checkpoint, "code_version", lambda: {**real(), "source_sha256": "edited"})
    result = invoke(ARGS, tmp_path)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "not used" in line]
    assert len(lines) == 1 and "code source_sha256" in lines[0] and KILLED_RUN in lines[0], result.output
    assert trained == [([f"{KILLED_RUN}-1"], None)]  # anew, in a new folder
    entry = json.loads((folder / "manifest.json").read_text())["runs"][KILLED_RUN]
    assert entry["previous_run_dirs"] == [f"runs/{KILLED_RUN}"] and entry["status"] == "completed"
    assert [m["epoch"] for m in read_jsonl(folder / entry["run_dir"] / "metrics.jsonl")] == [1, 2, 3]


KILL_9_SWEEP = """
import os, signal, sys
sys.path[:0] = [{tests!r}]
from typer.testing import CliRunner
from helpers import make_fake_dataset
import bioprop_cli.datasets
import bioprop_cli.runs as runs
from bioprop_cli.cli import app

bioprop_cli.datasets.load_dataset = lambda name, data_dir=None, options=None: make_fake_dataset()
write = runs.RunWriter.checkpoint

def write_then_kill_9(self, name, data):
    write(self, name, data)
    if self.path.name == {run!r}:
        os.kill(os.getpid(), signal.SIGKILL)

runs.RunWriter.checkpoint = write_then_kill_9
CliRunner().invoke(app, {args!r})
"""


@pytest.mark.slow  # a subprocess killed with kill -9 (as test_disk_and_data.py: CI runs -m slow); 6 s here
def test_a_sweep_killed_with_sigkill_trains_only_the_rest_of_the_killed_run(tmp_path, fake_data, trained):
    import subprocess
    import sys

    from helpers import HELPERS_DIR

    script = tmp_path / "kill_9.py"
    script.write_text(KILL_9_SWEEP.format(tests=str(HELPERS_DIR), run=KILLED_RUN,
                                          args=[*ARGS, "--results-dir", str(tmp_path)]))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == -9, done.stderr
    folder = sweep_folder(tmp_path)
    assert [m["epoch"] for m in read_jsonl(folder / "runs" / KILLED_RUN / "metrics.jsonl")] == [1]
    result = invoke(ARGS, tmp_path)
    assert result.exit_code == 0, result.output
    assert trained == [([KILLED_RUN], 1)]
    assert [m["epoch"] for m in read_jsonl(folder / "runs" / KILLED_RUN / "metrics.jsonl")] == [1, 2, 3]


SEEDS = ["sweep", "--grid", "depth=1", "--seeds", "2", *ARGS[3:]]  # one group: both seeds vmapped together


# [kill] is slow: test_a_stopped_run_continues_from_its_checkpoint_in_its_own_folder[kill] kills a sweep the same
# way in the default suite, test_a_checkpoint_of_other_code_is_not_used_the_run_is_trained_afresh trains a killed run anew
@pytest.mark.parametrize("stop, calls", [
    pytest.param(kill, [(["depth-1-s0"], 1), (["depth-1-s1-1"], None)], marks=pytest.mark.slow),  # s1 was killed before its checkpoint: anew
    (ctrl_c, [(["depth-1-s0", "depth-1-s1"], 1)]),  # both checkpointed at epoch 1: resumed together
], ids=["kill", "ctrl-c"])
def test_runs_of_one_group_resume_together_only_from_one_position(tmp_path, fake_data, trained, stop, calls):
    trained.kill, trained.stop = "depth-1-s0", stop  # after s0's epoch-1 checkpoint, before s1's
    if stop is kill:
        with pytest.raises(Killed):
            invoke(SEEDS, tmp_path / "stopped")
    else:
        assert invoke(SEEDS, tmp_path / "stopped").exit_code == 130
    trained.kill = None
    trained.clear()
    result = invoke(SEEDS, tmp_path / "stopped")
    assert result.exit_code == 0, result.output
    assert trained == calls
    assert invoke(SEEDS, tmp_path / "reference").exit_code == 0
    folder, reference = sweep_folder(tmp_path / "stopped"), sweep_folder(tmp_path / "reference")
    manifest = json.loads((folder / "manifest.json").read_text())["runs"]
    for seed in ("s0", "s1"):  # kill: trained alone, not vmapped with the other seed; bp's update angle (~1e-5
        # degrees: rounding) then differs in its rounding, hence atol 1e-4
        run = folder / manifest[f"depth-1-{seed}"]["run_dir"]
        assert_close(without_times(read_jsonl(run / "metrics.jsonl")),
                     without_times(read_jsonl(reference / "runs" / f"depth-1-{seed}" / "metrics.jsonl")), seed, 1e-4)
