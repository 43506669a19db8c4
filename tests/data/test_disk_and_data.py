"""A full disk, bad data and kill -9: one line and exit 2 (or the run recorded `failed` with the reason),
never a half-written file; multi-run commands check their data before writing anything; a sweep
killed at any moment finishes on the same command with the results of one never killed."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import bioprop_cli.cli.train as cli_train
import bioprop_cli.runs as runs
from bioprop_cli.cli import app
from bioprop_cli.config import load_config, to_dict
from bioprop_cli.errors import DiskFull, UserError
from bioprop_cli.experiment.grid import run_sweep, sweep_name
from helpers import HELPERS_DIR, assert_user_error, make_fake_dataset

SMALL = ["--set", "data.train_limit=600", "--set", "data.validation_size=100", "--set", "data.test_limit=100",
         "--batch-size", "50", "--width", "8", "--set", "alignment.probe_size=16"]


@pytest.fixture
def no_space_for(monkeypatch):
    """ENOSPC injected at the write layer: fsync of any file whose name contains one of the given
    fragments fails as on a full disk (the data written before it never reaches the file's name)."""
    fragments: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if any(fragment in name for fragment in fragments):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(runs.os, "fsync", fsync)
    return fragments


def test_an_atomic_write_on_a_full_disk_names_the_path_and_bytes_and_leaves_nothing(tmp_path, no_space_for):
    no_space_for.append("result.json")
    path = tmp_path / "result.json"
    with pytest.raises(DiskFull) as caught:
        runs.write_json(path, {"a": 1})
    text = runs._json_text({"a": 1})
    assert str(path) in str(caught.value) and f"needs {len(text.encode()):,} bytes" in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
    no_space_for.append("log.jsonl")
    runs.append_jsonl(tmp_path / "other.jsonl", [{"x": 1}])
    (tmp_path / "log.jsonl").write_text('{"x": 0}\n')
    with pytest.raises(DiskFull, match="log.jsonl"):
        runs.append_jsonl(tmp_path / "log.jsonl", [{"x": 1}, {"x": 2}])
    assert runs.read_jsonl(tmp_path / "log.jsonl") == [{"x": 0}]  # no partial line, the earlier ones kept


def test_a_status_is_recorded_in_place_when_the_disk_has_no_room_for_a_new_file(tmp_path, no_space_for):
    path = tmp_path / "summary.json"
    runs.write_json(path, {"status": "running", "rule": "fa"})
    no_space_for.append(".summary.json.")  # no room for the temporary file; the blocks summary.json holds stay
    runs.write_status(path, {"status": "failed", "rule": "fa", "error": "disk full"})
    assert json.loads(path.read_text()) == {"status": "failed", "rule": "fa", "error": "disk full"}
    with pytest.raises(DiskFull):  # more than the blocks it holds: the DiskFull stands, the file as it was
        runs.write_status(path, {"status": "failed", "error": "x" * 20_000})
    assert json.loads(path.read_text())["error"] == "disk full"


def test_a_run_whose_disk_fills_mid_run_is_marked_failed_with_the_reason(tmp_path, monkeypatch, no_space_for):
    monkeypatch.setattr(cli_train, "load_dataset", lambda name, data_dir=None, options=None: make_fake_dataset())
    no_space_for.append("metrics.jsonl")
    result = CliRunner().invoke(app, ["train", "--results-dir", str(tmp_path), "--epochs", "2", "--no-progress", *SMALL])
    (run,) = tmp_path.glob("default/*")
    assert_user_error(result, str(run / "metrics.jsonl"), "no space left", "bytes", "marked failed")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "metrics.jsonl" in summary["error"] and "no space" in summary["error"]
    assert not (run / "metrics.jsonl").exists() and not (run / "params.npz").exists()


def test_a_full_disk_under_any_write_of_a_command_is_one_line(tmp_path, monkeypatch):
    def cache_write_fails(*args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "cache" / "entry"))

    monkeypatch.setattr(cli_train, "load_dataset", cache_write_fails)
    result = CliRunner().invoke(app, ["train", "--results-dir", str(tmp_path), "--no-progress", *SMALL])
    assert_user_error(result, str(tmp_path / "cache" / "entry"), "no space left")
    assert not (tmp_path / "default").exists()


