"""Tests for the `bioprop` command through typer's CliRunner: a real (small) training run, reproducibility,
and bad input (exit code 2, one line, nothing written)."""

from __future__ import annotations

import gzip
import json
import math
import re
import shutil
from pathlib import Path

import jax
import pytest
from typer.testing import CliRunner

import bioprop_cli.cli.train as cli_train
from bioprop_cli.cli import app
from bioprop_cli.cli.common import config_from_flags
from bioprop_cli.config import Config, load_config
from bioprop_cli.rules import available_rules
from bioprop_cli.runs import read_jsonl
from helpers import assert_nothing_written, assert_user_error, stderr_of

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
ALL_RULES = tuple(available_rules())
RUN_ID = re.compile(r"\d{8}-\d{6}-fa-d2-s0(-\d+)?")
# what differs between two runs of the same config and seed: timings, and which process ran it when
TIMING_FIELDS = {"epoch_time_s", "wall_time_s", "train_time_s", "compile_time_s", "examples_per_s", "pid", "started_at"}
METRIC_KEYS = {
    "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy",
    "epoch_time_s", "wall_time_s", "mean_update_angle",
}
ALIGNMENT_KEYS = {"epoch", "step", "layer", "update_angle", "delta_angle", "feedback_angle", "feedback_norm_ratio"}

# A small slice of real MNIST (optimizer, schedule and activation pinned, so that changes of the defaults do
# not change what this test measures). fa with the default batch 128 / lr 1e-3 gets only 19 Adam steps per epoch here,
# too few to beat chance reliably; batch 32 and lr 0.003 reach ~0.8 test accuracy in 2 epochs on every seed tried.
EPOCHS, DEPTH, WIDTH, BATCH, LR = 2, 2, 32, 32, 0.003
TRAIN_LIMIT, VALIDATION, TEST_LIMIT = 3000, 500, 1000
FA_FLAGS = [
    "train", "--rule", "fa", "--depth", str(DEPTH), "--width", str(WIDTH), "--epochs", str(EPOCHS),
    "--batch-size", str(BATCH), "--lr", str(LR), "--seed", "0", "--experiment", "e2e", "--no-progress",
    "--set", f"data.train_limit={TRAIN_LIMIT}", "--set", f"data.validation_size={VALIDATION}",
    "--set", f"data.test_limit={TEST_LIMIT}", "--set", "optimizer.name=adam",
    "--set", "optimizer.schedule.name=constant", "--set", "model.activation=tanh",
]  # fmt: skip


# --- helpers ----------------------------------------------------------------------------------



def run_folders(results_dir: Path) -> list[Path]:
    return sorted(p for p in results_dir.glob("*/*") if p.is_dir())


def without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING_FIELDS}


# --- end-to-end on real MNIST ---------------------------------------------------------------------


class Run:
    def __init__(self, result, results_dir: Path, folders_after: list[Path], expected_config):
        self.result = result
        self.results_dir = results_dir
        self.folders_after = folders_after
        self.expected_config = expected_config
        self.dir = folders_after[0] if len(folders_after) == 1 else None

    @property
    def metrics(self) -> list[dict]:
        return read_jsonl(self.dir / "metrics.jsonl")

    @property
    def alignment(self) -> list[dict]:
        return read_jsonl(self.dir / "alignment.jsonl")

    @property
    def summary(self) -> dict:
        return json.loads((self.dir / "summary.json").read_text())


def fa_args(mnist_dir: str, results_dir: Path) -> list[str]:
    return FA_FLAGS + ["--data-dir", mnist_dir, "--results-dir", str(results_dir)]


@pytest.fixture(scope="module")
def fa_run(mnist_dir, tmp_path_factory) -> Run:
    results_dir = tmp_path_factory.mktemp("e2e") / "results"
    result = CliRunner().invoke(app, fa_args(mnist_dir, results_dir))
    expected = load_config(
        None,
        [
            ("rule", "fa"), ("model.depth", DEPTH), ("model.width", WIDTH), ("train.epochs", EPOCHS),
            ("train.batch_size", BATCH), ("optimizer.lr", LR), ("seed", 0), ("experiment", "e2e"),
            ("data.train_limit", TRAIN_LIMIT), ("data.validation_size", VALIDATION), ("data.test_limit", TEST_LIMIT),
            ("data.data_dir", mnist_dir), ("results_dir", str(results_dir)), ("optimizer.name", "adam"),
            ("optimizer.schedule.name", "constant"), ("model.activation", "tanh"),
        ],
    )  # fmt: skip
    return Run(result, results_dir, run_folders(results_dir), expected)


