"""The dataset registry, and each new reader on generated files of exactly the official format and layout
(smaller: the expected sizes and checksums are put in place by monkeypatch): good, truncated, wrong size, wrong
checksum, wrong label range, path-traversal members, pickles. Nothing is extracted to disk or unpickled."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bioprop_cli import cifar
from bioprop_cli.cli import app
from bioprop_cli.data import DataFolder
from bioprop_cli.errors import UserError
from bioprop_cli.datasets import NAMES, REGISTRY, facts, imagenet32, load_dataset, npz, svhn, tiny_imagenet
from bioprop_cli.datasets.base import DatasetInfo, Facts
from bioprop_cli.runs import read_jsonl


def md5(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


def message_of(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


def folder(path: Path) -> DataFolder:
    return DataFolder(path, "test")


# --- the registry -------------------------------------------------------------------------------------------------


def test_every_dataset_module_provides_the_same_facts():
    assert NAMES == ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "tiny_imagenet", "imagenet32",
                     "imagenet64", "npz")
    for name, entry in REGISTRY.items():
        assert isinstance(entry, DatasetInfo) and entry.name == name and entry.title and entry.folder_contents
        assert callable(entry.read) and callable(entry.check)
        if name == "npz":  # everything comes from the file
            assert entry.image_shape is None and entry.num_classes is None and entry.download is None
            continue
        height, width, channels = entry.image_shape
        assert height == width and channels in (1, 3) and entry.num_classes >= 10
        assert set(entry.split_sizes) >= {"train", "test"} and all(n > 0 for n in entry.split_sizes.values())
        assert entry.class_names == () or len(entry.class_names) == entry.num_classes
        assert len(set(entry.class_names)) == len(entry.class_names)
        assert entry.files and all(md5 is None or len(md5) == 32 for md5 in entry.files.values())
        assert entry.download is not None and set(entry.download.files) <= set(entry.files) | {
            f"{f}.gz" for f in entry.files}
        for stats in (entry.channel_mean, entry.channel_std):
            assert stats is None or len(stats) == channels
        assert facts(type("D", (), {"dataset": name})()) == Facts(entry.image_shape, entry.num_classes)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_the_stored_statistics_are_those_of_the_files(name, request):
    """The registry's channel mean and std: recomputed from the training images (all 60000), in float64."""
    from bioprop_cli import data

    if name == "mnist":
        where = request.getfixturevalue("mnist_dir")
    elif data.DEBIAN_FASHION_MNIST_DIR.is_dir():
        where = data.DEBIAN_FASHION_MNIST_DIR
    else:
        pytest.skip("no Fashion-MNIST files")
    dataset = load_dataset(name, where)
    pixels = dataset.x_train.astype(np.float64) / 255
    entry = REGISTRY[name]
    assert entry.channel_mean[0] == pytest.approx(pixels.mean(), rel=1e-12)
    assert entry.channel_std[0] == pytest.approx(pixels.std(), rel=1e-12)


def test_cifar100_class_counts_depend_on_the_label():
    options = lambda label: type("D", (), {"dataset": "cifar100", "label": label})()
    assert facts(options("fine")).num_classes == 100 and facts(options("coarse")).num_classes == 20


# --- cifar100 -----------------------------------------------------------------------------------------------------

RECORDS = 100  # of the test file; train.bin holds 5x: 1 test and 5 training images of each fine class


