"""The `sweep.where` section: per-point overrides (each rule at its own learning rate), their
validation, and the sweep's identity with and without them."""

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bioprop_cli.cli import app
from bioprop_cli.config import load_config, to_dict
from bioprop_cli.runs import read_jsonl
from bioprop_cli.experiment.grid import read_sweep_section, run_sweep, sweep_name

FAST = {"model.width": 8, "model.depth": 1, "data.validation_size": 100, "train.batch_size": 50, "train.epochs": 1,
        "alignment.enabled": False}
FAST_YAML = """\
model: {width: 8, depth: 1}
data: {validation_size: 100}
train: {batch_size: 50, epochs: 1}
alignment: {enabled: false}
"""
BIOTORCH = """\
  where:
    - when: {rule: fa}
      set: {optimizer.lr: 0.001}
    - when: {rule: dfa}
      set: {lr: 0.0001, feedback.scale: 0.5}
"""


def small_base(tmp_path, **extra):
    return load_config(overrides=[("results_dir", str(tmp_path)), *FAST.items(), *extra.items()])


def write_config(tmp_path, section: str, base: str = "") -> str:
    """A config file: FAST's settings, `base`, and the sweep section."""
    path = tmp_path / "exp.yaml"
    path.write_text(base + FAST_YAML + "sweep:\n" + section)
    return str(path)


def stderr_of(result):
    return result.stderr if hasattr(result, "stderr") else result.output


def run_config(tmp_path, path, *args):
    return CliRunner().invoke(app, ["sweep", "--config", path, "--results-dir", str(tmp_path / "out"), *args])


def test_overrides_apply_per_point_and_names_stay_made_of_grid_values(tmp_path, monkeypatch, fake_dataset):
    """The file's grid (bp, fa) is replaced on the command line (fa, dfa): `where` refers to the final grid."""
    monkeypatch.setattr("bioprop_cli.datasets.load_dataset", lambda name, data_dir, options=None: fake_dataset)
    path = write_config(tmp_path, "  grid: {rule: [bp, fa]}\n" + BIOTORCH, base="optimizer: {lr: 0.1}\n")
    result = run_config(tmp_path, path, "--grid", "rule=fa,dfa")
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "out" / "default").iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sorted(manifest["runs"]) == ["rule-dfa-s0", "rule-fa-s0"]
    assert manifest["where"] == [{"when": {"rule": "fa"}, "set": {"optimizer.lr": 0.001}},
                                 {"when": {"rule": "dfa"}, "set": {"optimizer.lr": 0.0001, "feedback.scale": 0.5}}]
    configs = {}
    for name, entry in manifest["runs"].items():
        assert entry["status"] == "completed" and entry["values"] == {"rule": name[5:-3]}  # grid values only
        assert entry["run_dir"] == f"runs/{name}"
        configs[entry["values"]["rule"]] = load_config(folder / entry["run_dir"] / "config.yaml")
    assert {r: (c.optimizer.lr, c.feedback.scale) for r, c in configs.items()} == {
        "fa": (0.001, 1.0), "dfa": (0.0001, 0.5)}
    base = load_config(folder / "config.yaml")  # the base config: no override in it
    assert (base.optimizer.lr, base.feedback.scale) == (0.1, 1.0)
    assert folder.name.startswith("sweep-rule-")


def test_points_differing_only_by_a_where_lr_train_together(tmp_path, fake_dataset):
    base = small_base(tmp_path, **{"optimizer.schedule.name": "constant", "optimizer.lr": 0.01})
    grid = {"model.init.scale": [1.0, 0.5]}
    _, where, _ = read_sweep_section({"grid": {"init-scale": [1.0, 0.5]},
                                      "where": [{"when": {"init-scale": 0.5}, "set": {"lr": 0.002}}]})
    folder, manifest = run_sweep(base, grid, [0, 1], lambda cfg: fake_dataset, where)
    assert len(manifest["runs"]) == 4
    for entry in manifest["runs"].values():
        run = folder / entry["run_dir"]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["runs_trained_together"] == 4
        assert set(summary["batched_keys"]) == {"model.init.scale", "optimizer.lr"}
        lr = {1.0: 0.01, 0.5: 0.002}[entry["values"]["model.init.scale"]]
        assert load_config(run / "config.yaml").optimizer.lr == lr
        assert read_jsonl(run / "metrics.jsonl")[0]["lr"] == pytest.approx(lr)


