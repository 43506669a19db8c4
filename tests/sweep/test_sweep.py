"""`bioprop sweep AXIS` and `--grid`: the grid, the manifest, resuming, failures."""

import importlib.util
import json

import pytest
from typer.testing import CliRunner

from bioprop_cli.cli import app
from bioprop_cli.config import load_config
from bioprop_cli.runs import read_jsonl
from bioprop_cli.experiment.grid import parse_grid_option, parse_values, points

SMALL = ["--set", "data.train_limit=1500", "--set", "data.validation_size=300", "--set", "data.test_limit=300",
         "--epochs", "1", "--width", "16", "--set", "alignment.probe_size=32"]


def sweep(args, tmp_path, mnist_dir):
    return CliRunner().invoke(app, ["sweep", *args, "--results-dir", str(tmp_path), "--data-dir", mnist_dir, *SMALL])


def only_sweep_folder(tmp_path):
    (folder,) = (tmp_path / "default").iterdir()
    return folder, json.loads((folder / "manifest.json").read_text())


@pytest.mark.slow  # two rules' programs trained three times; cheap twins: the grouping, the sweep section, test_compare, test_sweep_checkpoint_resume's previous_run_dirs
def test_grid_without_axis_runs_the_product_with_seeds_and_resumes(tmp_path, mnist_dir):
    # rule changes the program, lr does not: 2 x 2 points x 2 seeds train as two programs of four runs
    grid = ["--grid", "lr=0.01,0.1", "--grid", "rule=bp,fa", "--seeds", "2"]
    result = sweep(grid, tmp_path, mnist_dir)
    assert result.exit_code == 0, result.output
    folder, manifest = only_sweep_folder(tmp_path)
    assert manifest["grid"] == {"optimizer.lr": [0.01, 0.1], "rule": ["bp", "fa"]} and manifest["seeds"] == [0, 1]
    assert sorted(manifest["runs"]) == sorted(f"lr-{lr}_rule-{r}-s{s}" for lr in (0.01, 0.1) for r in ("bp", "fa") for s in (0, 1))
    for name, entry in manifest["runs"].items():
        assert entry["status"] == "completed"
        run = folder / entry["run_dir"]
        config = load_config(run / "config.yaml")
        assert (config.optimizer.lr, config.rule, config.seed) == (entry["values"]["optimizer.lr"], entry["values"]["rule"], entry["seed"])
        summary = json.loads((run / "summary.json").read_text())
        assert summary["runs_trained_together"] == 4 and summary["test_accuracy"] == entry["test_accuracy"]
        assert len(read_jsonl(run / "metrics.jsonl")) == 1
    # the report over the sweep
    report = CliRunner().invoke(app, ["compare", str(folder), "--target", "0.3"])
    assert report.exit_code == 0, report.output
    md = (folder / "report" / "report.md").read_text()
    assert "fa" in md and "bp" in md
    assert "data:image/png;base64," in (folder / "report" / "report.html").read_text()
    assert oct((folder / "report" / "report.md").stat().st_mode & 0o777) == "0o644"
    # the same command again: nothing to do, nothing new written
    runs_before = sorted(p.name for p in (folder / "runs").iterdir())
    again = sweep(grid, tmp_path, mnist_dir)
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in (folder / "runs").iterdir()) == runs_before
    # an interrupted point is trained again, into a new folder; the old one stays, named as a
    # previous attempt: the manifest names one run per (point, seed)
    manifest["runs"]["lr-0.1_rule-fa-s1"]["status"] = "interrupted"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    summary_path = folder / "runs" / "lr-0.1_rule-fa-s1" / "summary.json"
    summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), "status": "interrupted"}))
    third = sweep(grid, tmp_path, mnist_dir)
    assert third.exit_code == 0, third.output
    _, manifest = only_sweep_folder(tmp_path)
    assert manifest["runs"]["lr-0.1_rule-fa-s1"]["status"] == "completed"
    assert manifest["runs"]["lr-0.1_rule-fa-s1"]["run_dir"].endswith("lr-0.1_rule-fa-s1-1")
    assert manifest["runs"]["lr-0.1_rule-fa-s1"]["previous_run_dirs"] == ["runs/lr-0.1_rule-fa-s1"]
    assert len(list((folder / "runs").iterdir())) == len(runs_before) + 1


def test_a_point_too_big_for_the_data_is_refused_before_anything_is_written(tmp_path, mnist_dir):
    """The data are checked against every point as `bioprop train` checks them: one line, exit 2, no folder."""
    result = sweep(["batch-size", "--values", "100000,64"], tmp_path, mnist_dir)
    assert result.exit_code == 2, result.output
    assert "train.batch_size" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "default").exists()


def test_sweep_section_of_a_config_file(tmp_path, mnist_dir):
    path = tmp_path / "exp.yaml"
    path.write_text("rule: fa\nsweep:\n  grid:\n    lr: [0.01, 0.1]\n  seeds: 2\n")  # one program: lr is batched
    assert load_config(path).rule == "fa"  # `bioprop train` ignores the sweep section
    result = CliRunner().invoke(app, ["sweep", "--config", str(path), "--results-dir", str(tmp_path / "out"),
                                      "--data-dir", mnist_dir, *SMALL[:-4], "--set", "alignment.enabled=false"])
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "out" / "default").iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["grid"] == {"optimizer.lr": [0.01, 0.1]} and manifest["seeds"] == [0, 1]
    assert all(e["status"] == "completed" for e in manifest["runs"].values())


