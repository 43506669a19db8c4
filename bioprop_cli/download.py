"""Download a dataset's canonical files into a folder (by default bioprop's cache), verified, atomically.

Each file is fetched from the dataset's published locations in turn (``SOURCES``), or only from
``$BIOPROP_DOWNLOAD_URL/<dataset>/`` when that variable is set (an institutional mirror, or a test server). A file
is streamed into a hidden temporary file next to its destination, verified with the checks of
``bioprop_cli.data`` (MD5 of the uncompressed content, shape, label range) or, for CIFAR-10's binary archive,
``bioprop_cli.cifar`` (the archive's published MD5, its members), and only then renamed to its name: a
download killed half-way leaves at most a hidden ``.part`` file, which no loader reads. Files already present are
not fetched again.
"""

from __future__ import annotations

import functools
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from bioprop_cli import cifar
from bioprop_cli.data import (
    CIFAR10_ARCHIVE,
    IDX_FILE_NAMES,
    BadDataFile,
    canonical_specs,
    cache_folder,
    check_dataset_name,
    existing_idx_file,
    folder_contents,
    one_line,
    verify_idx_bytes,
)
from bioprop_cli.errors import UserError
from bioprop_cli.runs import atomic_file

DOWNLOAD_URL_ENV_VAR = "BIOPROP_DOWNLOAD_URL"
TIMEOUT_S = 30  # per connection attempt and per read
CHUNK_BYTES = 1 << 16


def verify_gzipped_idx(dataset: str, source: str, file_name: str, raw: bytes) -> None:
    """Raises BadDataFile unless `raw` is the gzip of the canonical IDX file `file_name` (minus .gz) of `dataset`."""
    verify_idx_bytes(source, raw, True, canonical_specs(dataset)[file_name.removesuffix(".gz")])


def holds_idx_file(folder: Path, file_name: str) -> bool:
    """A plain IDX file stands for its .gz."""
    return existing_idx_file(folder, file_name.removesuffix(".gz")) is not None


def verify_cifar_archive(dataset: str, source: str, file_name: str, raw: bytes) -> None:
    cifar.verify_archive_bytes(source, raw, cifar.CANONICAL)


def holds_cifar(folder: Path, file_name: str) -> bool:
    """The archive, or its extracted batch files, in the folder."""
    return cifar.binary_source(folder) is not None


@dataclass(frozen=True)
class DownloadSource:
    mirrors: tuple[str, ...]  # folder URLs, tried in order; a file is found at <mirror><file name>
    files: tuple[str, ...]  # file names as published, stored under the same names
    # (dataset, source named in errors, file name, bytes as downloaded) -> None, or raises BadDataFile.
    verify: Callable[[str, str, str, bytes], None]
    # (folder, file name) -> whether the folder holds that file, or what stands for it
    present: Callable[[Path, str], bool]


IDX_GZ_FILES = tuple(f"{base_name}.gz" for base_name in IDX_FILE_NAMES)

SOURCES = MappingProxyType({
    "mnist": DownloadSource(
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's
                 "https://storage.googleapis.com/cvdf-datasets/mnist/"),  # Google's CVDF mirror
        files=IDX_GZ_FILES,
        verify=verify_gzipped_idx,
        present=holds_idx_file,
    ),
    "fashion_mnist": DownloadSource(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # Zalando's
                 "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
        files=IDX_GZ_FILES,
        verify=verify_gzipped_idx,
        present=holds_idx_file,
    ),
    "cifar10": DownloadSource(
        mirrors=("https://www.cs.toronto.edu/~kriz/",),  # the authors' page: the one published location
        files=(CIFAR10_ARCHIVE,),
        verify=verify_cifar_archive,
        present=holds_cifar,
    ),
})


def mirrors_for(dataset: str) -> list[str]:
    base = os.environ.get(DOWNLOAD_URL_ENV_VAR, "")
    if base:
        return [f"{base.rstrip('/')}/{dataset}/"]
    return list(SOURCES[dataset].mirrors)


def missing_files(dataset: str, folder: Path) -> list[str]:
    """The published files of `dataset` that `folder` lacks."""
    source = SOURCES[dataset]
    return [name for name in source.files if not source.present(folder, name)]


def fetch_dataset(dataset: str, folder: str | os.PathLike | None = None) -> Path:
    """Download the files of `dataset` that `folder` (default: its cache folder) lacks; return the folder."""
    check_dataset_name(dataset)
    folder = cache_folder(dataset) if folder is None else Path(folder).expanduser()
    missing = missing_files(dataset, folder)
    if not missing:
        return folder
    make_folder(folder, dataset, missing)
    mirrors = mirrors_for(dataset)
    with download_progress() as progress:
        for position, file_name in enumerate(missing):
            used = fetch_file(dataset, file_name, mirrors, folder, progress, still_missing=missing[position:])
            mirrors.remove(used)
            mirrors.insert(0, used)  # the next file tries first the mirror that answered
    return folder


def make_folder(folder: Path, dataset: str, missing: list[str]) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the data folder {folder} ({error.strerror or error}); "
                        f"{where_to_put(dataset, missing, folder)}") from None


def download_progress() -> Progress:
    """A bar per file on stderr, shown on a terminal only."""
    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=console, disable=not console.is_terminal)


def fetch_file(dataset: str, file_name: str, mirrors: list[str], folder: Path, progress: Progress,
               still_missing: list[str]) -> str:
    """Download, verify and store one file from the first mirror that serves it intact; return that mirror."""
    failures = []
    for mirror in mirrors:
        url = mirror + file_name
        try:
            store_verified(url, folder / file_name, progress,
                           functools.partial(SOURCES[dataset].verify, dataset, url, file_name))
            return mirror
        except BadDataFile as error:
            failures.append(f"{url}: {error.problem}")
        except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, a connection cut short
            failures.append(f"{url}: {describe_failure(error)}")
    raise UserError(f"could not download {dataset} file {file_name} ({'; '.join(failures)}); "
                    f"{where_to_put(dataset, still_missing, folder)}")


def where_to_put(dataset: str, missing: list[str], folder: Path) -> str:
    if dataset == "cifar10":
        return (f"put {folder_contents(dataset)} in {folder}, "
                "or point --data-dir / BIOPROP_DATA_DIR at a folder holding it")
    return (f"put {', '.join(missing)} (the canonical {dataset} files, each plain or .gz) in {folder}, "
            "or point --data-dir / BIOPROP_DATA_DIR at a folder holding all four")


def store_verified(url: str, destination: Path, progress: Progress, verify: Callable[[bytes], None]) -> None:
    """Stream `url` into a hidden temporary file beside `destination`, verify it, then rename it into place."""
    with atomic_file(destination, "w+b", suffix=".part") as file:
        stream_into(url, file, progress, destination.name)
        file.seek(0)
        verify(file.read())


def stream_into(url: str, file: BinaryIO, progress: Progress, label: str) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "bioprop"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        expected = response.length  # None when the server does not say
        task = progress.add_task(label, total=expected)
        received = 0
        while chunk := response.read(CHUNK_BYTES):
            file.write(chunk)
            received += len(chunk)
            progress.update(task, completed=received)
    if expected is not None and received < expected:
        raise http.client.IncompleteRead(b"", expected - received)


def describe_failure(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"cannot connect ({one_line(error.reason) if isinstance(error.reason, BaseException) else error.reason})"
    if isinstance(error, http.client.IncompleteRead):
        return f"the connection closed {error.expected} bytes before the end of the file"
    if isinstance(error, TimeoutError):
        return f"no answer within {TIMEOUT_S} s"
    return f"{type(error).__name__}: {one_line(error)}"
