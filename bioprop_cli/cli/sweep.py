"""`bioprop sweep ...`: grids of measurements and runs. `beta`: equilibrium propagation's beta; `pc`:
predictive coding's output precision and inference steps."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from bioprop_cli.cli.common import (
    FLAG_KEYS, RUN_FLAGS, X64, ConfigFile, Sets, config_file, config_from_flags, console, refuse_given,
    refuse_other_rule, refuse_unused_model_keys, run_flags, user_errors_exit_2,
)
from bioprop_cli.errors import UserError
from bioprop_cli.experiment.grid import AXIS_COMMANDS
from bioprop_cli.experiment.jobs import parse_jobs
from bioprop_cli.experiment.runner import resuming
from bioprop_cli.report.study_tables import beta_table, beta_training_table, condition_tables, pc_table, sweep_table

# Upper bounds of the loop lengths the study flags set: a measurement runs inside one compiled call,
# where Ctrl-C waits for it to return; these keep every such call, and every study, finite.
MAX_SEEDS = 100
MAX_BATCHES = 1_000
MAX_EPOCHS = 1_000
MAX_POINTS = 100  # values of one swept parameter
MAX_STEPS = 10_000  # inference or settling steps of one phase
JOBS_HELP = ("Groups trained at once, each in a worker process pinned to its own cores (1: in-process, one group "
             "after another; auto: one per usable core).")


app = typer.Typer(
    help=f"Sweeps: `bioprop sweep AXIS` ({', '.join(AXIS_COMMANDS)}), `bioprop sweep --grid KEY=V1,V2 ...`, "
    "`bioprop sweep beta` (equilibrium propagation's nudging strength), `bioprop sweep condition` (one condition "
    "of gradient equivalence broken at a time) and `bioprop sweep pc` (predictive coding against the exact gradient).",
)


def _grid_sweep(axis: Optional[str], values: Optional[str], grid_options: list[str], seeds: int, config: Optional[Path],
                sets: list[str], flags: dict, executor: str = "local", address: Optional[str] = None,
                gpus_per_task: float = 0.0, jobs: int = 1) -> None:
    """Shared by every axis command and the bare `bioprop sweep --grid ...`. Ctrl-C: exit code 130."""
    from bioprop_cli.interrupt import sigint_flag

    with sigint_flag() as interrupted:
        base, grid, where, seed_values = _sweep_plan(axis, values, grid_options, seeds, config, sets, flags)
        runner = _executor(executor, address, gpus_per_task)
        if interrupted():
            raise typer.Exit(code=130)
        from bioprop_cli.experiment.grid import sweep_name

        begun = Path(base.results_dir) / base.experiment / sweep_name(base, grid, seed_values, where)
        if resuming(begun):
            console.print(f"resuming {begun}: finished runs are kept", soft_wrap=True, highlight=False)
        folder, manifest = _run_with_status(base, grid, where, seed_values, runner, interrupted, jobs)
        console.print(sweep_table(folder, manifest))
        console.print(f"sweep folder: {folder} (manifest.json; `bioprop compare {folder}` for the report)", soft_wrap=True)
        if interrupted() or any(entry["status"] == "interrupted" for entry in manifest["runs"].values()):
            console.print("interrupted: run the same command again to train what is left")
            raise typer.Exit(code=130)


def _sweep_plan(axis, values, grid_options, seeds, config, sets, flags):
    """(base config, grid, where, seeds) from the axis, --grid, --seeds, the config's `sweep:` section
    and the run flags (experiment/grid.py: plan_grid, refuse_fixed_axes, plan_seeds)."""
    from bioprop_cli.config import parse_override, read_yaml
    from bioprop_cli.experiment.grid import check_where, plan_grid, plan_seeds, points, read_sweep_section, refuse_fixed_axes

    file_grid, where, file_seeds = read_sweep_section(read_yaml(config).get("sweep") if config is not None else None)
    grid = plan_grid(axis, values, grid_options, file_grid)
    for i in check_where(grid, where, points(grid)):
        console.print(f"sweep.where[{i}] ({where[i]['when']}) matches no point of this grid: not applied", soft_wrap=True)
    fixed = {FLAG_KEYS[name]: "--" + name.replace("_", "-") for name, value in flags.items() if value is not None}
    fixed.update({parse_override(text)[0]: f"--set {text}" for text in sets})
    refuse_fixed_axes(grid, where, fixed)
    base = config_from_flags(config, sets, **flags)
    refuse_unused_model_keys(base, [(key, f"sweep axis {key}") for key in grid]
                             + [(key, f"sweep.where[{i}]") for i, entry in enumerate(where) for key in entry["set"]])
    return base, grid, where, plan_seeds(axis, values, seeds, file_seeds, base.seed)


def _executor(name: str, address: Optional[str], gpus_per_task: float):
    if name not in ("local", "ray"):
        raise UserError(f"--executor: expected local or ray, got {name!r}")
    if name == "local":
        if address is not None:
            raise UserError("--address: a Ray cluster address needs --executor ray")
        return None
    from bioprop_cli.experiment.ray_executor import RayExecutor

    return RayExecutor(address, gpus_per_task)


def _run_with_status(base, grid, where, seed_values, runner, interrupted, jobs=1):
    from bioprop_cli.experiment.grid import run_sweep

    with console.status("sweeping...") as status:
        return run_sweep(base, grid, seed_values, DatasetLoader(), where, report=lambda m: status.update(f"sweeping: {m}"),
                         executor=runner, interrupted=interrupted, notice=lambda m: console.print(m, soft_wrap=True, highlight=False),
                         jobs=jobs)


class DatasetLoader:
    """config -> dataset; a plain class (not a lambda) so that Ray can send it to its workers."""

    def __call__(self, cfg):
        from bioprop_cli.datasets import load_dataset

        return load_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data)


def _make_axis_command(axis: Optional[str], as_group_callback: bool = False):
    def command(
        ctx: typer.Context,
        values: Optional[str] = typer.Option(None, help="Comma-separated values of the axis (default: its usual grid)."),
        grid: List[str] = typer.Option([], "--grid", "-g", help="Another axis: KEY=V1,V2 (repeatable; any config key)."),
        seeds: Optional[int] = typer.Option(None, min=1, max=MAX_SEEDS, help="Seeds per point (trained together in one compiled program); default 1."),
        config: ConfigFile = None,  # its `sweep:` section may give the grid and the seeds
        set_: Sets = [],
        executor: str = typer.Option("local", help="local (in-process, one group after another; --jobs N: N worker processes) or ray."),
        jobs: str = typer.Option("1", help=JOBS_HELP),
        address: Optional[str] = typer.Option(None, help="Ray cluster address (else a local Ray instance)."),
        gpus_per_task: float = typer.Option(0.0, min=0.0, help="GPUs each Ray task asks for."),
        *,
        flags: dict,
    ) -> None:
        if as_group_callback and ctx.invoked_subcommand is not None:  # `bioprop sweep AXIS ...`: the subcommand's work
            refuse_given(ctx, list(ctx.params), f"give it after the axis (bioprop sweep {ctx.invoked_subcommand} "
                         "--OPTION ...), where the sweep reads it")
            return
        if as_group_callback and not grid and config is None:
            console.print(ctx.get_help())
            raise typer.Exit(code=2)
        if executor == "local":
            refuse_given(ctx, ["gpus_per_task"], "Ray tasks' GPUs, for --executor ray; drop it")
        elif executor == "ray":
            refuse_given(ctx, ["jobs"], "local worker processes, for --executor local (Ray schedules its own tasks); drop it")
        _grid_sweep(axis, values, grid, seeds, config_file(config), set_, flags, executor, address, gpus_per_task,
                    parse_jobs(jobs))

    command.__doc__ = (f"Sweep {axis}" if axis else "Sweep the --grid axes") + ": N seeds per point, resumable, one folder with a manifest."
    return user_errors_exit_2(run_flags(*RUN_FLAGS)(command))


for _axis in AXIS_COMMANDS:
    app.command(_axis)(_make_axis_command(_axis))
# `bioprop sweep --grid depth=1,2 --grid rule=bp,fa`: no AXIS, the grid options alone
app.callback(invoke_without_command=True)(_make_axis_command(None, as_group_callback=True))


def _at_most(values: list, limit: int, name: str, what: str) -> list:
    if len(values) > limit:
        raise UserError(f"{name}: at most {limit} {what}, got {len(values)}")
    return values


def _floats(text: str, name: str) -> list[float]:
    import math

    from bioprop_cli.precision import float32_normal_problem

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{name}: expected comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise UserError(f"{name}: expected positive finite numbers, got {text!r}")
    problems = [float32_normal_problem(v) for v in values if float32_normal_problem(v)]
    if problems:
        raise UserError(f"{name}: {problems[0]}")
    return sorted(set(values))


def _check_study_values(cfg, key: str, values: list[float], name: str) -> None:
    """Each value at `key` makes a valid config (the config's own range checks, e.g. ep.beta <= 1 for the
    coupled estimator); the extremes are checked, the checks being ranges."""
    from bioprop_cli.config import derive

    for value in (min(values), max(values)):
        try:
            derive(cfg, {key: value})
        except UserError as e:
            raise UserError(f"{name} {value:g}: {e}") from None


@app.command("beta")
@user_errors_exit_2
@run_flags("depth", "width", "epochs", "batch_size", "seed", "experiment", "results_dir", "data_dir")
def beta(
    ctx: typer.Context,
    values: Optional[str] = typer.Option(None, help="Comma-separated betas (default: 1e-4 .. 1 log-spaced, plus 0.001 .. 0.009)."),
    estimators: str = typer.Option("one-sided,symmetric,random-sign", help="Estimators to compare."),
    batches: int = typer.Option(10, min=1, max=MAX_BATCHES, help="Minibatches per seed (K)."),
    seeds: int = typer.Option(3, min=1, max=MAX_SEEDS, help="Number of seeds (networks and batch draws)."),
    train_epochs: int = typer.Option(0, min=0, max=MAX_EPOCHS, help="Train the network this many epochs before measuring (0: at initialisation)."),
    x64: X64 = False,  # round-off sets the variance at tiny beta
    train: bool = typer.Option(False, "--train", help="Instead: train one model per beta (all betas as one vmapped program) and compare accuracy and convergence."),
    config: ConfigFile = None,  # rule ep is implied; run flags: --epochs with --train, --experiment default beta-sweep
    set_: Sets = [],
    *,
    flags: dict,
) -> None:
    """Bias, spread and angle of EP's gradient estimate against the exact gradient, for a grid of beta."""
    from bioprop_cli.ep import parse_estimator
    from bioprop_cli.ep_options import ESTIMATORS
    from bioprop_cli.studies.beta import default_betas

    refuse_other_rule(set_, "ep", "sweep beta")
    if train:
        refuse_given(ctx, ["estimators", "batches", "seeds", "train_epochs", "x64"],
                     "a setting of the gradient sweep; --train trains one model per beta with ep.estimator: drop it")
    else:
        refuse_given(ctx, ["epochs"], "the training epochs of --train; the gradient sweep trains --train-epochs: drop it")
    cfg = config_from_flags(config_file(config), ["rule=ep"] + list(set_),
                            **{**flags, "experiment": flags["experiment"] or "beta-sweep"})
    betas = _floats(values, "--values") if values else default_betas()
    _at_most(betas, MAX_POINTS, "--values", "betas")
    _check_study_values(cfg, "ep.beta", betas, "--values")
    chosen = [e.strip() for e in estimators.split(",") if e.strip()]
    unknown = [e for e in chosen if parse_estimator(e) is None]
    if unknown or not chosen:
        raise UserError(f"--estimators: unknown {unknown[0]!r}; known: {', '.join(ESTIMATORS)}, holomorphic-N (N >= 2 "
                        "points on the circle)" if unknown else "--estimators: none given")
    # holomorphic: at ep.holomorphic_points, labelled with N; its smooth activation checked as the config's
    chosen = [f"holomorphic-{cfg.ep.holomorphic_points}" if e == "holomorphic" else e for e in chosen]
    if any(parse_estimator(e)[0] == "holomorphic" for e in chosen):
        from bioprop_cli.config import derive

        try:
            derive(cfg, {"ep.estimator": "holomorphic"})
        except UserError as e:
            raise UserError(f"--estimators holomorphic: {e}") from None
    from bioprop_cli.config import check_against_data
    from bioprop_cli.datasets import load_dataset
    from bioprop_cli.rules.equilibrium import require_mse_cost

    if not train:
        require_mse_cost(cfg, "bioprop sweep beta (without --train)")
    dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data)
    check_against_data(cfg, len(dataset.x_train))
    if train:
        _train_per_beta(cfg, dataset, betas)
    else:
        _gradient_sweep(cfg, dataset, betas, chosen, batches, list(range(cfg.seed, cfg.seed + seeds)), train_epochs, x64)


