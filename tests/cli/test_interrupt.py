"""Ctrl-C (SIGINT): a flag checked at every boundary, `interrupted` recorded on every path, exit code 130."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bioprop_cli.runs import RunWriter, read_jsonl
from bioprop_cli.interrupt import sigint_flag

needs_mnist = pytest.mark.skipif(not os.environ.get("BIOPROP_DATA_DIR"), reason="needs MNIST in BIOPROP_DATA_DIR")
SMALL = ["--width", "16", "--set", "data.train_limit=1500", "--set", "data.validation_size=300",
         "--set", "data.test_limit=300", "--set", "alignment.probe_size=32"]


# `python -m bioprop_cli` with Ctrl-C handled as in a terminal even where this test runner was started
# with SIGINT ignored (a background job of a script), which children inherit and bioprop respects
LAUNCH = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
          "sys.argv[0] = 'bioprop'; runpy.run_module('bioprop_cli', run_name='__main__')")


def bioprop(*args):
    return subprocess.Popen([sys.executable, "-c", LAUNCH, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(proc, ready, what):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            return
        time.sleep(0.05)
    pytest.fail(f"never saw {what}: {proc.stderr.read().decode()}")


def summary_of(path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


@pytest.mark.slow  # a subprocess per try (signals, kill -9, Ray, forced devices): CI runs -m slow
@needs_mnist
def test_sigint_after_some_epochs_records_status_interrupted(tmp_path):
    proc = bioprop("train", "--rule", "fa", "--depth", "1", "--epochs", "1000", "--results-dir", str(tmp_path),
                   "--no-progress", *SMALL)
    metrics = lambda: list(tmp_path.glob("default/*/metrics.jsonl"))
    wait_for(proc, lambda: metrics() and len(read_jsonl(metrics()[0])) >= 2, "two epochs")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    (path,) = metrics()
    summary = json.loads((path.parent / "summary.json").read_text())
    lines = read_jsonl(path)
    assert summary["status"] == "interrupted"
    assert 2 <= summary["epochs_completed"] < 1000
    assert [m["epoch"] for m in lines] == list(range(1, len(lines) + 1))
    assert path.read_text().endswith("\n")  # no half-written line
    assert b"Traceback" not in proc.stderr.read()


@pytest.mark.slow  # a subprocess per try (signals, kill -9, Ray, forced devices): CI runs -m slow
@needs_mnist
def test_sigint_while_compiling_does_not_leave_the_run_running(tmp_path):
    """Sent as soon as the run folder says `running` (before the first epoch: compilation)."""
    proc = bioprop("train", "--rule", "fa", "--depth", "2", "--epochs", "1000", "--results-dir", str(tmp_path),
                   "--no-progress", *SMALL)
    summaries = lambda: list(tmp_path.glob("default/*/summary.json"))
    wait_for(proc, lambda: summaries() and summary_of(summaries()[0]).get("status") == "running", "a running run")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    summary = json.loads(summaries()[0].read_text())
    assert summary["status"] == "interrupted" and summary["epochs_completed"] < 1000


@pytest.fixture
def sigint_as_in_a_terminal():
    """Python's own SIGINT handler for the test (the runner may have been started with SIGINT ignored)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_the_handler_only_sets_a_flag_and_the_second_ctrl_c_raises(sigint_as_in_a_terminal):
    """The first Ctrl-C raises nothing (an exception raised in a finaliser would be dropped by Python);
    nested blocks share the outer flag; the old handler comes back afterwards; an ignored SIGINT
    stays ignored."""
    before = signal.getsignal(signal.SIGINT)
    with sigint_flag() as interrupted:
        assert not interrupted()
        signal.raise_signal(signal.SIGINT)
        assert interrupted()
        with sigint_flag() as inner:
            assert inner()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with sigint_flag() as interrupted:
        signal.raise_signal(signal.SIGINT)
        assert not interrupted() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_the_exit_code_is_130_after_a_ctrl_c_and_a_later_one_is_never_lost(sigint_as_in_a_terminal):
    """Once the command is over: 130 if Ctrl-C was pressed (even if the command ran to its end), and
    from then on SIGINT has its default action (the process ends by the signal, a shell's 130)."""
    from bioprop_cli.interrupt import exit_code

    with sigint_flag():
        assert exit_code(0) == 0 and signal.getsignal(signal.SIGINT) is signal.SIG_DFL
    with sigint_flag():
        signal.raise_signal(signal.SIGINT)
        assert exit_code(0) == 130 and exit_code(2) == 2  # handler gone: nothing more to read
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_before_training_ends_every_run_interrupted_after_compilation(tmp_path, fake_dataset, sigint_as_in_a_terminal):
    from bioprop_cli.config import load_config
    from bioprop_cli.train import train_group

    configs = [load_config(overrides=[("model.width", 8), ("data.validation_size", 100), ("train.batch_size", 50),
                                      ("alignment.probe_size", 16), ("seed", s)]) for s in (0, 1)]
    folders = [tmp_path / f"run{s}" for s in (0, 1)]
    for folder in folders:
        folder.mkdir()
    with sigint_flag() as interrupted:
        signal.raise_signal(signal.SIGINT)
        summaries = train_group(configs, fake_dataset, [RunWriter(f) for f in folders])
    assert interrupted()
    assert [s["status"] for s in summaries] == ["interrupted", "interrupted"]
    for folder in folders:
        written = json.loads((folder / "summary.json").read_text())
        assert written["status"] == "interrupted" and written["epochs_completed"] == 0
        assert not (folder / "metrics.jsonl").exists() and not (folder / "alignment.jsonl").exists()


