"""Live curves: the TensorBoard event files and the offline W&B run a training run writes hold the
series of its JSON-lines logs, at their steps."""

import json
import struct
from pathlib import Path

import pytest
from tbparse import SummaryReader

from bioprop_cli.errors import UserError
from bioprop_cli.live import require_live, scalars
from bioprop_cli.runs import RunWriter, read_jsonl
from bioprop_cli.train import train
from helpers import clusters, small_config


def expected_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{curve: [(step, value)]} as bioprop_cli.live names the JSON-lines records."""
    series: dict[str, list] = {}
    for kind in ("metrics", "steps", "alignment"):
        for record in read_jsonl(run_dir / f"{kind}.jsonl"):
            for name, value in scalars(kind, record).items():
                series.setdefault(name, []).append((record["step"], value))
    return series


def wandb_history(run_dir: Path) -> list[dict]:
    """The history rows of the offline W&B run in run_dir/wandb: its .wandb file is a LevelDB log (7-byte
    header ':W&B', 0xBEE1, version; 32 KiB blocks of chunks: crc32c, length, type 1 full / 2 first /
    3 middle / 4 last) of wandb_internal_pb2.Record protobufs, read here without a W&B server."""
    from wandb.proto import wandb_internal_pb2

    (file,) = (run_dir / "wandb").glob("offline-run-*/*.wandb")
    data = file.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, offset, block = [], b"", 7, 32768
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # a block's tail too short for a chunk header is padding
            offset += block - offset % block
            continue
        length, kind = struct.unpack("<HB", data[offset + 4: offset + 7])
        pending += data[offset + 7: offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
        elif kind == 0:
            break
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


def test_tensorboard_and_wandb_hold_the_logged_series(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = small_config(rule="fa", **{"log.every_steps": 4, "log.live": ["tensorboard", "wandb"],
                                        "train.epochs": 2, "data.validation_size": 100})
    assert train(config, clusters(n_train=400, n_test=100), RunWriter(tmp_path))["status"] == "completed"
    expected = expected_series(tmp_path)
    assert {"epoch/train_loss", "epoch/val_accuracy", "epoch/lr", "step/train_loss", "step/train_accuracy",
            "alignment/update_angle/layer0", "alignment/mean_update_angle"} <= set(expected)
    assert [s for s, _ in expected["epoch/train_loss"]] == [6, 12]
    assert [s for s, _ in expected["step/train_loss"]] == [4, 6, 10, 12]

    frame = SummaryReader(str(tmp_path / "tensorboard")).scalars
    read = {tag: list(zip(rows["step"], rows["value"])) for tag, rows in frame.groupby("tag")}
    assert set(read) == set(expected)
    for tag, points in expected.items():
        assert [s for s, _ in read[tag]] == [s for s, _ in points], tag
        assert [v for _, v in read[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag

    history = wandb_history(tmp_path)
    for tag, points in expected.items():
        logged = [(row["global_step"], row[tag]) for row in history if tag in row]
        assert logged == [(s, pytest.approx(v, rel=1e-6)) for s, v in points], tag


def test_a_missing_package_is_one_line_saying_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install 'bioprop\[wandb\]'"):
        require_live(["wandb"])
