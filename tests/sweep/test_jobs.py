"""`--jobs N`: the local executor's groups in worker processes (bioprop_cli/experiment/jobs.py, worker.py).

The same sweep with --jobs 2 gives the runs of --jobs 1 (parameters and metrics to float32 rounding),
resumes what did not finish, refuses bad values in one line, and Ctrl-C ends it with 130 and no
worker left. The data is a small .npz file (dataset npz), which the workers read themselves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import assert_nothing_written, assert_user_error, clusters

from bioprop_cli.cli import app
from bioprop_cli.errors import UserError
from bioprop_cli.experiment.jobs import ONE_THREAD_XLA_FLAGS, core_slices, lost_runs, parse_jobs, worker_env
from bioprop_cli.experiment.runner import Group

two_cores = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity") else True,
                               reason="--jobs 2 needs two usable cores")


def write_npz(path: Path, n_train=300, n_test=100) -> Path:
    data = clusters(n_train=n_train, n_test=n_test, dim=12)
    np.savez(path, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test, y_test=data.y_test)
    return path


def sweep_args(npz: Path, results: Path, jobs: str, depths="1,2,3", epochs=1) -> list[str]:
    return ["sweep", "--grid", f"depth={depths}", "--epochs", str(epochs), "--width", "8", "--jobs", jobs,
            "--results-dir", str(results), "--set", "data.dataset=npz", "--set", f"data.path={npz}",
            "--set", "data.validation_size=50", "--set", "train.batch_size=50", "--set", "alignment.probe_size=16"]


def sweep_folder(results: Path) -> Path:
    (folder,) = (results / "default").iterdir()
    return folder


def runs_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())["runs"]


# --- the values --jobs takes ---


@pytest.mark.parametrize("text", ["0", "-1", "abc", "1.5", ""])
def test_a_bad_jobs_value_names_the_flag_and_what_is_allowed(text):
    with pytest.raises(UserError, match=r"--jobs: expected a whole number from 1 to 4 \(the usable cores\) or auto"):
        parse_jobs(text, cores=4)


def test_jobs_auto_is_every_usable_core_and_more_than_those_is_refused():
    assert parse_jobs("auto", cores=3) == 3 and parse_jobs("2", cores=3) == 2
    with pytest.raises(UserError, match="--jobs: 4 workers, each on its own core, need 4 cores; this process may use 3"):
        parse_jobs("4", cores=3)


@pytest.mark.parametrize("args", [["--jobs", "0"], ["--jobs", "abc"], ["--jobs", "2", "--executor", "ray"]])
def test_the_cli_refuses_a_bad_jobs_value_in_one_line_and_writes_nothing(args, tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--grid", "depth=1,2", *args, "--results-dir", str(tmp_path / "r")])
    assert_user_error(result, "--jobs")
    assert_nothing_written(tmp_path / "r")


def test_reproduce_refuses_a_bad_jobs_value_in_one_line_and_writes_nothing(tmp_path):
    result = CliRunner().invoke(app, ["reproduce", "--quick", "--jobs", "none", "--results-dir", str(tmp_path / "r")])
    assert_user_error(result, "--jobs: expected a whole number from 1 to")
    assert_nothing_written(tmp_path / "r")


def test_reproduce_sends_its_dataset_cache_to_a_worker_empty():
    import pickle

    from bioprop_cli.cli.reproduce import DatasetCache

    cache = DatasetCache()
    cache.loaded[("mnist", None)] = "the arrays"
    assert pickle.loads(pickle.dumps(cache)).loaded == {} and cache.loaded == {("mnist", None): "the arrays"}


def test_cores_are_cut_into_contiguous_slices_and_one_core_runs_xla_single_threaded():
    assert core_slices([0, 1, 2, 3], 2) == [(0, 1), (2, 3)]
    assert core_slices([0, 1, 2], 2) == [(0, 1), (2,)]
    assert core_slices([4, 6], 2) == [(4,), (6,)]
    one = worker_env((3,), {"XLA_FLAGS": "--xla_backend_optimization_level=0"})
    assert one["XLA_FLAGS"] == f"--xla_backend_optimization_level=0 {ONE_THREAD_XLA_FLAGS}" and one["OMP_NUM_THREADS"] == "1"
    assert "XLA_FLAGS" not in worker_env((0, 1), {}) and "OMP_NUM_THREADS" not in worker_env((0, 1), {})


def test_a_worker_that_returned_nothing_leaves_each_run_as_its_folder_tells(tmp_path):
    dirs = [tmp_path / name for name in ("done", "started", "never")]
    for d in dirs:
        d.mkdir()
    (dirs[0] / "summary.json").write_text(json.dumps({"status": "completed", "test_accuracy": 0.5}))
    (dirs[1] / "summary.json").write_text(json.dumps({"status": "running"}))
    group = Group(("a", "b", "c"), (None, None, None), tuple(dirs))
    crashed = lost_runs(group, "worker process exited with code -9", stopping=False)
    assert [s["status"] for s in crashed] == ["completed", "failed", "failed"]
    assert json.loads((dirs[1] / "summary.json").read_text()) == {"status": "failed", "error": "worker process exited with code -9"}
    assert not (dirs[2] / "summary.json").exists()  # nothing started there: the runner removes the empty folder
    (dirs[1] / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    assert [s["status"] for s in lost_runs(group, "why", stopping=True)] == ["completed", "interrupted", "queued"]


# --- sweeps with --jobs 2 ---


@pytest.mark.slow  # a subprocess per group (two JAX start-ups, ~10 s): CI runs -m slow
@two_cores
def test_jobs_2_trains_the_runs_of_jobs_1_and_resumes_what_did_not_finish(tmp_path, monkeypatch):
    import bioprop_cli.experiment.jobs as jobs_module

    started = []  # the groups each worker was given
    real_start = jobs_module.start_worker
    monkeypatch.setattr(jobs_module, "start_worker", lambda group, *a: started.append(group.names) or real_start(group, *a))
    npz = write_npz(tmp_path / "data.npz")
    for jobs in ("1", "2"):
        result = CliRunner().invoke(app, sweep_args(npz, tmp_path / f"j{jobs}", jobs))
        assert result.exit_code == 0, result.output
    one, two = sweep_folder(tmp_path / "j1"), sweep_folder(tmp_path / "j2")
    assert one.name == two.name  # --jobs is not what the sweep trains
    assert sorted(started) == [("depth-1-s0",), ("depth-2-s0",), ("depth-3-s0",)]  # --jobs 1: in-process

    def assert_same_runs():
        runs_one, runs_two = runs_of(one), runs_of(two)
        assert {n: e["status"] for n, e in runs_two.items()} == {n: "completed" for n in runs_one}
        for name in runs_one:
            a, b = one / runs_one[name]["run_dir"], two / runs_two[name]["run_dir"]
            with np.load(a / "params.npz") as pa, np.load(b / "params.npz") as pb:
                assert sorted(pa) == sorted(pb)
                for key in pa:
                    np.testing.assert_allclose(pb[key], pa[key], rtol=1e-5, atol=1e-6)
            ma, mb = (json.loads((d / "metrics.jsonl").read_text().splitlines()[-1]) for d in (a, b))
            for key in ("train_loss", "val_loss", "test_loss", "test_accuracy"):
                if key in ma:
                    np.testing.assert_allclose(mb[key], ma[key], rtol=1e-5, atol=1e-6)
            assert runs_two[name]["test_accuracy"] == pytest.approx(runs_one[name]["test_accuracy"], abs=1e-6)

    assert_same_runs()
    # two runs as if the sweep had been killed before they started: the same command trains them
    # (in two workers), and leaves the finished run's files as they were
    manifest = json.loads((two / "manifest.json").read_text())
    kept = {p: p.read_bytes() for p in (two / manifest["runs"]["depth-1-s0"]["run_dir"]).rglob("*") if p.is_file()}
    for name in ("depth-2-s0", "depth-3-s0"):
        run_dir = two / manifest["runs"][name]["run_dir"]
        for p in sorted(run_dir.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        manifest["runs"][name]["status"] = "interrupted"
    (two / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, sweep_args(npz, tmp_path / "j2", "2"))
    assert result.exit_code == 0, result.output
    assert sorted(started[3:]) == [("depth-2-s0",), ("depth-3-s0",)]
    assert {p: p.read_bytes() for p in kept} == kept
    assert_same_runs()
    assert all(runs_of(two)[n]["previous_run_dirs"] for n in ("depth-2-s0", "depth-3-s0"))


# `python -m bioprop_cli` with Ctrl-C handled as in a terminal even where the test runner ignores SIGINT
LAUNCH = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
          "sys.argv[0] = 'bioprop'; runpy.run_module('bioprop_cli', run_name='__main__')")


def children_of(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow  # a subprocess and its workers, signalled: CI runs -m slow
@two_cores
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table in /proc")
@pytest.mark.parametrize("ctrl_c", [1, 2])
def test_ctrl_c_during_jobs_2_exits_130_and_leaves_no_worker(ctrl_c, tmp_path):
    """One Ctrl-C: each worker ends its run `interrupted` at the next epoch, the third group stays
    queued, exit 130. Two (a user who will not wait): exit 130 at once, and the workers follow."""
    npz = write_npz(tmp_path / "data.npz", n_train=1000)
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, *sweep_args(npz, tmp_path / "r", "2", epochs=100_000)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers = set()
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("r/default/*/runs/*/metrics.jsonl"))) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "the two workers never finished an epoch"
            time.sleep(0.05)
        workers = children_of(proc.pid)
        assert len(workers) == 2, workers
        for _ in range(ctrl_c):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.1)
        assert proc.wait(timeout=60) == 130
    finally:  # a failed check leaves nothing running
        for pid in [proc.pid, *workers]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    stderr = proc.stderr.read().decode()
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr, stderr
    deadline = time.monotonic() + 5  # a worker checks for its parent every WATCH_PARENT_S
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers)
    if ctrl_c == 1:
        folder = sweep_folder(tmp_path / "r")
        runs = runs_of(folder)
        assert {n: e["status"] for n, e in runs.items()} == {
            "depth-1-s0": "interrupted", "depth-2-s0": "interrupted", "depth-3-s0": "queued"}
        for name in ("depth-1-s0", "depth-2-s0"):
            summary = json.loads((folder / runs[name]["run_dir"] / "summary.json").read_text())
            assert summary["status"] == "interrupted" and summary["epochs_completed"] >= 1
