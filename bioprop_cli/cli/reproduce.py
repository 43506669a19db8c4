"""`bioprop reproduce [NAME ...]`: the paper presets of configs/papers/, trained and set beside the published numbers."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from bioprop_cli.cli.common import DataDir, ResultsDir, console, user_errors_exit_2
from bioprop_cli.cli.sweep import JOBS_HELP, MAX_SEEDS
from bioprop_cli.experiment.jobs import parse_jobs
from bioprop_cli.runs import check_results_folder


@user_errors_exit_2
def reproduce(
    names: Optional[List[str]] = typer.Argument(None, help="Presets to run (default: all; --list names them)."),
    list_: bool = typer.Option(False, "--list", help="List the presets and exit."),
    quick: bool = typer.Option(False, "--quick", help="A short version of each (a subset, 1-2 epochs): checks the code "
                               "path and the direction of the effect, never 'reproduced'."),
    seeds: Optional[int] = typer.Option(None, min=1, max=MAX_SEEDS, help="Seeds per variant (default: the preset's; trained together)."),
    jobs: str = typer.Option("1", help=JOBS_HELP),
    results_dir: ResultsDir = None,
    data_dir: DataDir = None,
) -> None:
    """Run published experiments (network, data, rule settings, budget of the paper) and compare with the paper's numbers."""
    from bioprop_cli.interrupt import sigint_flag
    from bioprop_cli.report.reproduce_table import reproduce_table
    from bioprop_cli.studies import reproduce as study

    if list_:
        _print_list(study)
        return
    workers = parse_jobs(jobs)
    chosen = names or study.preset_names()
    presets = [study.load_preset(name) for name in chosen]  # unknown names: exit 2 before anything runs
    overrides = [("results_dir", results_dir)] if results_dir is not None else []
    overrides += [("data.data_dir", data_dir)] if data_dir is not None else []
    for preset in presets:  # every config is valid, its folder can be made and its data is there, before the first run starts
        check_results_folder(study.base_config(preset, quick, overrides))
    load = DatasetCache()
    for preset in presets:
        study.check_data(preset, quick, overrides, load)
    results = []
    with sigint_flag() as interrupted:
        for preset in presets:
            if interrupted():
                break
            with console.status(f"{preset.name}: training...") as status:
                result = study.run(preset, quick, seeds, load, overrides,
                                   report=lambda m: status.update(f"{preset.name}: {m}"), interrupted=interrupted,
                                   notice=lambda m: console.print(f"{preset.name}: {m}", soft_wrap=True, highlight=False),
                                   jobs=workers)
            path = study.write(result, Path(result["sweep_folder"]))
            console.print(f"{preset.name}: {result['wall_time_s']:.0f} s, written {path}", highlight=False)
            results.append(result)
    if results:
        console.print(reproduce_table(results))
    if interrupted():
        console.print("interrupted: run the same command again to train what is left (finished runs are kept)")
        raise typer.Exit(code=130)


def _load_dataset(cfg):
    from bioprop_cli.datasets import load_dataset

    return load_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data)


class DatasetCache:
    """_load_dataset, each (dataset, data folder) read once per command; sent to a worker process
    (--jobs) without what it holds (the worker reads its own)."""

    def __init__(self):
        self.loaded = {}

    def __getstate__(self):
        return {"loaded": {}}

    def __call__(self, cfg):
        where = (cfg.data.dataset, cfg.data.data_dir)
        if where not in self.loaded:
            self.loaded[where] = _load_dataset(cfg)
        return self.loaded[where]


def _print_list(study) -> None:
    table = Table(title="paper presets (configs/papers/)")
    for name in ("name", "paper", "numbers"):
        table.add_column(name)
    for name in study.preset_names():
        preset = study.load_preset(name)
        table.add_row(name, preset.paper.title or "", str(len(preset.published)))
    console.print(table)
