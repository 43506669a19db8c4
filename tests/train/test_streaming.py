"""data.stream: a training split streamed from host memory in chunks trains the same run as the resident one (the
same minibatches, augmentation and probe from the run's keys), and `auto` streams exactly when the split exceeds
what it may take on the device."""

import math
import os
import signal

import numpy as np
import pytest

from bioprop_cli import checkpoint
from bioprop_cli.data import Dataset
from bioprop_cli.errors import UserError
from bioprop_cli.runs import RunWriter, read_jsonl
from bioprop_cli.splits import feed_plan
from bioprop_cli.train import resume_run, train, train_group
from helpers import small_config

TIMING = ("epoch_time_s", "wall_time_s")
LOGS = ("metrics.jsonl", "alignment.jsonl", "steps.jsonl")


def images(tmp_path, n_train=500, n_test=60, shape=(8, 8, 3), classes=10):
    """uint8 images of random pixels in an npz (the registry's `npz` dataset) and the config keys naming it."""
    rng = np.random.default_rng(0)
    path = tmp_path / "images.npz"
    np.savez(path, x_train=rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
             y_train=np.arange(n_train) % classes, x_test=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
             y_test=np.arange(n_test) % classes)
    from bioprop_cli.datasets import load_dataset

    keys = {"data.dataset": "npz", "data.path": str(path), "data.validation_size": 50}
    return load_dataset("npz", None, small_config(**keys).data), keys


def config_of(keys, stream, **more):
    # 450 training examples in batches of 50: 9 steps an epoch, chunks of 4 (the last one ends past the epoch)
    return small_config(**{**keys, "rule": "fa", "model.width": 8, "train.epochs": 2, "alignment.probe_size": 16,
                           "alignment.every_steps": 3, "log.every_steps": 1, "data.normalization": "per_channel",
                           "data.stream": stream, "data.stream_steps": 4, "train.chunk_steps": 4, **more})


def written(folder):
    logs = {name: read_jsonl(folder / name) for name in LOGS if (folder / name).exists()}
    with np.load(folder / "params.npz") as stored:
        return logs, {key: stored[key] for key in stored.files}


def same_number(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7) or (math.isnan(a) and math.isnan(b))
    return a == b


def assert_same_run(streamed_folder, resident_folder):
    """Every record of every log equal but for timings, to float rounding (seen: identical), and the parameters."""
    (streamed, streamed_params), (resident, resident_params) = written(streamed_folder), written(resident_folder)
    assert set(streamed) == set(resident) == set(LOGS)
    for name in LOGS:
        assert len(streamed[name]) == len(resident[name]) > 0, name
        for s, r in zip(streamed[name], resident[name]):
            assert s.keys() == r.keys()
            differing = {k: (s[k], r[k]) for k in s if k not in TIMING and not same_number(s[k], r[k])}
            assert not differing, (name, differing)
    for key, value in resident_params.items():
        np.testing.assert_allclose(streamed_params[key], value, rtol=1e-5, atol=1e-7)


def trained(folder, config, dataset, **kwargs):
    folder.mkdir()
    return train(config, dataset, RunWriter(folder), **kwargs)


def test_streamed_seeds_trained_together_are_the_resident_runs(tmp_path):
    """Two seeds vmapped (each its own order, crops and flips from its keys; crop_flip with edge padding) on uint8
    images normalised in the step, with in-epoch alignment and per-step logs: every line of each run alike, streamed
    or resident. (One test for what were two, a single run and seeds with augmentation: one set of programs; a
    single run is a group of one, train.train.)"""
    dataset, keys = images(tmp_path)
    more = {"data.augment": "crop_flip", "data.crop_padding": "edge"}
    summaries = {}
    for stream in ("never", "always"):
        folders = [tmp_path / f"{stream}{seed}" for seed in (0, 1)]
        for folder in folders:
            folder.mkdir()
        configs = [config_of(keys, stream, seed=seed, **more) for seed in (0, 1)]
        summaries[stream] = train_group(configs, dataset, [RunWriter(folder) for folder in folders])
    for resident, streamed in zip(summaries["never"], summaries["always"]):
        assert (resident["data_feed"]["streamed"], streamed["data_feed"]["streamed"]) == (False, True)
        assert streamed["data_feed"]["chunk_steps"] == 4 and streamed["data_feed"]["chunk_bytes"] == 4 * 50 * (192 + 4)
        assert resident["status"] == streamed["status"] == "completed"
    for seed in (0, 1):
        assert_same_run(tmp_path / f"always{seed}", tmp_path / f"never{seed}")
    assert written(tmp_path / "always0")[0]["metrics.jsonl"] != written(tmp_path / "always1")[0]["metrics.jsonl"]


