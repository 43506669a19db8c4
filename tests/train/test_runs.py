"""Tests for bioprop_cli.runs: run folders never reused, atomic JSON, append-only JSON lines, run ids."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import yaml

from bioprop_cli import runs
from bioprop_cli.runs import RunWriter, append_jsonl, create_run_dir, read_jsonl, run_id, write_json


# --- create_run_dir ---------------------------------------------------------------------------


def test_create_run_dir_creates_nested_empty_folder(tmp_path):
    path = create_run_dir(tmp_path / "results", "exp", "20240101-000000-bp-d2-s0")
    assert path == tmp_path / "results" / "exp" / "20240101-000000-bp-d2-s0"
    assert path.is_dir() and list(path.iterdir()) == []


def test_create_run_dir_never_reuses_a_folder(tmp_path):
    first = create_run_dir(tmp_path, "exp", "run")
    (first / "metrics.jsonl").write_text('{"epoch": 1}\n')
    second = create_run_dir(tmp_path, "exp", "run")
    third = create_run_dir(str(tmp_path), "exp", "run")  # str paths work too
    assert first.name == "run" and second.name == "run-1" and third.name == "run-2"
    assert second.is_dir() and list(second.iterdir()) == []
    assert third.is_dir() and list(third.iterdir()) == []
    assert (first / "metrics.jsonl").read_text() == '{"epoch": 1}\n'  # untouched
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["run", "run-1", "run-2"]


def test_create_run_dir_skips_a_file_with_the_same_name(tmp_path):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "run").write_text("not a folder")
    path = create_run_dir(tmp_path, "exp", "run")
    assert path.name == "run-1" and path.is_dir()
    assert (tmp_path / "exp" / "run").read_text() == "not a folder"


# --- write_json -------------------------------------------------------------------------------


def test_write_json_writes_valid_json_with_nonfinite_as_null(tmp_path):
    path = tmp_path / "summary.json"
    obj = {
        "nan": float("nan"),
        "inf": float("inf"),
        "ninf": -math.inf,
        "np_nan": np.float64("nan"),
        "ok": 0.5,
        "int": 3,
        "nested": {"values": [1.0, float("nan"), (2.0, math.inf)], "text": "x"},
        "none": None,
    }
    write_json(path, obj)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    loaded = json.loads(text)  # strict enough: Python's json accepts NaN, so also check the text above
    assert loaded == {
        "nan": None,
        "inf": None,
        "ninf": None,
        "np_nan": None,
        "ok": 0.5,
        "int": 3,
        "nested": {"values": [1.0, None, [2.0, None]], "text": "x"},
        "none": None,
    }


def test_write_json_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"status": "running", "padding": "x" * 1000})
    write_json(path, {"status": "completed"})
    assert json.loads(path.read_text()) == {"status": "completed"}  # fully replaced, no leftover bytes
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_write_json_failure_keeps_the_old_file_and_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_json(path, {"status": "running"})

    def failing_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(runs.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        write_json(path, {"status": "completed"})
    assert json.loads(path.read_text()) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # the temporary file was removed


def test_write_json_unserialisable_leaves_nothing(tmp_path):
    path = tmp_path / "summary.json"
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert list(tmp_path.iterdir()) == []


# --- append_jsonl / read_jsonl ---------------------------------------------------------------


def test_append_and_read_jsonl_round_trip(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"epoch": 1, "loss": 2.5, "tags": ["a"]}, {"epoch": 2, "loss": 1.25, "nested": {"x": None}}]
    append_jsonl(path, records[:1])
    append_jsonl(path, records[1:])
    append_jsonl(path, [{"epoch": 3, "loss": float("nan"), "angle": float("inf")}])
    assert read_jsonl(path) == records + [{"epoch": 3, "loss": None, "angle": None}]
    lines = path.read_text().split("\n")
    assert lines[-1] == "" and len(lines) == 4  # one line per record, each ending in a newline
    assert all("NaN" not in line and "Infinity" not in line for line in lines)


def test_append_jsonl_nothing_does_not_create_the_file(tmp_path):
    path = tmp_path / "alignment.jsonl"
    append_jsonl(path, [])
    assert not path.exists()


def test_read_jsonl_ignores_a_trailing_partial_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, [{"epoch": 1}, {"epoch": 2}])
    with open(path, "a") as f:  # a writer killed in the middle of a line
        f.write('{"epoch": 3, "train_lo')
    assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]


def test_read_jsonl_skips_blank_lines_and_empty_files(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("")
    assert read_jsonl(path) == []
    path.write_text('{"epoch": 1}\n\n{"epoch": 2}\n')
    assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]


# --- run_id -----------------------------------------------------------------------------------


def test_run_id_format_with_a_given_time():
    now = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert run_id("fa", "d3", 7, now) == "20240102-030405-fa-d3-s7"


def test_run_id_uses_the_current_utc_time():
    before = datetime.now(timezone.utc).replace(microsecond=0)
    name = run_id("brsf", "d10", 123)
    after = datetime.now(timezone.utc)
    match = re.fullmatch(r"(\d{8}-\d{6})-brsf-d10-s123", name)
    assert match, name
    stamp = datetime.strptime(match.group(1), "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc)
    assert before <= stamp <= after + timedelta(seconds=1)


# --- RunWriter --------------------------------------------------------------------------------


def test_run_writer_writes_the_four_files(tmp_path):
    writer = RunWriter(tmp_path)
    writer.config({"rule": "fa", "optimizer": {"schedule": {"boundaries": [1.0, 2.0]}}})
    writer.summary({"status": "running"})
    writer.metrics({"epoch": 1, "val_accuracy": 0.5})
    writer.metrics({"epoch": 2, "val_accuracy": float("nan")})
    writer.alignment([{"epoch": 1, "layer": 0}, {"epoch": 1, "layer": 1}])
    writer.summary({"status": "completed"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alignment.jsonl", "config.yaml", "metrics.jsonl", "summary.json"]
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == {
        "rule": "fa",
        "optimizer": {"schedule": {"boundaries": [1.0, 2.0]}},
    }
    assert json.loads((tmp_path / "summary.json").read_text()) == {"status": "completed"}
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": None}]
    assert [r["layer"] for r in read_jsonl(tmp_path / "alignment.jsonl")] == [0, 1]


def test_results_folder_layout(tmp_path):
    """create_run_dir + run_id give <results_dir>/<experiment>/<run-id>/."""
    name = run_id("dfa", "d2", 0, datetime(2025, 6, 7, 8, 9, 10, tzinfo=timezone.utc))
    path = create_run_dir(tmp_path / "res", "my-exp", name)
    assert path.relative_to(tmp_path) == Path("res/my-exp/20250607-080910-dfa-d2-s0")


# --- params.npz -------------------------------------------------------------------------------


def test_params_npz_round_trips_and_bad_files_are_one_line_user_errors(tmp_path):
    from bioprop_cli.errors import UserError
    from bioprop_cli.runs import load_params

    rng = np.random.default_rng(0)
    params = [
        {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)},
        {"w": rng.normal(size=(3, 2)).astype(np.float32), "b": np.zeros(2, np.float32),
         "fb": rng.normal(size=(2, 3)).astype(np.float32)},
    ]
    RunWriter(tmp_path).params(params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.npz"]  # no temporary file left
    assert (tmp_path / "params.npz").stat().st_mode & 0o777 == 0o644
    assert sorted(np.load(tmp_path / "params.npz").files) == ["0.b", "0.w", "1.b", "1.fb", "1.w"]
    loaded = load_params(tmp_path)
    assert [sorted(layer) for layer in loaded] == [["b", "w"], ["b", "fb", "w"]]
    for mine, theirs in zip(params, loaded):
        for name, value in mine.items():
            assert theirs[name].dtype == np.float32
            np.testing.assert_array_equal(np.asarray(theirs[name]), value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="params.npz: not found"):
        load_params(empty)
    (empty / "params.npz").write_bytes(b"not a zip file")
    with pytest.raises(UserError, match="params.npz") as err:
        load_params(empty)
    assert "\n" not in str(err.value)
    np.savez(empty / "params.npz", **{"w0": np.zeros(2)})
    with pytest.raises(UserError, match="unexpected entry 'w0'"):
        load_params(empty)
    np.savez(empty / "params.npz", **{"1.w": np.zeros(2)})  # no layer 0
    with pytest.raises(UserError, match="layers 0 .. L-1"):
        load_params(empty)


def test_train_writes_params_unless_switched_off_or_diverged(tmp_path):
    from bioprop_cli.config import load_config
    from bioprop_cli.runs import load_params
    from bioprop_cli.train import train, train_group
    from helpers import make_fake_dataset

    data = make_fake_dataset(n_train=150, n_test=50)
    base = [("rule", "kp"), ("model.depth", 1), ("model.width", 4), ("train.epochs", 1), ("train.batch_size", 25),
            ("data.validation_size", 50), ("alignment.enabled", False), ("optimizer.name", "sgd"),
            ("model.activation", "relu"), ("model.loss", "mse")]
    folders = [tmp_path / name for name in ("fine", "diverged", "off")]
    for folder in folders:
        folder.mkdir()
    # one group: the same program, one run diverging (lr 1e30) beside one that does not
    fine, diverged = train_group([load_config(overrides=base + [("optimizer.lr", lr)]) for lr in (0.01, 1e30)], data,
                                 [RunWriter(f) for f in folders[:2]])
    assert fine["status"] == "completed" and diverged["status"] == "diverged"
    params = load_params(folders[0])
    assert [sorted(layer) for layer in params] == [["b", "w"], ["b", "fb", "w"]]  # kp's learned feedback
    assert params[0]["w"].shape == (784, 4) and params[0]["w"].dtype == np.float32
    assert not (folders[1] / "params.npz").exists()
    summary = train(load_config(overrides=base + [("rule", "bp"), ("optimizer.lr", 0.01), ("train.save_params", False)]), data,
                    RunWriter(folders[2]))
    assert summary["status"] == "completed" and not (folders[2] / "params.npz").exists()


def test_run_names_carry_the_depth_of_an_mlp_and_the_arch_of_a_conv_net():
    from bioprop_cli.config import load_config
    from bioprop_cli.models.arch import label

    assert label(load_config(overrides=[("model.depth", 3)]).model) == "d3"
    lenet = load_config(overrides=[("model.arch", "lenet"), ("model.depth", 3)]).model
    assert run_id("fa", label(lenet), 0, datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)) == "20250102-030405-fa-lenet-s0"
