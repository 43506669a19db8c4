"""Download a dataset's canonical files into a folder (by default bioprop's cache), verified, atomically.

Each file is fetched from the dataset's published locations in turn (``SOURCES``), or only from
``$BIOPROP_DOWNLOAD_URL/<dataset>/`` when that variable is set (an institutional mirror over http(s), a local
``file://`` folder, or a test server). A file is streamed into a hidden temporary file next to its destination,
verified with the checks of ``bioprop_cli.data`` (MD5 of the uncompressed content, shape, label range) or, for
CIFAR-10's binary archive, ``bioprop_cli.cifar`` (the archive's published MD5, its members), and only then renamed
to its name. The temporary ``.part`` file is removed on every way out (an error, a stall, a checksum mismatch,
Ctrl-C, SIGTERM or SIGHUP, which stop a download at once); only a process killed outright (SIGKILL) leaves one,
which no loader reads. A mirror that sends nothing for ``Patience.read_timeout_s``, or less than
``Patience.min_rate_bytes_per_s`` on average over a ``Patience.rate_window_s`` window, is given up for the next.
Files already present are not fetched again.
"""

from __future__ import annotations

import functools
import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

from rich.console import Console
from rich.progress import (
    BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeRemainingColumn, TransferSpeedColumn,
)

from bioprop_cli.data import BadDataFile, cache_folder, one_line
from bioprop_cli.datasets.registry import REGISTRY, info
from bioprop_cli.datasets.base import DownloadSource
from bioprop_cli.interrupt import stopped_at_once
from bioprop_cli.errors import UserError
from bioprop_cli.runs import atomic_file

DOWNLOAD_URL_ENV_VAR = "BIOPROP_DOWNLOAD_URL"
READ_TIMEOUT_S = 30  # per connection attempt and per read
MIN_RATE_BYTES_PER_S = 1000  # a stalled or trickling mirror, not a slow link: CIFAR-10 at this rate takes 45 h
RATE_WINDOW_S = 60
CHUNK_BYTES = 1 << 16


@dataclass(frozen=True)
class Patience:
    """How long a mirror may keep a download waiting before it is given up for the next."""
    read_timeout_s: float = READ_TIMEOUT_S  # no byte at all for this long
    min_rate_bytes_per_s: float = MIN_RATE_BYTES_PER_S  # on average over each successive window of
    rate_window_s: float = RATE_WINDOW_S  # seconds


class SlowDownload(Exception):
    """A mirror that stalls or trickles; the message says how far it got."""


# {dataset: where its files are published and how each is verified}: each dataset module's (bioprop_cli/datasets/)
SOURCES = MappingProxyType({name: entry.download for name, entry in REGISTRY.items() if entry.download is not None})


def mirrors_for(dataset: str) -> list[str]:
    base = os.environ.get(DOWNLOAD_URL_ENV_VAR, "")
    if base:
        check_mirror_url(base)
        return [f"{base.rstrip('/')}/{dataset}/"]
    if not SOURCES[dataset].mirrors:
        raise UserError(f"{dataset} has no public download ({', '.join(SOURCES[dataset].files)} come from "
                        f"image-net.org after a login); put them in {cache_folder(dataset)}, point --data-dir / "
                        f"BIOPROP_DATA_DIR at their folder, or set {DOWNLOAD_URL_ENV_VAR} to a mirror")
    return list(SOURCES[dataset].mirrors)


def check_mirror_url(base: str) -> None:
    """Raises UserError unless `base` is an http(s) URL with a host or a file:// URL of a local folder."""
    if not is_mirror_url(base):
        raise UserError(f"{DOWNLOAD_URL_ENV_VAR}={base!r} is not a mirror URL: allowed are http://HOST/PATH, "
                        "https://HOST/PATH or file:///FOLDER (serving <dataset>/<file>, say "
                        "BASE/mnist/train-images-idx3-ubyte.gz)")


def is_mirror_url(base: str) -> bool:
    if any(c.isspace() or not c.isprintable() for c in base):
        return False
    try:
        parts = urllib.parse.urlsplit(base)
        port_ok = parts.port is None or parts.port >= 0  # .port raises ValueError for http://host:abc/
    except ValueError:  # urlsplit's, for http://[::1
        return False
    if parts.scheme == "file":
        return parts.netloc in ("", "localhost") and parts.path.startswith("/")
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port_ok


def missing_files(dataset: str, folder: Path) -> list[str]:
    """The published files of `dataset` that `folder` lacks."""
    source = SOURCES[dataset]
    return [name for name in source.files if not source.present(folder, name)]