def _name_before_where(base, grid, seeds) -> str:
    """sweep_name as it was before `where` existed (commit 6b09e95): the folders it named must still resume."""
    content = {k: v for k, v in to_dict(base).items() if k not in ("results_dir", "experiment")}
    identity = json.dumps({"base": content, "grid": grid, "seeds": seeds}, sort_keys=True, default=str)
    return f"sweep-depth-rule-{hashlib.sha1(identity.encode()).hexdigest()[:8]}"


def test_the_name_changes_with_where_only(tmp_path, fake_dataset, monkeypatch):
    base, grid = small_base(tmp_path), {"model.depth": [1], "rule": ["bp", "fa"]}
    fa_slow = [{"when": {"rule": "fa"}, "set": {"optimizer.lr": 0.0001}}]
    fa_slower = [{"when": {"rule": "fa"}, "set": {"optimizer.lr": 0.00001}}]
    assert sweep_name(base, grid, seeds=[0]) == sweep_name(base, grid, [0], []) == _name_before_where(base, grid, [0])
    names = {sweep_name(base, grid, [0]), sweep_name(base, grid, [0], fa_slow), sweep_name(base, grid, [0], fa_slower)}
    assert len(names) == 3 and all(n.startswith("sweep-depth-rule-") for n in names)
    monkeypatch.setattr("bioprop_cli.train.train_group", lambda *args: pytest.fail("trained"))
    folder, manifest = run_sweep(base, grid, [0], lambda cfg: fake_dataset, interrupted=lambda: True)
    assert folder.name == _name_before_where(base, grid, [0]) and "where" not in manifest
    assert "where" not in json.loads((folder / "manifest.json").read_text())


def entries(*items: str) -> str:
    return "  grid: {rule: [bp, fa]}\n  where:\n" + "".join(f"    - {item}\n" for item in items)


@pytest.mark.parametrize("section, word", [
    ("  grid: {rule: [bp, fa]}\n  where: {when: {rule: fa}, set: {lr: 0.1}}\n", "'sweep.where': expected a list"),
    (entries("[rule, fa]"), "'sweep.where[0]': expected a mapping with exactly the keys when and set"),
    (entries("{when: {rule: fa}}"), "'sweep.where[0]': expected a mapping with exactly the keys when and set"),
    (entries("{when: {rule: fa}, set: {lr: 0.1}, if: 1}"), "'sweep.where[0]': expected a mapping with exactly"),
    (entries("{when: {}, set: {lr: 0.1}}"), "'sweep.where[0].when': expected a non-empty mapping"),
    (entries("{when: {rule: fa}, set: 0.1}"), "'sweep.where[0].set': expected a non-empty mapping"),
    (entries("{when: {rule: fa}, set: {lr: 0.1}}", "{when: {depth: 1}, set: {lr: 0.1}}"),
     "'sweep.where[1].when.model.depth': not a grid axis; `when` names grid axes (rule)"),
    (entries("{when: {seed: 0}, set: {lr: 0.1}}"), "'sweep.where[0].when': seed"),
    (entries("{when: {rule: fa}, set: {feedback: dfa}}"), "'sweep.where[0].set.rule': rule is a grid axis"),
    (entries("{when: {rule: fa}, set: {seed: 3}}"), "'sweep.where[0].set.seed': seed, results_dir"),
    (entries("{when: {rule: fa}, set: {results_dir: /tmp}}"), "'sweep.where[0].set.results_dir'"),
    (entries("{when: {rule: fa}, set: {data: {data_dir: /tmp}}}"), "'sweep.where[0].set.data.data_dir'"),
    (entries("{when: {rule: fa}, set: {lr: 0.1, optimizer.lr: 0.2}}"), "optimizer.lr is named twice"),
    (entries("{when: {rule: faa}, set: {lr: 0.1}}"), "'sweep.where[0].when.rule': "),  # no config takes that value
    (entries("{when: {rule: fa}, set: {lr: 0.1}}", "{when: {rule: fa}, set: {optimizer: {lr: 0.2}}}"),
     "'sweep.where[1].set.optimizer.lr': sweep.where[0] also sets optimizer.lr on point rule-fa"),
    (entries("{when: {rule: fa}, set: {lr: -0.1}}"), "optimizer.lr"),  # the point's config must validate
])
def test_bad_where_entries_exit_2_with_one_line_and_write_nothing(tmp_path, section, word):
    result = run_config(tmp_path, write_config(tmp_path, section))
    message = stderr_of(result).strip()
    assert result.exit_code == 2, result.output
    assert word in message and "\n" not in message and "Traceback" not in message, message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, word", [
    (["--lr", "0.1"], "--lr: sweep.where[0] sets optimizer.lr"),
    (["--set", "optimizer.lr=0.1"], "--set optimizer.lr=0.1: sweep.where[0] sets optimizer.lr"),
])
def test_where_against_the_command_line(tmp_path, args, word):
    result = run_config(tmp_path, write_config(tmp_path, entries("{when: {rule: fa}, set: {lr: 0.001}}")), *args)
    message = stderr_of(result).strip()
    assert result.exit_code == 2 and word in message and "\n" not in message, message
    assert not (tmp_path / "out").exists()


