"""The measuring studies (`sweep beta`, `sweep pc`) run through experiment/study.run_study: stopped after
k of their points (seeds), by a kill or by Ctrl-C, the same command measures only the points not yet
measured, leaves the measured points' lines and arrays as they were, and ends with the files of a
command never stopped.

The stop is injected in-process: SeedStudy.measure measures k points, then the next call raises Killed
(a BaseException nothing in bioprop catches: as kill -9, nothing recorded for the point in measuring) or
Interrupted (what Ctrl-C raises at the next safe point: exit 130). Real signals are tested in
tests/cli/test_interrupt.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import make_fake_dataset

from bioprop_cli.cli import app
from bioprop_cli.experiment.study import Measured, measured_points, points_file, record_point
from bioprop_cli.interrupt import Interrupted
from bioprop_cli.runs import read_jsonl

SMALL = ["--width", "8", "--set", "data.validation_size=100", "--set", "data.test_limit=100",
         "--set", "train.batch_size=20", "--seeds", "3", "--batches", "1"]
COMMANDS = {
    "sweep pc": (["sweep", "pc", "--gammas", "0.1,1", "--steps", "1,3", *SMALL], "pc-sweep/pc-float32-*", "pc_sweep"),
    "sweep beta": (["sweep", "beta", "--values", "0.1,0.5", "--estimators", "one-sided", "--set", "ep.free_steps=5",
                    "--set", "ep.nudged_steps=3", "--set", "ep.reference_steps=20", *SMALL],
                   "beta-sweep/beta-float32-*", "beta_sweep"),
}


class Killed(BaseException):
    """Not an Exception, not a KeyboardInterrupt: no handler in bioprop catches it."""


def counted(monkeypatch, study_class):
    """The points each study_class.measure call measured; `.stop_after = (k, exception)` makes call k+1
    raise the exception before it measures."""
    monkeypatch.setattr("bioprop_cli.datasets.load_dataset", lambda name, data_dir=None, options=None: make_fake_dataset())
    real = study_class.measure

    class Points(list):
        stop_after = None

    points = Points()

    def counting(self, point):
        if points.stop_after is not None and len(points) == points.stop_after[0]:
            raise points.stop_after[1]
        points.append(point)
        return real(self, point)

    monkeypatch.setattr(study_class, "measure", counting)
    return points


@pytest.fixture
def measured(monkeypatch):
    from bioprop_cli.studies.seeds import SeedStudy

    return counted(monkeypatch, SeedStudy)


def invoke(args, results_dir):
    return CliRunner().invoke(app, [*args, "--results-dir", str(results_dir)])


def stamps(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*.np*"))}


def final(folder: Path, name: str) -> tuple:
    """The study's rows and summary (less the timing of sweep beta's updates)."""
    summary = json.loads((folder / "summary.json").read_text())
    summary.pop("seconds_per_update", None)
    return (folder / f"{name}.jsonl").read_bytes(), summary


SLOW = pytest.mark.slow  # 5-30 s on 2 cores (four invocations); CI runs -m slow


@pytest.mark.parametrize("command, stop", [("sweep pc", Killed), pytest.param("sweep pc", Interrupted, marks=SLOW),
                                           pytest.param("sweep beta", Killed, marks=SLOW)])
def test_a_stopped_study_resumes_without_measuring_again(tmp_path, measured, command, stop):
    args, pattern, name = COMMANDS[command]
    measured.stop_after = (1, stop())
    if stop is Killed:
        with pytest.raises(Killed):
            invoke(args, tmp_path / "stopped")
    else:
        assert invoke(args, tmp_path / "stopped").exit_code == 130
    measured.stop_after = None
    measured.clear()
    (folder,) = (tmp_path / "stopped").glob(pattern)
    first_line = points_file(folder, name).read_bytes()
    assert [line["point"] for line in read_jsonl(points_file(folder, name))] == ["s0"]
    assert not (folder / f"{name}.jsonl").exists()
    arrays = stamps(folder)

    result = invoke(args, tmp_path / "stopped")
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output
    assert measured == ["s1", "s2"]  # s0 not measured again
    assert points_file(folder, name).read_bytes().startswith(first_line)
    assert {k: v for k, v in stamps(folder).items() if k in arrays} == arrays

    measured.clear()
    reference = invoke(args, tmp_path / "reference")
    assert reference.exit_code == 0, reference.output
    assert measured == ["s0", "s1", "s2"] and "resuming" not in reference.output
    (reference_folder,) = (tmp_path / "reference").glob(pattern)
    assert reference_folder.name == folder.name  # named by what it measures
    assert final(folder, name) == final(reference_folder, name)

    measured.clear()
    again = invoke(args, tmp_path / "stopped")  # finished: nothing measured, the same files
    assert again.exit_code == 0 and measured == []
    assert final(folder, name) == final(reference_folder, name)


@SLOW
def test_jtranspose_killed_settles_only_the_networks_not_measured(tmp_path, monkeypatch):
    from bioprop_cli.studies.jtranspose import JTransposeStudy

    measured = counted(monkeypatch, JTransposeStudy)
    args = ["jtranspose", "--width", "8", "--batch", "4", "--betas", "0.01", "--angles", "0,90", "--max-steps", "30",
            "--set", "data.validation_size=100"]
    measured.stop_after = (1, Killed())
    with pytest.raises(Killed):
        CliRunner().invoke(app, [*args, "--out", str(tmp_path / "stopped")])
    measured.stop_after = None
    measured.clear()
    folder = tmp_path / "stopped"
    first_line = points_file(folder, "jtranspose").read_bytes()
    result = CliRunner().invoke(app, [*args, "--out", str(folder)])
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and measured == ["mixed-0", "mixed-90", "sign"]
    assert points_file(folder, "jtranspose").read_bytes().startswith(first_line)
    reference = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "reference")])
    assert reference.exit_code == 0, reference.output
    for name in ("jtranspose.jsonl", "summary.json", "table.txt"):
        assert (folder / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name


def test_a_line_cut_short_by_a_kill_is_dropped_and_its_point_measured_again(tmp_path):
    record_point(tmp_path, "toy", "s0", Measured({"seed": 0, "x": 0.1}, {"a": [1.0, 2.0]}))
    with open(points_file(tmp_path, "toy"), "a") as f:
        f.write('{"point": "s1", "se')  # the kill came in the middle of the write
    done = measured_points(tmp_path, "toy")
    assert list(done) == ["s0"] and done["s0"].row == {"seed": 0, "x": 0.1}
    assert done["s0"].arrays["a"].tolist() == [1.0, 2.0]
    record_point(tmp_path, "toy", "s1", Measured({"seed": 1}))
    assert [line["point"] for line in read_jsonl(points_file(tmp_path, "toy"))] == ["s0", "s1"]


@SLOW
@pytest.mark.skipif(not os.environ.get("BIOPROP_DATA_DIR"), reason="needs MNIST in BIOPROP_DATA_DIR")
def test_sweep_pc_after_a_real_kill_9_measures_only_the_missing_seeds(tmp_path, monkeypatch):
    args = ["sweep", "pc", "--gammas", "0.1,1", "--steps", "1,3", "--width", "8", "--set", "data.train_limit=600",
            "--set", "data.validation_size=100", "--set", "data.test_limit=100", "--seeds", "3", "--batches", "1",
            "--results-dir", str(tmp_path)]
    env = {**os.environ, "BIOPROP_DATA_DIR": os.path.abspath(os.environ["BIOPROP_DATA_DIR"])}
    proc = subprocess.Popen([sys.executable, "-m", "bioprop_cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    points = []
    while time.monotonic() < deadline and proc.poll() is None and not points:
        points = list(tmp_path.glob("pc-sweep/*/pc_sweep.points.jsonl"))
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert points, "no seed was measured before the deadline"
    (folder,) = {p.parent for p in points}
    before = [line["point"] for line in read_jsonl(points[0])]
    assert 1 <= len(before) < 3 and not (folder / "pc_sweep.jsonl").exists()
    from bioprop_cli.studies.seeds import SeedStudy

    measured = []
    real = SeedStudy.measure
    monkeypatch.setattr(SeedStudy, "measure", lambda self, point: measured.append(point) or real(self, point))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(measured + before) == ["s0", "s1", "s2"]
    assert len(read_jsonl(folder / "pc_sweep.jsonl")) == 4
