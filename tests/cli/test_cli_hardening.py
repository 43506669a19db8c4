"""Bad input through the whole `bioprop` command: click's usage errors, output paths that are files or under
files, names too long, networks too large, non-finite betas, integer parameters. Each is one line on stderr,
exit code 2, no traceback, nothing written. And printed paths are never wrapped, whatever the width."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import bioprop_cli.cli.common as common
import bioprop_cli.cli.train as cli_train
from bioprop_cli.cli import app
from helpers import assert_user_error, stderr_of


def files_under(folder) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def place(tmp_path):
    """tmp_path holding one file, `file`: every bad output path below points into or at it."""
    (tmp_path / "file").write_text("x")
    return tmp_path


def assert_untouched(place) -> None:
    assert files_under(place) == ["file"] and (place / "file").read_text() == "x"


# --- click's usage errors: one line naming the command and the flag, exit 2 ------------------------


@pytest.mark.parametrize("args, fragments", [
    (["sweep", "depth", "--seeds", "0"], ["bioprop sweep depth:", "'--seeds'"]),
    (["sweep", "beta", "--batches", "0"], ["bioprop sweep beta:", "'--batches'"]),
    (["train", "--lr", "abc"], ["bioprop train:", "'--lr'"]),
    (["train", "--bogus"], ["bioprop train:", "--bogus"]),
    (["compare"], ["bioprop compare:", "Missing argument"]),
    (["nope"], ["bioprop:", "nope"]),
])
def test_usage_errors_are_one_line(tmp_path, args, fragments):
    result = CliRunner().invoke(app, args, prog_name="bioprop")
    line = assert_user_error(result, *fragments)
    assert "╭" not in stderr_of(result) and "Usage:" not in line


def test_help_still_works_and_exits_0():
    result = CliRunner().invoke(app, ["sweep", "depth", "--help"], prog_name="bioprop")
    assert result.exit_code == 0 and "--seeds" in result.output


def test_ctrl_c_still_exits_130(monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_train, "load_dataset", interrupted)
    result = CliRunner().invoke(app, ["train", "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 130, result.output
    assert not (tmp_path / "r").exists()


# --- output paths ----------------------------------------------------------------------------------


RESULTS_DIR_COMMANDS = [
    ["train"],
    ["sweep", "depth", "--values", "1"],
    ["sweep", "--grid", "depth=1,2"],
    ["sweep", "beta", "--values", "0.1"],
    ["sweep", "condition"],
]


@pytest.mark.parametrize("command", RESULTS_DIR_COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("where, fragment", [("file", "is a file"), ("file/sub", "is under")])
def test_results_dir_that_is_or_is_under_a_file(place, command, where, fragment):
    result = CliRunner().invoke(app, [*command, "--results-dir", str(place / where)])
    assert_user_error(result, "results_dir", str(place / where), fragment)
    assert_untouched(place)


def test_experiment_under_a_file_is_refused(place):
    os.mkdir(place / "results")
    (place / "results" / "exp").write_text("x")
    result = CliRunner().invoke(app, ["train", "--results-dir", str(place / "results"), "--experiment", "exp"])
    assert_user_error(result, "experiment", "is a file")


@pytest.mark.parametrize("args", [
    ["compare", "{runs}", "--out", "{place}/file/sub"],
    ["conditions", "--rule", "fa", "--out", "{place}/file/sub"],
    ["conditions", "--rule", "fa", "--out", "{place}/file"],
    ["jtranspose", "--out", "{place}/file/sub"],
])
def test_out_under_a_file(place, args):
    from helpers import write_run

    runs = place / "runs"
    write_run(runs, "bp")
    before = files_under(place)
    result = CliRunner().invoke(app, [a.format(place=place, runs=runs) for a in args])
    assert_user_error(result, "--out", str(place / "file"))
    assert files_under(place) == before


@pytest.mark.parametrize("where, fragment", [("", "is a folder"), ("missing/b.json", "does not exist"),
                                             ("file/b.json", "is a file")])
def test_bench_json_is_checked_before_the_benchmark(place, monkeypatch, where, fragment):
    import bioprop_cli.bench

    def must_not_run(*args, **kwargs):
        raise AssertionError("the benchmark ran before --json was checked")

    monkeypatch.setattr(bioprop_cli.bench, "run_benchmark", must_not_run)
    result = CliRunner().invoke(app, ["bench", "--synthetic", "--json", str(place / where)])
    assert_user_error(result, "--json", fragment)
    assert_untouched(place)


# --- names, sizes, values --------------------------------------------------------------------------


@pytest.mark.parametrize("args, fragments", [
    (["--experiment", "a" * 300], ["experiment", "at most 100"]),
    (["--experiment", "a" * 101], ["experiment", "at most 100"]),
    (["--width", "50000000"], ["model.width", "50000000", "too large", "GiB"]),
])
def test_names_and_sizes_refused_before_anything_is_written(tmp_path, args, fragments):
    result = CliRunner().invoke(app, ["train", "--results-dir", str(tmp_path / "r"), *args])
    assert_user_error(result, *fragments)
    assert not (tmp_path / "r").exists()


def test_the_memory_limit_is_this_machines(monkeypatch, tmp_path):
    """784-10000-10000-10: 108 million parameters, about 2.4 GiB in training: refused with 2 GiB, accepted with 3."""
    from bioprop_cli.config import load_config

    overrides = [("model.width", 10_000), ("model.depth", 2), ("results_dir", str(tmp_path))]
    monkeypatch.setattr("bioprop_cli.config.host_memory_bytes", lambda: 2 * 2**30)
    with pytest.raises(Exception, match="model.width.*too large"):
        load_config(None, overrides)
    monkeypatch.setattr("bioprop_cli.config.host_memory_bytes", lambda: 3 * 2**30)
    assert load_config(None, overrides).model.width == 10_000


@pytest.mark.parametrize("values", ["nan", "inf", "0.1,inf", "-1", "0", "1e400"])
def test_sweep_beta_refuses_non_finite_and_non_positive_betas(tmp_path, values):
    result = CliRunner().invoke(app, ["sweep", "beta", "--values", values, "--results-dir", str(tmp_path / "r")])
    assert_user_error(result, "--values", "positive finite")
    assert not (tmp_path / "r").exists()


def test_conditions_refuses_integer_parameters(tmp_path, monkeypatch, fake_dataset):
    import bioprop_cli.datasets

    monkeypatch.setattr(bioprop_cli.datasets, "load_dataset", lambda name, data_dir=None, options=None: fake_dataset)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"rule": "fa", "model": {"depth": 1, "width": 8},
                                                     "data": {"validation_size": 100}}))
    np.savez(run / "params.npz", **{"0.w": np.ones((784, 8), np.int32), "0.b": np.zeros(8, np.int32),
                                     "1.w": np.ones((8, 10), np.int32), "1.b": np.zeros(10, np.int32)})
    result = CliRunner().invoke(app, ["conditions", "--run", str(run)])
    assert_user_error(result, "params.npz", "'0.w'", "int32", "floating-point")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "params.npz"]


# --- printed paths, whatever the width -------------------------------------------------------------


def test_printed_paths_are_never_wrapped(tmp_path, monkeypatch, fake_dataset):
    """A console 40 columns wide: the run folder and the report folder are printed whole, on one line."""
    from helpers import write_run

    monkeypatch.setattr(common.console, "width", 40)
    monkeypatch.setattr(cli_train, "load_dataset", lambda name, data_dir=None, options=None: fake_dataset)
    results = tmp_path / "a-results-folder-with-a-long-name-to-be-sure"
    result = CliRunner().invoke(app, ["train", "--results-dir", str(results), "--depth", "1", "--width", "8",
                                      "--epochs", "1", "--batch-size", "50", "--no-progress", "--set", "data.validation_size=100"])
    assert result.exit_code == 0, result.output
    (run,) = results.glob("default/*")
    assert f"run folder: {run}\n" in result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["pid"] == os.getpid() and summary["host"] == socket.gethostname() and summary["started_at"]

    write_run(tmp_path / "runs", "bp")
    out = tmp_path / "a-report-folder-with-a-long-name"
    out.mkdir()
    (out / "report.md").write_text("taken")
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "runs"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{out} already holds a report; writing to {out}-1 instead\n" in result.output
    assert f"report: {out}-1 (" in result.output


def test_out_of_memory_marks_the_run_failed(tmp_path, monkeypatch, fake_dataset):
    """An allocation failure the memory estimate did not foresee: one line, the run `failed`, never left `running`."""
    from bioprop_cli.runs import RunWriter

    def allocation_fails(config, dataset, writer: RunWriter, on_epoch, **options):
        writer.summary({"status": "running", "rule": config.rule})
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 157.00GiB.")

    monkeypatch.setattr(cli_train, "load_dataset", lambda name, data_dir=None, options=None: fake_dataset)
    monkeypatch.setattr(cli_train, "train_run", allocation_fails)
    result = CliRunner().invoke(app, ["train", "--results-dir", str(tmp_path), "--batch-size", "50",
                                      "--set", "data.validation_size=100", "--no-progress"])
    (run,) = tmp_path.glob("default/*")
    assert_user_error(result, "out of memory", str(run), "marked failed", "157.00GiB")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["rule"] == "bp" and "RESOURCE_EXHAUSTED" in summary["error"]