@pytest.mark.parametrize("args, word", [
    (["--grid", "model.bogus=1,2"], "model.bogus"),
    (["--grid", "depth"], "--grid"),
    (["seed", "--values", "-1,2"], "seeds"),
    (["depth", "--values", "1", "--set", "train.epochs=0"], "train.epochs"),
    (["depth", "--values", "0,1"], "model.depth"),
])
def test_bad_sweeps_exit_2_and_write_nothing(tmp_path, args, word):
    result = CliRunner().invoke(app, ["sweep", *args, "--results-dir", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert word in (result.stderr if hasattr(result, "stderr") else result.output)
    assert not (tmp_path / "out").exists()


def test_sweep_without_anything_shows_help_and_exits_2():
    result = CliRunner().invoke(app, ["sweep"])
    assert result.exit_code == 2 and "depth" in result.output


def test_parsing_and_points():
    assert parse_values("1, 2.5,fa,true") == [1, 2.5, "fa", True]
    assert parse_grid_option("depth=1,2") == ("model.depth", [1, 2])
    assert parse_grid_option("optimizer.lr=0.1,0.01") == ("optimizer.lr", [0.1, 0.01])
    ps = points({"model.depth": [1, 2], "rule": ["bp", "fa", "dfa"]})
    assert len(ps) == 6 and ps[0].name == "depth-1_rule-bp" and ps[-1].name == "depth-2_rule-dfa"


def test_architectures_and_their_keys_are_grid_axes():
    from bioprop_cli.experiment.grid import check_points, point_config, read_sweep_section

    assert parse_grid_option("arch=mlp,lenet") == ("model.arch", ["mlp", "lenet"])
    grid, _, _ = read_sweep_section({"grid": {"arch": ["lenet", "cnn"], "model.cnn.channels": [[4, 8], [8, 16]]}})
    ps = points(grid)
    assert [p.name for p in ps][:2] == ["arch-lenet_channels-_4_8_", "arch-lenet_channels-_8_16_"]
    check_points({}, ps[2:], 0)  # two cnn points: different networks, different folders
    configs = [point_config({}, p, 0) for p in ps[2:]]
    assert [c.model.cnn.channels for c in configs] == [(4, 8), (8, 16)]
    assert all(c.model.arch == "cnn" for c in configs)


@pytest.mark.slow  # a subprocess per try (signals, kill -9, Ray, forced devices): CI runs -m slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray (pip install 'bioprop[ray]')")
def test_ray_executor_writes_what_the_local_executor_writes(tmp_path, mnist_dir):
    """... on a local Ray instance that listens on the loopback interface only."""
    from bioprop_cli.experiment.ray_executor import RayExecutor

    args = ["--grid", "depth=1", "--seeds", "2", "--data-dir", mnist_dir, *SMALL]
    local = CliRunner().invoke(app, ["sweep", *args, "--results-dir", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    with RayExecutor().session() as ray:  # the sweep's executor finds this instance and uses it
        assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
        remote = CliRunner().invoke(app, ["sweep", *args, "--results-dir", str(tmp_path / "ray"), "--executor", "ray"])
    assert remote.exit_code == 0, remote.output
    (a,) = (tmp_path / "local" / "default").iterdir()
    (b,) = (tmp_path / "ray" / "default").iterdir()
    assert a.name == b.name  # the same sweep
    manifest_a, manifest_b = (json.loads((f / "manifest.json").read_text()) for f in (a, b))
    assert manifest_a == manifest_b
    timing = ("epoch_time_s", "wall_time_s")
    for entry in manifest_a["runs"].values():
        ma, mb = (read_jsonl(f / entry["run_dir"] / "metrics.jsonl") for f in (a, b))
        assert [{k: v for k, v in m.items() if k not in timing} for m in ma] == [
            {k: v for k, v in m.items() if k not in timing} for m in mb]
        assert read_jsonl(a / entry["run_dir"] / "alignment.jsonl") == read_jsonl(b / entry["run_dir"] / "alignment.jsonl")


def test_ray_executor_without_ray_says_how_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    result = CliRunner().invoke(app, ["sweep", "depth", "--values", "1", "--executor", "ray", "--results-dir", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "pip install 'bioprop[ray]'" in (result.stderr if hasattr(result, "stderr") else result.output)
    assert not (tmp_path / "out").exists()


def test_runs_of_one_shape_are_grouped_across_points():
    from bioprop_cli.experiment.runner import group_runs

    runs = [(f"lr{lr}-d{d}-s{s}", load_config(overrides=[("optimizer.lr", lr), ("model.depth", d), ("seed", s)]), None)
            for d in (1, 2) for lr in (0.01, 0.1) for s in (0, 1)]
    groups = group_runs(runs)
    assert [len(g.configs) for g in groups] == [4, 4]
    assert {c.model.depth for c in groups[0].configs} == {1} and {c.optimizer.lr for c in groups[0].configs} == {0.01, 0.1}
    assert groups[0].label == "lr0.01-d1 (+1 points)"


def test_a_learning_rate_sweep_trains_as_one_program(tmp_path, mnist_dir):
    result = sweep(["lr", "--values", "0.001,0.01", "--seeds", "2", "--set", "alignment.enabled=false",
                    "--set", "optimizer.schedule.name=constant"], tmp_path, mnist_dir)
    assert result.exit_code == 0, result.output
    folder, manifest = only_sweep_folder(tmp_path)
    summaries = [json.loads((folder / e["run_dir"] / "summary.json").read_text()) for e in manifest["runs"].values()]
    assert [s["runs_trained_together"] for s in summaries] == [4] * 4
    assert all(s["batched_keys"] == ["optimizer.lr"] for s in summaries)
    first_lr = {e["values"]["optimizer.lr"]: read_jsonl(folder / e["run_dir"] / "metrics.jsonl")[0]["lr"] for e in manifest["runs"].values()}
    assert first_lr == pytest.approx({0.001: 0.001, 0.01: 0.01})