@pytest.mark.slow  # a subprocess per try (signals, kill -9, Ray, forced devices): CI runs -m slow
@needs_mnist
def test_a_second_sweep_is_refused_and_ctrl_c_leaves_the_rest_queued(tmp_path):
    from typer.testing import CliRunner

    from bioprop_cli.cli import app

    args = ["sweep", "--grid", "depth=1,2,3", "--epochs", "1000", "--results-dir", str(tmp_path), *SMALL]
    first = bioprop(*args)
    wait_for(first, lambda: list(tmp_path.glob("default/*/runs/*/metrics.jsonl")), "the first epoch")
    second = CliRunner().invoke(app, args)  # the same sweep, from another process
    message = second.stderr if hasattr(second, "stderr") else second.output
    assert second.exit_code == 2 and f"PID {first.pid}" in message, second.output
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=60) == 130
    assert b"Traceback" not in first.stderr.read()
    (folder,) = (tmp_path / "default").iterdir()
    runs = json.loads((folder / "manifest.json").read_text())["runs"]
    assert {n: e["status"] for n, e in runs.items()} == {"depth-1-s0": "interrupted", "depth-2-s0": "queued", "depth-3-s0": "queued"}
    summary = json.loads((folder / runs["depth-1-s0"]["run_dir"] / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 1 <= summary["epochs_completed"] < 1000


@pytest.mark.slow  # a subprocess per try (signals, kill -9, Ray, forced devices): CI runs -m slow
def test_ctrl_c_while_importing_exits_130_without_traceback():
    """A Ctrl-C that lands while the CLI's modules import (JAX takes seconds) is made deterministic
    here by an import hook that raises KeyboardInterrupt at `import jax`."""
    script = (
        "import builtins\n"
        "real_import = builtins.__import__\n"
        "def interrupted(name, *args, **kwargs):\n"
        "    if name == 'jax':\n"
        "        raise KeyboardInterrupt\n"
        "    return real_import(name, *args, **kwargs)\n"
        "builtins.__import__ = interrupted\n"
        "import sys; sys.argv = ['bioprop', '--help']\n"
        "from bioprop_cli.launch import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130
    assert proc.stderr == "" and proc.stdout == ""


# A real SIGINT at a known moment, sleep-free: the process sends it to itself once its data is
# loaded (the command's JAX work follows: compilation, measurement, training), through the
# console entry point (launch.main, the handler installed first) and `times` signals in a row.
SELF_SIGINT = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
import bioprop_cli.bench, bioprop_cli.datasets

def then_ctrl_c(load):
    def loaded(*args, **kwargs):
        data = load(*args, **kwargs)
        for _ in range({times}):
            os.kill(os.getpid(), signal.SIGINT)
        return data
    return loaded

bioprop_cli.datasets.load_dataset = then_ctrl_c(bioprop_cli.datasets.load_dataset)
bioprop_cli.bench.synthetic_mnist = then_ctrl_c(bioprop_cli.bench.synthetic_mnist)
sys.argv = ["bioprop", *sys.argv[1:]]
from bioprop_cli.launch import main
main()
"""

STUDY_SMALL = ["--width", "8", "--set", "data.train_limit=600", "--set", "data.validation_size=100",
               "--set", "data.test_limit=100"]
COMMANDS = {
    "train": ["train", "--rule", "fa", "--depth", "1", "--epochs", "1000", *SMALL],
    "sweep": ["sweep", "--grid", "depth=1,2", "--epochs", "1000", *SMALL],
    "reproduce": ["reproduce", "--quick", "lillicrap-2016"],
    "conditions": ["conditions", "--rule", "ep", "--depth", "1", "--probe-size", "16", "--width", "8"],
    "sweep condition": ["sweep", "condition", "--knobs", "t1", "--t1", "1,2", "--probe-size", "16", *STUDY_SMALL],
    "sweep beta": ["sweep", "beta", "--values", "0.1", "--batches", "2", "--seeds", "1", *STUDY_SMALL],
    "sweep beta --train": ["sweep", "beta", "--train", "--values", "0.1,0.5", "--epochs", "1000", *STUDY_SMALL],
    "sweep pc": ["sweep", "pc", "--steps", "1,2", "--batches", "2", "--seeds", "1", *STUDY_SMALL],
    "bench": ["bench", "--rules", "fa", "--repeats", "1", "--synthetic"],
}


def self_interrupted(args, tmp_path, times=1):
    results = [] if args[0] in ("bench", "conditions") else ["--results-dir", str(tmp_path)]
    env = {**os.environ, "BIOPROP_DATA_DIR": os.path.abspath(os.environ["BIOPROP_DATA_DIR"])}  # cwd is tmp_path
    return subprocess.run([sys.executable, "-c", SELF_SIGINT.format(times=times), *args, *results], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a subprocess per try (signals, kill -9, Ray, forced devices): CI runs -m slow
@needs_mnist
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_real_ctrl_c_ends_every_command_with_130_and_records_interrupted(command, tmp_path):
    """The first Ctrl-C stops the command at its next safe point: exit 130, no traceback, no crash,
    every run it started recorded `interrupted` (none left `running`), no study result written."""
    proc = self_interrupted(COMMANDS[command], tmp_path)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "Fatal Python error" not in proc.stderr, proc.stderr
    statuses = [json.loads(p.read_text())["status"] for p in tmp_path.rglob("summary.json") if "runs" in p.parts or
                (p.parent / "config.yaml").exists()]
    assert set(statuses) <= {"interrupted"}, statuses
    written = [p.name for p in tmp_path.rglob("*") if p.suffix in (".png", ".jsonl") and p.name.endswith(
        ("sweep.jsonl", "sweep.png", "training.jsonl"))] + [p.name for p in tmp_path.rglob("conditions.json")]
    assert written == []


@pytest.mark.slow  # a subprocess per try (signals, kill -9, Ray, forced devices): CI runs -m slow
@needs_mnist
def test_a_second_ctrl_c_exits_130_at_once_without_a_traceback(tmp_path):
    """Two Ctrl-C in a row (as a user who will not wait): the second ends the process before the
    command starts its JAX work, and prints nothing."""
    proc = self_interrupted(COMMANDS["sweep pc"], tmp_path, times=2)
    assert proc.returncode == 130
    assert proc.stderr == ""
    assert not list(tmp_path.rglob("summary.json"))


@pytest.mark.slow  # a subprocess per try (signals, kill -9, Ray, forced devices): CI runs -m slow
@needs_mnist
def test_ctrl_c_at_start_up_is_never_swallowed(tmp_path):
    """A real SIGINT while the CLI's modules import (sent when `jax` is imported): the import goes
    on, the command does not start, exit 130, nothing written."""
    script = (
        "import builtins, os, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "real_import = builtins.__import__\n"
        "def ctrl_c_at_jax(name, *args, **kwargs):\n"
        "    if name == 'jax' and 'jax' not in sys.modules:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    return real_import(name, *args, **kwargs)\n"
        "builtins.__import__ = ctrl_c_at_jax\n"
        "sys.argv = ['bioprop', *sys.argv[1:]]\n"
        "from bioprop_cli.launch import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, *COMMANDS["train"], "--results-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, flag", [
    (["sweep", "pc", "--steps", "1,1000000000"], "--steps"),
    (["sweep", "condition", "--t1", "5,100000"], "--t1"),
    (["sweep", "beta", "--values", ",".join(str(0.001 * k) for k in range(1, 102))], "--values"),
    (["sweep", "pc", "--batches", "1001"], "--batches"),
    (["sweep", "beta", "--seeds", "101"], "--seeds"),
    (["bench", "--repeats", "101"], "--repeats"),
])
def test_every_loop_length_a_study_flag_sets_is_bounded(args, flag, tmp_path):
    from typer.testing import CliRunner

    from bioprop_cli.cli import app

    result = CliRunner().invoke(app, [*args, *([] if args[0] == "bench" else ["--results-dir", str(tmp_path)])])
    message = result.stderr if hasattr(result, "stderr") else result.output
    assert result.exit_code == 2 and flag in message and len(message.strip().splitlines()) == 1, result.output
    assert list(tmp_path.iterdir()) == []
