"""Downloads into the cache, from a local HTTP server on 127.0.0.1 (no test reaches beyond this machine)."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
from typer.testing import CliRunner

from bioprop_cli import data, datasets, interrupt
from bioprop_cli.datasets import download
from bioprop_cli.datasets import mnist
from bioprop_cli.datasets.idx import holds_idx_file
from bioprop_cli.cli import app
from bioprop_cli.data import IDX_FILE_NAMES
from bioprop_cli.datasets import load_dataset
from bioprop_cli.errors import UserError
from helpers import FileServer

GZ_FILES = tuple(f"{name}.gz" for name in IDX_FILE_NAMES)
TRAIN_LABELS_GZ = "train-labels-idx1-ubyte.gz"



def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def mnist_gz(mnist_dir) -> dict[str, bytes]:
    """The four real MNIST files, gzip-compressed, by published file name."""
    folder = Path(mnist_dir)
    return {f"{name}.gz": (folder / f"{name}.gz").read_bytes() if (folder / f"{name}.gz").is_file()
            else gzip.compress((folder / name).read_bytes()) for name in IDX_FILE_NAMES}


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    """A fresh cache, and no other source of MNIST: no data folder, no tensorflow-datasets copy, no Debian package."""
    monkeypatch.delenv("BIOPROP_DATA_DIR", raising=False)
    monkeypatch.setenv("BIOPROP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if TensorFlow were not installed
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian-package")
    return tmp_path / "cache"


@pytest.fixture
def serve(monkeypatch, cache):
    """serve(files) starts a FileServer with those files under mnist/ and points BIOPROP_DOWNLOAD_URL at it."""
    servers = []

    def start(files: dict[str, bytes]) -> FileServer:
        server = FileServer({f"mnist/{name}": body for name, body in files.items()}).__enter__()
        servers.append(server)
        monkeypatch.setenv("BIOPROP_DOWNLOAD_URL", server.url + "/")
        return server

    yield start
    for server in servers:
        server.__exit__()


def altered_labels(mnist_gz: dict[str, bytes]) -> bytes:
    """train-labels with one label changed: a valid gzip of a valid IDX file, with the wrong MD5."""
    content = bytearray(gzip.decompress(mnist_gz[TRAIN_LABELS_GZ]))
    content[8] = (content[8] + 1) % 10
    return gzip.compress(bytes(content))


def files_in(folder: Path) -> list[str]:
    """Every entry, hidden ones included (a leftover temporary file must show)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def one_line(message: str) -> str:
    assert "\n" not in message.strip() and message.strip(), repr(message)
    return message


def cli_error(result) -> str:
    """The one stderr line of a user error (exit 2, no traceback)."""
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# --- loading: download once, then the cache ----------------------------------------------------------------------


def test_download_verifies_caches_and_loads(serve, cache, mnist_gz):
    server = serve(mnist_gz)
    dataset = load_dataset("mnist")
    assert sorted(server.requests) == sorted(f"/mnist/{name}" for name in GZ_FILES)
    assert files_in(cache / "mnist") == sorted(GZ_FILES)  # no temporary file left
    assert all((cache / "mnist" / name).read_bytes() == mnist_gz[name] for name in GZ_FILES)
    assert dataset.source == f"files in {cache / 'mnist'} (from {data.CACHE_ORIGIN})"
    assert dataset.x_train.shape == (60000, 784) and np.bincount(dataset.y_train)[1] == 6742

    load_dataset("mnist")
    assert len(server.requests) == 4  # the next run reads the cache


def test_an_incomplete_cache_gets_only_its_missing_files(serve, cache, mnist_gz):
    (cache / "mnist").mkdir(parents=True)
    for name in GZ_FILES[:2]:
        (cache / "mnist" / name).write_bytes(mnist_gz[name])
    killed = cache / "mnist" / f".{GZ_FILES[2]}.x1y2z3.part"  # what a download killed half-way leaves
    killed.write_bytes(mnist_gz[GZ_FILES[2]][:1000])
    assert datasets.locate_data_folder("mnist", None) is None
    server = serve(mnist_gz)
    load_dataset("mnist")
    assert sorted(server.requests) == sorted(f"/mnist/{name}" for name in GZ_FILES[2:])