def test_no_room_for_the_parameters_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(cli_train, "load_dataset", lambda name, data_dir=None, options=None: make_fake_dataset())
    monkeypatch.setattr(runs, "free_bytes", lambda path: 1000)  # the first layer alone is 784 x 8 x 4 bytes
    result = CliRunner().invoke(app, ["train", "--results-dir", str(tmp_path), "--no-progress", *SMALL])
    (run,) = tmp_path.glob("default/*")
    assert_user_error(result, str(run / "params.npz"), "no room for the parameters", "1,000 bytes free", "marked failed")
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    assert not (run / "metrics.jsonl").exists()  # refused before the first epoch


def sweep_args(tmp_path, data_dir=None):
    return ["sweep", "--grid", "depth=1,2", "--results-dir", str(tmp_path), "--epochs", "1", *SMALL,
            *(["--data-dir", str(data_dir)] if data_dir else [])]


def fake_loader(monkeypatch):
    monkeypatch.setattr("bioprop_cli.datasets.load_dataset", lambda name, data_dir=None, options=None: make_fake_dataset())


def test_a_sweep_whose_disk_fills_marks_the_group_failed_stops_and_resumes(tmp_path, monkeypatch, no_space_for):
    fake_loader(monkeypatch)
    no_space_for.append("depth-1-s0/alignment.jsonl")
    result = CliRunner().invoke(app, sweep_args(tmp_path))
    assert_user_error(result, "alignment.jsonl", "no space left", "the sweep stopped", "manifest.json")
    (folder,) = (tmp_path / "default").iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    first, second = manifest["runs"]["depth-1-s0"], manifest["runs"]["depth-2-s0"]
    assert first["status"] == "failed" and "disk full" in first["error"] and second["status"] == "queued"
    assert json.loads((folder / first["run_dir"] / "summary.json").read_text())["status"] == "failed"
    no_space_for.clear()  # space freed: the same command trains what is left
    again = CliRunner().invoke(app, sweep_args(tmp_path))
    assert again.exit_code == 0, again.output
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [e["status"] for e in manifest["runs"].values()] == ["completed", "completed"]


def test_a_sweep_with_a_missing_data_folder_writes_nothing(tmp_path):
    result = CliRunner().invoke(app, sweep_args(tmp_path / "out", tmp_path / "no-such-folder"))
    assert_user_error(result, str(tmp_path / "no-such-folder"))
    assert not (tmp_path / "out").exists()


