"""What the records of a results folder hold: the kinds of the fields of summary.json, metrics.jsonl and
alignment.jsonl (written by runs.RunWriter for train.py) and of beta_sweep.jsonl and a beta sweep's
summary.json (studies/beta.py), and the readers and checks that `bioprop compare` (report/aggregate.py) and
`bioprop reproduce` (studies/reproduce.py) read them with.
A config.yaml is checked by the config's own loader (config.check_stored). A value of the wrong kind is a
UserError naming the place, the key and the value, never a record silently left out."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from bioprop_cli.errors import UserError


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional(check):
    return lambda value: value is None or check(value)


def _within(low: float, high: float):
    """A number in [low, high], or NaN (what a diverged run records)."""
    return lambda v: is_number(v) and (math.isnan(v) or low <= v <= high)


KINDS = {
    "an integer": is_int,
    "an integer or null": _optional(is_int),
    "a number or null": _optional(is_number),
    "an accuracy in [0, 1] or null": _optional(_within(0.0, 1.0)),
    "an angle in [0, 180] degrees or null": _optional(_within(0.0, 180.0)),
    "a string": lambda v: isinstance(v, str),
}
ACCURACY, ANGLE = "an accuracy in [0, 1] or null", "an angle in [0, 180] degrees or null"
SUMMARY = {"status": "a string", "seed": "an integer or null", "steps_per_epoch": "an integer or null",
           "test_accuracy": ACCURACY, "val_accuracy": ACCURACY, "best_val_accuracy": ACCURACY,
           "runs_trained_together": "an integer or null",
           **{k: "a number or null" for k in ("wall_time_s", "examples_per_s")}}
METRICS = {"epoch": "an integer", "step": "an integer or null", "test_accuracy": ACCURACY,
           "val_accuracy": ACCURACY, "mean_update_angle": ANGLE,
           **{k: "a number or null" for k in ("train_loss", "wall_time_s")}}
ALIGNMENT = {"epoch": "an integer or null", "step": "an integer or null",
             **{k: ANGLE for k in ("update_angle", "feedback_angle", "mean_update_angle")}}
BETA_ROW = {"estimator": "a string", **{k: "a number or null" for k in (
    "bias", "std", "bias_seed_mean", "bias_seed_std", "std_seed_mean", "std_seed_std", "angle_mean")}}
SLOPE = {"slope": "a number or null", "sweet_spot": "a number or null"}


# --- reading: a damaged file is a UserError naming the file (and the line), never a traceback ---


def read_text(path: Path) -> str:
    """The file's text; UserError naming the file where it cannot be read or is not UTF-8."""
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text (UTF-8) file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or e.__class__.__name__})") from None


def _json_error(e: json.JSONDecodeError, text: str) -> str:
    return "empty" if not text.strip() else f"line {e.lineno}, column {e.colno}: not JSON ({e.msg})"


def read_json(path: Path) -> dict:
    """A JSON file holding one object; UserError naming the file otherwise."""
    text = read_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: {_json_error(e, text)}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object, got {short(value)}")
    return value


def read_lines(path: Path, check: Callable[[Any, str], None]) -> list[dict]:
    """A JSON-lines file's records (a last line without its newline is a record being written: left out),
    each checked as read by `check(record, "FILE: line N")`: a damaged line is a UserError naming the file,
    the line and the key."""
    if not path.is_file():
        return []
    records = []
    for i, line in enumerate(read_text(path).split("\n")[:-1], start=1):
        if not line.strip():
            continue
        where = f"{path}: line {i}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not JSON ({e.msg}, column {e.colno})") from None
        check(record, where)
        records.append(record)
    return records


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_fields(record: Any, fields: dict, where: str) -> None:
    """`record` is a JSON object whose `fields`, where present, are of the kinds named."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {short(record)}")
    for key, kind in fields.items():
        if key in record and not KINDS[kind](record[key]):
            raise UserError(f"{where}: '{key}' must be {kind}, got {short(record[key])}")


def check_summary(record: Any, where: str) -> None:
    check_fields(record, SUMMARY, where)


def check_metrics(record: Any, where: str) -> None:
    check_fields(record, METRICS, where)


def check_alignment(record: Any, where: str) -> None:
    check_fields(record, ALIGNMENT, where)
    layer = record.get("layer")
    if "layer" in record and not (is_int(layer) or layer == "all"):
        raise UserError(f"{where}: 'layer' must be an integer or \"all\", got {short(layer)}")


def check_beta_row(row: Any, where: str) -> None:
    check_fields(row, BETA_ROW, where)
    beta = row.get("beta")
    if not (is_number(beta) and math.isfinite(beta) and beta > 0):
        raise UserError(f"{where}: 'beta' must be a positive finite number, got {short(beta)}")


def check_beta_slopes(summary: dict, where: str) -> None:
    """A beta sweep's summary.json `slopes`: estimator -> its fit (slope, the betas it used, the sweet spot)."""
    slopes = summary.get("slopes")
    if slopes is not None and not isinstance(slopes, dict):
        raise UserError(f"{where}: 'slopes' must be an object (estimator -> fit), got {short(slopes)}")
    for estimator, fit in (slopes or {}).items():
        at = f"{where}: slopes.{estimator}"
        check_fields(fit, SLOPE, at)
        betas = fit.get("betas")
        if betas is not None and not (isinstance(betas, list) and all(is_number(b) for b in betas)):
            raise UserError(f"{at}: 'betas' must be a list of numbers, got {short(betas)}")