def test_train_exits_0_into_one_new_run_folder(fa_run):
    result = fa_run.result
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.exception is None
    assert [p.name for p in fa_run.results_dir.iterdir()] == ["e2e"]
    assert len(fa_run.folders_after) == 1, fa_run.folders_after
    assert RUN_ID.fullmatch(fa_run.dir.name), fa_run.dir.name
    # the five files and the checkpoints, nothing else (no temporary files left behind)
    assert sorted(p.name for p in fa_run.dir.iterdir()) == [
        "alignment.jsonl", "checkpoints", "config.yaml", "metrics.jsonl", "params.npz", "summary.json"]
    assert sorted(p.name for p in (fa_run.dir / "checkpoints").iterdir()) == ["best.npz", "last.npz"]
    assert "completed" in result.stdout


def test_train_config_yaml_is_the_config_asked_for(fa_run):
    assert fa_run.dir is not None
    loaded = load_config(fa_run.dir / "config.yaml")
    assert loaded == fa_run.expected_config
    assert loaded.rule == "fa" and loaded.model.depth == DEPTH and loaded.optimizer.lr == LR


def test_train_metrics_one_line_per_epoch(fa_run):
    metrics = fa_run.metrics
    summary = fa_run.summary
    assert [m["epoch"] for m in metrics] == list(range(1, EPOCHS + 1))
    for m in metrics:
        assert METRIC_KEYS <= set(m), METRIC_KEYS - set(m)
        for key in ("train_accuracy", "val_accuracy", "test_accuracy"):
            assert 0.0 <= m[key] <= 1.0, (key, m[key])
        for key in ("train_loss", "val_loss", "test_loss"):
            assert math.isfinite(m[key]) and m[key] >= 0
        assert m["step"] == m["epoch"] * summary["steps_per_epoch"]
        assert m["lr"] == pytest.approx(LR)
        assert m["epoch_time_s"] > 0 and m["wall_time_s"] >= m["epoch_time_s"]
        hidden = [r["update_angle"] for r in fa_run.alignment if r["epoch"] == m["epoch"] and r["layer"] in range(DEPTH)]
        assert m["mean_update_angle"] == pytest.approx(sum(hidden) / DEPTH, rel=1e-5)  # fa's output layer is exact
    assert metrics[-1]["wall_time_s"] > metrics[0]["wall_time_s"]
    # learning happened: well above chance (0.1), and the training loss went down
    assert metrics[-1]["test_accuracy"] > 0.5, metrics[-1]
    assert metrics[-1]["val_accuracy"] > 0.5, metrics[-1]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] < math.log(10) + 0.1