def test_a_corrupt_file_is_refused_and_not_cached(serve, cache, mnist_gz):
    serve({**mnist_gz, TRAIN_LABELS_GZ: altered_labels(mnist_gz)})
    with pytest.raises(UserError) as excinfo:
        load_dataset("mnist")
    message = one_line(str(excinfo.value))
    assert f"/mnist/{TRAIN_LABELS_GZ}: MD5 of the uncompressed content" in message
    assert mnist.MD5["train-labels-idx1-ubyte"] in message
    assert f"in {cache / 'mnist'}" in message
    assert TRAIN_LABELS_GZ not in files_in(cache / "mnist")
    assert not any(name.endswith(".part") for name in files_in(cache / "mnist"))


def test_a_server_that_dies_half_way_leaves_no_partial_file(serve, cache):
    server = serve({name: gzip.compress(bytes(1000)) for name in GZ_FILES})
    server.cut_short.add(f"mnist/{GZ_FILES[0]}")
    with pytest.raises(UserError) as excinfo:
        load_dataset("mnist")
    message = one_line(str(excinfo.value))
    assert f"/mnist/{GZ_FILES[0]}: the connection closed" in message
    assert files_in(cache / "mnist") == []


def test_offline_error_says_which_files_to_put_where(monkeypatch, cache):
    monkeypatch.setenv("BIOPROP_DOWNLOAD_URL", closed_port_url())
    with pytest.raises(UserError) as excinfo:
        load_dataset("mnist")
    message = one_line(str(excinfo.value))
    assert "cannot connect" in message
    assert f"put {', '.join(GZ_FILES)} (the canonical mnist files, each plain or .gz) in {cache / 'mnist'}" in message
    assert "BIOPROP_DATA_DIR" in message


def test_the_next_mirror_is_tried_and_then_tried_first(monkeypatch, cache, mnist_gz):
    monkeypatch.delenv("BIOPROP_DOWNLOAD_URL")
    with FileServer({}) as empty, FileServer({f"mnist/{name}": body for name, body in mnist_gz.items()}) as full:
        source = download.DownloadSource(mirrors=(f"{empty.url}/mnist/", f"{full.url}/mnist/"), files=GZ_FILES,
                                         verify=mnist.FILES.verify, present=holds_idx_file)
        monkeypatch.setattr(download, "SOURCES", MappingProxyType({"mnist": source}))
        download.fetch_dataset("mnist")
    assert empty.requests == [f"/mnist/{GZ_FILES[0]}"]  # answered 404 once; the other files came from `full` first
    assert len(full.requests) == 4 and files_in(cache / "mnist") == sorted(GZ_FILES)


def test_every_idx_dataset_has_a_fallback_mirror():
    """The other archives have one published location, their authors' page (tests/data/test_cifar.py), or none
    (imagenet32/64: image-net.org after a login; npz: the user's file)."""
    assert set(download.SOURCES) == set(datasets.NAMES) - {"npz"}
    for name, source in download.SOURCES.items():
        assert len(source.mirrors) >= (2 if name in ("mnist", "fashion_mnist") else 0 if "imagenet" in name else 1)
        assert all(m.endswith("/") for m in source.mirrors)


# --- what a mirror may be, and mirrors that stall or trickle ---------------------------------------------------


def test_a_file_mirror_is_read_and_verified(monkeypatch, cache, mnist_gz, tmp_path):
    mirror = tmp_path / "mirror"
    write_mnist_folder(mnist_gz, mirror / "mnist", skip="")
    monkeypatch.setenv("BIOPROP_DOWNLOAD_URL", (mirror / "x").as_uri().removesuffix("x"))  # file:///.../mirror/
    download.fetch_dataset("mnist")
    assert all((cache / "mnist" / name).read_bytes() == mnist_gz[name] for name in GZ_FILES)
    assert files_in(cache / "mnist") == sorted(GZ_FILES)


