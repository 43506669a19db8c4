"""`bioprop data fetch` and `bioprop data check`: get a dataset's files ahead of time, and check a folder of them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bioprop_cli.cli.common import console, user_errors_exit_2
from bioprop_cli.datasets import NAMES, REGISTRY, check_data_folder, check_dataset_name
from bioprop_cli.errors import UserError

DATASET_NAMES = " or ".join([", ".join(NAMES[:-1]), NAMES[-1]])

app = typer.Typer(
    help="Datasets: `bioprop data fetch` downloads one ahead of time (say on a login node), "
    "`bioprop data check DIR` checks a folder of its files.",
    no_args_is_help=True,
)


@app.command("fetch")
@user_errors_exit_2
def fetch(
    dataset: str = typer.Argument("mnist", help=f"{DATASET_NAMES}."),
    to: Optional[Path] = typer.Option(None, "--to", help="Folder to fill (default: the cache, "
                                      "$BIOPROP_CACHE_DIR/DATASET or ~/.cache/bioprop/datasets/DATASET)."),
) -> None:
    """Download the dataset's canonical files that the folder lacks, verify them, and check the folder."""
    from bioprop_cli.datasets.download import fetch_dataset

    report_folder(dataset, fetch_dataset(dataset, to))


@app.command("list")
@user_errors_exit_2
def list_datasets() -> None:
    """The datasets bioprop reads: name, classes, image shape, splits, and the files a data folder holds."""
    for name, entry in REGISTRY.items():
        classes = entry.num_classes if entry.num_classes is not None else "from the file"
        shape = "x".join(map(str, entry.image_shape)) if entry.image_shape else "from the file"
        splits = ", ".join(f"{split} {n}" for split, n in entry.split_sizes.items()) or "from the file"
        console.print(f"{name:<14} {classes} classes, {shape} images, {splits}: {entry.title}; files: "
                      f"{entry.folder_contents}", markup=False, highlight=False, soft_wrap=True)


@app.command("check")
@user_errors_exit_2
def check(
    folder: Path = typer.Argument(..., help="Folder holding the dataset's files (`bioprop data list` says which); "
                                  "for npz, the .npz file."),
    dataset: str = typer.Option("mnist", "--dataset", "-d", help=f"{DATASET_NAMES}."),
) -> None:
    """List the dataset's files that the folder holds intact, lacks, or holds altered (exit 2 unless all intact)."""
    check_dataset_name(dataset)
    report_folder(dataset, folder)


def report_folder(dataset: str, folder: Path) -> None:
    checks = check_data_folder(dataset, folder)
    for file in checks:
        detail = {"found": f"{file.path}", "missing": file.wanted_text,
                  "mismatch": f"{file.path}: {file.problem}"}[file.status]
        console.print(f"{file.status:<9} {detail}", markup=False, highlight=False, soft_wrap=True)
    missing = sum(file.status == "missing" for file in checks)
    mismatching = sum(file.status == "mismatch" for file in checks)
    if missing or mismatching:
        raise UserError(f"{folder}: {missing} missing and {mismatching} altered of the {len(checks)} {dataset} checks; "
                        f"delete any altered file and run `bioprop data fetch {dataset} --to {folder}`")
    verdict = ("the canonical {dataset} files, verified" if all(file.checksummed for file in checks) else
               "the {dataset} files pass every check (sizes, labels, the split: the extracted files have no published "
               "checksum to compare)")
    console.print(f"{folder}: {verdict.format(dataset=dataset)}", markup=False, highlight=False, soft_wrap=True)