def _gradient_sweep(cfg, dataset, betas, estimators, batches, seeds, train_epochs, x64) -> None:
    from bioprop_cli.studies import beta as study

    with console.status("measuring...") as status:
        measurement = study.BetaStudy(cfg, dataset, betas, estimators, batches, seeds, train_epochs, x64,
                                      progress=lambda m: status.update(f"measuring: {m}"))
        folder = study.folder_for(measurement)
        console.print(f"[bold]bioprop sweep beta[/] {len(betas)} betas x {len(estimators)} estimators x {len(seeds)} "
                      f"seeds x {batches} batches -> {folder}" + _resuming_note(folder))
        result = study.run(measurement, folder)
    summary = result["summary"]
    console.print(beta_table(result))
    console.print(f"log-log slope of the bias from the sweet spot (least bias) up: {summary['slope_summary']}")
    console.print(f"largest free-phase residual |s_T1 - s_T1-1|: {summary['max_free_residual']:.2e}")
    console.print("seconds per update (free phase and nudged phases, one batch, median of 5): "
                  + ", ".join(f"{e} {t:.3g}" for e, t in summary["seconds_per_update"].items()))
    console.print(f"written: {folder}/beta_sweep.jsonl, beta_sweep.png, summary.json")


def _train_per_beta(cfg, dataset, betas) -> None:
    from bioprop_cli.studies import beta as study

    folder = study.train_folder(cfg, betas)
    console.print(f"training {len(betas)} betas together (one vmapped program) into {folder / 'runs'}"
                  + (" (resuming: finished runs are kept)" if resuming(folder) else ""), highlight=False)
    result = study.train_per_beta(cfg, dataset, betas, folder, notice=lambda m: console.print(m, soft_wrap=True, highlight=False))
    study.write_training(result, folder)
    rows = result["rows"]
    console.print(beta_training_table(result, cfg.ep.estimator, cfg.train.epochs))
    console.print(f"written: {folder}")
    if any(r["status"] == "interrupted" for r in rows):
        raise typer.Exit(code=130)