def test_train_alignment_lines(fa_run):
    everything = fa_run.alignment
    alignment = [r for r in everything if r["layer"] != "all"]
    steps_per_epoch = fa_run.summary["steps_per_epoch"]
    for record in alignment:
        assert ALIGNMENT_KEYS <= set(record), ALIGNMENT_KEYS - set(record)
    # a measurement at initialisation (epoch 0) and after every epoch; one line per layer 0..depth,
    # then one line for the whole network
    layers = list(range(DEPTH + 1)) + ["all"]
    for epoch in range(EPOCHS + 1):
        lines = [r for r in everything if r["epoch"] == epoch]
        assert [r["layer"] for r in lines] == layers, (epoch, lines)
        assert all(r["step"] == epoch * steps_per_epoch for r in lines)
    assert len(everything) == (EPOCHS + 1) * (DEPTH + 2)
    for r in everything:
        if r["layer"] == "all":
            assert set(r) >= {"update_angle", "update_rel_error", "mean_update_angle"}
            assert 0.0 <= r["update_angle"] <= 180.0 and r["update_rel_error"] > 0
    for r in alignment:
        for key in ("update_angle", "delta_angle", "feedback_angle"):
            assert r[key] is None or 0.0 <= r[key] <= 180.0, (key, r)
        # fa: layer 0 receives no feedback matrix; every later layer has one, B_l vs W_l^T
        if r["layer"] == 0:
            assert r["feedback_angle"] is None and r["feedback_norm_ratio"] is None
        else:
            assert isinstance(r["feedback_angle"], float) and 0.0 <= r["feedback_angle"] <= 180.0
            assert r["feedback_norm_ratio"] > 0
        assert r["update_angle"] is not None and r["delta_angle"] is not None
        if r["layer"] == DEPTH:  # the output layer's update is exact for every rule
            assert r["update_angle"] == pytest.approx(0.0, abs=0.5)
            assert r["delta_angle"] == pytest.approx(0.0, abs=0.5)
        else:  # random feedback: hidden layers are far from exact, at least at initialisation
            if r["epoch"] == 0:
                assert r["update_angle"] > 45.0
    # the metrics' mean_update_angle is the mean over the hidden layers of the same measurement
    for m in fa_run.metrics:
        hidden = [r["update_angle"] for r in alignment if r["epoch"] == m["epoch"] and r["layer"] < DEPTH]
        assert m["mean_update_angle"] == pytest.approx(sum(hidden) / len(hidden), rel=1e-4)


def test_train_summary(fa_run):
    summary = fa_run.summary
    metrics = fa_run.metrics
    assert summary["status"] == "completed"
    assert summary["rule"] == "fa" and summary["depth"] == DEPTH and summary["seed"] == 0
    assert summary["epochs_completed"] == EPOCHS and summary["diverged_epoch"] is None
    assert summary["layer_sizes"] == [784] + [WIDTH] * DEPTH + [10]
    assert summary["n_train"] == TRAIN_LIMIT - VALIDATION
    assert summary["n_val"] == VALIDATION and summary["n_test"] == TEST_LIMIT
    assert summary["steps_per_epoch"] == (TRAIN_LIMIT - VALIDATION) // BATCH
    assert summary["test_accuracy"] == metrics[-1]["test_accuracy"]
    assert summary["val_accuracy"] == metrics[-1]["val_accuracy"]
    assert summary["best_val_accuracy"] == max(m["val_accuracy"] for m in metrics)
    best_epoch = max(metrics, key=lambda m: m["val_accuracy"])["epoch"]
    assert summary["best_val_epoch"] == best_epoch
    assert summary["final_mean_update_angle"] == metrics[-1]["mean_update_angle"]
    assert summary["versions"]["jax"] == jax.__version__
    assert summary["device"]["platform"] == jax.devices()[0].platform
    assert summary["examples_per_s"] > 0
    assert summary["compile_time_s"] > 0
    assert summary["wall_time_s"] >= summary["train_time_s"] > 0


def test_same_config_and_seed_give_the_same_metrics(fa_run, mnist_dir):
    assert fa_run.dir is not None
    # the same flags again, into the same results dir: a second, different run folder
    result = CliRunner().invoke(app, fa_args(mnist_dir, fa_run.results_dir))
    assert result.exit_code == 0, (result.output, result.exception)
    folders = run_folders(fa_run.results_dir)
    assert len(folders) == 2 and fa_run.dir in folders
    (other,) = [p for p in folders if p != fa_run.dir]
    assert load_config(other / "config.yaml") == load_config(fa_run.dir / "config.yaml")
    first = [without_timing(m) for m in fa_run.metrics]
    second = [without_timing(m) for m in read_jsonl(other / "metrics.jsonl")]
    assert len(second) == EPOCHS
    assert second == first
    assert read_jsonl(other / "alignment.jsonl") == fa_run.alignment
    summary = json.loads((other / "summary.json").read_text())
    assert without_timing(summary) == without_timing(fa_run.summary)