def fetch_dataset(dataset: str, folder: str | os.PathLike | None = None, patience: Patience = Patience()) -> Path:
    """Download the files of `dataset` that `folder` (default: its cache folder) lacks; return the folder."""
    if info(dataset).download is None:
        raise UserError(f"{dataset}: nothing to download ({info(dataset).folder_contents})")
    folder = cache_folder(dataset) if folder is None else Path(folder).expanduser()
    missing = missing_files(dataset, folder)
    if not missing:
        return folder
    mirrors = mirrors_for(dataset)
    make_folder(folder, dataset, missing)
    with stopped_at_once(), download_progress() as progress:
        for position, file_name in enumerate(missing):
            used = fetch_file(dataset, file_name, mirrors, folder, progress, patience,
                              still_missing=missing[position:])
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
               patience: Patience, still_missing: list[str]) -> str:
    """Download, verify and store one file from the first mirror that serves it intact; return that mirror."""
    failures = []
    for mirror in mirrors:
        url = mirror + file_name
        try:
            store_verified(url, folder / file_name, progress, patience,
                           functools.partial(SOURCES[dataset].verify, dataset, url, file_name))
            return mirror
        except BadDataFile as error:
            failures.append(f"{url}: {error.problem}")
        except SlowDownload as error:
            failures.append(f"{url}: {error}")
        except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, a connection cut short
            failures.append(f"{url}: {describe_failure(error)}")
    raise UserError(f"could not download {dataset} file {file_name} ({'; '.join(failures)}); "
                    f"{where_to_put(dataset, still_missing, folder)}")


def where_to_put(dataset: str, missing: list[str], folder: Path) -> str:
    if dataset in ("mnist", "fashion_mnist"):
        return (f"put {', '.join(missing)} (the canonical {dataset} files, each plain or .gz) in {folder}, "
                "or point --data-dir / BIOPROP_DATA_DIR at a folder holding all four")
    return (f"put {info(dataset).folder_contents} in {folder}, "
            "or point --data-dir / BIOPROP_DATA_DIR at a folder holding it")


def store_verified(url: str, destination: Path, progress: Progress, patience: Patience,
                   verify: Callable[[bytes], None]) -> None:
    """Stream `url` into a hidden temporary file beside `destination`, verify it, then rename it into place.
    atomic_file removes the temporary file whatever the block raises, KeyboardInterrupt included."""
    with atomic_file(destination, "w+b", suffix=".part") as file:
        if url.startswith("file:"):
            copy_local(url, file, progress, destination.name, patience)
        else:
            stream_into(url, file, progress, destination.name, patience)
        file.seek(0)
        verify(file.read())


def copy_local(url: str, file: BinaryIO, progress: Progress, label: str, patience: Patience) -> None:
    """A file:// mirror: the file at that local path, copied as a download is."""
    with open(urllib.request.url2pathname(urllib.parse.urlsplit(url).path), "rb") as source:
        copy_chunks(source.read1, file, progress.add_task(label, total=os.fstat(source.fileno()).st_size),
                    progress, patience)


def stream_into(url: str, file: BinaryIO, progress: Progress, label: str, patience: Patience) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "bioprop"})
    try:
        response = urllib.request.urlopen(request, timeout=patience.read_timeout_s)
    except TimeoutError:  # connected, but no answer (a refused or unreachable host is a URLError)
        raise SlowDownload(f"no answer within {patience.read_timeout_s:g} s") from None
    with response:
        expected = response.length  # None when the server does not say
        received = copy_chunks(response.read1, file, progress.add_task(label, total=expected), progress, patience)
    if expected is not None and received < expected:
        raise http.client.IncompleteRead(b"", expected - received)


def copy_chunks(read1: Callable[[int], bytes], file: BinaryIO, task: TaskID, progress: Progress,
                patience: Patience) -> int:
    """Copy until `read1` (which returns what has arrived, not a whole chunk) returns nothing, advancing the
    progress bar at every read; return the number of bytes. Raises SlowDownload on a stall or a trickle."""
    received = 0
    window_start, window_received = time.monotonic(), 0
    while True:
        try:
            chunk = read1(CHUNK_BYTES)
        except TimeoutError:
            raise SlowDownload(f"no data for {patience.read_timeout_s:g} s after {received} bytes") from None
        if not chunk:
            return received
        file.write(chunk)
        received += len(chunk)
        progress.update(task, completed=received)
        now = time.monotonic()
        if now - window_start >= patience.rate_window_s:
            check_rate(received, received - window_received, now - window_start, patience)
            window_start, window_received = now, received


def check_rate(received: int, in_window: int, window_s: float, patience: Patience) -> None:
    rate = in_window / window_s
    if rate < patience.min_rate_bytes_per_s:
        raise SlowDownload(f"too slow: {in_window} bytes in the last {window_s:.1f} s ({rate:.1f} bytes/s, "
                           f"{received} bytes in all), below the minimum {patience.min_rate_bytes_per_s:g} "
                           f"bytes/s averaged over {patience.rate_window_s:g} s")


def describe_failure(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"cannot connect ({one_line(error.reason) if isinstance(error.reason, BaseException) else error.reason})"
    if isinstance(error, http.client.IncompleteRead):
        return f"the connection closed {error.expected} bytes before the end of the file"
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return f"{type(error).__name__}: {one_line(error)}"
