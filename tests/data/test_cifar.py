"""CIFAR-10: the binary reader on generated files of exactly the published format, its sources (folders, the
archive, a download from a local server), the refusal of the pickled version, per-channel normalisation and the
crop-and-flip augmentation inside the compiled epoch."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import sys
import tarfile
from pathlib import Path

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

from bioprop_cli import cifar, data
from bioprop_cli.augment import PAD, crop_flip
from bioprop_cli.cifar import BATCH_FILES, TEST_BATCH, TRAIN_BATCHES, Layout
from bioprop_cli.cli import app
from bioprop_cli.config import load_config
from bioprop_cli.data import DataFolder, Dataset
from bioprop_cli.datasets import REGISTRY, load_dataset
from bioprop_cli.errors import UserError
from bioprop_cli.runs import RunWriter, read_jsonl
from bioprop_cli.splits import make_splits
from bioprop_cli.train import train, train_group
from helpers import REPO_ROOT, assert_nothing_written, assert_user_error, FileServer

CIFAR10_ARCHIVE, CIFAR10_FOLDER = cifar.CANONICAL.archive, cifar.CANONICAL.folder

RECORDS = 10  # per batch file in the generated folders: one image of each class in the test batch
SMALL = Layout(records_per_batch=RECORDS)
SHAPE = (32, 32, 3)


# --- generated files ---------------------------------------------------------------------------------------------


def make_batches(records: int = RECORDS, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{batch file: (labels (n,) uint8, planes (n, 3, 32, 32) uint8)}: random images, each class equally often."""
    rng = np.random.default_rng(seed)
    return {name: (rng.permutation(np.arange(records) % 10).astype(np.uint8),
                   rng.integers(0, 256, (records, 3, 32, 32), dtype=np.uint8)) for name in BATCH_FILES}


def batch_bytes(labels: np.ndarray, planes: np.ndarray) -> bytes:
    """The published record layout: the label byte, then the red, green and blue planes, each row-major."""
    return np.concatenate([labels[:, None], planes.reshape(len(labels), -1)], axis=1).astype(np.uint8).tobytes()


