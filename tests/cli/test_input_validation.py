"""Issue 27's adversarial inputs: paper presets, study parameters, flags a network does not read, --config given
twice, damaged run files for `compare` and `--run`, compare's --help, one colour per rule, and the warning where a
breaking depth is read from runs still learning. Each is one line naming the file or flag and the key, exit code 2,
nothing written; most are refused before any data is loaded."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from bioprop_cli.cli import app
from bioprop_cli.errors import UserError
from bioprop_cli.studies import reproduce as study
from helpers import assert_user_error, compare_app, write_depth_grid, write_run

PRESET = study.PAPERS / "lillicrap-2016.yaml"


def write_preset(folder, damage) -> None:
    tree = yaml.safe_load(PRESET.read_text())
    damage(tree["paper"])
    (folder / "damaged.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))


def _set(section: str, key: str, value):
    def damage(paper):
        node = paper["published"][0] if section == "published" else paper["quick"] if section == "quick" else paper
        node[key] = value
    return damage


# --- presets: the config's typed loader, one line naming the file and the key -----------------------


@pytest.mark.parametrize("damage, fragments", [
    (_set("published", "value", "abc"), ["paper.published[0].value", "a number or null", "'abc'"]),
    (_set("paper", "tolerance", "abc"), ["paper.tolerance", "a number or null"]),
    (_set("published", "spread", "abc"), ["paper.published[0].spread", "a number or null"]),
    (_set("quick", "seeds", "abc"), ["paper.quick.seeds", "an integer"]),
    (_set("quick", "seeds", 0), ["paper.quick.seeds", ">= 1"]),
    (_set("quick", "progress", "fast"), ["paper.quick.progress", "a number"]),
    (_set("quick", "progress", 2.0), ["paper.quick.progress", "in [0, 1]"]),
    (_set("published", "tolerance", -0.1), ["paper.published[0].tolerance", ">= 0"]),
    (_set("published", "spread", float("nan")), ["paper.published[0].spread", "got nan"]),
    (_set("published", "layer", 1), ["paper.published[0].layer", "not per layer"]),
    (_set("published", "quantity", "accuracy"), ["paper.published[0].quantity", "test_error"]),
    (_set("published", "checked", 3), ["paper.published[0].checked", "true or false or a string"]),
    (_set("published", "colour", "red"), ["paper.published[0].colour", "allowed here"]),
    (_set("quick", "set", ["train.epochs"]), ["paper.quick.set", "a mapping"]),
    (lambda paper: paper.__setitem__("published", []), ["paper.published", "a list"]),
    (lambda paper: paper["published"].__setitem__(0, 2.1), ["paper.published[0]", "a mapping"]),
])
def test_a_damaged_preset_is_one_line_naming_the_file_and_key(tmp_path, damage, fragments):
    write_preset(tmp_path, damage)
    with pytest.raises(UserError) as error:
        study.load_preset("damaged", tmp_path)
    message = str(error.value)
    assert message.startswith("damaged.yaml: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_a_preset_takes_text_fields_beside_its_numbers(tmp_path):
    def annotate(paper):
        paper.update(checked="against the journal's PDF", reason="the paper's Fig. 2a")
        paper["published"][0].update(checked="read from Fig. 2a", source="Fig. 2a", reason="the mean of 20 runs")
    write_preset(tmp_path, annotate)
    preset = study.load_preset("damaged", tmp_path)
    fa = preset.published[0]
    assert (fa.value, fa.checked, fa.reason) == (2.1, "read from Fig. 2a", "the mean of 20 runs")
    assert preset.paper.reason == "the paper's Fig. 2a" and preset.paper.quick.seeds == 1


def test_a_quick_setting_that_is_no_config_key_names_the_preset(tmp_path):
    write_preset(tmp_path, lambda paper: paper["quick"]["set"].update({"train.epochz": 1}))
    preset = study.load_preset("damaged", tmp_path)
    study.base_config(preset, quick=False)  # the full run does not read the quick block
    with pytest.raises(UserError, match=r"^damaged\.yaml \(its quick settings\): unknown config key 'train\.epochz'"):
        study.base_config(preset, quick=True)


def test_reproduce_names_a_damaged_run_summary(tmp_path):
    """reproduce reads its sweep's run folders like compare does: a damaged summary.json is one line naming
    the file and the key (it was a TypeError after training)."""
    preset = study.load_preset("lillicrap-2016")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "summary.json").write_text(json.dumps({"status": "completed", "test_accuracy": "abc"}))
    runs = {"rule-fa-s0": {"values": {"rule": "fa"}, "seed": 0, "run_dir": "r", "status": "completed"}}
    with pytest.raises(UserError, match=r"r/summary\.json: 'test_accuracy' must be an accuracy in \[0, 1\] or null, got 'abc'"):
        study.compare(preset, tmp_path, {"runs": runs}, quick=False)
    (tmp_path / "r" / "summary.json").write_text(json.dumps({"status": "completed", "wall_time_s": [1]}))
    with pytest.raises(UserError, match=r"'wall_time_s' must be a number or null"):
        study.training_wall_time(tmp_path, {"runs": runs})


# --- commands: study parameters, flags used or refused, --config once -------------------------------


CODED = ["--set", "ep.estimator=coupled", "--set", "model.loss=mse"]


@pytest.mark.parametrize("args, fragments", [
    (["sweep", "pc", "--gammas", "1e308"], ["--gammas", "float32's normal range"]),
    (["sweep", "pc", "--gammas", "0.1,1e-320"], ["--gammas", "float32's normal range"]),
    (["sweep", "beta", "--values", "1e308"], ["--values", "float32's normal range"]),
    (["sweep", "beta", "--values", "1e-320,0.1"], ["--values", "float32's normal range"]),
    (["sweep", "beta", "--values", "0.5,2", *CODED], ["--values 2", "ep.beta", "coupled"]),
    (["sweep", "beta", "--train", "--values", "0.5,2", *CODED], ["--values 2", "ep.beta", "coupled"]),
    (["sweep", "condition", "--knobs", "beta", "--beta", "0.1,1e-320"], ["--beta", "normal float32"]),
    (["jtranspose", "--betas", "1e39"], ["--betas", "float32's normal range"]),
    (["sweep", "pc", "--set", "rule=bp"], ["--set rule=bp", "sweep pc studies rule pc only"]),
    (["sweep", "beta", "--set", "rule=bp"], ["--set rule=bp", "rule ep only"]),
    (["sweep", "condition", "--set", "rule=fa"], ["--set rule=fa", "rule ep only"]),
    (["jtranspose", "--set", "rule=bp"], ["--set rule=bp", "rule ep only"]),
    (["train", "--set", "model.arch=lenet", "--depth", "3"], ["--depth", "model.arch lenet has no model.depth"]),
    (["train", "--set", "model.arch=lenet", "--width", "30"], ["--width", "model.arch lenet has no model.width"]),
    (["train", "--set", "model.arch=lenet", "--set", "model.width=30"], ["--set model.width=30", "model.arch lenet"]),
    (["train", "--set", "model.cnn.pool_window=3"], ["--set model.cnn.pool_window=3", "model.arch cnn only"]),
    (["sweep", "depth", "--values", "1,2", "--set", "model.arch=lenet"], ["sweep axis model.depth", "model.arch lenet"]),
    (["sweep", "beta", "--train", "--depth", "2", "--set", "model.arch=lenet"], ["--depth", "model.arch lenet"]),
    (["sweep", "beta", "--train", "--estimators", "symmetric"], ["--estimators", "--train trains one model per beta"]),
    (["sweep", "beta", "--train", "--x64"], ["--x64", "a setting of the gradient sweep"]),
    (["sweep", "beta", "--epochs", "3"], ["--epochs", "the training epochs of --train"]),
    (["sweep", "condition", "--no-train", "--train-epochs", "2"], ["--train-epochs", "--no-train trains nothing"]),
    (["sweep", "--grid", "optimizer.lr=0.1", "depth"], ["--grid", "give it after the axis (bioprop sweep depth"]),
    (["sweep", "depth", "--gpus-per-task", "1"], ["--gpus-per-task", "--executor ray"]),
    (["bench", "--synthetic", "--data-dir", "somewhere"], ["--data-dir", "--synthetic reads no data"]),
    (["train", "--config", "configs/fa.yaml", "--config", "configs/bp.yaml"],
     ["'--config'", "given 2 times", "configs/fa.yaml, configs/bp.yaml"]),
    (["sweep", "lr", "-c", "configs/fa.yaml", "-c", "configs/bp.yaml"], ["'--config'", "given 2 times"]),
])
def test_bad_study_parameters_and_unused_flags_are_refused_before_anything_is_written(tmp_path, args, fragments):
    results_dir = ["--results-dir", str(tmp_path / "r")] if args[0] not in ("jtranspose", "bench") else []
    result = CliRunner().invoke(app, [*args, *results_dir], prog_name="bioprop")
    assert_user_error(result, *fragments)
    assert not (tmp_path / "r").exists()


def test_one_config_file_is_still_read(tmp_path):
    result = CliRunner().invoke(app, ["train", "--config", "configs/fa.yaml", "--epochs", "0"], prog_name="bioprop")
    assert_user_error(result, "train.epochs")  # got past --config to the file's config


def test_compare_help_shows_the_baselines_default():
    result = CliRunner().invoke(app, ["compare", "--help"], prog_name="bioprop", env={"COLUMNS": "300"})
    assert result.exit_code == 0 and "breaking depths and gaps [default: bp]" in result.output


# --- damaged run files: compare and --run name the file, the line and the key ------------------------


def _empty_summary(run):
    (run / "summary.json").write_text("")


def _truncated_metrics_line(run):
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 3, "test_acc\n')


def _blank_line_then_a_string_accuracy(run):
    with (run / "metrics.jsonl").open("a") as f:
        f.write('\n{"epoch": 3, "test_accuracy": "abc"}\n')


def _config_not_yaml(run):
    (run / "config.yaml").write_text("rule: fa\nmodel:\n  width: [32,\n")


def _list_for_a_depth(run):
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["depth"] = [1, 2]
    (run / "config.yaml").write_text(yaml.safe_dump(config))


def _percent_accuracy(run):
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "test_accuracy": 97.5}))


def _huge_feedback_angle(run):
    lines = (run / "alignment.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    lines[1] = json.dumps({**record, "feedback_angle": 1e308})
    (run / "alignment.jsonl").write_text("\n".join(lines) + "\n")


def _nan_depth(run):
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("depth: 2", "depth: .nan"))


@pytest.mark.parametrize("damage, fragments", [
    (_percent_accuracy, ["summary.json", "'test_accuracy' must be an accuracy in [0, 1]", "97.5"]),
    (_huge_feedback_angle, ["alignment.jsonl: line 2", "'feedback_angle' must be an angle in [0, 180]"]),
    (_nan_depth, ["config.yaml", "'model.depth': expected an integer", "nan"]),
    (_empty_summary, ["summary.json: empty"]),
    (_truncated_metrics_line, ["metrics.jsonl: line 3: not JSON"]),
    (_blank_line_then_a_string_accuracy, ["metrics.jsonl: line 4", "'test_accuracy' must be an accuracy in [0, 1]", "'abc'"]),
    (_config_not_yaml, ["config.yaml: line", "not valid YAML"]),
    (_list_for_a_depth, ["config.yaml", "'model.depth': expected an integer", "[1, 2]"]),
])
def test_compare_names_the_damaged_file_line_and_key(tmp_path, damage, fragments):
    run = write_run(tmp_path / "runs", "bp", accs=(0.9, 0.95))
    damage(run)
    result = CliRunner().invoke(compare_app(), ["compare", str(tmp_path / "runs")])
    assert_user_error(result, *fragments)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["bp"]  # no report folder


@pytest.mark.parametrize("command", ["jtranspose", "conditions"])
def test_run_flag_names_the_damaged_config_file(tmp_path, command):
    run = write_run(tmp_path, "bp", accs=(0.9, 0.95))
    _list_for_a_depth(run)
    result = CliRunner().invoke(app, [command, "--run", str(run)], prog_name="bioprop")
    assert_user_error(result, str(run / "config.yaml"), "config key 'model.depth'", "[1, 2]")


# --- figures and findings ---------------------------------------------------------------------------


def test_every_figure_takes_a_rules_colour_from_rule_colours(tmp_path, monkeypatch):
    """The single-panel curves and the depth figure (which coloured lines by their position) and the
    multi-panel curves: each line of rule r in rule_colours(...)[r], whichever rules share the figure."""
    from matplotlib.colors import to_rgba

    from bioprop_cli.report import plots
    from bioprop_cli.report.axes import curve_panels
    from bioprop_cli.report.comparison import aggregate

    drawn = []
    finish = plots._finish
    monkeypatch.setattr(plots, "_finish", lambda fig, ax, *a, **k: (drawn.append(ax), finish(fig, ax, *a, **k))[1])
    expected = plots.rule_colours(["bp", "fa", "kp"])
    assert plots.rule_colours(["fa"])["fa"] == expected["fa"] and plots.rule_colours(["zz", "fa"])["fa"] == expected["fa"]

    write_run(tmp_path / "one", "fa-d1", rule="fa", depth=1)  # fa alone: position 0 used to be blue, bp's colour
    write_run(tmp_path / "one", "fa-d2", rule="fa", depth=2)
    c = aggregate([tmp_path / "one"])
    plots.plot_accuracy_vs_epoch(curve_panels(c.groups, c.axes)[0], tmp_path / "epochs.png")
    write_depth_grid(tmp_path / "grid")
    plots.plot_accuracy_vs_depth(aggregate([tmp_path / "grid"]), tmp_path / "depth.png")
    epochs, depth = drawn
    colours = [(line.get_label(), to_rgba(line.get_color())) for line in epochs.get_lines()]
    colours += [(bars.get_label(), to_rgba(bars.lines[0].get_color())) for bars in depth.containers]
    assert len(colours) == 4  # fa d1 and fa d2; bp and fa
    for label, colour in colours:
        assert colour == to_rgba(expected[label.split()[0]]), label
    styles = {line.get_label(): line.get_linestyle() for line in epochs.get_lines()}
    assert len(set(styles.values())) == 2  # two lines of one rule: one colour, two line styles


def test_a_breaking_depth_from_runs_still_rising_is_flagged(tmp_path):
    from bioprop_cli.report.aggregate import STILL_RISING
    from bioprop_cli.report.comparison import aggregate, group_table

    write_depth_grid(tmp_path)  # every run rose from 0.90 in its last epoch
    c = aggregate([tmp_path])
    [line] = [f for f in c.findings if "breaks at depth 3" in f]
    assert "Warning: bp d3 and fa d3 still rose more than 0.20 points in the last epoch" in line
    assert any(f.startswith("Warning: still rising at the last epoch") for f in c.findings)
    rows = {row["group"]: row for row in group_table(c)}
    assert rows["fa d3"]["still_rising"] is True and rows["fa d3"]["last_epoch_rise_of"] == "val_accuracy"
    assert rows["fa d3"]["last_epoch_rise"] == pytest.approx(0.95 - 0.90)

    flat = tmp_path / "flat"
    for rule, acc in (("bp", 0.98), ("fa", 0.95)):
        for d in (1, 2):
            rise = STILL_RISING / 2 if rule == "bp" else 0.0  # up, but by less than the threshold
            write_run(flat, f"{rule}-d{d}", rule=rule, depth=d, accs=(0.5, acc - rise, acc))
    c = aggregate([flat])
    assert not any("Warning" in f for f in c.findings), c.findings
    assert "fa breaks at depth 1" in " ".join(c.findings)
