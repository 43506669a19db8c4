"""Tests for bioprop_cli.data: IDX parsing and verification on small fake files, source selection, real data."""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from bioprop_cli import data, datasets
from bioprop_cli.data import (
    Dataset,
    FileSpec,
    load_idx_folder,
    scale_images,
)
from bioprop_cli.datasets import NAMES as DATASETS, load_dataset, locate_data_folder
from bioprop_cli.errors import UserError

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


# --- helpers -----------------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    magic = (0x08 << 8) | array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + np.asarray(array.shape, dtype=">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_file(folder: Path, base_name: str, content: bytes, gz: bool) -> Path:
    path = folder / (base_name + ".gz" if gz else base_name)
    path.write_bytes(gzip.compress(content) if gz else content)
    return path


def fake_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        TRAIN_IMAGES: rng.integers(0, 256, size=(6, 4, 4), dtype=np.uint8),
        TRAIN_LABELS: rng.integers(0, 10, size=(6,), dtype=np.uint8),
        TEST_IMAGES: rng.integers(0, 256, size=(3, 4, 4), dtype=np.uint8),
        TEST_LABELS: rng.integers(0, 10, size=(3,), dtype=np.uint8),
    }


def spec_for(content: bytes, array: np.ndarray, base_name: str) -> FileSpec:
    max_value = 9 if "labels" in base_name else 255
    return FileSpec(hashlib.md5(content).hexdigest(), array.shape, max_value)