def test_a_file_mirror_with_a_corrupt_or_missing_file(monkeypatch, cache, mnist_gz, tmp_path):
    folder = write_mnist_folder(mnist_gz, tmp_path / "mirror" / "mnist", skip=GZ_FILES[0])
    (folder / TRAIN_LABELS_GZ).write_bytes(altered_labels(mnist_gz))
    monkeypatch.setenv("BIOPROP_DOWNLOAD_URL", f"file://{tmp_path / 'mirror'}")
    with pytest.raises(UserError) as excinfo:
        download.fetch_dataset("mnist")
    assert f"file://{folder / GZ_FILES[0]}: no such file" in one_line(str(excinfo.value))
    (folder / GZ_FILES[0]).write_bytes(mnist_gz[GZ_FILES[0]])
    with pytest.raises(UserError) as excinfo:
        download.fetch_dataset("mnist")
    assert f"file://{folder / TRAIN_LABELS_GZ}: MD5 of the uncompressed content" in one_line(str(excinfo.value))
    assert files_in(cache / "mnist") == [GZ_FILES[0]]  # the intact file kept, no .part


@pytest.mark.parametrize("url", ["not a url", "127.0.0.1:8000/data", "/srv/mirror", "ftp://example.org/pub",
                                 "http://", "https:///mnist", "http://127.0.0.1:port/", "http://127.0.0.1:99999/",
                                 "http://[::1/", "file://otherhost/srv", "file:", "http://exa mple.org/",
                                 "http://example.org/\tx"])
def test_a_download_url_that_is_not_a_mirror_is_one_line(monkeypatch, tmp_path, url):
    monkeypatch.setenv("BIOPROP_DOWNLOAD_URL", url)
    line = cli_error(CliRunner().invoke(app, ["data", "fetch", "--to", str(tmp_path / "d")]))
    assert f"BIOPROP_DOWNLOAD_URL={url!r} is not a mirror URL" in line
    assert "http://HOST/PATH, https://HOST/PATH or file:///FOLDER" in line
    assert not (tmp_path / "d").exists()


def test_the_accepted_download_urls():
    for url in ["http://127.0.0.1:8000", "https://mirror.example.org/datasets/", "http://[::1]:8000/",
                "file:///srv/mirror", "file://localhost/srv/mirror/"]:
        download.check_mirror_url(url)


def test_a_trickling_mirror_is_given_up_with_how_far_it_got(serve, cache, mnist_gz):
    server = serve(mnist_gz)
    server.trickle[f"mnist/{GZ_FILES[0]}"] = 0.01
    patience = download.Patience(read_timeout_s=10, min_rate_bytes_per_s=1e6, rate_window_s=0.2)
    with pytest.raises(UserError) as excinfo:
        download.fetch_dataset("mnist", patience=patience)
    message = one_line(str(excinfo.value))
    assert f"{server.url}/mnist/{GZ_FILES[0]}: too slow: " in message
    assert "bytes/s, " in message and " bytes in all), below the minimum 1e+06 bytes/s averaged over 0.2 s" in message
    assert files_in(cache / "mnist") == []


def test_a_stalled_mirror_is_given_up_after_the_read_timeout(serve, cache, mnist_gz):
    server = serve(mnist_gz)
    server.trickle[f"mnist/{GZ_FILES[0]}"] = 3600  # one byte, then nothing
    with pytest.raises(UserError) as excinfo:
        download.fetch_dataset("mnist", patience=download.Patience(read_timeout_s=0.2))
    assert f"{server.url}/mnist/{GZ_FILES[0]}: no data for 0.2 s after 1 bytes" in one_line(str(excinfo.value))
    assert files_in(cache / "mnist") == []


