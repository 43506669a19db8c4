"""The sweep axes have one home (experiment/grid.py AXES): each is a `bioprop sweep AXIS` command."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from helpers import make_fake_dataset

from bioprop_cli.cli import app
from bioprop_cli.experiment.grid import AXES


@pytest.mark.parametrize("axis", [*AXES, "seed"])
def test_every_axis_is_a_command(axis):
    result = CliRunner().invoke(app, ["sweep", axis, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Sweep {axis}" in result.output


def test_the_sweep_help_names_every_axis():
    result = CliRunner().invoke(app, ["sweep", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert all(axis in text for axis in AXES)


@pytest.mark.slow  # a LeNet compiled on the CPU
def test_sweep_arch_trains_each_architecture(tmp_path, monkeypatch):
    monkeypatch.setattr("bioprop_cli.datasets.load_dataset", lambda name, data_dir=None, options=None: make_fake_dataset())
    result = CliRunner().invoke(app, ["sweep", "arch", "--values", "mlp,lenet", "--epochs", "1", "--results-dir",
                                      str(tmp_path), "--set", "data.validation_size=100", "--set", "train.batch_size=50"])
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "default").iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {name: e["status"] for name, e in manifest["runs"].items()} == {"arch-mlp-s0": "completed",
                                                                           "arch-lenet-s0": "completed"}