# --- bad input: exit 2, one line, nothing written -------------------------------------------------


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--depth", "0"], ["model.depth", ">= 1"]),
        (["--width", "0"], ["model.width"]),
        (["--lr", "-1"], ["optimizer.lr", "> 0"]),
        (["--lr", "0"], ["optimizer.lr"]),
        (["--epochs", "0"], ["train.epochs"]),
        (["--rule", "nope"], ["'nope'", *ALL_RULES]),
        (["--set", "model.bogus=1"], ["model.bogus", "model.depth"]),
        (["--set", "bogus=1"], ["bogus"]),
        (["--set", "model.activation=swish"], ["model.activation", "tanh", "relu"]),
        (["--set", "model.depth=abc"], ["model.depth", "integer"]),
        (["--set", "model.depth=true"], ["model.depth", "integer"]),
        (["--set", "optimizer.lr"], ["optimizer.lr", "KEY.PATH=VALUE"]),
        (["--set", "optimizer.schedule.boundaries=[1,"], ["not valid YAML"]),
        (["--experiment", "a/b"], ["experiment"]),
    ],
)
def test_bad_flags_exit_2_with_one_line_and_write_nothing(runner, tmp_path, args, fragments):
    results_dir = tmp_path / "results"
    result = runner.invoke(app, ["train", "--results-dir", str(results_dir), *args])
    assert_user_error(result, *fragments)
    assert_nothing_written(results_dir)


def test_missing_config_file(runner, tmp_path):
    results_dir, missing = tmp_path / "results", tmp_path / "missing.yaml"
    result = runner.invoke(app, ["train", "--config", str(missing), "--results-dir", str(results_dir)])
    assert_user_error(result, str(missing), "cannot be read")
    assert_nothing_written(results_dir)


def test_invalid_yaml_config_file(runner, tmp_path):
    results_dir, path = tmp_path / "results", tmp_path / "bad.yaml"
    path.write_text("model:\n  depth: [2\n")
    result = runner.invoke(app, ["train", "-c", str(path), "--results-dir", str(results_dir)])
    assert_user_error(result, str(path), "not valid YAML")
    assert_nothing_written(results_dir)


def test_config_file_with_bad_value(runner, tmp_path):
    results_dir, path = tmp_path / "results", tmp_path / "c.yaml"
    path.write_text("rule: fa\noptimizer:\n  lr: -0.5\n")
    result = runner.invoke(app, ["train", "--config", str(path), "--results-dir", str(results_dir)])
    assert_user_error(result, "optimizer.lr")
    assert_nothing_written(results_dir)


def test_config_file_results_dir_is_also_left_empty(runner, tmp_path):
    """The results dir named inside the config file (not by flag) also stays untouched on error."""
    results_dir, path = tmp_path / "from-file", tmp_path / "c.yaml"
    path.write_text(f"results_dir: {results_dir}\nmodel:\n  depth: 0\n")
    assert_user_error(runner.invoke(app, ["train", "--config", str(path)]), "model.depth")
    assert_nothing_written(results_dir)


@pytest.mark.parametrize(
    "sets, fragments",
    [
        (["train.batch_size=100000"], ["train.batch_size", "200"]),
        (["data.validation_size=300"], ["data.validation_size", "300"]),
    ],
)
def test_sizes_checked_against_the_data_before_writing(runner, tmp_path, monkeypatch, fake_dataset, sets, fragments):
    """With a fake 600-example dataset and train_limit 300 (validation 100 -> 200 training examples)."""
    monkeypatch.setattr(cli_train, "load_dataset", lambda name, data_dir=None, options=None: fake_dataset)
    results_dir = tmp_path / "results"
    args = ["train", "--results-dir", str(results_dir), "--set", "data.train_limit=300", "--set", "data.validation_size=100"]
    for s in sets:
        args += ["--set", s]
    assert_user_error(runner.invoke(app, args), *fragments)
    assert_nothing_written(results_dir)


def test_batch_size_too_large_for_real_data_slice(runner, tmp_path, mnist_dir):
    results_dir = tmp_path / "results"
    args = [
        "train", "--data-dir", mnist_dir, "--results-dir", str(results_dir), "--set", "data.train_limit=1000",
        "--set", "data.validation_size=500", "--set", "train.batch_size=100000",
    ]  # fmt: skip
    assert_user_error(runner.invoke(app, args), "train.batch_size", "500")
    assert_nothing_written(results_dir)


# --- data errors ---------------------------------------------------------------------------------