@pytest.fixture
def sigint_as_in_a_terminal():
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.slow  # three runs, two compilations: about 3 s of CPU
def test_a_streamed_run_stopped_inside_an_epoch_resumes_to_the_resident_run(tmp_path, sigint_as_in_a_terminal):
    """Ctrl-C 4 steps into epoch 2 (the chunk in flight finishes: stopped 8 steps in), resumed streaming: the
    logs and parameters of the resident run trained in one go (issue 24's exact resume)."""
    dataset, keys = images(tmp_path)
    trained(tmp_path / "resident", config_of(keys, "never"), dataset)
    config = config_of(keys, "always")

    def ctrl_c(epoch, step, steps):
        if (epoch, step) == (2, 4):
            os.kill(os.getpid(), signal.SIGINT)

    stopped = trained(tmp_path / "cut", config, dataset, on_progress=ctrl_c)
    assert stopped["status"] == "interrupted"
    meta = checkpoint.read(tmp_path / "cut").meta
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 8)
    assert resume_run(tmp_path / "cut", dataset, config)["status"] == "completed"
    assert_same_run(tmp_path / "cut", tmp_path / "resident")


def test_auto_streams_what_exceeds_the_device_share(tmp_path):
    """auto: resident up to data.device_memory bytes (else half the device's memory; none known: resident)."""
    rng = np.random.default_rng(0)
    dataset = Dataset("mnist", rng.integers(0, 256, (700, 784), dtype=np.uint8), np.zeros(700, np.int32),
                      rng.integers(0, 256, (10, 784), dtype=np.uint8), np.zeros(10, np.int32), source="test")
    split = 500 * (784 + 4)  # 500 training examples (200 held out) as uint8 pixels and int32 labels
    plan = lambda device_bytes=None, **keys: feed_plan(small_config(**keys), dataset, device_bytes)
    assert plan().train_bytes == split and not plan().streamed
    assert not plan(**{"data.device_memory": split}).streamed
    assert plan(**{"data.device_memory": split - 1}).streamed
    assert not plan(2 * split).streamed and plan(2 * split - 2).streamed
    assert not plan(1, **{"data.stream": "never"}).streamed and plan(**{"data.stream": "always"}).streamed
    assert plan(**{"data.storage": "float32", "data.device_memory": split}).streamed  # 4 bytes a pixel
    streamed = plan(2**20, **{"data.stream": "always", "data.stream_steps": 3})
    assert (streamed.chunk_steps, streamed.chunk_bytes) == (3, 3 * 50 * (784 + 4))
    assert streamed.line() == ("data: training split 0.4 MiB, streamed from host memory in chunks of 3 steps "
                               "(0.1 MiB each, up to three on the device at a time); the device has 1.0 MiB")
    assert plan().line() == ("data: training split 0.4 MiB, resident on the device; the device's memory is not "
                             "known (jax gives no memory statistics: the CPU)")


@pytest.mark.parametrize("key, value, allowed", [
    ("data.stream", "sometimes", "auto"), ("data.stream_steps", 0, ">= 1"), ("data.device_memory", 0, ">= 1"),
])
def test_stream_keys_are_checked(key, value, allowed):
    with pytest.raises(UserError, match=f"config key '{key}'.*{allowed}"):
        small_config(**{key: value})