def write_fake_folder(folder: Path, gz: bool = False, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, FileSpec]]:
    """Four small valid IDX files in `folder`; returns the arrays and the matching specs."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = fake_arrays(seed)
    specs = {}
    for base_name, array in arrays.items():
        content = idx_bytes(array)
        write_file(folder, base_name, content, gz)
        specs[base_name] = spec_for(content, array, base_name)
    return arrays, specs


def user_error_message(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, f"message is not one line: {message!r}"
    assert message.strip() == message and message
    return message


# --- loading valid fake files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_loads_valid_files(tmp_path, gz):
    arrays, specs = write_fake_folder(tmp_path, gz=gz)
    loaded = load_idx_folder(tmp_path, specs)
    assert set(loaded) == set(arrays)
    for base_name, array in arrays.items():
        assert loaded[base_name].dtype == np.uint8
        np.testing.assert_array_equal(loaded[base_name], array)


def test_mixed_plain_and_gzip_files(tmp_path):
    arrays, specs = write_fake_folder(tmp_path, gz=True)
    plain = tmp_path / (TRAIN_LABELS + ".gz")
    write_file(tmp_path, TRAIN_LABELS, gzip.decompress(plain.read_bytes()), gz=False)
    plain.unlink()
    loaded = load_idx_folder(tmp_path, specs)
    np.testing.assert_array_equal(loaded[TRAIN_LABELS], arrays[TRAIN_LABELS])


def test_plain_file_wins_over_gzip(tmp_path):
    arrays, specs = write_fake_folder(tmp_path, gz=False)
    other = fake_arrays(seed=1)[TRAIN_IMAGES]
    write_file(tmp_path, TRAIN_IMAGES, idx_bytes(other), gz=True)  # would fail the md5 check if read
    loaded = load_idx_folder(tmp_path, specs)
    np.testing.assert_array_equal(loaded[TRAIN_IMAGES], arrays[TRAIN_IMAGES])


def test_scale_images_flattens_to_float32_in_unit_range():
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    scaled = scale_images(images)
    assert scaled.dtype == np.float32 and scaled.shape == (1, 4)
    np.testing.assert_allclose(scaled, [[0.0, 1.0, 0.2, 0.4]], rtol=1e-6)


# --- failure modes -----------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    _, specs = write_fake_folder(tmp_path)
    (tmp_path / TEST_LABELS).unlink()
    with pytest.raises(UserError) as excinfo:
        load_idx_folder(tmp_path, specs)
    message = user_error_message(excinfo)
    assert f"missing {TEST_LABELS}" in message and f"{TEST_LABELS}.gz" in message
    assert str(tmp_path) in message
    assert all(name in message for name in specs)  # says what the folder must hold


def test_wrong_md5_names_both_hashes(tmp_path):
    arrays, specs = write_fake_folder(tmp_path)
    wrong = "0" * 32
    specs[TRAIN_LABELS] = FileSpec(wrong, arrays[TRAIN_LABELS].shape, 9)
    actual = hashlib.md5((tmp_path / TRAIN_LABELS).read_bytes()).hexdigest()
    with pytest.raises(UserError) as excinfo:
        load_idx_folder(tmp_path, specs)
    message = user_error_message(excinfo)
    assert wrong in message and actual in message and TRAIN_LABELS in message
    assert "--data-dir" in message


def test_md5_is_of_uncompressed_content(tmp_path):
    """The same spec (md5 of the raw IDX bytes) accepts a .gz whatever its gzip header (here: a different mtime)."""
    arrays, specs = write_fake_folder(tmp_path, gz=False)
    content = (tmp_path / TEST_IMAGES).read_bytes()
    (tmp_path / TEST_IMAGES).unlink()
    (tmp_path / (TEST_IMAGES + ".gz")).write_bytes(gzip.compress(content, mtime=123456))
    loaded = load_idx_folder(tmp_path, specs)
    np.testing.assert_array_equal(loaded[TEST_IMAGES], arrays[TEST_IMAGES])


def test_truncated_gzip(tmp_path):
    _, specs = write_fake_folder(tmp_path, gz=True)
    path = tmp_path / (TRAIN_IMAGES + ".gz")
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(UserError) as excinfo:
        load_idx_folder(tmp_path, specs)
    message = user_error_message(excinfo)
    assert str(path) in message and "gzip" in message and "truncated or corrupt" in message
    assert "re-download" in message


def test_not_a_gzip_file_with_gz_suffix(tmp_path):
    _, specs = write_fake_folder(tmp_path, gz=True)
    path = tmp_path / (TEST_LABELS + ".gz")
    path.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(UserError) as excinfo:
        load_idx_folder(tmp_path, specs)
    message = user_error_message(excinfo)
    assert str(path) in message and "gzip" in message


def test_wrong_magic(tmp_path):
    arrays, specs = write_fake_folder(tmp_path)
    content = idx_bytes(arrays[TRAIN_LABELS], magic=0x00000802)
    write_file(tmp_path, TRAIN_LABELS, content, gz=False)
    specs[TRAIN_LABELS] = spec_for(content, arrays[TRAIN_LABELS], TRAIN_LABELS)  # md5 fine: the magic must fail
    with pytest.raises(UserError) as excinfo:
        load_idx_folder(tmp_path, specs)
    message = user_error_message(excinfo)
    assert TRAIN_LABELS in message and "0x00000801" in message and "0x00000802" in message


def test_wrong_image_count(tmp_path):
    _, specs = write_fake_folder(tmp_path)
    content = idx_bytes(np.zeros((5, 4, 4), dtype=np.uint8))
    write_file(tmp_path, TRAIN_IMAGES, content, gz=False)
    with pytest.raises(UserError) as excinfo:
        load_idx_folder(tmp_path, specs)
    message = user_error_message(excinfo)
    assert TRAIN_IMAGES in message and "6x4x4" in message and "5x4x4" in message


def test_wrong_image_size(tmp_path):
    _, specs = write_fake_folder(tmp_path)
    write_file(tmp_path, TEST_IMAGES, idx_bytes(np.zeros((3, 5, 5), dtype=np.uint8)), gz=True)
    (tmp_path / TEST_IMAGES).unlink()
    with pytest.raises(UserError) as excinfo:
        load_idx_folder(tmp_path, specs)
    message = user_error_message(excinfo)
    assert TEST_IMAGES in message and "3x4x4" in message and "3x5x5" in message


def test_label_count_mismatch(tmp_path):
    _, specs = write_fake_folder(tmp_path)
    write_file(tmp_path, TEST_LABELS, idx_bytes(np.zeros((4,), dtype=np.uint8)), gz=False)
    with pytest.raises(UserError) as excinfo:
        load_idx_folder(tmp_path, specs)
    message = user_error_message(excinfo)
    assert TEST_LABELS in message and "expected shape 3" in message and "found 4" in message


def test_label_out_of_range(tmp_path):
    arrays, specs = write_fake_folder(tmp_path)
    labels = arrays[TRAIN_LABELS].copy()
    labels[0] = 12
    content = idx_bytes(labels)
    write_file(tmp_path, TRAIN_LABELS, content, gz=False)
    specs[TRAIN_LABELS] = spec_for(content, labels, TRAIN_LABELS)
    with pytest.raises(UserError) as excinfo:
        load_idx_folder(tmp_path, specs)
    message = user_error_message(excinfo)
    assert TRAIN_LABELS in message and "0..9" in message and "12" in message


@pytest.mark.parametrize("keep_bytes", [3, 20, -5], ids=["inside-magic", "inside-header", "inside-data"])
def test_truncated_plain_file(tmp_path, keep_bytes):
    _, specs = write_fake_folder(tmp_path)
    path = tmp_path / TEST_IMAGES
    path.write_bytes(path.read_bytes()[:keep_bytes])
    with pytest.raises(UserError) as excinfo:
        load_idx_folder(tmp_path, specs)
    message = user_error_message(excinfo)
    assert str(path) in message and "expected" in message and "found" in message


def test_missing_folder(tmp_path):
    folder = tmp_path / "no-such-folder"
    with pytest.raises(UserError) as excinfo:
        load_idx_folder(folder, write_fake_folder(tmp_path / "elsewhere")[1])
    message = user_error_message(excinfo)
    assert str(folder) in message and "does not exist" in message


def test_folder_is_a_file(tmp_path):
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    with pytest.raises(UserError) as excinfo:
        load_dataset("mnist", not_a_folder)
    message = user_error_message(excinfo)
    assert str(not_a_folder) in message and "not a folder" in message


def test_unknown_dataset_name():
    with pytest.raises(UserError) as excinfo:
        load_dataset("cifar1000")
    message = user_error_message(excinfo)
    assert "cifar1000" in message and all(name in message for name in DATASETS)


def test_check_folder_reports_every_file(tmp_path):
    arrays, specs = write_fake_folder(tmp_path, gz=True)
    (tmp_path / f"{TRAIN_LABELS}.gz").unlink()
    write_file(tmp_path, TEST_IMAGES, idx_bytes(fake_arrays(seed=1)[TEST_IMAGES]), gz=False)  # wins over the .gz
    checks = {check.base_name: check for check in data.check_idx_folder(tmp_path, specs)}
    assert {name: check.status for name, check in checks.items()} == {
        TRAIN_IMAGES: "found", TRAIN_LABELS: "missing", TEST_IMAGES: "mismatch", TEST_LABELS: "found"}
    assert checks[TRAIN_IMAGES].path == tmp_path / f"{TRAIN_IMAGES}.gz" and checks[TRAIN_LABELS].path is None
    assert checks[TEST_IMAGES].path == tmp_path / TEST_IMAGES
    assert checks[TEST_IMAGES].problem.startswith("MD5 of the uncompressed content") and specs[TEST_IMAGES].md5 in (
        checks[TEST_IMAGES].problem)


# --- where the data comes from -----------------------------------------------------------------------------------


@pytest.fixture
def no_default_sources(monkeypatch, tmp_path):
    """No BIOPROP_DATA_DIR, no Debian Fashion-MNIST folder."""
    monkeypatch.delenv("BIOPROP_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian-package")


def test_env_var_is_honoured(monkeypatch, tmp_path, no_default_sources):
    env_dir = tmp_path / "from-env"
    monkeypatch.setenv("BIOPROP_DATA_DIR", str(env_dir))
    assert locate_data_folder("mnist", None).path == env_dir
    with pytest.raises(UserError) as excinfo:
        load_dataset("mnist")
    message = user_error_message(excinfo)
    assert str(env_dir) in message and "BIOPROP_DATA_DIR" in message


def test_data_dir_argument_wins_over_env_var(monkeypatch, tmp_path, no_default_sources):
    arg_dir, env_dir = tmp_path / "from-arg", tmp_path / "from-env"
    monkeypatch.setenv("BIOPROP_DATA_DIR", str(env_dir))
    assert locate_data_folder("mnist", arg_dir).path == arg_dir
    assert locate_data_folder("mnist", str(arg_dir)).origin == "data_dir"
    with pytest.raises(UserError) as excinfo:
        load_dataset("mnist", arg_dir)
    message = user_error_message(excinfo)
    assert str(arg_dir) in message and str(env_dir) not in message


def test_empty_env_var_is_ignored(monkeypatch, no_default_sources):
    monkeypatch.setenv("BIOPROP_DATA_DIR", "")
    assert locate_data_folder("mnist", None) is None


def test_debian_folder_only_for_fashion_mnist(monkeypatch, tmp_path, no_default_sources):
    debian_dir = tmp_path / "debian"
    debian_dir.mkdir()
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", debian_dir)
    assert locate_data_folder("fashion_mnist", None).path == debian_dir
    assert locate_data_folder("mnist", None) is None


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BIOPROP_CACHE_DIR", str(tmp_path / "cache"))
    assert data.cache_folder("fashion_mnist") == tmp_path / "cache" / "fashion_mnist"
    monkeypatch.delenv("BIOPROP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_folder("mnist") == tmp_path / "xdg" / "bioprop" / "datasets" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_folder("mnist") == tmp_path / "home" / ".cache" / "bioprop" / "datasets" / "mnist"


def test_cache_is_used_only_once_it_holds_every_file(tmp_path, no_default_sources):
    cached = data.cache_folder("mnist")
    write_fake_folder(cached, gz=True)
    (cached / f"{TEST_LABELS}.gz").unlink()
    assert locate_data_folder("mnist", None) is None  # an incomplete cache: the missing file must be downloaded
    write_file(cached, TEST_LABELS, idx_bytes(np.zeros(3, dtype=np.uint8)), gz=False)
    folder = locate_data_folder("mnist", None)
    assert folder.path == cached and folder.origin == data.CACHE_ORIGIN
    assert locate_data_folder("fashion_mnist", None) is None  # one folder per dataset


def test_data_folders_come_before_the_cache(monkeypatch, tmp_path, no_default_sources):
    write_fake_folder(data.cache_folder("mnist"))
    monkeypatch.setenv("BIOPROP_DATA_DIR", str(tmp_path / "from-env"))
    assert locate_data_folder("mnist", None).origin == "BIOPROP_DATA_DIR"
    assert locate_data_folder("mnist", tmp_path / "from-arg").origin == "data_dir"


def test_tfds_is_not_asked_without_tensorflow(monkeypatch):
    """tensorflow-datasets >= 4.9 reads a prepared copy only through TensorFlow, which bioprop does not install."""
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if not installed
    assert not data.tfds_has_prepared_copy("mnist")


def test_tfds_arrays_are_converted(monkeypatch, no_default_sources):
    def fake_splits(name):
        rng = np.random.default_rng(0)
        split = lambda n: (rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, n))
        return split(60000), split(10000)

    monkeypatch.setattr(datasets, "tfds_has_prepared_copy", lambda name: True)
    monkeypatch.setattr(data, "fetch_tfds_splits", fake_splits)
    dataset = load_dataset("mnist")
    assert dataset.source == "tensorflow-datasets"
    assert dataset.x_train.shape == (60000, 784) and dataset.x_train.dtype == np.uint8
    assert dataset.y_test.shape == (10000,) and dataset.y_test.dtype == np.int32


# --- real data ---------------------------------------------------------------------------------------------------


def check_real_dataset(dataset: Dataset, name: str) -> None:
    assert dataset.name == name
    assert dataset.x_train.shape == (60000, 784) and dataset.x_test.shape == (10000, 784)
    assert dataset.y_train.shape == (60000,) and dataset.y_test.shape == (10000,)
    assert dataset.x_train.dtype == np.uint8 and dataset.x_test.dtype == np.uint8  # as_float: / 255 in splits
    assert dataset.y_train.dtype == np.int32 and dataset.y_test.dtype == np.int32
    assert dataset.x_train.min() == 0 and dataset.x_train.max() == 255
    assert np.bincount(dataset.y_train, minlength=10).sum() == 60000
    assert np.bincount(dataset.y_test, minlength=10).sum() == 10000
    assert dataset.y_train.min() == 0 and dataset.y_train.max() == 9
    assert np.all(np.bincount(dataset.y_train, minlength=10) > 5000)  # every class well represented


@pytest.fixture
def real_mnist_dir() -> Path:
    folder = os.environ.get("BIOPROP_DATA_DIR", "")
    if not folder:
        pytest.skip("BIOPROP_DATA_DIR is not set; set it to the MNIST folder (e.g. ../shared/datasets/mnist)")
    return Path(folder)


def test_real_mnist_from_env_var(real_mnist_dir):
    dataset = load_dataset("mnist")
    check_real_dataset(dataset, "mnist")
    assert str(real_mnist_dir) in dataset.source and "BIOPROP_DATA_DIR" in dataset.source
    assert np.bincount(dataset.y_train, minlength=10)[1] == 6742  # the canonical MNIST class-1 count


def test_real_mnist_folder_is_not_fashion_mnist(real_mnist_dir):
    with pytest.raises(UserError) as excinfo:
        load_dataset("fashion_mnist", real_mnist_dir)
    message = user_error_message(excinfo)
    assert "f4a8712d7a061bf5bd6d2ca38dc4d50a" in message  # the expected Fashion-MNIST md5


@pytest.mark.skipif(not data.DEBIAN_FASHION_MNIST_DIR.is_dir(),
                    reason="/usr/share/datasets/fashion-mnist missing (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_from_debian_package():
    dataset = load_dataset("fashion_mnist", data.DEBIAN_FASHION_MNIST_DIR)
    check_real_dataset(dataset, "fashion_mnist")
    assert np.all(np.bincount(dataset.y_train, minlength=10) == 6000)  # Fashion-MNIST is exactly balanced
