"""Tests for `bioprop compare` (bioprop_cli/report/, bioprop_cli/cli/compare.py) on small synthetic run
folders written with the exact results layout: no training, no data."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bioprop_cli.report.axes import axis_slices, curve_panels, tuned_best
from bioprop_cli.report.aggregate import (
    breaking_depths, differing_keys, feedback_angle_by_epoch, find_folders, load_run, update_angle_by_epoch,
)
from bioprop_cli.report.comparison import aggregate
from bioprop_cli.report.plots import _collapse_floor, plot_accuracy_vs_axis
from bioprop_cli.report.render import all_tables
from helpers import compare_app, write_depth_grid, write_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"



def write_beta_sweep(root: Path) -> Path:
    path = root / "beta-sweep" / "20250101-000000-beta-float64"
    path.mkdir(parents=True)
    rows = []
    for e, power in (("one-sided", 1), ("symmetric", 2)):
        for b in (0.001, 0.01, 0.1):
            rows.append({"estimator": e, "beta": b, "bias": b**power, "std": 0.01 / b, "bias_seed_mean": b**power,
                         "bias_seed_std": 0.0, "std_seed_mean": 0.01 / b, "std_seed_std": 0.0, "angle_mean": 1.0})
    (path / "beta_sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    slopes = {"one-sided": {"slope": 1.02, "betas": [0.001, 0.01, 0.1], "sweet_spot": 0.0001},
              "symmetric": {"slope": 1.98, "betas": [0.001, 0.01, 0.1], "sweet_spot": 0.0001}}
    (path / "summary.json").write_text(json.dumps({"precision": "float64", "slopes": slopes}))
    (path / "config.yaml").write_text(yaml.safe_dump({"rule": "ep"}))
    return path


def stderr_of(result) -> str:
    try:
        text = result.stderr
    except (ValueError, AttributeError):
        text = None
    return text if text else result.output


def assert_user_error(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    text = stderr_of(result).strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    assert text.startswith("error:") and fragment in text, text


# --- aggregation ------------------------------------------------------------------------------


def test_finds_runs_recursively_and_groups_by_the_differing_keys(tmp_path):
    write_run(tmp_path / "a" / "deep", "bp-s0", rule="bp", seed=0, final=0.96, best_val=0.95, wall_time=10.0, examples_per_s=100.0)
    write_run(tmp_path / "a", "bp-s1", rule="bp", seed=1, final=0.97, best_val=0.97, wall_time=20.0, examples_per_s=200.0,
              experiment="other")
    write_run(tmp_path / "b", "bp-s2", rule="bp", seed=2, final=0.98, best_val=0.96, wall_time=30.0, examples_per_s=300.0,
              status="diverged")
    write_run(tmp_path / "b", "fa-s0", rule="fa", seed=0, final=0.93)
    write_run(tmp_path / "b", "fa-lr", rule="fa", seed=0, final=0.91, lr=0.01)
    (tmp_path / "b" / "not-a-run").mkdir()
    (tmp_path / "b" / "not-a-run" / "summary.json").write_text("{}")  # no config.yaml / metrics.jsonl

    run_dirs, sweeps = find_folders([tmp_path / "a", tmp_path / "b", tmp_path / "a" / "deep"])
    assert len(run_dirs) == 5 and sweeps == []  # each once, though two paths cover bp-s0
    runs = [load_run(p) for p in run_dirs]
    # seed, experiment, results_dir, data.data_dir differ but are not grouping keys; depth is always one
    assert differing_keys(runs) == ["rule", "model.depth", "optimizer.lr"]

    c = aggregate([tmp_path])
    assert [g.label for g in c.groups] == ["bp d2 optimizer.lr=0.001", "fa d2 optimizer.lr=0.001", "fa d2 optimizer.lr=0.01"]
    bp = c.groups[0].stats
    assert bp["n_runs"] == 3 and sorted(bp["seeds"]) == [0, 1, 2]
    assert bp["test_accuracy_mean"] == pytest.approx(0.97)
    assert bp["test_accuracy_std"] == pytest.approx(math.sqrt((0.01**2 + 0 + 0.01**2) / 2))  # sample std
    assert bp["best_val_accuracy_mean"] == pytest.approx(0.96)
    assert bp["best_val_accuracy_std"] == pytest.approx(0.01)
    assert bp["status"] == {"completed": 2, "diverged": 1, "interrupted": 0}
    assert bp["wall_time_s_mean"] == pytest.approx(20.0)
    assert bp["examples_per_s_mean"] == pytest.approx(200.0)
    one = c.groups[1].stats
    assert one["n_runs"] == 1 and one["test_accuracy_mean"] == pytest.approx(0.93) and one["test_accuracy_std"] is None


def test_test_accuracy_at_the_last_the_best_validation_and_the_best_test_epoch(tmp_path):
    # seed 0: validation peaks at epoch 2 (test 0.95 there), test at epoch 3; seed 1: validation's first
    # best (epoch 1, tied with 3) is the epoch chosen, as training's strict > chooses it
    write_run(tmp_path, "s0", seed=0, accs=(0.90, 0.95, 0.97, 0.96), vals=(0.91, 0.96, 0.94, 0.95))
    write_run(tmp_path, "s1", seed=1, accs=(0.93, 0.92, 0.99, 0.94), vals=(0.97, 0.90, 0.97, 0.96))
    c = aggregate([tmp_path])
    s = c.groups[0].stats
    assert (s["test_accuracy_mean"], s["test_at_best_val_mean"], s["best_test_accuracy_mean"]) == \
        pytest.approx(((0.96 + 0.94) / 2, (0.95 + 0.93) / 2, (0.97 + 0.99) / 2))
    assert s["test_at_best_val_std"] == pytest.approx(math.sqrt(2 * 0.01**2))
    table = next(t for t in all_tables(c) if t.title.startswith("Test accuracy by the epoch"))
    assert table.rows == [[c.groups[0].label, "95.00 ± 1.41%", "94.00 ± 1.41%", "98.00 ± 1.41%"]]


def test_target_curves_and_angles(tmp_path):
    write_run(tmp_path, "s0", seed=0, accs=(0.90, 0.95, 0.971), walls=(10.0, 20.0, 30.0),
              update_angles={0: 60.0, 1: 40.0, 2: 0.0}, feedback={0: None, 1: 30.0, 2: 20.0},
              angle_curve=[90.0, 70.0, 60.0, 50.0], in_epoch=True)
    write_run(tmp_path, "s1", seed=1, accs=(0.96, 0.975, 0.98), walls=(12.0, 24.0, 36.0),
              update_angles={0: 50.0, 1: 30.0, 2: 0.0}, feedback={0: None, 1: 34.0, 2: 24.0},
              angle_curve=[88.0, 72.0, 62.0, 54.0])
    write_run(tmp_path, "s2", seed=2, accs=(0.90, 0.91, 0.92), walls=(11.0, 22.0, 33.0),
              update_angles={0: 70.0, 1: 50.0, 2: 0.0}, feedback={0: None, 1: 32.0, 2: 22.0},
              angle_curve=[86.0, 74.0, 64.0, 58.0])
    c = aggregate([tmp_path], target=0.97)
    assert len(c.groups) == 1
    g = c.groups[0]
    s = g.stats
    assert s["target_reached"] == 2
    assert s["epochs_to_target_mean"] == pytest.approx(2.5)  # epochs 3 and 2
    assert s["seconds_to_target_mean"] == pytest.approx(27.0)  # 30 s and 24 s
    assert s["final_update_angle"] == {0: pytest.approx(60.0), 1: pytest.approx(40.0), 2: pytest.approx(0.0)}

    acc = g.curves["test_accuracy"]
    assert acc["x"] == [1, 2, 3]
    assert acc["mean"][0] == pytest.approx((0.90 + 0.96 + 0.90) / 3)
    assert acc["std"][2] == pytest.approx(math.sqrt(sum((a - 0.957) ** 2 for a in (0.971, 0.98, 0.92)) / 2))

    run0 = load_run(tmp_path / "s0")
    assert update_angle_by_epoch(run0) == {0: 90.0, 1: 70.0, 2: 60.0, 3: 50.0}  # epoch 0 from layer "all"
    # epoch-end measurements only (the in-epoch ones carry 179), layer 0's null skipped: mean of (30 + e, 20 + e)
    assert feedback_angle_by_epoch(run0) == {e: pytest.approx(25.0 + e) for e in range(4)}
    ang = g.curves["update_angle"]
    assert ang["x"] == [0, 1, 2, 3] and ang["mean"][0] == pytest.approx(88.0) and ang["std"][0] == pytest.approx(2.0)
    fb = g.curves["feedback_angle"]
    assert fb["x"] == [0, 1, 2, 3] and fb["mean"] == [pytest.approx(27.0 + e) for e in range(4)]
    t = g.curves["accuracy_vs_time"]
    assert t["wall_time_s"] == [pytest.approx(11.0), pytest.approx(22.0), pytest.approx(33.0)]
    assert t["mean"] == acc["mean"]


def test_breaking_depth_and_findings(tmp_path):
    write_depth_grid(tmp_path)
    c = aggregate([tmp_path], margin=0.01)
    assert c.breaking == {(): {"fa": 3}}  # 0.98 - 0.97 at depth 2 is exactly the margin, not more
    assert breaking_depths(c.groups, margin=0.04) == {(): {"fa": 4}}
    assert breaking_depths(c.groups, margin=0.1) == {(): {"fa": None}}
    text = "\n".join(c.findings)
    for d in range(1, 5):
        assert f"Depth {d}: the best rule is bp with 98.00%" in text
    assert "fa breaks at depth 3" in text and "3.00 points below" in text

    # without bp there is no breaking depth
    only_fa = [g for g in c.groups if g.rule == "fa"]
    assert breaking_depths(only_fa) == {(): {"fa": None}}
    # grouping keys other than rule and depth split the comparison into contexts
    write_run(tmp_path, "fa-d1-lr", rule="fa", depth=1, final=0.99, accs=(0.9, 0.99), lr=0.01)
    write_run(tmp_path, "fa-d2-lr", rule="fa", depth=2, final=0.99, accs=(0.9, 0.99), lr=0.01)
    c2 = aggregate([tmp_path])
    assert c2.breaking[(("optimizer.lr", 0.001),)] == {"fa": 3}
    assert any("no bp runs" in line for line in c2.findings)


def write_lr_batch_grid(root: Path) -> None:
    """bp and fa at depth 2, lr in {0.01, 0.1, 1.0}, batch size in {32, 128}, seeds 0 and 1 (+-0.001).
    bp: 0.90 + 0.04 [lr 0.1] + 0.02 [lr 1] + 0.01 [bs 32]; fa: 0.88 + 0.05 [lr 1] - 0.01 [bs 32]."""
    for rule in ("bp", "fa"):
        for lr in (0.01, 0.1, 1.0):
            for bs in (32, 128):
                if rule == "bp":
                    acc = 0.90 + 0.04 * (lr == 0.1) + 0.02 * (lr == 1.0) + 0.01 * (bs == 32)
                else:
                    acc = 0.88 + 0.05 * (lr == 1.0) - 0.01 * (bs == 32)
                for seed, noise in ((0, -0.001), (1, 0.001)):
                    write_run(root, f"{rule}-lr{lr}-bs{bs}-s{seed}", rule=rule, seed=seed, lr=lr, batch_size=bs,
                              accs=(0.5, acc + noise))


def test_hyperparameter_axes_slices_and_tuned_best(tmp_path):
    write_lr_batch_grid(tmp_path)
    c = aggregate([tmp_path])
    assert c.axes == ["optimizer.lr", "train.batch_size"]
    assert len(c.groups) == 12 and all(g.stats["n_runs"] == 2 for g in c.groups)
    lr_slices = axis_slices(c.groups, "optimizer.lr")
    assert [s.context for s in lr_slices] == [(("train.batch_size", 32),), (("train.batch_size", 128),)]
    s32 = lr_slices[0]
    assert s32.values == [0.01, 0.1, 1.0] and list(s32.by_rule) == ["bp", "fa"]
    assert s32.accuracy("bp", 0.1) == pytest.approx(0.95)
    assert s32.best_value("bp") == (0.1, pytest.approx(0.95))
    assert s32.best_value("fa") == (1.0, pytest.approx(0.92))
    best = tuned_best(c.groups, c.axes)
    assert list(best) == [()]  # one depth: no context
    assert best[()]["bp"].keys["optimizer.lr"] == 0.1 and best[()]["bp"].keys["train.batch_size"] == 32
    assert best[()]["fa"].keys["optimizer.lr"] == 1.0 and best[()]["fa"].keys["train.batch_size"] == 128
    text = "\n".join(c.findings)
    assert ("optimizer.lr (train.batch_size=32): best value per rule on validation accuracy (test accuracy there): "
            "bp at 0.1 (95.00%), fa at 1 (92.00%).") in text
    assert "largest value swept" in text  # fa's optimum is at the edge of the lr grid
    assert ("train.batch_size (optimizer.lr=0.1): best value per rule on validation accuracy (test accuracy there): "
            "bp at 32 (95.00%), fa at 128 (88.00%).") in text
    assert "Gap to bp's best (points; negative = better than bp): fa 2.00." in text
    assert "Depth 2" not in text  # one depth with swept axes: the axis findings replace the depth lines


def test_best_values_and_settings_are_chosen_on_validation_not_test_accuracy(tmp_path):
    """fa at lr 1 has the higher test accuracy (0.95 against 0.93) but the lower validation accuracy
    (0.90 against 0.92): every best value, tuned setting and table picks lr 0.1 and reports its test
    accuracy, 0.93. Without a validation accuracy nothing is chosen, and the findings say why."""
    for lr, val, test in ((0.1, 0.92, 0.93), (1.0, 0.90, 0.95)):
        for seed in (0, 1):
            write_run(tmp_path / "runs", f"fa-lr{lr}-s{seed}", rule="fa", seed=seed, lr=lr, accs=(0.5, test), val=val)
    c = aggregate([tmp_path / "runs"])
    (s,) = axis_slices(c.groups, "optimizer.lr")
    assert s.best_value("fa") == (0.1, pytest.approx(0.93))
    assert tuned_best(c.groups, c.axes)[()]["fa"].keys["optimizer.lr"] == 0.1
    assert "fa 93.00% (optimizer.lr=0.1)" in "\n".join(c.findings)
    tuned = [t for t in all_tables(c) if t.title.startswith("Each rule at its best setting")]
    assert [t.rows for t in tuned] == [[["fa", "0.1", "92.00 ± 0.00%", "93.00 ± 0.00%", "-"]]]
    axis_rows = [t.rows for t in all_tables(c) if t.title.startswith("Final test accuracy by rule and optimizer.lr")]
    assert axis_rows == [[["fa", "93.00 ± 0.00%", "95.00 ± 0.00%", "0.1"]]]
    for run in (tmp_path / "runs").iterdir():
        _set_summary(run, val_accuracy=None)
    c = aggregate([tmp_path / "runs"])
    assert s.best_value("fa") is not None and axis_slices(c.groups, "optimizer.lr")[0].best_value("fa") is None
    assert tuned_best(c.groups, c.axes) == {}
    assert "no validation accuracy" in "\n".join(c.findings)


def test_a_setting_where_a_seed_diverged_is_never_the_best(tmp_path):
    """fa at lr 1 reports the highest accuracy (its last finite epoch) but one seed diverged: the best
    value and the tuned best skip it, the finding names it, the table marks it."""
    for lr, acc in ((0.1, 0.90), (1.0, 0.95)):
        for seed in (0, 1):
            write_run(tmp_path / "runs", f"fa-lr{lr}-s{seed}", rule="fa", seed=seed, lr=lr, accs=(0.5, acc),
                      status="diverged" if (lr == 1.0 and seed == 1) else "completed")
    c = aggregate([tmp_path / "runs"])
    (s,) = axis_slices(c.groups, "optimizer.lr")
    assert s.accuracy("fa", 1.0) == pytest.approx(0.95) and s.best_value("fa") == (0.1, pytest.approx(0.90))
    assert tuned_best(c.groups, c.axes)[()]["fa"].keys["optimizer.lr"] == 0.1
    assert "Diverged (left out of the best values): fa at 1 (1 of 2)." in "\n".join(c.findings)
    md_rows = [t.rows for t in all_tables(c) if t.title.startswith("Final test accuracy by rule and optimizer.lr")]
    assert md_rows == [[["fa", "90.00 ± 0.00%", "95.00 ± 0.00% (1/2 diverged)", "0.1"]]]


def test_curve_panels_split_many_groups(tmp_path):
    write_depth_grid(tmp_path / "depth")
    c = aggregate([tmp_path / "depth"])
    assert curve_panels(c.groups, c.axes) == ([("", c.groups)], "")  # 8 groups: one panel
    panels, note = curve_panels(c.groups, c.axes, max_curves=4)
    assert note == "one panel per setting" and [t for t, _ in panels] == [f"depth {d}" for d in range(1, 5)]
    assert all([g.rule for g in gs] == ["bp", "fa"] for _, gs in panels)
    write_lr_batch_grid(tmp_path / "lr")
    c = aggregate([tmp_path / "lr"])
    panels, note = curve_panels(c.groups, c.axes)  # 12 groups over two axes: each rule's best setting
    assert note == "each rule at its best setting" and len(panels) == 1
    assert [(g.rule, g.keys["optimizer.lr"], g.keys["train.batch_size"]) for g in panels[0][1]] == [("bp", 0.1, 32), ("fa", 1.0, 128)]


def test_a_collapsed_setting_sits_on_the_floor_of_the_axis_figure(tmp_path):
    for lr, accs in ((0.01, (0.90, 0.92)), (0.1, (0.95, 0.96)), (1.0, (0.10, 0.97))):
        for rule, acc in zip(("bp", "fa"), accs):
            write_run(tmp_path / "runs", f"{rule}-{lr}", rule=rule, lr=lr, accs=(0.5, acc))
    c = aggregate([tmp_path / "runs"])
    floor, top = _collapse_floor(axis_slices(c.groups, "optimizer.lr"))
    assert 89.0 < floor < 90.0 and 97.0 < top < 98.0  # bp at lr 1 (10%) is below it
    assert _collapse_floor(axis_slices([g for g in c.groups if g.rule == "fa"], "optimizer.lr")) is None
    assert plot_accuracy_vs_axis(c, "optimizer.lr", tmp_path / "lr.png").read_bytes()[:8] == PNG_SIGNATURE


def test_baseline_other_than_bp(tmp_path):
    """--baseline fa: breaking depths and gaps against fa (bp is 0.5 to 8 points above fa, never below)."""
    write_depth_grid(tmp_path / "runs")
    c = aggregate([tmp_path / "runs"], baseline="fa")
    assert c.breaking == {(): {"bp": None}}
    assert "bp does not break: within 1.00 points of fa" in "\n".join(c.findings)
    result = CliRunner().invoke(compare_app(), ["compare", str(tmp_path / "runs"), "--baseline", "fa", "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert "points below fa" in (tmp_path / "rep" / "report.md").read_text()
    result = CliRunner().invoke(compare_app(), ["compare", str(tmp_path / "runs"), "--baseline", "kp", "--out", str(tmp_path / "rep2")])
    assert_user_error(result, "--baseline: no 'kp' runs")
    assert not (tmp_path / "rep2").exists()


def test_cli_report_for_a_hyperparameter_sweep(tmp_path):
    write_lr_batch_grid(tmp_path / "runs")
    result = CliRunner(env={"COLUMNS": "200"}).invoke(compare_app(), ["compare", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "rep"
    for name in ("accuracy_vs_optimizer_lr.png", "accuracy_vs_train_batch_size.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    md = (out / "report.md").read_text()
    assert "### Final test accuracy by rule and optimizer.lr (train.batch_size=32)" in md
    assert "| fa | 1 | 128 | 93.00 ± 0.14% | 93.00 ± 0.14% | 2.00 |" in md  # tuned table (val. = test in this grid) (sample std of 92.9, 93.1): fa's best setting, 2 points below bp's best
    assert "breaking depth" not in md  # one depth: no depth table
    assert not (out / "accuracy_vs_depth.png").exists()


def test_beta_sweep_is_recognised(tmp_path):
    write_beta_sweep(tmp_path)
    c = aggregate([tmp_path])
    assert c.groups == [] and len(c.sweeps) == 1
    text = "\n".join(c.findings)
    assert "one-sided: slope 1.02" in text and "symmetric: slope 1.98" in text


# --- the command ------------------------------------------------------------------------------


def test_cli_writes_the_report_and_never_overwrites(tmp_path):
    root = tmp_path / "runs"
    write_depth_grid(root)
    write_run(root, "fa-d3-s1", rule="fa", depth=3, seed=1, final=0.95, accs=(0.9, 0.95),
              feedback={0: None, 1: 40.0, 2: 41.0, 3: 42.0})
    runner = CliRunner()
    result = runner.invoke(compare_app(), ["compare", str(root), "--target", "0.97", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert "fa breaks at depth 3" in result.output
    out = root / "report"
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "fa breaks at depth 3" in md and "| bp d1 |" in md and "![" in md
    assert "data:image/png;base64," in page and 'src="http' not in page and "<link" not in page
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["accuracy_vs_depth.png", "accuracy_vs_epoch.png", "accuracy_vs_time.png",
                    "feedback_angle_vs_epoch.png", "update_angle_vs_epoch.png"]
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == PNG_SIGNATURE
        assert f"({p.name})" in md
    rows = list(csv.DictReader((out / "groups.csv").open()))
    assert len(rows) == 8 and rows[0]["group"] == "bp d1"
    fa3 = next(r for r in rows if r["group"] == "fa d3")
    assert fa3["n_runs"] == "2" and float(fa3["test_accuracy_mean"]) == pytest.approx(0.95)

    # a second report goes to report-1, with json, and says so
    result = runner.invoke(compare_app(), ["compare", str(root), "--format", "JSON"])
    assert result.exit_code == 0, result.output
    assert "report-1" in result.output and "already holds a report" in result.output
    assert (root / "report" / "report.md").read_text() == md
    groups = json.loads((root / "report-1" / "groups.json").read_text())
    assert [g["group"] for g in groups][:2] == ["bp d1", "bp d2"]
    assert groups[0]["test_accuracy_mean"] == pytest.approx(0.98) and groups[0]["epochs_to_target_mean"] == 2


def test_cli_with_out_and_beta_sweep(tmp_path):
    write_beta_sweep(tmp_path / "r")
    write_run(tmp_path / "r", "bp", rule="bp")
    out = tmp_path / "elsewhere" / "rep"
    result = CliRunner().invoke(compare_app(), ["compare", str(tmp_path / "r"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "beta_sweep_0.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "slope 1.02" in (out / "report.md").read_text()
    assert not (out / "accuracy_vs_depth.png").exists()  # one depth: no depth figure
    assert not (out / "feedback_angle_vs_epoch.png").exists()  # bp has no feedback angles


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["{missing}"], "no such file"),
        (["{empty}"], "no run folders"),
        (["{root}", "--format", "xml"], "--format"),
        (["{root}", "--target", "97"], "--target"),
        (["{root}", "--target", "0"], "--target"),
        (["{root}", "--margin", "-0.1"], "--margin"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, args, fragment):
    root, empty = tmp_path / "root", tmp_path / "empty"
    write_run(root, "bp", rule="bp")
    empty.mkdir()
    names = {"missing": tmp_path / "missing", "empty": empty, "root": root}
    result = CliRunner().invoke(compare_app(), ["compare", *(a.format(**names) for a in args)])
    assert_user_error(result, fragment)
    assert not (root / "report").exists()


# --- what counts: the manifest's run per point and seed, finished runs, one run per seed -----------


def _summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def _set_summary(path: Path, **changes) -> None:
    summary = {**_summary(path), **changes}
    for key in [k for k, v in changes.items() if v is None]:
        del summary[key]
    (path / "summary.json").write_text(json.dumps(summary))


def dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_resumed_sweep(root: Path) -> Path:
    """A sweep folder after kill -9 and a resume: the manifest names runs/depth-1-s0-1 (completed); runs/depth-1-s0
    (killed before its first epoch: still `running`, no metrics) and runs/depth-1-s0-2 (completed just before
    the kill, never recorded) are left over."""
    sweep = root / "sweep-depth-abc"
    runs = sweep / "runs"
    write_run(runs, "depth-1-s0", depth=1, final=0.10, status="running", accs=(0.10,))
    for name in ("metrics.jsonl", "alignment.jsonl"):
        (runs / "depth-1-s0" / name).unlink()
    write_run(runs, "depth-1-s0-1", depth=1, final=0.91, accs=(0.90, 0.91))
    write_run(runs, "depth-1-s0-2", depth=1, final=0.50, accs=(0.40, 0.50))
    write_run(runs, "depth-2-s0", depth=2, final=0.92, accs=(0.90, 0.92))
    manifest = {"grid": {"model.depth": [1, 2]}, "seeds": [0], "runs": {
        "depth-1-s0": {"values": {"model.depth": 1}, "seed": 0, "run_dir": "runs/depth-1-s0-1", "status": "completed"},
        "depth-2-s0": {"values": {"model.depth": 2}, "seed": 0, "run_dir": "runs/depth-2-s0", "status": "completed"},
    }}
    (sweep / "manifest.json").write_text(json.dumps(manifest))
    return sweep


def test_in_a_sweep_folder_only_the_manifests_run_per_point_and_seed_counts(tmp_path):
    sweep = write_resumed_sweep(tmp_path)
    for path in (tmp_path, sweep, sweep / "runs"):  # the same, whether the sweep or a folder above or below is given
        c = aggregate([path])
        d1 = next(g for g in c.groups if g.depth == 1)
        assert d1.stats["seeds"] == [0] and d1.stats["n_runs"] == 1
        assert d1.stats["test_accuracy_mean"] == pytest.approx(0.91)
        assert sorted(e.path.name for e in c.excluded) == ["depth-1-s0", "depth-1-s0-2"]
        assert "2 runs not counted: not the run its sweep's manifest.json names" in "\n".join(c.findings)


def test_a_run_killed_before_its_first_epoch_is_named_not_counted(tmp_path):
    write_run(tmp_path / "runs", "done", depth=1)
    killed = write_run(tmp_path / "runs", "killed", depth=1, status="running")
    for name in ("metrics.jsonl", "alignment.jsonl"):
        (killed / name).unlink()
    failed = write_run(tmp_path / "runs", "out-of-memory", depth=1, status="failed")
    (failed / "metrics.jsonl").unlink()
    c = aggregate([tmp_path / "runs"])
    assert [g.stats["seeds"] for g in c.groups] == [[0]]
    assert sorted((e.path.name, e.reason) for e in c.excluded) == [("killed", "stale"), ("out-of-memory", "status")]


def test_two_runs_of_one_seed_count_once_the_latest_completed(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "a", rule="bp", depth=1, final=0.80, accs=(0.80,))
    write_run(root, "b", rule="bp", depth=1, final=0.90, accs=(0.90,))
    write_run(root, "c", rule="bp", depth=1, final=0.70, accs=(0.70,), status="interrupted")
    _set_summary(root / "a", started_at="2026-01-02T00:00:00+00:00")
    _set_summary(root / "b", started_at="2026-01-01T00:00:00+00:00")
    _set_summary(root / "c", started_at="2026-01-03T00:00:00+00:00")
    write_run(root, "s1", rule="bp", depth=1, seed=1, final=0.85, accs=(0.85,))
    c = aggregate([root])
    (g,) = c.groups
    assert g.stats["seeds"] == [0, 1]  # never "0 0"
    assert g.stats["test_accuracy_mean"] == pytest.approx((0.80 + 0.85) / 2)  # a: the latest completed seed-0 run
    assert sorted(e.path.name for e in c.excluded) == ["b", "c"]
    assert all(e.reason == "duplicate" and str(root / "a") in e.detail for e in c.excluded)
    assert "2 runs not counted: the same grouping keys and seed" in "\n".join(c.findings)


@pytest.mark.parametrize("pid, reason", [(None, "stale"), ("dead", "stale"), ("self", "running")])
def test_a_running_run_is_never_a_result(tmp_path, pid, reason):
    import os
    import socket

    root = tmp_path / "runs"
    write_run(root, "done", rule="bp", depth=1, final=0.9, accs=(0.9,))
    write_run(root, "killed", rule="bp", depth=1, final=0.1, accs=(0.1,), status="running")
    pids = {None: None, "dead": dead_pid(), "self": os.getpid()}
    _set_summary(root / "killed", pid=pids[pid], host=socket.gethostname())
    c = aggregate([root])
    (g,) = c.groups
    assert g.stats["seeds"] == [0] and g.stats["test_accuracy_mean"] == pytest.approx(0.9)
    assert [(e.path.name, e.reason) for e in c.excluded] == [("killed", reason)]
    text = "\n".join(c.findings)
    assert ("stale, not counted" if reason == "stale" else "still running, not counted") in text
    result = CliRunner().invoke(compare_app(), ["compare", str(root), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert "1 more not counted" in result.output and str(root / "killed") in result.output
    assert str(root / "killed") in (tmp_path / "rep" / "report.md").read_text()


def test_only_unfinished_runs_is_a_one_line_error(tmp_path):
    write_run(tmp_path / "runs", "killed", status="running")
    result = CliRunner().invoke(compare_app(), ["compare", str(tmp_path / "runs")])
    assert_user_error(result, "no finished runs")
    assert not (tmp_path / "runs" / "report").exists()


def _metrics_line_42(run: Path) -> None:
    with (run / "metrics.jsonl").open("a") as f:
        f.write("42\n")


def _string_epoch(run: Path) -> None:
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": "one", "test_accuracy": 0.9}) + "\n")


def _string_accuracy(run: Path) -> None:
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_accuracy": "0.9"}) + "\n")


def _string_final_accuracy(run: Path) -> None:
    _set_summary(run, test_accuracy="high")


def _list_for_a_scalar(run: Path) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["width"] = [32, 64]
    (run / "config.yaml").write_text(yaml.safe_dump(config))


def _string_layer(run: Path) -> None:
    with (run / "alignment.jsonl").open("a") as f:
        f.write(json.dumps({"epoch": 1, "step": 10, "layer": "first", "update_angle": 3.0}) + "\n")


def _string_beta(run: Path) -> None:
    sweep = write_beta_sweep(run.parent)
    with (sweep / "beta_sweep.jsonl").open("a") as f:
        f.write(json.dumps({"estimator": "one-sided", "beta": "small", "bias": 0.1}) + "\n")


def _null_beta(run: Path) -> None:  # what `sweep beta --values nan` used to leave
    sweep = write_beta_sweep(run.parent)
    with (sweep / "beta_sweep.jsonl").open("a") as f:
        f.write(json.dumps({"estimator": "one-sided", "beta": None, "bias": None}) + "\n")


@pytest.mark.parametrize("damage, fragments", [
    (_metrics_line_42, ["metrics.jsonl: line 3", "expected a JSON object", "42"]),
    (_string_epoch, ["metrics.jsonl: line 1", "'epoch' must be an integer", "'one'"]),
    (_string_accuracy, ["metrics.jsonl: line 1", "'test_accuracy' must be an accuracy in [0, 1]"]),
    (_string_final_accuracy, ["summary.json", "'test_accuracy' must be an accuracy in [0, 1]", "'high'"]),
    (_list_for_a_scalar, ["config.yaml", "'model.width': expected an integer", "[32, 64]"]),
    (_string_layer, ["alignment.jsonl", "'layer' must be an integer", "'first'"]),
    (_string_beta, ["beta_sweep.jsonl: line 7", "'beta' must be a positive finite number", "'small'"]),
    (_null_beta, ["beta_sweep.jsonl: line 7", "'beta' must be a positive finite number", "None"]),
])
def test_malformed_files_are_a_one_line_error_naming_the_file(tmp_path, damage, fragments):
    run = write_run(tmp_path / "runs", "bp", accs=(0.9, 0.95))
    damage(run)
    result = CliRunner().invoke(compare_app(), ["compare", str(tmp_path / "runs")])
    assert_user_error(result, fragments[0])
    for fragment in fragments[1:]:
        assert fragment in stderr_of(result)
    assert not (tmp_path / "runs" / "report").exists()


def test_a_corrupt_manifest_is_a_one_line_error(tmp_path):
    sweep = write_resumed_sweep(tmp_path)
    (sweep / "manifest.json").write_text(json.dumps({"runs": [1, 2]}))
    assert_user_error(CliRunner().invoke(compare_app(), ["compare", str(sweep)]), "manifest.json: not a sweep manifest (expected an object with 'runs')")


def test_conv_runs_are_labelled_by_their_architecture_not_a_depth(tmp_path):
    write_run(tmp_path, "old-mlp", rule="fa", depth=2)  # written before conv nets: no model.arch
    for name, arch in (("mlp", "mlp"), ("lenet", "lenet")):
        path = write_run(tmp_path, name, rule="fa", depth=2, seed=1)
        config = yaml.safe_load((path / "config.yaml").read_text())
        config["model"]["arch"] = arch
        (path / "config.yaml").write_text(yaml.safe_dump(config))
    groups = aggregate([tmp_path]).groups
    labels = {g.label: g for g in groups}
    assert set(labels) == {"fa d2", "fa lenet"}, [g.label for g in groups]
    assert labels["fa lenet"].depth is None and labels["fa d2"].depth == 2  # no breaking depth for conv nets
    assert sorted(r.path.name for r in labels["fa d2"].runs) == ["mlp", "old-mlp"]