PRESET = """\
rule: fa
model: {width: 8, depth: 1}
data: {validation_size: 100}
train: {batch_size: 50, epochs: 1}
alignment: {enabled: false}
sweep:
  grid: {rule: [bp, fa]}
  where:
    - when: {rule: fa}
      set: {lr: 0.0005}
paper:
  title: a preset comparing rules each at its own learning rate
  published:
    - {quantity: test_error, where: {rule: fa}, value: 50.0}
"""


def test_an_entry_for_a_point_left_out_is_announced_and_not_applied(tmp_path, monkeypatch, fake_dataset):
    """A ready config sets fa's and dfa's rates; `--grid rule=bp,fa` runs two of its rules."""
    monkeypatch.setattr("bioprop_cli.datasets.load_dataset", lambda name, data_dir, options=None: fake_dataset)
    path = write_config(tmp_path, "  grid: {rule: [bp, fa, dfa]}\n" + BIOTORCH, base="optimizer: {lr: 0.1}\n")
    result = run_config(tmp_path, path, "--grid", "rule=bp,fa")
    assert result.exit_code == 0, result.output
    assert "sweep.where[1] ({'rule': 'dfa'}) matches no point of this grid: not applied" in result.output
    assert "sweep.where[0]" not in result.output
    (folder,) = (tmp_path / "out" / "default").iterdir()
    lrs = {name: load_config(folder / "runs" / name / "config.yaml").optimizer.lr for name in ("rule-bp-s0", "rule-fa-s0")}
    assert lrs == {"rule-bp-s0": 0.1, "rule-fa-s0": 0.001}


def test_a_reproduce_preset_trains_with_its_overrides(tmp_path, fake_dataset):
    from bioprop_cli.errors import UserError
    from bioprop_cli.studies import reproduce as study

    (tmp_path / "tiny.yaml").write_text(PRESET)
    preset = study.load_preset("tiny", tmp_path)
    assert preset.where == [{"when": {"rule": "fa"}, "set": {"optimizer.lr": 0.0005}}]
    result = study.run(preset, False, None, lambda cfg: fake_dataset, [("results_dir", str(tmp_path / "out"))])
    folder = Path(result["sweep_folder"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["where"] == preset.where
    lrs = {e["values"]["rule"]: load_config(folder / e["run_dir"] / "config.yaml").optimizer.lr for e in manifest["runs"].values()}
    assert lrs == {"bp": 0.001, "fa": 0.0005}
    (tmp_path / "tiny.yaml").write_text(PRESET.replace("when: {rule: fa}", "when: {rule: kp}"))
    with pytest.raises(UserError, match=r"sweep\.where\[0\]\.when.*matches no point"):
        study.load_preset("tiny", tmp_path)  # checked when the preset is read