def write_folder(folder: Path, batches: dict, skip: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (labels, planes) in batches.items():
        if name != skip:
            (folder / name).write_bytes(batch_bytes(labels, planes))
    return folder


def archive_bytes(batches: dict, skip: str = "") -> bytes:
    """A gzip-compressed tar like the published one: the batch files (and readme, meta) under cifar-10-batches-bin/."""
    members = {name: batch_bytes(*arrays) for name, arrays in batches.items() if name != skip}
    members["batches.meta.txt"] = b"airplane\nautomobile\n"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(f"{CIFAR10_FOLDER}/{name}")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def write_archive(folder: Path, raw: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CIFAR10_ARCHIVE).write_bytes(raw)
    return folder


def md5(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


def expected_images(batches: dict, names) -> np.ndarray:
    """Flat channel-last uint8 pixels of the batches, the reader's output, computed independently."""
    planes = np.concatenate([batches[name][1] for name in names])
    return np.moveaxis(planes, 1, -1).reshape(len(planes), -1)


def read(folder: Path, layout: Layout = SMALL, origin: str = "data_dir"):
    return cifar.read_source(cifar.find_binary_source(DataFolder(folder, origin)), layout)


def message_of(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message and message
    return message


@pytest.fixture
def small_files(monkeypatch):
    """Make the generated size the canonical one: layout(raw archive bytes or None) sets cifar.CANONICAL."""

    def use(archive: bytes | None = None, records: int = RECORDS) -> Layout:
        layout = Layout(records, md5(archive) if archive is not None else cifar.ARCHIVE_MD5)
        monkeypatch.setattr(cifar, "CANONICAL", layout)
        return layout

    return use


@pytest.fixture
def only_local(monkeypatch, tmp_path):
    """No data folder from the environment, no TensorFlow: the cache or a download only."""
    monkeypatch.delenv("BIOPROP_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    return tmp_path


# --- reading good files ------------------------------------------------------------------------------------------


def test_the_published_facts():
    assert cifar.ARCHIVE_MD5 == "c32a1d4ab5d03f1284b67883e8d87530"  # the CIFAR page's md5sum of the binary version
    assert cifar.RECORD_BYTES == 3073 and cifar.CANONICAL.records_per_batch == 10000
    assert REGISTRY["cifar10"].image_shape == SHAPE and REGISTRY["cifar10"].num_classes == 10


def test_a_record_is_red_green_blue_planes_stored_row_major():
    """A hand-made record: red holds the row, green the column, blue a constant; it comes out (H, W, C)."""
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    red, green, blue = rows.astype(np.uint8).tobytes(), (cols + 100).astype(np.uint8).tobytes(), bytes([200]) * 1024
    record = bytes([7]) + red + green + blue
    labels, images = cifar.parse_batch("hand-made", record, Layout(records_per_batch=1))
    assert labels[:, 0].tolist() == [7] and images.shape == (1, 32, 32, 3)
    assert images[0, 5, 9].tolist() == [5, 109, 200] and images[0, 31, 0].tolist() == [31, 100, 200]
    flat = data.scale_images(images)[0]
    assert flat[:6].tolist() == pytest.approx([0, 100 / 255, 200 / 255, 0, 101 / 255, 200 / 255])  # pixel (0,0), (0,1)


def test_a_good_folder(tmp_path):
    batches = make_batches()
    read_back = read(write_folder(tmp_path / CIFAR10_FOLDER, batches))
    for name in BATCH_FILES:
        np.testing.assert_array_equal(read_back[name][0][:, 0], batches[name][0])
        np.testing.assert_array_equal(read_back[name][1], np.moveaxis(batches[name][1], 1, -1))


def test_load_dataset_from_a_folder_holding_the_batch_folder(tmp_path, small_files):
    small_files()
    batches = make_batches()
    write_folder(tmp_path / CIFAR10_FOLDER, batches)
    dataset = load_dataset("cifar10", tmp_path)
    assert dataset.name == "cifar10" and dataset.x_train.shape == (5 * RECORDS, 3072)
    assert dataset.x_train.dtype == np.uint8 and dataset.y_train.dtype == np.int32
    np.testing.assert_array_equal(dataset.x_train, expected_images(batches, TRAIN_BATCHES))  # batches 1..5 in order
    np.testing.assert_array_equal(dataset.x_test, expected_images(batches, [TEST_BATCH]))
    np.testing.assert_array_equal(dataset.y_train, np.concatenate([batches[n][0] for n in TRAIN_BATCHES]))
    assert dataset.source == f"files in {tmp_path / CIFAR10_FOLDER} (from data_dir)"


def test_load_dataset_from_the_batch_folder_itself(tmp_path, small_files):
    small_files()
    folder = write_folder(tmp_path / "batches", make_batches())
    assert load_dataset("cifar10", folder).source == f"files in {folder} (from data_dir)"


def test_a_good_archive_is_read_without_extracting(tmp_path, small_files):
    batches = make_batches()
    raw = archive_bytes(batches)
    small_files(raw)
    folder = write_archive(tmp_path / "d", raw)
    dataset = load_dataset("cifar10", folder)
    np.testing.assert_array_equal(dataset.x_train, expected_images(batches, TRAIN_BATCHES))
    np.testing.assert_array_equal(dataset.y_test, batches[TEST_BATCH][0])
    assert sorted(p.name for p in folder.iterdir()) == [CIFAR10_ARCHIVE]  # nothing extracted


def test_the_archive_wins_over_the_extracted_folder(tmp_path, small_files):
    raw = archive_bytes(make_batches(seed=1))
    small_files(raw)
    write_folder(tmp_path / CIFAR10_FOLDER, make_batches(seed=2))
    write_archive(tmp_path, raw)
    dataset = load_dataset("cifar10", tmp_path)
    assert dataset.source.startswith(f"files in {tmp_path / CIFAR10_ARCHIVE}")
    np.testing.assert_array_equal(dataset.x_test, expected_images(make_batches(seed=1), [TEST_BATCH]))


# --- bad files ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 3073 * RECORDS - 1, 1000])
def test_a_truncated_batch_file(tmp_path, keep):
    folder = write_folder(tmp_path / "b", make_batches())
    (folder / "data_batch_3.bin").write_bytes((folder / "data_batch_3.bin").read_bytes()[:keep])
    with pytest.raises(UserError) as excinfo:
        read(folder)
    assert message_of(excinfo).startswith(f"{folder / 'data_batch_3.bin'}: truncated: found only {keep} bytes, "
                                          f"expected exactly {3073 * RECORDS}")


def test_a_batch_file_of_the_wrong_size(tmp_path):
    folder = write_folder(tmp_path / "b", make_batches())
    with (folder / TEST_BATCH).open("ab") as file:
        file.write(bytes(3073))  # one record too many
    with pytest.raises(UserError) as excinfo:
        read(folder)
    assert f"{folder / TEST_BATCH}: found {3073 * (RECORDS + 1)} bytes, expected exactly {3073 * RECORDS}" in (
        message_of(excinfo))


def test_the_canonical_size_is_exactly_10000_records(tmp_path):
    folder = write_folder(tmp_path / "b", make_batches())
    with pytest.raises(UserError) as excinfo:
        read(folder, cifar.CANONICAL)
    assert f"{folder / 'data_batch_1.bin'}: truncated: found only {3073 * RECORDS} bytes, expected exactly 30730000 " \
           "(10000 records of 1 label byte and 3072 pixel bytes)" in message_of(excinfo)


def test_a_bad_label_byte(tmp_path):
    batches = make_batches()
    batches["data_batch_2.bin"][0][4] = 10
    folder = write_folder(tmp_path / "b", batches)
    with pytest.raises(UserError) as excinfo:
        read(folder)
    assert f"{folder / 'data_batch_2.bin'}: label byte 10 in record 4, expected 0..9" in message_of(excinfo)


@pytest.mark.parametrize("batch, where, counts", [
    (TEST_BATCH, TEST_BATCH, [1, 1, 1, 0, 2, 1, 1, 1, 1, 1]),
    ("data_batch_5.bin", "the five training batches", [5, 5, 5, 4, 6, 5, 5, 5, 5, 5]),
])
def test_the_published_split_holds_each_class_equally_often(tmp_path, batch, where, counts):
    batches = make_batches()
    labels = batches[batch][0]
    labels[labels == 3] = 4  # a valid label byte, a wrong split
    folder = write_folder(tmp_path / "b", batches)
    with pytest.raises(UserError) as excinfo:
        read(folder)
    assert f"{folder}: images per class in {where}: {counts}, expected {counts[0]} of each" in message_of(excinfo)


def test_tensorflow_datasets_arrays_must_have_cifar_shapes():
    wrong = Dataset("cifar10", np.zeros((2, 3072), np.float32), np.zeros(2, np.int32), np.zeros((2, 3072), np.float32),
                    np.zeros(2, np.int32), source="tensorflow-datasets")
    with pytest.raises(UserError) as excinfo:
        data.check_tfds_shapes(wrong, REGISTRY["cifar10"])
    assert "x_train of shape 2x3072, expected 50000x3072" in message_of(excinfo)


def test_a_missing_batch_file(tmp_path):
    folder = write_folder(tmp_path / "b", make_batches(), skip="data_batch_5.bin")
    with pytest.raises(UserError) as excinfo:
        read(folder)
    message = message_of(excinfo)
    assert message.startswith(f"{folder}: missing data_batch_5.bin;") and "cifar-10-binary.tar.gz" in message


def test_an_archive_with_the_wrong_checksum(tmp_path):
    folder = write_archive(tmp_path, archive_bytes(make_batches()))
    with pytest.raises(UserError) as excinfo:
        read(folder, Layout(RECORDS))  # the published checksum
    message = message_of(excinfo)
    assert message.startswith(f"{folder / CIFAR10_ARCHIVE}: MD5 is {md5((folder / CIFAR10_ARCHIVE).read_bytes())}, "
                              "expected c32a1d4ab5d03f1284b67883e8d87530")


def test_a_truncated_archive_fails_its_checksum(tmp_path):
    raw = archive_bytes(make_batches())
    folder = write_archive(tmp_path, raw[: len(raw) // 2])
    with pytest.raises(UserError) as excinfo:
        read(folder, Layout(RECORDS, md5(raw)))
    assert f"MD5 is {md5(raw[: len(raw) // 2])}, expected {md5(raw)}" in message_of(excinfo)


def test_an_archive_missing_a_member(tmp_path):
    raw = archive_bytes(make_batches(), skip=TEST_BATCH)
    folder = write_archive(tmp_path, raw)
    with pytest.raises(UserError) as excinfo:
        read(folder, Layout(RECORDS, md5(raw)))
    assert f"{folder / CIFAR10_ARCHIVE}: the archive has no member {CIFAR10_FOLDER}/{TEST_BATCH};" in (
        message_of(excinfo))


def test_an_archive_member_with_a_bad_label(tmp_path):
    batches = make_batches()
    batches["data_batch_1.bin"][0][0] = 255
    raw = archive_bytes(batches)
    folder = write_archive(tmp_path, raw)
    with pytest.raises(UserError) as excinfo:
        read(folder, Layout(RECORDS, md5(raw)))
    assert (f"{folder / CIFAR10_ARCHIVE} member {CIFAR10_FOLDER}/data_batch_1.bin: label byte 255 in record 0"
            in message_of(excinfo))


def test_not_a_tar_archive(tmp_path):
    raw = b"not a gzip file at all"
    folder = write_archive(tmp_path, raw)
    with pytest.raises(UserError) as excinfo:
        read(folder, Layout(RECORDS, md5(raw)))
    assert "expected a complete gzip-compressed tar archive" in message_of(excinfo)


def test_a_folder_without_cifar(tmp_path):
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(UserError) as excinfo:
        read(tmp_path)
    assert message_of(excinfo).startswith(f"{tmp_path} (given by data_dir): holds neither {CIFAR10_ARCHIVE} nor "
                                          f"{CIFAR10_FOLDER}/")


# --- the pickled version: refused, never opened ------------------------------------------------------------------


class Trap:
    """Unpickling this touches a file: the proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def write_python_version(tmp_path: Path, form: str) -> tuple[Path, Path]:
    """(the folder to read, the marker file that unpickling would create)."""
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(Trap(marker))
    if form == "archive":
        (tmp_path / "cifar-10-python.tar.gz").write_bytes(payload)
        return tmp_path, marker
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    for name in ("data_batch_1", "data_batch_2", "test_batch", "batches.meta"):
        (batches / name).write_bytes(payload)
    return (batches if form == "batches itself" else tmp_path), marker


@pytest.mark.parametrize("form", ["archive", "batches folder", "batches itself"])
def test_the_python_version_is_refused_unread(tmp_path, form):
    folder, marker = write_python_version(tmp_path, form)
    with pytest.raises(UserError) as excinfo:
        read(folder)
    message = message_of(excinfo)
    assert "the python version of CIFAR-10" in message and "binary version cifar-10-binary.tar.gz" in message
    assert not marker.exists()
    assert pickle.loads(pickle.dumps(Trap(marker))) is None and marker.exists()  # the trap works


# --- the CLI -----------------------------------------------------------------------------------------------------


TRAIN = ["train", "--rule", "fa", "--depth", "1", "--width", "16", "--epochs", "1", "--batch-size", "10",
         "--no-progress", "--set", "data.dataset=cifar10", "--set", "data.validation_size=10",
         "--set", "alignment.probe_size=8"]


def bad_folder(tmp_path: Path, problem: str) -> tuple[Path, str]:
    """A generated CIFAR-10 folder with one problem, and what the error line must say."""
    batches = make_batches()
    folder = tmp_path / "bad"
    if problem == "truncated":
        write_folder(folder, batches)
        (folder / "data_batch_4.bin").write_bytes(bytes(100))
        return folder, f"{folder / 'data_batch_4.bin'}: truncated: found only 100 bytes"
    if problem == "bad label":
        batches[TEST_BATCH][0][9] = 12
        write_folder(folder, batches)
        return folder, f"{folder / TEST_BATCH}: label byte 12 in record 9"
    if problem == "missing":
        write_folder(folder, batches, skip="data_batch_1.bin")
        return folder, f"{folder}: missing data_batch_1.bin"
    if problem == "checksum":
        write_archive(folder, archive_bytes(batches))
        return folder, f"{folder / CIFAR10_ARCHIVE}: MD5 is "
    folder.mkdir()
    return write_python_version(folder, "archive")[0], "the python version of CIFAR-10"


@pytest.mark.parametrize("problem", ["truncated", "bad label", "missing", "checksum", "pickled"])
def test_train_refuses_bad_files_with_one_line(tmp_path, small_files, problem):
    small_files()
    folder, fragment = bad_folder(tmp_path, problem)
    results = tmp_path / "results"
    result = CliRunner().invoke(app, [*TRAIN, "--data-dir", str(folder), "--results-dir", str(results)])
    assert_user_error(result, fragment)
    assert_nothing_written(results)


def test_train_refuses_a_folder_of_the_wrong_size(tmp_path):
    """The generated batches are not the published 10000 records: the size check catches it."""
    folder = write_folder(tmp_path / "b", make_batches())
    result = CliRunner().invoke(app, [*TRAIN, "--data-dir", str(folder), "--results-dir", str(tmp_path / "r")])
    assert_user_error(result, f"{folder / 'data_batch_1.bin'}: truncated", "expected exactly 30730000")


def test_an_mlp_trains_on_cifar_with_augmentation_end_to_end(tmp_path, small_files):
    small_files(records=20)
    folder = write_folder(tmp_path / "cifar", make_batches(records=20))
    results = tmp_path / "results"
    result = CliRunner().invoke(app, [*TRAIN, "--data-dir", str(folder), "--results-dir", str(results),
                                      "--set", "data.augment=crop_flip", "--set", "data.normalization=per_channel"])
    assert result.exit_code == 0, (result.output, result.exception)
    (run,) = (results / "default").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["layer_sizes"] == [3072, 16, 10]
    assert summary["n_train"] == 90 and summary["n_test"] == 20
    metrics = read_jsonl(run / "metrics.jsonl")
    assert len(metrics) == 1 and np.isfinite(metrics[0]["train_loss"]) and metrics[0]["test_accuracy"] is not None


# --- download, `data fetch`, `data check` ------------------------------------------------------------------------


@pytest.fixture
def serve(monkeypatch):
    servers = []

    def start(raw: bytes) -> FileServer:
        server = FileServer({f"cifar10/{CIFAR10_ARCHIVE}": raw}).__enter__()
        servers.append(server)
        monkeypatch.setenv("BIOPROP_DOWNLOAD_URL", server.url)
        return server

    yield start
    for server in servers:
        server.__exit__()


def test_the_official_url():
    from bioprop_cli.datasets.download import SOURCES

    source = SOURCES["cifar10"]
    assert [mirror + file for mirror in source.mirrors for file in source.files] == [
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"]


def test_download_verifies_caches_and_loads(only_local, serve, small_files):
    batches = make_batches()
    raw = archive_bytes(batches)
    small_files(raw)
    server = serve(raw)
    dataset = load_dataset("cifar10")
    cache = data.cache_folder("cifar10")
    assert server.requests == [f"/cifar10/{CIFAR10_ARCHIVE}"]
    assert sorted(p.name for p in cache.iterdir()) == [CIFAR10_ARCHIVE]
    assert (cache / CIFAR10_ARCHIVE).read_bytes() == raw
    assert dataset.source == f"files in {cache / CIFAR10_ARCHIVE} (from {data.CACHE_ORIGIN})"
    np.testing.assert_array_equal(dataset.x_test, expected_images(batches, [TEST_BATCH]))
    load_dataset("cifar10")
    assert len(server.requests) == 1  # the cache, from then on


def test_a_download_with_the_wrong_checksum_is_refused_and_not_cached(only_local, serve, small_files):
    raw = archive_bytes(make_batches())
    small_files(raw)
    serve(archive_bytes(make_batches(seed=5)))
    with pytest.raises(UserError) as excinfo:
        load_dataset("cifar10")
    message = message_of(excinfo)
    assert f"/cifar10/{CIFAR10_ARCHIVE}: MD5 is" in message and f"expected {md5(raw)}" in message
    cache = data.cache_folder("cifar10")
    assert f"put {CIFAR10_ARCHIVE} or its extracted folder {CIFAR10_FOLDER}/" in message and str(cache) in message
    assert not cache.exists() or list(cache.iterdir()) == []


def test_data_fetch_and_check(only_local, serve, small_files, tmp_path):
    raw = archive_bytes(make_batches())
    small_files(raw)
    server = serve(raw)
    target = tmp_path / "login-node"
    result = CliRunner().invoke(app, ["data", "fetch", "cifar10", "--to", str(target)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.splitlines()[0] == f"found     {target / CIFAR10_ARCHIVE}"
    assert CliRunner().invoke(app, ["data", "fetch", "cifar10", "--to", str(target)]).exit_code == 0
    assert len(server.requests) == 1
    result = CliRunner().invoke(app, ["data", "check", str(target), "--dataset", "cifar10"])
    assert result.exit_code == 0 and "the canonical cifar10 files, verified" in result.stdout


def test_data_fetch_is_a_no_op_for_a_folder_holding_the_extracted_batches(small_files, tmp_path, monkeypatch):
    small_files()
    write_folder(tmp_path / CIFAR10_FOLDER, make_batches())
    result = CliRunner().invoke(app, ["data", "fetch", "cifar10", "--to", str(tmp_path)])  # the port is closed
    assert result.exit_code == 0, (result.output, result.exception)
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["found"] * 7 + [f"{tmp_path}:"]
    assert "the cifar10 files pass every check" in result.stdout and "no published checksum" in result.stdout


def test_data_check_names_each_bad_batch_file(small_files, tmp_path):
    small_files()
    batches = make_batches()
    batches["data_batch_2.bin"][0][0] = 11
    folder = write_folder(tmp_path / "b", batches, skip=TEST_BATCH)
    result = CliRunner().invoke(app, ["data", "check", str(folder), "--dataset", "cifar10"])
    assert_user_error(result, "1 missing and 1 altered")
    assert f"mismatch  {folder / 'data_batch_2.bin'}: label byte 11 in record 0" in result.stdout
    assert f"missing   {TEST_BATCH}" in result.stdout and result.stdout.count("found") == 4


def test_data_check_checks_the_split_of_intact_files(small_files, tmp_path):
    small_files()
    batches = make_batches()
    batches["data_batch_1.bin"][0][:] = 0  # valid labels, every one a 0
    folder = write_folder(tmp_path / "b", batches)
    result = CliRunner().invoke(app, ["data", "check", str(folder), "--dataset", "cifar10"])
    assert_user_error(result, "0 missing and 1 altered of the 7 cifar10 checks")
    assert result.stdout.count("found") == 6
    assert f"mismatch  {folder}: images per class in the five training batches: [14, 4, 4" in result.stdout


def test_data_check_refuses_the_python_version(tmp_path):
    folder, marker = write_python_version(tmp_path, "batches folder")
    assert_user_error(CliRunner().invoke(app, ["data", "check", str(folder), "--dataset", "cifar10"]),
                      "the python version of CIFAR-10")
    assert not marker.exists()


# --- per-channel normalisation -----------------------------------------------------------------------------------


def fake_cifar(n_train: int = 120, n_test: int = 40, seed: int = 0) -> Dataset:
    """Images whose three channels have different means and spreads, and labels, in memory."""
    rng = np.random.default_rng(seed)

    def images(n):
        pixels = rng.random((n, 32, 32, 3), dtype=np.float32) * np.float32([0.2, 0.5, 1.0]) + np.float32([0.7, 0.3, 0])
        return pixels.reshape(n, -1)

    return Dataset("cifar10", images(n_train), rng.integers(0, 10, n_train).astype(np.int32), images(n_test),
                   rng.integers(0, 10, n_test).astype(np.int32), source="generated (tests)")


def cifar_config(**overrides):
    base = {"data.dataset": "cifar10", "data.validation_size": 40, "model.width": 16, "model.depth": 1,
            "train.batch_size": 20, "train.epochs": 2, "alignment.enabled": False, "train.eval_batch_size": 40}
    return load_config(overrides=list({**base, **overrides}.items()))


def per_channel(x) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(x, np.float64).reshape(-1, 3)
    return values.mean(axis=0), values.std(axis=0)


def test_per_channel_normalisation_uses_the_training_split_only():
    dataset = fake_cifar()
    splits = make_splits(cifar_config(**{"data.normalization": "per_channel"}), dataset)
    mean, std = per_channel(splits.x_train)
    np.testing.assert_allclose(mean, 0, atol=1e-6)
    np.testing.assert_allclose(std, 1, rtol=1e-5)
    train_mean, train_std = per_channel(dataset.x_train[:80])  # the training split: before the 40 held out
    np.testing.assert_allclose(np.asarray(splits.x_test).reshape(-1, 3),
                               (dataset.x_test.reshape(-1, 3) - train_mean) / train_std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(splits.x_val).reshape(-1, 3),
                               (dataset.x_train[80:].reshape(-1, 3) - train_mean) / train_std, rtol=1e-5, atol=1e-5)
    assert np.abs(per_channel(splits.x_test)[0]).max() > 1e-3  # another split's own statistics are not used


def test_given_normalisation_uses_the_given_constants():
    """Laborieux et al.'s Normalize(mean=(0.4914, 0.4822, 0.4465), std=(3*0.2023, 3*0.1994, 3*0.2010)) on every split."""
    mean, std = (0.4914, 0.4822, 0.4465), (3 * 0.2023, 3 * 0.1994, 3 * 0.2010)
    dataset = fake_cifar()
    splits = make_splits(cifar_config(**{"data.normalization": "given", "data.channel_mean": list(mean),
                                         "data.channel_std": list(std)}), dataset)
    for got, raw in ((splits.x_train, dataset.x_train[:80]), (splits.x_test, dataset.x_test)):
        np.testing.assert_allclose(np.asarray(got).reshape(-1, 3), (raw.reshape(-1, 3) - mean) / std, rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("overrides, key", [
    ({"data.normalization": "given", "data.channel_mean": [0.5], "data.channel_std": [1, 1, 1]}, "data.channel_mean"),
    ({"data.normalization": "given", "data.channel_mean": [0, 0, 0], "data.channel_std": [1, 0, 1]}, "data.channel_std"),
    ({"data.channel_mean": [0.5, 0.5, 0.5]}, "data.channel_mean"),
    ({"data.crop_padding": "edge"}, "data.crop_padding"),
])
def test_normalisation_constants_and_crop_padding_are_checked(overrides, key):
    with pytest.raises(UserError, match=key):
        cifar_config(**overrides)


def test_no_normalisation_leaves_the_pixels_as_they_are():
    dataset = fake_cifar()
    splits = make_splits(cifar_config(), dataset)
    np.testing.assert_array_equal(np.asarray(splits.x_train), dataset.x_train[:80])
    np.testing.assert_array_equal(np.asarray(splits.x_test), dataset.x_test)


# --- augmentation ------------------------------------------------------------------------------------------------


def distinct_images(n: int = 256) -> np.ndarray:
    """Flat images of pixels in [0.1, 1): no zeros but the padding's, no two windows alike."""
    return (np.random.default_rng(3).random((n, 32 * 32 * 3), dtype=np.float32) * 0.9 + 0.1).astype(np.float32)


def identify(original: np.ndarray, augmented: np.ndarray, mode: str = "constant") -> list[tuple[int, int, bool]]:
    """Each (row offset, column offset, flipped) into the zero-padded image (np.pad's `mode`) that reproduces
    `augmented` exactly."""
    padded = np.pad(original.reshape(SHAPE), ((PAD, PAD), (PAD, PAD), (0, 0)), mode=mode)
    out = augmented.reshape(SHAPE)
    windows = {(dy, dx): padded[dy:dy + 32, dx:dx + 32] for dy in range(2 * PAD + 1) for dx in range(2 * PAD + 1)}
    return [(dy, dx, flip) for (dy, dx), window in windows.items() for flip in (False, True)
            if np.array_equal(out, window[:, ::-1] if flip else window)]


def test_crop_flip_is_a_shifted_window_of_the_zero_padded_image_maybe_mirrored():
    x = distinct_images()
    out = np.asarray(jax.jit(crop_flip, static_argnums=2)(jax.random.PRNGKey(0), x, SHAPE))
    assert out.shape == x.shape and out.dtype == x.dtype
    draws = []
    for original, augmented in zip(x, out):
        matches = identify(original, augmented)
        assert len(matches) == 1, matches
        draws.append(matches[0])
    offsets = {(dy, dx) for dy, dx, _ in draws}
    flipped = sum(flip for _, _, flip in draws)
    assert len(offsets) > 70 and {0, 2 * PAD} <= {dy for dy, _ in offsets}  # the 81 offsets, the extremes too
    assert 0.4 < flipped / len(draws) < 0.6
    top_left = out[[d == (0, 0, False) for d in draws]].reshape(-1, *SHAPE)  # the window at the padding's corner
    assert len(top_left) and np.all(top_left[:, :PAD] == 0) and np.all(top_left[:, :, :PAD] == 0)
    assert np.all(top_left[:, PAD:, PAD:] > 0)


def test_edge_padding_crops_from_the_image_with_its_border_pixels_repeated():
    """data.crop_padding edge: torchvision's RandomCrop(padding=4, padding_mode='edge'), Laborieux et al.'s."""
    x = distinct_images(64)
    out = np.asarray(crop_flip(jax.random.PRNGKey(0), x, SHAPE, "edge"))
    draws = [identify(original, augmented, mode="edge") for original, augmented in zip(x, out)]
    assert all(len(d) == 1 for d in draws) and not np.any(out == 0)
    assert any(d[0][:2] != (PAD, PAD) for d in draws)
    assert not all(len(identify(original, augmented)) for original, augmented in zip(x, out))  # not zero padding


def test_a_flip_is_exactly_a_mirror():
    x = distinct_images(64)
    out = np.asarray(crop_flip(jax.random.PRNGKey(1), x, SHAPE)).reshape(-1, *SHAPE)
    for original, augmented in zip(x.reshape(-1, *SHAPE), out):
        (dy, dx, flip), = identify(original.reshape(-1), augmented.reshape(-1))
        if (dy, dx) == (PAD, PAD):  # no shift: the image itself, or its mirror image
            np.testing.assert_array_equal(augmented, original[:, ::-1] if flip else original)


def test_crop_flip_is_deterministic_per_key():
    x = distinct_images(32)
    first = np.asarray(crop_flip(jax.random.PRNGKey(7), x, SHAPE))
    np.testing.assert_array_equal(first, np.asarray(crop_flip(jax.random.PRNGKey(7), x, SHAPE)))
    assert not np.array_equal(first, np.asarray(crop_flip(jax.random.PRNGKey(8), x, SHAPE)))


def writer(folder: Path) -> RunWriter:
    folder.mkdir(parents=True)
    return RunWriter(folder)


def train_losses(folder: Path) -> list[float]:
    return [m["train_loss"] for m in read_jsonl(folder / "metrics.jsonl")]


def test_training_sees_augmented_batches_and_seeds_trained_together_augment_as_they_do_alone(tmp_path):
    """Augmentation changes the batches training sees; vmapped over seeds, each run draws its augmentation
    from its own keys: its losses are those of its run alone (to the rounding of batched matrix products)."""
    dataset = fake_cifar()
    configs = [cifar_config(seed=s, **{"data.augment": "crop_flip", "data.normalization": "per_channel"})
               for s in (0, 1)]
    together = train_group(configs, dataset, [writer(tmp_path / f"run{s}") for s in (0, 1)])
    alone = train(configs[1], dataset, writer(tmp_path / "alone"))
    plain = train(cifar_config(seed=1, **{"data.normalization": "per_channel"}), dataset, writer(tmp_path / "plain"))
    assert plain["status"] == alone["status"] == "completed"
    assert train_losses(tmp_path / "plain")[0] != train_losses(tmp_path / "alone")[0]  # the same run, not augmented
    assert together[1]["runs_trained_together"] == 2
    assert train_losses(tmp_path / "run1") == pytest.approx(train_losses(tmp_path / "alone"), rel=1e-5)
    assert train_losses(tmp_path / "run0") != pytest.approx(train_losses(tmp_path / "run1"), rel=1e-3)


def test_the_example_config():
    config = load_config(REPO_ROOT / "configs" / "cifar10_mlp.yaml")
    assert (config.data.dataset, config.data.normalization, config.data.augment) == ("cifar10", "per_channel",
                                                                                      "crop_flip")


def test_the_laborieux_config_trains_in_their_units(tmp_path):
    """configs/experiments/ep_cnn_cifar10_laborieux.yaml (their neurons, readout, init, constants, edge crops, the
    per-layer cosine stepped per epoch) runs end to end, at toy widths and settling lengths, on the fake images."""
    path = REPO_ROOT / "configs" / "experiments" / "ep_cnn_cifar10_laborieux.yaml"
    small = {"model.cnn.channels": [4, 4, 4, 4], "ep.free_steps": 4, "ep.nudged_steps": 2, "train.epochs": 2,
             "train.batch_size": 20, "train.eval_batch_size": 40, "alignment.enabled": False,
             "data.validation_size": 40, "results_dir": str(tmp_path)}
    config = load_config(path, list(small.items()))
    assert (config.ep.dynamics, config.model.activation, config.data.crop_padding) == ("primitive",
                                                                                       "half_slope_hard_sigmoid", "edge")
    summary = train(config, fake_cifar(), writer(tmp_path / "run"))
    assert summary["status"] == "completed"
    losses = train_losses(tmp_path / "run")
    assert len(losses) == 2 and all(np.isfinite(losses))