@app.command("condition")
@user_errors_exit_2
@run_flags("depth", "width", "batch_size", "seed", "experiment", "results_dir", "data_dir")
def condition(
    ctx: typer.Context,
    knobs: str = typer.Option("t1,asymmetry,feedback,beta,t2", help="Knobs to vary, one at a time: t1 (1: convergence), asymmetry (2: energy function), feedback (4: consistency), beta (6: small perturbation), t2 (7: architecture)."),
    t1: Optional[str] = typer.Option(None, "--t1", help="Free-phase steps T1 (default 1,2,5,10,20,50 and the base's)."),
    asymmetry: Optional[str] = typer.Option(None, "--asymmetry", help="Feedback angles to W^T in degrees, ep.feedback=mixed (default 0,30,60,90)."),
    feedback: Optional[str] = typer.Option(None, "--feedback", help="ep.feedback values (default symmetric,sign,random)."),
    beta_values: Optional[str] = typer.Option(None, "--beta", help="Betas (default 0.001,0.01,0.1,1)."),
    t2: Optional[str] = typer.Option(None, "--t2", help="Nudged-phase steps T2 (default 1 .. L, L+2 and the base's)."),
    seeds: int = typer.Option(1, min=1, max=MAX_SEEDS, help="Seeds per value (measured each, trained together)."),
    train: bool = typer.Option(True, "--train/--no-train", help="Train every value briefly and report its test accuracy."),
    train_epochs: int = typer.Option(1, min=1, max=MAX_EPOCHS, help="Epochs of the short training."),
    train_limit: Optional[int] = typer.Option(None, help="Training examples (data.train_limit; base: 5000, of which 500 validate)."),
    probe_size: int = typer.Option(256, min=1, help="Probe examples for the angle measurements."),
    x64: X64 = False,  # training stays float32
    config: ConfigFile = None,  # the base instead of the built-in all-conditions-hold setup (rule ep is implied)
    set_: Sets = [],  # run flags: base depth 2, width 64; --experiment default condition-sweep
    *,
    flags: dict,
) -> None:
    """Break one condition of gradient equivalence at a time (EP): angle to the exact gradient and accuracy per knob value."""
    from bioprop_cli.studies.condition import BASE, KNOBS, parse_knob_values, parse_knobs

    refuse_other_rule(set_, "ep", "sweep condition")
    if not train:
        refuse_given(ctx, ["train_epochs"], "--no-train trains nothing; drop it")
    chosen = parse_knobs(knobs)
    given = {"t1": t1, "asymmetry": asymmetry, "feedback": feedback, "beta": beta_values, "t2": t2}
    for name, text in given.items():
        if text is not None and name not in chosen:
            raise UserError(f"--{name}: knob {name} is not among --knobs {','.join(chosen)}")
    config = config_file(config)
    base_sets = [] if config is not None else [f"{k}={v}" for k, v in BASE]
    limit = [f"data.train_limit={train_limit}"] if train_limit is not None else []
    cfg = config_from_flags(config, ["rule=ep"] + base_sets + limit + list(set_),
                            **{**flags, "experiment": flags["experiment"] or "condition-sweep"})
    values = {name: parse_knob_values(name, given[name]) if given[name] else KNOBS[name].defaults(cfg) for name in chosen}
    for name in ("t1", "t2"):
        if given[name] and max(values[name]) > MAX_STEPS:
            raise UserError(f"--{name}: expected whole numbers from 1 to {MAX_STEPS:,}, got {given[name]!r}")
    for name in chosen:
        _at_most(values[name], MAX_POINTS, f"--{name}", "values")
    from functools import partial

    from bioprop_cli.config import check_against_data
    from bioprop_cli.datasets import load_dataset
    from bioprop_cli.rules.equilibrium import require_mse_cost
    from bioprop_cli.studies import condition as study

    require_mse_cost(cfg, "bioprop sweep condition")
    study.plan_points(cfg, values)  # bad values: exit 2 before anything is loaded or written
    dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data)
    n_train = check_against_data(cfg, len(dataset.x_train))
    seed_list = list(range(cfg.seed, cfg.seed + seeds))
    folder = study.folder_for(cfg, values, seed_list, min(probe_size, n_train), x64, train_epochs if train else None)
    n_points = 1 + sum(len(v) for v in values.values())
    console.print(f"[bold]bioprop sweep condition[/] {n_points} points x {seeds} seed(s), "
                  f"{'training ' + str(train_epochs) + ' epoch(s) on ' + str(n_train) + ' examples' if train else 'no training'} -> {folder}"
                  + (" (resuming: finished runs and measured knobs are kept)" if resuming(folder) else ""), highlight=False)
    with console.status("sweeping...") as status:
        result = study.run(cfg, dataset, values, seed_list, min(probe_size, n_train), x64,
                           train_epochs if train else None, folder,
                           report=lambda m: status.update(f"sweeping: {m}"), on_row=partial(study.write_row, folder),
                           notice=lambda m: console.print(m, soft_wrap=True, highlight=False))
    study.write(result, folder)
    rows, summary = result["rows"], result["summary"]

    for table in condition_tables(rows, summary):
        console.print(table)
    if summary["sentence"]:
        console.print(f"[bold]summary:[/] {summary['sentence']}", highlight=False)
    console.print(f"written: {folder}/condition_sweep.jsonl, summary.json, {', '.join(summary['figures'])}", highlight=False)