def test_empty_data_dir_names_the_missing_file(runner, tmp_path):
    data_dir, results_dir = tmp_path / "empty", tmp_path / "results"
    data_dir.mkdir()
    result = runner.invoke(app, ["train", "--data-dir", str(data_dir), "--results-dir", str(results_dir)])
    assert_user_error(result, str(data_dir), "missing", "train-images-idx3-ubyte")
    assert_nothing_written(results_dir)


def test_nonexistent_data_dir(runner, tmp_path):
    data_dir, results_dir = tmp_path / "nowhere", tmp_path / "results"
    result = runner.invoke(app, ["train", "--data-dir", str(data_dir), "--results-dir", str(results_dir)])
    assert_user_error(result, str(data_dir), "does not exist")
    assert_nothing_written(results_dir)


def _corrupt_truncate(raw: bytes) -> bytes:
    return raw[: len(raw) // 2]


def _corrupt_content(raw: bytes) -> bytes:
    content = bytearray(gzip.decompress(raw))
    content[-1] = (content[-1] + 1) % 10  # still a valid label 0..9: only the checksum can tell
    return gzip.compress(bytes(content))


@pytest.mark.parametrize(
    "corrupt, fragments",
    [(_corrupt_truncate, ["truncated"]), (_corrupt_content, ["MD5"])],
    ids=["truncated-gzip", "altered-content"],
)
def test_corrupted_data_file(runner, tmp_path, mnist_dir, corrupt, fragments):
    data_dir, results_dir = tmp_path / "data", tmp_path / "results"
    data_dir.mkdir()
    for name in IDX_FILES:
        source = Path(mnist_dir) / name
        if not source.is_file():
            source = Path(mnist_dir) / f"{name}.gz"
        shutil.copyfile(source, data_dir / source.name)
    victim = next(data_dir.glob("t10k-labels-idx1-ubyte*"))
    raw = victim.read_bytes()
    if victim.suffix != ".gz":  # make it gzip so that both corruptions apply
        victim.unlink()
        victim = victim.with_name(victim.name + ".gz")
        raw = gzip.compress(raw)
    victim.write_bytes(corrupt(raw))
    result = runner.invoke(app, ["train", "--data-dir", str(data_dir), "--results-dir", str(results_dir)])
    assert_user_error(result, victim.name, *fragments)
    assert_nothing_written(results_dir)


# --- flags and help -----------------------------------------------------------------------------


def test_named_flags_beat_set_which_beats_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rule: dfa\nmodel:\n  depth: 4\n  width: 64\ntrain:\n  epochs: 5\n")
    config = config_from_flags(path, ["model.depth=3", "model.width=16"], depth=2, rule=None, epochs=None)
    assert config.model.depth == 2  # --depth beats --set model.depth
    assert config.model.width == 16  # --set beats the file
    assert config.train.epochs == 5 and config.rule == "dfa"  # flags left out (None) do not override
    assert config.model.activation == Config().model.activation


def test_train_help_lists_the_flags(runner):
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    for flag in ("--rule", "--depth", "--width", "--epochs", "--lr", "--batch-size", "--seed", "--set",
                 "--config", "--experiment", "--results-dir", "--data-dir", "--no-progress"):  # fmt: skip
        assert flag in result.output, flag


def test_top_level_help_lists_the_commands(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output and "train" in result.output and "bench" in result.output


def test_no_arguments_shows_help(runner):
    result = runner.invoke(app, [])
    assert result.exit_code in (0, 2)  # click >= 8.2 exits 2 for no_args_is_help
    text = result.output + stderr_of(result)
    assert "Usage" in text and "train" in text
    assert "Traceback" not in text


def test_error_messages_keep_their_brackets(tmp_path):
    """Rich markup must not eat '[...]' in a message (lists of values, extras like bioprop[ray])."""
    result = CliRunner().invoke(app, ["train", "--set", "optimizer.layer_lr=[1.0, 2.0, 3.0, 4.0]",
                                      "--results-dir", str(tmp_path)])
    assert result.exit_code == 2
    output = result.stderr if hasattr(result, "stderr") else result.output
    assert "[1.0, 2.0, 3.0, 4.0]" in output