def cifar100_files(seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)

    def records(n: int) -> tuple[bytes, np.ndarray, np.ndarray]:
        fine = rng.permutation(np.arange(n) % 100).astype(np.uint8)
        coarse = (fine // 5).astype(np.uint8)
        pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        return np.column_stack([coarse, fine, pixels]).astype(np.uint8).tobytes(), fine, pixels

    return {"train.bin": records(5 * RECORDS), "test.bin": records(RECORDS)}


def cifar100_archive(files: dict, names=None, extra: dict | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        members = {f"cifar-100-binary/{name}": content[0] for name, content in files.items()}
        for name, raw in {**members, **(extra or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))
    return buffer.getvalue()


def use_cifar100(monkeypatch, archive: bytes | None) -> None:
    layout = cifar.Layout(**{**cifar.CANONICAL_100.__dict__, "records_per_batch": RECORDS,
                             "archive_md5": md5(archive) if archive else cifar.CIFAR100_ARCHIVE_MD5})
    monkeypatch.setattr(cifar, "CANONICAL_100", layout)


def test_cifar100_archive_fine_and_coarse(tmp_path, monkeypatch):
    files = cifar100_files()
    raw = cifar100_archive(files)
    (tmp_path / "cifar-100-binary.tar.gz").write_bytes(raw)
    use_cifar100(monkeypatch, raw)
    fine = load_dataset("cifar100", tmp_path)
    assert fine.num_classes == 100 and fine.x_train.dtype == np.uint8 and fine.x_train.shape == (500, 3072)
    np.testing.assert_array_equal(fine.y_train, files["train.bin"][1])
    np.testing.assert_array_equal(fine.y_test, files["test.bin"][1])
    # the record's planes R, G, B of 32x32 -> (H, W, C) flattened
    planes = files["test.bin"][2].reshape(-1, 3, 32, 32)
    np.testing.assert_array_equal(fine.x_test, np.moveaxis(planes, 1, -1).reshape(RECORDS, -1))
    coarse = load_dataset("cifar100", tmp_path, type("D", (), {"label": "coarse"})())
    assert coarse.num_classes == 20
    np.testing.assert_array_equal(coarse.y_train, files["train.bin"][1] // 5)


def test_cifar100_extracted_folder(tmp_path, monkeypatch):
    files = cifar100_files()
    (tmp_path / "cifar-100-binary").mkdir()
    for name, content in files.items():
        (tmp_path / "cifar-100-binary" / name).write_bytes(content[0])
    use_cifar100(monkeypatch, None)
    np.testing.assert_array_equal(load_dataset("cifar100", tmp_path).y_test, files["test.bin"][1])
    (tmp_path / "cifar-100-binary" / "test.bin").write_bytes(files["test.bin"][0][:-10])  # truncated
    with pytest.raises(UserError) as excinfo:
        load_dataset("cifar100", tmp_path)
    assert "test.bin: truncated: found only" in message_of(excinfo)
    assert "expected exactly 307400 (100 records of 2 label bytes and 3072 pixel bytes)" in message_of(excinfo)


def test_cifar100_wrong_checksum_and_truncated_archive(tmp_path, monkeypatch):
    raw = cifar100_archive(cifar100_files())
    use_cifar100(monkeypatch, None)  # the published checksum
    (tmp_path / "cifar-100-binary.tar.gz").write_bytes(raw)
    with pytest.raises(UserError) as excinfo:
        load_dataset("cifar100", tmp_path)
    assert f"MD5 is {md5(raw)}, expected 03b5dce01913d631647c71ecec9e9cb8" in message_of(excinfo)
    use_cifar100(monkeypatch, raw[:-100])
    (tmp_path / "cifar-100-binary.tar.gz").write_bytes(raw[:-100])
    with pytest.raises(UserError) as excinfo:
        load_dataset("cifar100", tmp_path)
    assert "truncated or corrupt" in message_of(excinfo)


def test_cifar100_label_out_of_range(tmp_path, monkeypatch):
    files = cifar100_files()
    train = bytearray(files["train.bin"][0])
    train[3074 * 7 + 1] = 100  # record 7's fine label
    files["train.bin"] = (bytes(train),) + files["train.bin"][1:]
    raw = cifar100_archive(files)
    (tmp_path / "cifar-100-binary.tar.gz").write_bytes(raw)
    use_cifar100(monkeypatch, raw)
    with pytest.raises(UserError) as excinfo:
        load_dataset("cifar100", tmp_path)
    assert "label byte 1 100 in record 7, expected 0..99" in message_of(excinfo)


def test_cifar100_archive_with_a_path_traversal_member(tmp_path, monkeypatch):
    raw = cifar100_archive(cifar100_files(), extra={"../../evil.txt": b"x"})
    (tmp_path / "cifar-100-binary.tar.gz").write_bytes(raw)
    use_cifar100(monkeypatch, raw)
    with pytest.raises(UserError) as excinfo:
        load_dataset("cifar100", tmp_path)
    assert "names a member outside its folder ('../../evil.txt')" in message_of(excinfo)
    assert not (tmp_path.parent.parent / "evil.txt").exists()


# --- svhn ---------------------------------------------------------------------------------------------------------


def svhn_mat(n: int, seed: int = 0, labels=None, **extra) -> tuple[bytes, np.ndarray, np.ndarray]:
    import scipy.io

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = (rng.integers(1, 11, (n, 1)) if labels is None else np.asarray(labels).reshape(n, 1)).astype(np.uint8)
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"X": x, "y": y, **extra})
    return buffer.getvalue(), x, y


def use_svhn(monkeypatch, tmp_path, train: bytes, test: bytes, n_train: int, n_test: int) -> None:
    (tmp_path / svhn.TRAIN).write_bytes(train)
    (tmp_path / svhn.TEST).write_bytes(test)
    monkeypatch.setitem(svhn.MD5, svhn.TRAIN, md5(train))
    monkeypatch.setitem(svhn.MD5, svhn.TEST, md5(test))
    monkeypatch.setitem(svhn.SIZES, svhn.TRAIN, n_train)
    monkeypatch.setitem(svhn.SIZES, svhn.TEST, n_test)


def test_svhn_good_files(tmp_path, monkeypatch):
    train, x, y = svhn_mat(30, labels=np.arange(30) % 10 + 1)
    test, _, _ = svhn_mat(10, seed=1)
    use_svhn(monkeypatch, tmp_path, train, test, 30, 10)
    dataset = load_dataset("svhn", tmp_path)
    assert dataset.num_classes == 10 and dataset.x_train.shape == (30, 3072) and dataset.x_train.dtype == np.uint8
    np.testing.assert_array_equal(dataset.y_train, (np.arange(30) % 10 + 1) % 10)  # label 10 is the digit 0
    assert dataset.y_train[9] == 0
    np.testing.assert_array_equal(dataset.x_train[4].reshape(32, 32, 3), x[:, :, :, 4])  # X is (H, W, C, N)


def test_svhn_wrong_checksum_size_and_labels(tmp_path, monkeypatch):
    train, _, _ = svhn_mat(30)
    test, _, _ = svhn_mat(10, seed=1)
    use_svhn(monkeypatch, tmp_path, train, test, 30, 10)
    monkeypatch.setitem(svhn.MD5, svhn.TEST, "0" * 32)
    with pytest.raises(UserError) as excinfo:
        load_dataset("svhn", tmp_path)
    assert f"{tmp_path / svhn.TEST}: MD5 is {md5(test)}, expected {'0' * 32}" in message_of(excinfo)
    use_svhn(monkeypatch, tmp_path, train, test, 31, 10)
    with pytest.raises(UserError) as excinfo:
        load_dataset("svhn", tmp_path)
    assert "expected 31 images (the published file), found 30" in message_of(excinfo)
    bad, _, _ = svhn_mat(30, labels=[11] + [1] * 29)
    use_svhn(monkeypatch, tmp_path, bad, test, 30, 10)
    with pytest.raises(UserError) as excinfo:
        load_dataset("svhn", tmp_path)
    assert "label 11 at position 0, expected 1..10" in message_of(excinfo)


def test_svhn_truncated_and_object_arrays(tmp_path, monkeypatch):
    train, _, _ = svhn_mat(30)
    test, _, _ = svhn_mat(10, seed=1)
    use_svhn(monkeypatch, tmp_path, train[: len(train) // 2], test, 30, 10)
    with pytest.raises(UserError) as excinfo:
        load_dataset("svhn", tmp_path)
    assert str(tmp_path / svhn.TRAIN) in message_of(excinfo)
    # a cell array where X should be: loadmat gives an object array of arrays (nothing run); it is refused
    import scipy.io

    buffer = io.BytesIO()
    cells = np.empty((1, 2), dtype=object)
    cells[0, 0], cells[0, 1] = np.zeros(3), "text"
    scipy.io.savemat(buffer, {"X": cells, "y": np.ones((30, 1), np.uint8)})
    use_svhn(monkeypatch, tmp_path, buffer.getvalue(), test, 30, 10)
    with pytest.raises(UserError) as excinfo:
        load_dataset("svhn", tmp_path)
    assert "expected X of uint8 and shape 32x32x3xN, found object" in message_of(excinfo)


# --- tiny_imagenet ------------------------------------------------------------------------------------------------

WNIDS = ("n0001", "n0002")
COLOURS = {"n0001": (200, 30, 90), "n0002": (10, 240, 120)}


def jpeg(colour, grey: bool = False) -> bytes:
    from PIL import Image

    image = Image.new("L", (64, 64), colour[0]) if grey else Image.new("RGB", (64, 64), colour)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def tiny_members(val_lines=None) -> dict[str, bytes]:
    top = "tiny-imagenet-200/"
    members = {f"{top}wnids.txt": "\n".join(WNIDS).encode() + b"\n"}
    for wnid in WNIDS:
        for i in range(3):
            members[f"{top}train/{wnid}/images/{wnid}_{i}.JPEG"] = jpeg(COLOURS[wnid], grey=(wnid, i) == ("n0002", 1))
        members[f"{top}train/{wnid}/{wnid}_boxes.txt"] = b""
    lines = val_lines or [f"val_{i}.JPEG\t{WNIDS[i % 2]}\t0\t0\t63\t63" for i in range(4)]
    for i in range(4):
        members[f"{top}val/images/val_{i}.JPEG"] = jpeg(COLOURS[WNIDS[i % 2]])
    members[f"{top}val/val_annotations.txt"] = "\n".join(lines).encode()
    return members


def tiny_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, raw in members.items():
            archive.writestr(name, raw)
    return buffer.getvalue()


def use_tiny(monkeypatch, tmp_path, raw: bytes) -> None:
    (tmp_path / tiny_imagenet.ARCHIVE).write_bytes(raw)
    monkeypatch.setattr(tiny_imagenet, "ARCHIVE_MD5", md5(raw))
    monkeypatch.setattr(tiny_imagenet, "NUM_CLASSES", 2)
    monkeypatch.setattr(tiny_imagenet, "TRAIN_PER_CLASS", 3)
    monkeypatch.setattr(tiny_imagenet, "VAL_PER_CLASS", 2)


def test_tiny_imagenet_from_the_zip(tmp_path, monkeypatch):
    use_tiny(monkeypatch, tmp_path, tiny_zip(tiny_members()))
    dataset = load_dataset("tiny_imagenet", tmp_path)
    assert dataset.x_train.shape == (6, 64 * 64 * 3) and dataset.x_train.dtype == np.uint8
    np.testing.assert_array_equal(dataset.y_train, [0, 0, 0, 1, 1, 1])  # wnids.txt's order
    np.testing.assert_array_equal(dataset.y_test, [0, 1, 0, 1])  # from val_annotations.txt
    pixels = dataset.x_train.reshape(6, 64, 64, 3).astype(int)
    assert np.abs(pixels[0] - COLOURS["n0001"]).max() <= 2  # JPEG of a flat colour: within 2 levels
    grey = pixels[4]  # n0002_1, a grey JPEG: converted, the same value in every channel
    assert np.all(grey[..., 0] == grey[..., 1]) and np.all(grey[..., 1] == grey[..., 2])
    assert not list(tmp_path.glob("tiny-imagenet-200"))  # nothing extracted


def test_tiny_imagenet_bad_archives(tmp_path, monkeypatch):
    members = tiny_members()
    use_tiny(monkeypatch, tmp_path, tiny_zip({**members, "../evil.JPEG": b"x"}))
    with pytest.raises(UserError) as excinfo:
        load_dataset("tiny_imagenet", tmp_path)
    assert "names a member outside its folder ('../evil.JPEG')" in message_of(excinfo)
    use_tiny(monkeypatch, tmp_path, tiny_zip(tiny_members(val_lines=["val_0.JPEG\tn9999\t0\t0\t1\t1"])))
    with pytest.raises(UserError) as excinfo:
        load_dataset("tiny_imagenet", tmp_path)
    assert "val_annotations.txt: line 1: expected FILE<tab>WNID of a class in wnids.txt" in message_of(excinfo)
    raw = tiny_zip(members)
    use_tiny(monkeypatch, tmp_path, raw)
    monkeypatch.setattr(tiny_imagenet, "ARCHIVE_MD5", "1" * 32)
    with pytest.raises(UserError) as excinfo:
        load_dataset("tiny_imagenet", tmp_path)
    assert f"MD5 is {md5(raw)}, expected {'1' * 32}" in message_of(excinfo)
    use_tiny(monkeypatch, tmp_path, raw[:-200])
    with pytest.raises(UserError) as excinfo:
        load_dataset("tiny_imagenet", tmp_path)
    assert "zip archive" in message_of(excinfo)


# --- imagenet32 ---------------------------------------------------------------------------------------------------


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def imagenet_zips(tmp_path: Path, per_batch: int = 2, bad: dict | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    batches = {}
    for name in (*[f"train_data_batch_{i}.npz" for i in range(1, 11)], "val_data.npz"):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(1, 1001, per_batch)
        batches[name] = (data, labels)
    with zipfile.ZipFile(tmp_path / "Imagenet32_train_npz.zip", "w") as train, \
            zipfile.ZipFile(tmp_path / "Imagenet32_val_npz.zip", "w") as val:
        for name, (data, labels) in batches.items():
            arrays = {"data": data, "labels": list(labels), "mean": data.mean(0)}
            arrays.update((bad or {}).get(name, {}))
            (val if name == "val_data.npz" else train).writestr(f"Imagenet32_train_npz/{name}"
                                                                 if name != "val_data.npz" else name,
                                                                 npz_bytes(**arrays))
    return batches


def test_imagenet32_from_the_zips(tmp_path, monkeypatch):
    batches = imagenet_zips(tmp_path)
    monkeypatch.setattr(imagenet32.FILES, "n_train", 20)
    monkeypatch.setattr(imagenet32.FILES, "n_val", 2)
    dataset = load_dataset("imagenet32", tmp_path)
    assert dataset.num_classes == 1000 and dataset.x_train.shape == (20, 3072)
    first, labels = batches["train_data_batch_1.npz"]
    np.testing.assert_array_equal(dataset.y_train[:2], labels - 1)
    # 'data' holds the R plane, then G, then B: pixel (i, j) is (R[i, j], G[i, j], B[i, j])
    image = dataset.x_train[0].reshape(32, 32, 3)
    assert image[3, 5].tolist() == [first[0, 3 * 32 + 5], first[0, 1024 + 3 * 32 + 5], first[0, 2048 + 3 * 32 + 5]]
    np.testing.assert_array_equal(dataset.y_test, batches["val_data.npz"][1] - 1)


@pytest.mark.parametrize("bad, expected", [
    ({"labels": [0, 5]}, "label 0 at position 0, expected 1..1000"),
    ({"labels": [1001, 5]}, "label 1001 at position 0, expected 1..1000"),
    ({"data": np.zeros((2, 3000), np.uint8)}, "expected 'data' of uint8 and shape Nx3072"),
    ({"labels": np.array([{"a": 1}, 2], dtype=object)}, "holds an object array (a pickle), which bioprop never loads"),
])
def test_imagenet32_malformed_batches(tmp_path, monkeypatch, bad, expected):
    imagenet_zips(tmp_path, bad={"train_data_batch_3.npz": bad})
    monkeypatch.setattr(imagenet32.FILES, "n_train", 20)
    monkeypatch.setattr(imagenet32.FILES, "n_val", 2)
    with pytest.raises(UserError) as excinfo:
        load_dataset("imagenet32", tmp_path)
    assert "train_data_batch_3.npz" in message_of(excinfo) and expected in message_of(excinfo)


def test_imagenet32_wrong_size_and_traversal(tmp_path, monkeypatch):
    imagenet_zips(tmp_path)
    monkeypatch.setattr(imagenet32.FILES, "n_train", 21)
    monkeypatch.setattr(imagenet32.FILES, "n_val", 2)
    with pytest.raises(UserError) as excinfo:
        load_dataset("imagenet32", tmp_path)
    assert "expected 21 training images (the published files), found 20" in message_of(excinfo)
    with zipfile.ZipFile(tmp_path / "Imagenet32_val_npz.zip", "a") as archive:
        archive.writestr("../../val_data.npz", b"x")
    with pytest.raises(UserError) as excinfo:
        load_dataset("imagenet32", tmp_path)
    assert "names a member outside its folder ('../../val_data.npz')" in message_of(excinfo)


def test_imagenet32_has_no_public_download(monkeypatch, tmp_path):
    monkeypatch.delenv("BIOPROP_DOWNLOAD_URL")
    result = CliRunner().invoke(app, ["data", "fetch", "imagenet32", "--to", str(tmp_path / "d")])
    assert result.exit_code == 2 and "no public download" in result.output


# --- npz: your own arrays, any class count ------------------------------------------------------------------------


def write_npz(path: Path, n_classes: int = 100, n_train: int = 600, n_test: int = 200, shape=(8, 8, 3), **extra):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": np.arange(n_train) % n_classes,
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": np.arange(n_test) % n_classes,
        **extra,
    }
    np.savez(path, **arrays)
    return arrays


def npz_options(path, **kw):
    return type("D", (), {"dataset": "npz", "path": str(path), "validation_size": kw.get("validation_size", 0)})()


def test_npz_images_and_flat_vectors(tmp_path):
    arrays = write_npz(tmp_path / "d.npz")
    assert facts(npz_options(tmp_path / "d.npz")) == Facts((8, 8, 3), 100)
    dataset = load_dataset("npz", None, npz_options(tmp_path / "d.npz"))
    assert dataset.num_classes == 100 and dataset.x_train.dtype == np.uint8
    np.testing.assert_array_equal(dataset.x_train, arrays["x_train"].reshape(600, -1))
    write_npz(tmp_path / "flat.npz", n_classes=3, shape=(5,), x_val=np.zeros((7, 5), np.float64),
              y_val=np.zeros(7, np.int64))
    assert facts(npz_options(tmp_path / "flat.npz")) == Facts((5,), 3)
    with pytest.raises(UserError) as excinfo:
        load_dataset("npz", None, npz_options(tmp_path / "flat.npz"))
    assert "config key 'data.validation_size'" in message_of(excinfo) and "x_val of 7 examples" in message_of(excinfo)
    flat = load_dataset("npz", None, npz_options(tmp_path / "flat.npz", validation_size=7))
    assert flat.x_train.shape == (607, 5) and flat.n_val == 7


@pytest.mark.parametrize("extra, expected", [
    ({"x_test": np.array([[1, 2], [3, 4]], dtype=object)}, "array x_test is an object array (a pickle)"),
    ({"y_test": np.full(200, -1)}, "y_test holds label -1; expected labels 0..K-1"),
    ({"y_train": np.zeros(600, np.float32)}, "y_train is float32 of shape 600; expected 600 integer labels"),
    ({"x_test": np.zeros((200, 4, 4, 3), np.uint8)}, "x_test's examples are 4x4x3, x_train's 8x8x3"),
])
def test_npz_malformed(tmp_path, extra, expected):
    write_npz(tmp_path / "d.npz", **extra)
    with pytest.raises(UserError) as excinfo:
        load_dataset("npz", None, npz_options(tmp_path / "d.npz"))
    assert message_of(excinfo).startswith(str(tmp_path / "d.npz")) and expected in message_of(excinfo)


def test_npz_missing_arrays(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.zeros((3, 2)))
    with pytest.raises(UserError) as excinfo:
        load_dataset("npz", None, npz_options(tmp_path / "d.npz"))
    assert "missing y_train, x_test, y_test" in message_of(excinfo)


def test_a_100_class_npz_trains_end_to_end_with_top5(tmp_path):
    write_npz(tmp_path / "d.npz")
    results = tmp_path / "results"
    result = CliRunner().invoke(app, [
        "train", "--rule", "fa", "--set", "data.dataset=npz", "--set", f"data.path={tmp_path / 'd.npz'}",
        "--set", "data.validation_size=100", "--set", "train.epochs=1", "--set", "train.batch_size=50",
        "--set", "model.width=16", "--set", "model.depth=1", "--set", f"results_dir={results}",
        "--set", "alignment.enabled=false"])
    assert result.exit_code == 0, result.output
    (summary_path,) = results.rglob("summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["layer_sizes"] == [192, 16, 100] and summary["num_classes"] == 100
    assert summary["dataset"] == "npz" and 0 <= summary["test_top5_accuracy"] <= 1
    (record,) = read_jsonl(summary_path.parent / "metrics.jsonl")
    assert record["test_top5_accuracy"] >= record["test_accuracy"] and "val_top5_accuracy" in record


def test_a_bad_npz_is_one_line_exit_2_nothing_written(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros(1, int),
             x_test=np.zeros((1, 2)), y_test=np.zeros(1, int))
    results = tmp_path / "results"
    result = CliRunner().invoke(app, ["train", "--set", "data.dataset=npz", "--set", f"data.path={tmp_path / 'd.npz'}",
                                      "--set", f"results_dir={results}"])
    assert result.exit_code == 2 and "object array" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not results.exists() or not any(results.rglob("*"))


# --- uint8 storage ------------------------------------------------------------------------------------------------


class Records:
    """A writer that keeps what training writes."""

    def __init__(self):
        self.records, self.last_summary = [], None

    def config(self, tree):
        pass

    def summary(self, summary):
        self.last_summary = summary

    def metrics(self, record):
        self.records.append(record)

    def alignment(self, records):
        pass

    def reserve(self, n_bytes):
        pass

    def params(self, params):
        pass

    def steps(self, records):
        pass

    def checkpoint(self, name, data):
        pass

    def link_checkpoint(self, source, target):
        pass

    def log_sizes(self):
        return {}


def metrics_of(dataset, storage: str, *overrides) -> list[dict]:
    from bioprop_cli.config import load_config
    from bioprop_cli.train import train

    config = load_config(None, [("data.storage", storage), ("train.epochs", 2), ("train.batch_size", 50),
                                ("model.width", 32), ("rule", "fa"), ("data.validation_size", 100), *overrides])
    writer = Records()
    train(config, dataset, writer)
    return writer.records


def assert_same_metrics(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) == 2
    for first, second in zip(a, b):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy",
                    "mean_update_angle"):
            assert first[key] == pytest.approx(second[key], rel=1e-5, abs=1e-6), key


def test_uint8_storage_gives_the_float32_metrics_on_mnist(mnist_dir, normalization="per_channel"):
    """Pixels kept as uint8 on the device and scaled / normalised in the step: today's float32 path's metrics,
    to float rounding (seen: identical but for the 7th digit of one test loss)."""
    dataset = load_dataset("mnist", mnist_dir)
    small = type(dataset)("mnist", dataset.x_train[:1100], dataset.y_train[:1100], dataset.x_test[:300],
                          dataset.y_test[:300], source="first 1100 / 300")
    assert small.x_train.dtype == np.uint8
    settings = [("data.normalization", normalization)]
    assert_same_metrics(metrics_of(small, "float32", *settings), metrics_of(small, "uint8", *settings))


def test_uint8_storage_with_device_augmentation(tmp_path):
    """crop_flip on the device, after the in-step normalisation (the padding zeros are the channel means, as on
    the float32 path)."""
    write_npz(tmp_path / "d.npz", n_classes=10, n_train=400, n_test=100, shape=(8, 8, 3))
    settings = [("data.dataset", "npz"), ("data.path", str(tmp_path / "d.npz")), ("data.augment", "crop_flip"),
                ("data.normalization", "per_channel")]
    dataset = load_dataset("npz", None, npz_options(tmp_path / "d.npz", validation_size=100))
    assert_same_metrics(metrics_of(dataset, "float32", *settings), metrics_of(dataset, "uint8", *settings))


def test_a_dataset_the_host_cannot_hold_is_refused_before_reading(monkeypatch, tmp_path):
    """ImageNet 32x32: 1,331,167 images of 3072 bytes and their labels, about 3.8 GiB as uint8, 5x that with the
    float32 copy; on the CPU the splits put on the device are one more copy (all of them resident; the 50,000 test
    and the validation images streamed); refused in one line on a host with less, before any file is looked at
    (tmp_path is empty)."""
    import jax

    from bioprop_cli import data
    from bioprop_cli.datasets import host_bytes_needed

    n, image = 1331167, 3072
    uint8 = type("D", (), {"storage": "uint8", "validation_size": 5000})()
    float32 = type("D", (), {"storage": "float32", "validation_size": 5000})()
    assert host_bytes_needed("imagenet32", uint8) == n * image + 4 * n
    assert host_bytes_needed("imagenet32", float32) == 5 * n * image + 4 * n
    assert host_bytes_needed("imagenet32", uint8, device_is_host=True) == 2 * (n * image + 4 * n)
    assert host_bytes_needed("imagenet32", float32, device_is_host=True) == 9 * n * image + 8 * n
    assert host_bytes_needed("imagenet32", uint8, device_is_host=True, streamed=True) == (
        n * image + 4 * n + (50000 + 5000) * (image + 4))
    monkeypatch.setattr(data, "host_memory_bytes", lambda: 2**31)
    with pytest.raises(UserError) as excinfo:
        load_dataset("imagenet32", tmp_path, uint8)
    if jax.devices()[0].platform == "cpu":
        assert message_of(excinfo).startswith("dataset imagenet32 needs about 7.6 GiB of host memory")
        assert message_of(excinfo).endswith("more than this machine's 2.0 GiB; streamed (data.stream: always) it "
                                            "needs 4.0 GiB")
    else:
        assert message_of(excinfo).startswith("dataset imagenet32 needs about 3.8 GiB of host memory")
        assert message_of(excinfo).endswith("more than this machine's 2.0 GiB")


def test_data_check_reports_each_svhn_file(tmp_path, monkeypatch):
    train, _, _ = svhn_mat(30)
    test, _, _ = svhn_mat(10, seed=1)
    use_svhn(monkeypatch, tmp_path, train, test, 30, 10)
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path), "--dataset", "svhn"])
    assert result.exit_code == 0, result.output
    assert f"found     {tmp_path / svhn.TRAIN}" in result.output and "the canonical svhn files, verified" in result.output
    (tmp_path / svhn.TEST).write_bytes(test[:-7])
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path), "--dataset", "svhn"])
    assert result.exit_code == 2 and f"mismatch  {tmp_path / svhn.TEST}:" in result.output


