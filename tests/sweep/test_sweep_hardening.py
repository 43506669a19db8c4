"""Sweeps against bad input and faults: nothing escapes the results folder, conflicts are errors,
one writer per sweep folder, a resumed sweep names one run per (point, seed), Ctrl-C between groups
starts no other group (a real Ctrl-C: tests/cli/test_interrupt.py)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from bioprop_cli.cli import app
from bioprop_cli.cli.common import config_from_flags
from bioprop_cli.config import load_config
from bioprop_cli.errors import UserError
from bioprop_cli.runs import folder_lock
from bioprop_cli.experiment.grid import Point, run_sweep, sweep_name

def stderr_of(result):
    return result.stderr if hasattr(result, "stderr") else result.output


def assert_refused(result, word, out):
    message = stderr_of(result).strip()
    assert result.exit_code == 2, result.output
    assert word in message and "\n" not in message and "Traceback" not in message, message
    assert not out.exists()


@pytest.mark.parametrize("args, word", [
    (["--grid", "results_dir=a,a-s0/../../../ESCAPED"], "results_dir"),
    (["--grid", "experiment=a,../b"], "experiment"),
    (["--grid", "data.data_dir=/tmp,/nonexistent"], "data.data_dir"),
    (["--grid", "seed=0,1"], "--seeds"),
    (["--grid", "depth=1,1"], "same point"),
    (["--grid", "lr=0.1,1e-1"], "same point"),
    (["--grid", "depth=1", "--grid", "depth=2"], "swept twice"),
    (["--grid", "depth=1", "--grid", "model.depth=2"], "swept twice"),
    (["depth", "--values", "1", "--grid", "depth=2"], "swept twice"),
    (["--grid", "depth=1,2", "--depth", "3"], "--depth"),
    (["--grid", "depth=1,2", "--set", "model.depth=3"], "--set model.depth=3"),
    (["seed", "--values", "0,0"], "seed"),
    (["seed", "--values", "0,1", "--seeds", "2"], "--seeds"),
    (["--grid", "depth=1", "--address", "127.0.0.1:6379"], "--address"),
])
def test_bad_grids_exit_2_with_one_line_and_write_nothing(tmp_path, args, word):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sweep", *args, "--results-dir", str(out)])
    assert_refused(result, word, out)
    assert not (tmp_path.parent / "ESCAPED-s0").exists() and not (tmp_path / "ESCAPED-s0").exists()


@pytest.mark.parametrize("section, word", [
    ("seeds: 0", "sweep.seeds"),
    ("seeds: -1", "sweep.seeds"),
    ("seeds: abc", "sweep.seeds"),
    ("seeds: 1.5", "sweep.seeds"),
    ("seeds: true", "sweep.seeds"),
    ("grid: [1, 2]", "sweep.grid"),
    ("grid: {depth: []}", "sweep.grid.depth"),
    ("grid: {depth: [1]}\ngrids: {width: [8]}", "sweep.grids"),
    ("grid: {results_dir: [a, b]}", "results_dir"),
    ("grid: {depth: [1, 1]}", "same point"),
])
def test_bad_sweep_sections_exit_2_naming_the_key(tmp_path, section, word):
    path = tmp_path / "exp.yaml"
    path.write_text("sweep:\n" + textwrap.indent(section, "  ") + "\n")
    out = tmp_path / "out"
    assert_refused(CliRunner().invoke(app, ["sweep", "--config", str(path), "--results-dir", str(out)]), word, out)


def test_a_flag_does_not_hide_a_key_set_inside_it(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["train", "--depth", "1", "--set", "model.depth.x=1", "--results-dir", str(out)])
    assert_refused(result, "model.depth.x", out)
    with pytest.raises(UserError, match="model.depth"):
        config_from_flags(None, ["model=1"], depth=2)
    assert config_from_flags(None, ["model.depth=3"], depth=2).model.depth == 2  # the same key: the flag wins


def test_point_names_are_one_path_component():
    for value in ("../../x", "/abs/path", "..", "a b", [1, 0.5], {"k": "v/w"}):
        name = Point((("optimizer.layer_lr", value),)).name
        assert "/" not in name and not name.startswith(".") and " " not in name, name


@pytest.mark.parametrize("text, why", [("", "not JSON"), ("{", "not JSON"), ("[]", "'runs'"),
                                       ('{"runs": {"depth-1-s0": 1}}', "no status"),
                                       ('{"runs": {"depth-1-s0": {"status": "queued", "previous_run_dirs": "x"}}}', "not a list")])
def test_a_corrupt_manifest_is_one_line_naming_it(tmp_path, text, why):
    out = tmp_path / "out"
    base = config_from_flags(None, [], results_dir=str(out))
    folder = out / "default" / sweep_name(base, {"model.depth": [1]}, [0])
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(text)
    result = CliRunner().invoke(app, ["sweep", "--grid", "depth=1", "--results-dir", str(out)])
    message = stderr_of(result).strip()
    assert result.exit_code == 2 and "manifest.json" in message and why in message and "move it aside" in message
    assert "\n" not in message and sorted(p.name for p in folder.iterdir()) == [".lock", "manifest.json"]


def small_base(tmp_path, **extra):
    overrides = [("results_dir", str(tmp_path)), ("model.width", 8), ("data.validation_size", 100),
                 ("train.batch_size", 50), ("train.epochs", 1), ("alignment.probe_size", 16)]
    return load_config(overrides=overrides + list(extra.items()))


def test_a_run_finished_before_a_kill_is_kept_not_trained_again(tmp_path, fake_dataset, monkeypatch):
    """kill -9 between a run's final summary and the manifest's update: the resumed sweep takes the
    run as finished; the manifest names one run per (point, seed)."""
    base, grid = small_base(tmp_path), {"model.depth": [1]}
    folder, manifest = run_sweep(base, grid, [0], lambda cfg: fake_dataset)
    entry = manifest["runs"]["depth-1-s0"]
    (folder / "manifest.json").write_text(json.dumps({**manifest, "runs": {"depth-1-s0": {**entry, "status": "queued"}}}))
    monkeypatch.setattr("bioprop_cli.train.train_group", lambda *args: pytest.fail("trained again"))
    _, again = run_sweep(base, grid, [0], lambda cfg: fake_dataset)  # the data are checked, nothing trained
    assert again["runs"]["depth-1-s0"] == entry
    assert [p.name for p in (folder / "runs").iterdir()] == ["depth-1-s0"]


def test_after_ctrl_c_between_groups_no_group_starts_and_the_rest_stay_queued(tmp_path, fake_dataset):
    base, grid = small_base(tmp_path), {"model.depth": [1, 2, 3]}
    loads = []

    def loader(cfg):
        loads.append(cfg.model.depth)
        return fake_dataset

    said = []  # set once the first group began
    _, manifest = run_sweep(base, grid, [0], loader, report=said.append, interrupted=lambda: bool(said))
    statuses = {name: entry["status"] for name, entry in manifest["runs"].items()}
    assert statuses == {"depth-1-s0": "completed", "depth-2-s0": "queued", "depth-3-s0": "queued"}
    assert loads == [1]  # loaded once, to check it against every point before anything is written


HOLD = "import sys, time; from bioprop_cli.runs import folder_lock\nwith folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)"


@pytest.mark.slow  # a subprocess per try (signals, kill -9, Ray, forced devices): CI runs -m slow
def test_the_lock_names_its_holder_and_a_killed_holder_blocks_nothing(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline() == b"held\n"
        with pytest.raises(UserError, match=f"PID {holder.pid}\\b"):
            with folder_lock(tmp_path):
                pass
    finally:
        holder.kill()  # kill -9: the lock goes with the process
        holder.wait()
    with folder_lock(tmp_path):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"


def test_runs_of_a_cancelled_ray_task_are_queued_or_interrupted_as_their_folders_say(tmp_path):
    from bioprop_cli.experiment.runner import Group
    from bioprop_cli.experiment.ray_executor import stopped_runs

    dirs = [tmp_path / name for name in ("never", "running", "interrupted", "completed")]
    for d in dirs:
        d.mkdir()
    for d, status in zip(dirs[1:], ("running", "interrupted", "completed")):
        (d / "summary.json").write_text(json.dumps({"status": status, "test_accuracy": 0.5}))
    group = Group(tuple(d.name for d in dirs), (None,) * 4, tuple(dirs))
    assert [s["status"] for s in stopped_runs(group)] == ["queued", "interrupted", "interrupted", "completed"]