def test_an_interrupt_inside_the_download_loop_leaves_no_partial_file(monkeypatch, serve, cache, mnist_gz):
    serve(mnist_gz)

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "check_rate", interrupt)  # called after the first chunk, with a window of 0 s
    with pytest.raises(KeyboardInterrupt):
        download.fetch_dataset("mnist", patience=download.Patience(rate_window_s=0))
    assert files_in(cache / "mnist") == []


def test_ctrl_c_stops_a_stalled_download_under_a_handler_that_only_sets_a_flag(serve, cache, mnist_gz):
    """A command's SIGINT handler may only set a flag for safe points; a download waiting on a stalled mirror
    must stop at the first Ctrl-C all the same, remove its .part file, and give the command its handler back."""
    pressed = []
    flag_only = lambda signum, frame: pressed.append(signum)
    server = serve(mnist_gz)
    server.trickle[f"mnist/{GZ_FILES[0]}"] = 3600  # one byte, then nothing
    server.after_first_byte = lambda: os.kill(os.getpid(), signal.SIGINT)
    before, sigterm_before = signal.signal(signal.SIGINT, flag_only), signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(KeyboardInterrupt):
            download.fetch_dataset("mnist", patience=download.Patience(read_timeout_s=60))
        assert signal.getsignal(signal.SIGINT) is flag_only and pressed == []
        assert signal.getsignal(signal.SIGTERM) is sigterm_before
    finally:
        signal.signal(signal.SIGINT, before)
    assert files_in(cache / "mnist") == []


def test_only_the_first_signal_stops_a_download():
    """A second signal must not cut the removal of the .part file short."""
    stop = interrupt.StopOnce()
    with pytest.raises(KeyboardInterrupt):
        stop(signal.SIGINT, None)
    assert stop(signal.SIGINT, None) is None and stop(signal.SIGTERM, None) is None
    with pytest.raises(SystemExit) as excinfo:
        interrupt.StopOnce()(signal.SIGTERM, None)
    assert excinfo.value.code == 143


# `python -m bioprop_cli` with Python's own SIGINT handler even where the test runner ignores SIGINT
LAUNCH = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
          "sys.argv[0] = 'bioprop'; runpy.run_module('bioprop_cli', run_name='__main__')")