# --- downloads, from a local server on 127.0.0.1 ------------------------------------------------------------------


@pytest.fixture
def local_server(monkeypatch, tmp_path):
    """serve({"dataset/file": bytes}) starts a FileServer and points BIOPROP_DOWNLOAD_URL at it; a fresh cache."""
    from helpers import FileServer

    monkeypatch.delenv("BIOPROP_DATA_DIR", raising=False)
    monkeypatch.setenv("BIOPROP_CACHE_DIR", str(tmp_path / "cache"))
    servers = []

    def start(files: dict[str, bytes]):
        server = FileServer(files).__enter__()
        servers.append(server)
        monkeypatch.setenv("BIOPROP_DOWNLOAD_URL", server.url + "/")
        return server

    yield start
    for server in servers:
        server.__exit__()


def test_cifar100_and_svhn_download_into_the_cache_verified(local_server, monkeypatch, tmp_path):
    files = cifar100_files()
    raw = cifar100_archive(files)
    use_cifar100(monkeypatch, raw)
    train, _, _ = svhn_mat(30)
    test, _, _ = svhn_mat(10, seed=1)
    (tmp_path / "published").mkdir()
    use_svhn(monkeypatch, tmp_path / "published", train, test, 30, 10)  # their checksums and sizes
    server = local_server({"cifar100/cifar-100-binary.tar.gz": raw, f"svhn/{svhn.TRAIN}": train,
                           f"svhn/{svhn.TEST}": test})
    result = CliRunner().invoke(app, ["data", "fetch", "cifar100"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(load_dataset("cifar100").y_test, files["test.bin"][1])
    np.testing.assert_array_equal(load_dataset("svhn").y_test, np.asarray(svhn.parse_mat("t", test, 10)[1]))
    assert sorted(server.requests) == ["/cifar100/cifar-100-binary.tar.gz", f"/svhn/{svhn.TEST}", f"/svhn/{svhn.TRAIN}"]
    assert sorted(p.name for p in (tmp_path / "cache" / "svhn").iterdir()) == [svhn.TEST, svhn.TRAIN]


def test_a_download_with_the_wrong_checksum_is_refused_and_not_cached(local_server, monkeypatch, tmp_path):
    train, _, _ = svhn_mat(30)
    test, _, _ = svhn_mat(10, seed=1)
    (tmp_path / "published").mkdir()
    use_svhn(monkeypatch, tmp_path / "published", train, test, 30, 10)
    other, _, _ = svhn_mat(30, seed=7)
    local_server({f"svhn/{svhn.TRAIN}": other, f"svhn/{svhn.TEST}": test})
    result = CliRunner().invoke(app, ["data", "fetch", "svhn"])
    assert result.exit_code == 2 and f"/svhn/{svhn.TRAIN}: MD5 is {md5(other)}, expected {md5(train)}" in result.output
    cache = tmp_path / "cache" / "svhn"
    assert not (cache / svhn.TRAIN).exists() and not any(p.name.endswith(".part") for p in cache.glob(".*"))
