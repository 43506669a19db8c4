"""Live curves (log.live, `bioprop train --log KIND`): TensorBoard event files and Weights & Biases runs
beside a run's JSON-lines logs, which stay the record (the live logs mirror them).

    tensorboard   <run>/tensorboard/ (tensorboardX: no TensorFlow). Watch a run, or a sweep's runs together:
                  tensorboard --logdir results/<experiment>[/<sweep>]
    wandb         online where an API key is set (WANDB_API_KEY or `wandb login`), else offline into
                  <run>/wandb/ (upload later: wandb sync <run>/wandb/offline-run-*). Grouped by the folder
                  holding the run (a sweep's runs: one group), project bioprop-<experiment>.

Scalars, all at the global training step: epoch/<metrics.jsonl key> (losses, accuracies, the learning rate,
network-wide alignment), step/<steps.jsonl key> (log.every_steps), alignment/<quantity>/layer<l> (every
per-layer alignment quantity) and alignment/<quantity> (network-wide); the config as hyperparameters.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

from bioprop_cli.errors import UserError

PACKAGES = {"tensorboard": ("tensorboardX", "bioprop[tensorboard]"), "wandb": ("wandb", "bioprop[wandb]")}
RECORD_KEYS = ("epoch", "step", "layer")  # a record's position, not a quantity


def require_live(kinds) -> None:
    """A UserError saying what to install for each live log whose package is missing (before anything is written)."""
    for kind in kinds:
        module, extra = PACKAGES[kind]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"log.live {kind} needs the package {module}: pip install '{extra}'")


def flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'a.b': value} of a nested config dict; lists as their text (hyperparameters are scalars)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def scalars(kind: str, record: dict) -> dict[str, float]:
    """The live-curve names and values of one JSON-lines record of `kind` (metrics, steps, alignment)."""
    values = {k: v for k, v in record.items()  # not the nulls of the JSON lines (NaN, infinities, not measured)
              if k not in RECORD_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    if kind == "alignment":
        layer = record.get("layer")
        suffix = "" if layer == "all" else f"/layer{layer}"
        return {f"alignment/{k}{suffix}": float(v) for k, v in values.items()}
    return {f"{'epoch' if kind == 'metrics' else 'step'}/{k}": float(v) for k, v in values.items()}


class TensorBoard:
    def __init__(self, run_dir: Path, config: dict, resume_step: int | None):
        from tensorboardX import SummaryWriter
        from tensorboardX.summary import hparams

        # purge_step: a resumed run's curves past its checkpoint are replaced, not doubled
        self.writer = SummaryWriter(logdir=str(run_dir / "tensorboard"), purge_step=resume_step)
        if resume_step is None:
            for summary in hparams(flat(config), {}):
                self.writer.file_writer.add_summary(summary)

    def log(self, kind: str, records: list[dict]) -> None:
        for record in records:
            for name, value in scalars(kind, record).items():
                self.writer.add_scalar(name, value, record["step"])

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, run_dir: Path, config: dict, resume_step: int | None):
        import wandb

        online = bool(os.environ.get("WANDB_API_KEY")) or os.environ.get("WANDB_MODE") == "online"
        self.run = wandb.init(
            dir=str(run_dir), project=f"bioprop-{config.get('experiment', 'default')}", group=run_dir.parent.name,
            name=run_dir.name, id=_wandb_id(run_dir), resume="allow", config=config,
            mode="online" if online else "offline", settings=wandb.Settings(console="off", silent=True),
        )
        # the global step is a logged value, so records logged out of step order (an epoch's in-epoch
        # alignment, written at its end) are kept rather than dropped as W&B's own step would have them
        self.run.define_metric("global_step")
        self.run.define_metric("*", step_metric="global_step")

    def log(self, kind: str, records: list[dict]) -> None:
        for record in records:
            self.run.log({"global_step": record["step"], **scalars(kind, record)})

    def close(self) -> None:
        self.run.finish()


def _wandb_id(run_dir: Path) -> str:
    """One W&B run id per run folder, kept in the folder, so that a resumed run continues its W&B run."""
    path = run_dir / "wandb-run-id"
    if path.is_file():
        return path.read_text().strip()
    import uuid

    from bioprop_cli.runs import write_atomic

    run_id = uuid.uuid4().hex[:12]
    write_atomic(path, run_id + "\n")
    return run_id


SINKS = {"tensorboard": TensorBoard, "wandb": WandB}


class Mirrored:
    """A run writer whose metrics, steps and alignment records also go to live sinks; everything
    else is the writer's own."""

    def __init__(self, writer, sinks: list):
        self._writer, self._sinks = writer, sinks

    def __getattr__(self, name: str):
        return getattr(self._writer, name)

    def _mirror(self, kind: str, records: list[dict]) -> None:
        for sink in self._sinks:
            sink.log(kind, records)

    def metrics(self, record: dict) -> None:
        self._writer.metrics(record)
        self._mirror("metrics", [record])

    def steps(self, records: list[dict]) -> None:
        self._writer.steps(records)
        self._mirror("steps", records)

    def alignment(self, records: list[dict]) -> None:
        self._writer.alignment(records)
        self._mirror("alignment", records)

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()


def mirrored(writer, kinds, config: dict, resume_step: int | None) -> Mirrored:
    require_live(kinds)
    return Mirrored(writer, [SINKS[kind](Path(writer.path), config, resume_step) for kind in kinds])