@pytest.mark.slow  # a subprocess per try (signals, kill -9, Ray, forced devices): CI runs -m slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_kill_during_data_fetch_exits_128_plus_the_signal_and_leaves_no_partial_file(
        serve, cache, mnist_gz, tmp_path, signum):
    server = serve(mnist_gz)
    server.trickle[f"mnist/{GZ_FILES[0]}"] = 0.05
    folder = tmp_path / "d"
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, "data", "fetch", "--to", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 120
    while not (server.requests and any(name.endswith(".part") for name in files_in(folder))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == 128 + signum
    assert b"Traceback" not in proc.stderr.read()
    assert files_in(folder) == []


# --- the CLI -----------------------------------------------------------------------------------------------------


TRAIN_ARGS = ["train", "--rule", "fa", "--depth", "1", "--epochs", "1", "--width", "16", "--batch-size", "50",
              "--no-progress", "--set", "data.train_limit=600", "--set", "data.validation_size=100",
              "--set", "data.test_limit=100", "--set", "alignment.probe_size=16"]


def test_train_on_a_fresh_machine_downloads_once(serve, cache, mnist_gz, tmp_path):
    server = serve(mnist_gz)
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(app, [*TRAIN_ARGS, "--results-dir", str(tmp_path / "results")])
        assert result.exit_code == 0, (result.output, result.exception)
    assert len(server.requests) == 4  # the second run read the cache
    runs = sorted((tmp_path / "results" / "default").iterdir())
    assert len(runs) == 2
    assert all(json.loads((run / "summary.json").read_text())["status"] == "completed" for run in runs)


def test_train_refuses_a_corrupt_download(serve, cache, mnist_gz, tmp_path):
    serve({**mnist_gz, TRAIN_LABELS_GZ: altered_labels(mnist_gz)})
    result = CliRunner().invoke(app, [*TRAIN_ARGS, "--results-dir", str(tmp_path / "results")])
    line = cli_error(result)
    assert TRAIN_LABELS_GZ in line and "MD5" in line
    assert TRAIN_LABELS_GZ not in files_in(cache / "mnist")
    assert not (tmp_path / "results").exists()


def test_data_fetch_to_a_folder(serve, cache, mnist_gz, tmp_path):
    server = serve(mnist_gz)
    result = CliRunner().invoke(app, ["data", "fetch", "mnist", "--to", str(tmp_path / "login-node")])
    assert result.exit_code == 0, (result.output, result.exception)
    assert files_in(tmp_path / "login-node") == sorted(GZ_FILES) and len(server.requests) == 4
    assert [line.split()[0] for line in result.stdout.splitlines()[:4]] == ["found"] * 4
    assert result.stderr == ""  # no progress bar off a terminal
    assert not cache.exists()


def test_data_fetch_fills_the_cache_and_is_then_a_no_op(serve, cache, mnist_gz):
    server = serve(mnist_gz)
    runner = CliRunner()
    assert runner.invoke(app, ["data", "fetch"]).exit_code == 0
    assert runner.invoke(app, ["data", "fetch"]).exit_code == 0
    assert len(server.requests) == 4 and files_in(cache / "mnist") == sorted(GZ_FILES)


def test_data_fetch_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("BIOPROP_DOWNLOAD_URL", closed_port_url())
    line = cli_error(CliRunner().invoke(app, ["data", "fetch", "fashion_mnist", "--to", str(tmp_path / "d")]))
    assert f"in {tmp_path / 'd'}" in line and all(name in line for name in GZ_FILES)
    assert files_in(tmp_path / "d") == []


def test_data_fetch_unknown_dataset(tmp_path):
    line = cli_error(CliRunner().invoke(app, ["data", "fetch", "cifar1000", "--to", str(tmp_path / "d")]))
    assert "cifar1000" in line and "mnist, fashion_mnist" in line
    assert not (tmp_path / "d").exists()


def write_mnist_folder(mnist_gz: dict[str, bytes], folder: Path, skip: str) -> Path:
    folder.mkdir(parents=True)
    for name, body in mnist_gz.items():
        if name != skip:
            (folder / name).write_bytes(body)
    return folder


def test_data_check_a_good_folder(mnist_dir):
    result = CliRunner().invoke(app, ["data", "check", mnist_dir])
    assert result.exit_code == 0, (result.output, result.exception)
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["found"] * 4 + [mnist_dir + ":"]


def test_data_check_a_folder_missing_a_file(mnist_gz, tmp_path):
    folder = write_mnist_folder(mnist_gz, tmp_path / "d", skip=TRAIN_LABELS_GZ)
    result = CliRunner().invoke(app, ["data", "check", str(folder)])
    line = cli_error(result)
    assert "1 missing and 0 altered" in line
    assert "missing   train-labels-idx1-ubyte (or train-labels-idx1-ubyte.gz)" in result.stdout
    assert result.stdout.count("found") == 3


def test_data_check_a_corrupt_file(mnist_gz, tmp_path):
    folder = write_mnist_folder(mnist_gz, tmp_path / "d", skip="")
    (folder / TRAIN_LABELS_GZ).write_bytes(altered_labels(mnist_gz))
    result = CliRunner().invoke(app, ["data", "check", str(folder)])
    assert "0 missing and 1 altered" in cli_error(result)
    assert f"mismatch  {folder / TRAIN_LABELS_GZ}: MD5 of the uncompressed content" in result.stdout


def test_data_check_against_the_other_dataset(mnist_dir):
    result = CliRunner().invoke(app, ["data", "check", mnist_dir, "--dataset", "fashion_mnist"])
    assert "0 missing and 4 altered" in cli_error(result)