def test_a_reproduce_with_a_truncated_data_file_writes_nothing(tmp_path, mnist_dir):
    data = tmp_path / "mnist"
    data.mkdir()
    for name in os.listdir(mnist_dir):
        if name.endswith(".gz"):
            raw = (Path(mnist_dir) / name).read_bytes()
            (data / name).write_bytes(raw[: len(raw) // 2] if name.startswith("train-images") else raw)
    result = CliRunner().invoke(app, ["reproduce", "lillicrap-2016", "--quick", "--results-dir", str(tmp_path / "out"),
                                      "--data-dir", str(data)])
    assert_user_error(result, "train-images-idx3-ubyte")
    assert not (tmp_path / "out").exists()


def test_a_sweep_folder_name_taken_by_a_file_is_refused(tmp_path, fake_dataset):
    base = load_config(overrides=[("results_dir", str(tmp_path)), ("model.width", 8), ("data.validation_size", 100)])
    grid, seeds = {"model.depth": [1]}, [0]
    taken = tmp_path / "default" / sweep_name(base, grid, seeds)
    taken.parent.mkdir()
    taken.write_text("mine")
    with pytest.raises(UserError, match="is a file, not a folder"):
        run_sweep(base, grid, seeds, lambda cfg: fake_dataset)
    assert taken.read_text() == "mine"


def test_jtranspose_refuses_a_damaged_params_npz_before_making_its_folder(tmp_path, mnist_dir):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(load_config(overrides=[("rule", "ep"), ("model.width", 8)]))))
    (run / "params.npz").write_bytes(b"PK\x03\x04 not a zip")
    out = tmp_path / "jt"
    result = CliRunner().invoke(app, ["jtranspose", "--run", str(run), "--batch", "2", "--data-dir", mnist_dir,
                                      "--out", str(out)])
    assert_user_error(result, str(run / "params.npz"))
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_on_a_real_full_file_system_commands_say_one_line(tmp_path, monkeypatch):
    """A 256 KiB tmpfs, nearly filled: train (its run recorded failed) and compare --out say one line, exit 2."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        fake_loader(monkeypatch)
        monkeypatch.setattr(cli_train, "load_dataset", lambda name, data_dir=None, options=None: make_fake_dataset())
        done = CliRunner().invoke(app, ["train", "--results-dir", str(tmp_path / "runs"), "--no-progress", *SMALL])
        assert done.exit_code == 0, done.output
        (disk / "filler").write_bytes(b"\0" * (256 * 1024 - 16 * 1024))  # room for config and summary only
        result = CliRunner().invoke(app, ["train", "--results-dir", str(disk), "--no-progress", *SMALL])
        (run,) = disk.glob("default/*")
        assert_user_error(result, str(run), "no space left", "marked failed")
        assert json.loads((run / "summary.json").read_text())["status"] == "failed"
        report = CliRunner().invoke(app, ["compare", str(tmp_path / "runs"), "--out", str(disk / "report")])
        assert_user_error(report, str(disk / "report"), "no space left")
        assert not list(disk.glob("report/.*.tmp")) and not list(disk.glob("report/*.png"))  # nothing half-written
    finally:
        subprocess.run(["umount", str(disk)], check=True)


KILLED_SWEEP = textwrap.dedent("""
    import os, signal, sys
    sys.path[:0] = [{tests!r}]
    from helpers import make_fake_dataset
    import bioprop_cli.runs as runs
    from bioprop_cli.config import load_config
    from bioprop_cli.experiment.grid import run_sweep

    append = runs.append_jsonl

    def append_then_die(path, records):
        append(path, records)
        if path.name == "metrics.jsonl" and path.parent.name == sys.argv[2]:
            os.kill(os.getpid(), signal.SIGKILL)

    runs.append_jsonl = append_then_die
    base = load_config(overrides={base!r} + [("results_dir", sys.argv[1])])
    run_sweep(base, {{"model.depth": [1, 2]}}, [0], lambda cfg: make_fake_dataset())
""")


@pytest.mark.slow  # a subprocess per try (signals, kill -9, Ray, forced devices): CI runs -m slow
def test_a_sweep_killed_mid_run_finishes_on_rerun_with_the_results_of_an_uninterrupted_one(tmp_path):
    """kill -9 in the second group, right after its first metrics line (the first group finished):
    the same sweep again trains the second group only, and every number equals a sweep never killed."""
    base = [("model.width", 8), ("data.train_limit", 600), ("data.validation_size", 100), ("data.test_limit", 100),
            ("train.batch_size", 50), ("train.epochs", 2), ("alignment.probe_size", 16)]
    script = tmp_path / "killed.py"
    script.write_text(KILLED_SWEEP.format(tests=str(HELPERS_DIR), base=base))
    killed = subprocess.run([sys.executable, str(script), str(tmp_path / "killed"), "depth-2-s0"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert killed.returncode == -9, killed.stderr
    (folder,) = (tmp_path / "killed" / "default").iterdir()
    before = json.loads((folder / "manifest.json").read_text())["runs"]
    assert [before["depth-1-s0"]["status"], before["depth-2-s0"]["status"]] == ["completed", "queued"]

    def sweep(results_dir):
        config = load_config(overrides=base + [("results_dir", str(results_dir))])
        return run_sweep(config, {"model.depth": [1, 2]}, [0], lambda cfg: make_fake_dataset())

    resumed_folder, resumed = sweep(tmp_path / "killed")
    reference_folder, reference = sweep(tmp_path / "reference")
    assert resumed["runs"]["depth-2-s0"]["previous_run_dirs"] == ["runs/depth-2-s0"]  # trained again, anew

    def numbers(folder, manifest):
        out = {}
        for name, entry in manifest["runs"].items():
            metrics = runs.read_jsonl(folder / entry["run_dir"] / "metrics.jsonl")
            out[name] = (entry["status"], entry["test_accuracy"],
                         [{k: v for k, v in m.items() if not k.endswith("time_s")} for m in metrics])
        return out

    assert numbers(resumed_folder, resumed) == numbers(reference_folder, reference)
    assert all(status == "completed" for status, _, _ in numbers(resumed_folder, resumed).values())