def _resuming_note(folder: Path) -> str:
    return " (resuming: the seeds measured before are kept)" if resuming(folder) else ""


def _step_counts(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{name}: expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1 or max(values) > MAX_STEPS:
        raise UserError(f"{name}: expected whole numbers from 1 to {MAX_STEPS:,}, got {text!r}")
    return _at_most(sorted(set(values)), MAX_POINTS, name, "step counts")


@app.command("pc")
@user_errors_exit_2
@run_flags("depth", "width", "batch_size", "seed", "experiment", "results_dir", "data_dir")
def pc(
    gammas: Optional[str] = typer.Option(None, help="Comma-separated output precisions gamma (default: 1e-3 .. 1, two per decade)."),
    steps: Optional[str] = typer.Option(None, help="Comma-separated inference step counts (default: 1 .. 1000); the largest is the gamma grid's."),
    batches: int = typer.Option(5, min=1, max=MAX_BATCHES, help="Minibatches per seed."),
    seeds: int = typer.Option(2, min=1, max=MAX_SEEDS, help="Number of seeds (networks and batch draws)."),
    train_epochs: int = typer.Option(0, min=0, max=MAX_EPOCHS, help="Train the network this many epochs before measuring (0: at initialisation)."),
    x64: X64 = False,
    config: ConfigFile = None,  # rule pc is implied; --experiment default pc-sweep
    set_: Sets = [],
    *,
    flags: dict,
) -> None:
    """Angle and relative error of predictive coding's update against the exact gradient, over gamma and inference steps."""
    from bioprop_cli.config import check_against_data
    from bioprop_cli.datasets import load_dataset
    from bioprop_cli.studies import pc as study

    refuse_other_rule(set_, "pc", "sweep pc")
    cfg = config_from_flags(config_file(config), ["rule=pc"] + list(set_),
                            **{**flags, "experiment": flags["experiment"] or "pc-sweep"})
    gamma_values = _at_most(_floats(gammas, "--gammas"), MAX_POINTS, "--gammas", "gammas") if gammas else study.default_gammas()
    step_values = _step_counts(steps, "--steps") if steps else study.default_steps()
    _check_study_values(cfg, "pc.output_precision", gamma_values, "--gammas")
    _check_study_values(cfg, "pc.inference_steps", step_values, "--steps")
    dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data)
    check_against_data(cfg, len(dataset.x_train))
    seed_list = list(range(cfg.seed, cfg.seed + seeds))
    with console.status("measuring...") as status:
        measurement = study.PcStudy(cfg, dataset, gamma_values, step_values, seed_list, batches, x64, train_epochs,
                                    progress=lambda m: status.update(f"measuring: {m}"))
        folder = study.folder_for(measurement)
        console.print(f"[bold]bioprop sweep pc[/] {len(gamma_values)} gammas + {len(step_values)} step counts x {seeds} seeds "
                      f"x {batches} batches -> {folder}" + _resuming_note(folder), highlight=False)
        result = study.run(measurement, folder)
    console.print(pc_table(result))
    console.print(f"log-log slope against gamma: {result['summary']['slope_summary']}", highlight=False)
    console.print(f"written: {folder}/pc_sweep.jsonl, pc_sweep.png, summary.json", highlight=False)
