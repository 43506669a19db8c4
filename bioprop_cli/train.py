"""The one training loop, for every learning rule.

Pure, compiled pieces (built by `build_program`):
    init(seed, hyper)                 -> TrainState
    epoch(state, data, epoch_index)   -> state, per-step losses/accuracies (+ in-epoch alignment)
    evaluate(state, split)            -> loss, accuracy, top-5 accuracy
    measure(state, key)               -> per-layer alignment on the fixed probe batch
    chunk(state, data, epoch_index, start) -> the same for train.chunk_steps steps from `start`
    streamed_chunk(state, the chunk's examples, ...) -> the same, its examples sent from the host (ChunkFeeder)
One epoch is one `lax.scan` over minibatches (or one per chunk); the data sits on the device once, or, when the
training split does not fit there (config data.stream, splits.feed_plan), stays in host memory and is sent a chunk
at a time, the next chunk's transfer overlapping the current chunk's compute.
`hyper` holds the run's values of config keys that runs trained together may differ in
(config.BATCHABLE_KEYS: learning rate, beta, scales); they ride in the state as arrays, so one
compiled program serves every value. `train_group` maps the program over runs (a conv net's one after
another on a CPU, vmapped otherwise: `runs_one_after_another`) and, where several devices are present, spreads the
runs over them.
`train` is the host-side driver: it times, checks for divergence, hands records to the writer, and
checkpoints the whole training state (bioprop_cli/checkpoint.py); `resume_run` continues from a checkpoint.
"""

from __future__ import annotations

import functools
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from datetime import datetime, timezone
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bioprop_cli import __version__, checkpoint, live
from bioprop_cli.augment import augmentation_key, make_augment
from bioprop_cli.config import BATCHABLE_KEYS, Config, get_value, shape_key, to_dict, with_values
from bioprop_cli.datasets.registry import image_shape
from bioprop_cli.errors import UserError
from bioprop_cli.interrupt import sigint_flag
from bioprop_cli.metrics.measure import make_measure
from bioprop_cli.models.mlp import LOSSES
from bioprop_cli.models.arch import Architecture, is_library
from bioprop_cli.network import architecture, init_state
from bioprop_cli.optim import make_optimizer, make_schedule
from bioprop_cli.rules import make_rule
from bioprop_cli.runs import RunWriter, process_stamp
from bioprop_cli.splits import (
    Keys, PixelScale, derive_keys, device_memory_bytes, draw_probe, feed_plan, make_splits, probe_indices, to_inputs,
)


TOP_K = 5  # top-5 accuracy is recorded for datasets of more than TOP_K_FROM classes
TOP_K_FROM = 10


class TrainState(NamedTuple):
    params: Any
    rule_state: Any
    opt_state: Any
    hyper: dict  # {config key: value} of the batched keys ({} for a run trained alone)


@dataclass(frozen=True)
class Program:
    """The compiled pieces of a run. All functions are pure and jit-compiled."""

    arch: Architecture
    steps_per_epoch: int
    init: Callable  # (seed, hyper={}) -> TrainState
    epoch: Callable  # (state, x_train, y_train, probe_x, probe_y, keys, epoch_index) -> (state, out)
    chunk_steps: int  # steps per call of `chunk` (train.chunk_steps, or the whole epoch)
    order: Callable  # (keys, epoch_index) -> the epoch's minibatches (steps_per_epoch, batch_size)
    chunk: Callable  # (state, x_train, y_train, probe_x, probe_y, probe_idx, keys, batches, epoch_index, start) -> (state, out)
    # the same with the chunk's examples x (chunk_steps, batch, ...) and labels y (chunk_steps, batch) given
    streamed_chunk: Callable  # (state, x, y, probe_x, probe_y, probe_idx, keys, batches, epoch_index, start)
    evaluate: Callable  # (state, x, y, mask) -> (mean loss, accuracy, top-5 accuracy)
    measure: Callable  # (state, probe_x, probe_y, key) -> {"layers": {name: (L,)}, "network": {name: ()}}
    schedule: Callable  # step -> learning rate


def build_program(config: Config, n_train: int, n_in: int, pixels: PixelScale | None = None,
                  stream_steps: int | None = None) -> Program:
    """The compiled pieces of the config's run on n_train training examples of n_in features
    (network.architecture); pixels: the examples are stored as uint8 and become inputs in the step
    (splits.to_inputs); stream_steps: streamed, chunks of at most this many steps (splits.feed_plan)."""
    m, t = config.model, config.train
    loss = LOSSES[m.loss]
    arch = architecture(config, n_in)
    steps_per_epoch = n_train // t.batch_size  # the remainder of each shuffled epoch is dropped
    every_steps = config.alignment.every_steps if config.alignment.enabled else 0
    chunk_steps = min(t.chunk_steps or steps_per_epoch, stream_steps or steps_per_epoch, steps_per_epoch)
    d = config.data
    n_classes = arch.sizes[-1]  # one output per class of the dataset (datasets.facts)
    augment = make_augment(d.augment, image_shape(config), d.crop_padding)  # None: the examples as they are
    network_inputs = functools.partial(to_inputs, pixels)  # stored examples -> float32 inputs

    def parts(hyper: dict):
        """The rule and optimizer of one run: the config with its batched values (traced) put in."""
        run_config = with_values(config, hyper)
        return make_rule(run_config, arch, n_train), make_optimizer(run_config.optimizer, steps_per_epoch, t.epochs)

    def init(seed, hyper=None):
        hyper = hyper or {}
        _, optimizer = parts(hyper)
        _, params, rule_state = init_state(with_values(config, hyper), arch, seed, n_train)
        return TrainState(params, rule_state, optimizer.init(params), hyper)

    def measure(state, probe_x, probe_y, key, probe_idx=None):
        """probe_idx: the probe examples' positions in the training split (ep's persistent particles)."""
        rule, _ = parts(state.hyper)
        measured = make_measure(with_values(config, state.hyper), arch, rule)(
            state.params, state.rule_state, network_inputs(probe_x), jax.nn.one_hot(probe_y, n_classes), key, idx=probe_idx)
        return jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float32), measured)

    def step(state, x, y, key, idx):
        rule, optimizer = parts(state.hyper)
        est = rule.estimate(state.params, state.rule_state, x, y, key, idx=idx)
        updates, opt_state = optimizer.update(est.grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        correct = jnp.sum(jnp.argmax(est.logits, -1) == jnp.argmax(y, -1))
        return TrainState(params, est.state, opt_state, state.hyper), (est.loss, correct)

    def order(keys: Keys, epoch_index):
        """The epoch's minibatches: (steps_per_epoch, batch_size) positions in the training split."""
        order = jax.random.permutation(jax.random.fold_in(keys.data, epoch_index), n_train)
        return order[: steps_per_epoch * t.batch_size].reshape(steps_per_epoch, t.batch_size)

    def run_steps(state, examples: Callable, probe_x, probe_y, probe_idx, keys: Keys, batches, epoch_index, start,
                  length: int):
        """Steps start .. start + length - 1 of epoch `epoch_index` (0-based); steps past the epoch's end
        (the last chunk of an epoch that chunk_steps does not divide) change nothing. examples(j, positions):
        the stored examples and labels of the chunk's j-th step, at these positions of the training split."""
        shapes = jax.eval_shape(measure, state, probe_x, probe_y, keys.probe, probe_idx)
        empty = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes)

        def body(state, j):
            i = start + j
            idx = batches[i]
            global_step = epoch_index * steps_per_epoch + i
            key = jax.random.fold_in(keys.steps, global_step)
            out = {}
            if every_steps:  # measured before this step's update; step 0 of an epoch is left to
                # the epoch-end measurement of the previous epoch (same parameters)
                due = (global_step % every_steps == 0) & (i > 0)
                measure_key = jax.random.fold_in(keys.probe, global_step)
                out["alignment"] = jax.lax.cond(
                    due, lambda: measure(state, probe_x, probe_y, measure_key, probe_idx), lambda: empty
                )
                out["measured"] = due
            stored_x, labels = examples(j, idx)
            x = network_inputs(stored_x)
            x = x if augment is None else augment(augmentation_key(key), x)
            state, (loss_value, correct) = step(state, x, jax.nn.one_hot(labels, n_classes), key, idx)
            out["loss"], out["correct"] = loss_value, correct
            return state, out

        if steps_per_epoch % length:
            def guarded(state, j):
                skipped = lambda state: (state, jax.tree_util.tree_map(
                    lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(body, state, j)[1]))
                return jax.lax.cond(start + j < steps_per_epoch, lambda state: body(state, j), skipped, state)
            return jax.lax.scan(guarded, state, jnp.arange(length))
        return jax.lax.scan(body, state, jnp.arange(length))

    def resident(x_train, y_train):
        return lambda j, idx: (x_train[idx], y_train[idx])

    def epoch(state, x_train, y_train, probe_x, probe_y, keys: Keys, epoch_index):
        probe_idx = probe_indices(keys.probe, x_train.shape[0], probe_x.shape[0])  # the probe is draw_probe(keys.probe, ...)
        return run_steps(state, resident(x_train, y_train), probe_x, probe_y, probe_idx, keys,
                         order(keys, epoch_index), epoch_index, 0, steps_per_epoch)

    def chunk(state, x_train, y_train, probe_x, probe_y, probe_idx, keys: Keys, batches, epoch_index, start):
        return run_steps(state, resident(x_train, y_train), probe_x, probe_y, probe_idx, keys, batches, epoch_index,
                         start, chunk_steps)

    def streamed_chunk(state, x, y, probe_x, probe_y, probe_idx, keys: Keys, batches, epoch_index, start):
        return run_steps(state, lambda j, idx: (x[j], y[j]), probe_x, probe_y, probe_idx, keys, batches, epoch_index,
                         start, chunk_steps)

    def evaluate(state, x, y, mask):
        rule, _ = parts(state.hyper)
        params, rule_state = state.params, state.rule_state
        chunk = t.eval_batch_size if x.shape[0] % t.eval_batch_size == 0 else x.shape[0]
        xs = x.reshape((-1, chunk) + x.shape[1:])
        ys, ms = y.reshape(-1, chunk), mask.reshape(-1, chunk)

        def one(args):
            xc, yc, mc = args
            z = rule.predict(params, rule_state, network_inputs(xc))
            per_example = loss.per_example(z, jax.nn.one_hot(yc, n_classes))
            # top 5: fewer than 5 classes score strictly above the label's (a tie counts for the label)
            above = jnp.sum(z > jnp.take_along_axis(z, yc[:, None], -1), -1)
            return (jnp.sum(per_example * mc), jnp.sum((jnp.argmax(z, -1) == yc) * mc),
                    jnp.sum((above < TOP_K) * mc))

        losses, corrects, top_k = jax.lax.map(one, (xs, ys, ms))
        n = jnp.sum(mask)
        return jnp.sum(losses) / n, jnp.sum(corrects) / n, jnp.sum(top_k) / n

    return Program(
        arch=arch,
        steps_per_epoch=steps_per_epoch,
        init=jax.jit(init),
        epoch=jax.jit(epoch),
        chunk_steps=chunk_steps,
        order=jax.jit(order),
        chunk=jax.jit(chunk),
        streamed_chunk=jax.jit(streamed_chunk),
        evaluate=jax.jit(evaluate),
        measure=jax.jit(measure),
        schedule=make_schedule(config.optimizer, steps_per_epoch, t.epochs),
    )


# ----------------------------------------------------------------------------------------------
# Host-side driver.


def alignment_records(measurements: dict, epoch: int, step: int) -> list[dict]:
    """One record per layer, then one with layer "all" for the whole-network quantities."""
    layers = {name: np.asarray(v) for name, v in measurements["layers"].items()}
    n_layers = len(next(iter(layers.values())))
    records = [
        {"epoch": epoch, "step": step, "layer": l, **{name: float(v[l]) for name, v in layers.items()}}
        for l in range(n_layers)
    ]
    network = {name: float(v) for name, v in measurements["network"].items()}
    return records + [{"epoch": epoch, "step": step, "layer": "all", **network}]


def in_epoch_alignment(out: dict, epoch: int, steps_per_epoch: int) -> list[dict]:
    if "alignment" not in out:
        return []
    records = []
    for i in np.flatnonzero(np.asarray(out["measured"])):
        at_step = jax.tree_util.tree_map(lambda v: v[i], out["alignment"])
        # the measurement at step i happened before that step's update, during epoch `epoch`
        records += alignment_records(at_step, epoch - 1, (epoch - 1) * steps_per_epoch + int(i))
    return records


def environment() -> dict:
    import jaxlib

    devices = jax.devices()
    return {
        "versions": {
            "bioprop": __version__,
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "optax": optax.__version__,
            "python": platform.python_version(),
        },
        "device": {
            "platform": devices[0].platform,
            "kind": devices[0].device_kind,
            "count": len(devices),
        },
    }


class EpochReport(NamedTuple):
    record: dict  # the metrics.jsonl line
    alignment: list[dict]  # the alignment.jsonl lines of this epoch


class SeedBatched(NamedTuple):
    """The program's functions with a leading run axis (jax.vmap), compiled once for the group."""

    init: Callable  # (seeds (N,), hyper {key: (N,)}) -> TrainState with leading N
    epoch: Callable  # (state, x_train, y_train, probe_x (N,...), probe_y (N,...), keys (N,), epoch) -> ...
    evaluate: Callable  # (state, x, y, mask) -> ((N,), (N,), (N,))
    measure: Callable  # (state, probe_x, probe_y, keys (N, 2), probe_idx) -> measurements with leading N
    probe: Callable  # (keys.probe (N, 2), x_train, y_train) -> probe_x, probe_y, probe_idx with leading N
    order: Callable  # (keys (N,), epoch) -> minibatches (N, steps, batch)
    chunk: Callable  # (state, x_train, y_train, probe_x, probe_y, probe_idx, keys, batches, epoch, start) -> ...
    streamed_chunk: Callable  # the same with the chunk's examples and labels (N, chunk_steps, batch, ...) for x_train, y_train


def seed_batched(program: Program, probe_size: int, n_seeds: int, one_after_another: bool = False) -> SeedBatched:
    """vmapped over seeds, or with `one_after_another` (runs_one_after_another) mapped over them one run after
    another inside the one compiled program (lax.map: each run's computation is the single run's), the measurement
    still vmapped (on LeNet one after another took longer: docs/speed.md, "Seeds trained together"); for one seed,
    the plain functions with a unit axis added (as fast as the unbatched program, which `bioprop bench` measures)."""

    probe = functools.partial(draw_probe, size=probe_size)

    if n_seeds == 1:
        add, first = (lambda t: jax.tree_util.tree_map(lambda v: v[None], t)), (lambda t: _seed(t, 0))
        return SeedBatched(
            init=jax.jit(lambda seeds, hyper: add(program.init(seeds[0], first(hyper)))),
            epoch=jax.jit(lambda st, xt, yt, px, py, keys, e: add(program.epoch(first(st), xt, yt, px[0], py[0], first(keys), e))),
            evaluate=jax.jit(lambda st, x, y, mask: add(program.evaluate(first(st), x, y, mask))),
            measure=jax.jit(lambda st, px, py, keys, idx: add(program.measure(first(st), px[0], py[0], keys[0], idx[0]))),
            probe=jax.jit(lambda keys, xt, yt: add(probe(keys[0], xt, yt))),
            order=jax.jit(lambda keys, e: add(program.order(first(keys), e))),
            chunk=jax.jit(lambda st, xt, yt, px, py, pi, keys, b, e, s: add(
                program.chunk(first(st), xt, yt, px[0], py[0], pi[0], first(keys), b[0], e, s))),
            streamed_chunk=jax.jit(lambda st, x, y, px, py, pi, keys, b, e, s: add(
                program.streamed_chunk(first(st), x[0], y[0], px[0], py[0], pi[0], first(keys), b[0], e, s))),
        )
    over_runs = map_runs if one_after_another else jax.vmap
    return SeedBatched(
        init=jax.jit(over_runs(program.init)),
        epoch=jax.jit(over_runs(program.epoch, in_axes=(0, None, None, 0, 0, 0, None))),
        evaluate=jax.jit(over_runs(program.evaluate, in_axes=(0, None, None, None))),
        measure=jax.jit(jax.vmap(program.measure)),
        probe=jax.jit(jax.vmap(probe, in_axes=(0, None, None))),
        order=jax.jit(jax.vmap(program.order, in_axes=(0, None))),
        chunk=jax.jit(over_runs(program.chunk, in_axes=(0, None, None, 0, 0, 0, 0, 0, None, None))),
        streamed_chunk=jax.jit(over_runs(program.streamed_chunk, in_axes=(0, 0, 0, 0, 0, 0, 0, 0, None, None))),
    )


def map_runs(f: Callable, in_axes=0) -> Callable:
    """f over the leading run axis of the arguments whose in_axes entry is 0 (those with None are shared), as
    jax.vmap(f, in_axes) maps it, but one run after another (lax.map)."""

    def mapped(*args):
        axes = in_axes if isinstance(in_axes, (tuple, list)) else (in_axes,) * len(args)

        def one(per_run):
            runs = iter(per_run)
            return f(*(a if axis is None else next(runs) for a, axis in zip(args, axes)))

        return jax.lax.map(one, [a for a, axis in zip(args, axes) if axis is not None])

    return mapped


def runs_one_after_another(arch, sharding) -> bool:
    """How a group of runs trains in its one compiled program: one run after another (lax.map) where the network
    has a convolution and a CPU holds the whole group; vmapped otherwise (the MLP, and on accelerators or several
    devices, over which the runs then spread). On XLA's CPU backend vmap makes a conv layer with one kernel per
    run a grouped convolution (feature_group_count = runs), much slower per run than each run's own; the MLP's
    vmapped products are about as fast as one run at a time (measured: docs/speed.md, "Seeds trained together")."""
    convolutional = is_library(arch) or not arch.is_mlp
    return convolutional and sharding is None and jax.default_backend() == "cpu"


def _seed(tree, i: int):
    return jax.tree_util.tree_map(lambda v: v[i], tree)


def batched_values(configs: list[Config]) -> dict[str, list]:
    """{key: one value per run} of the batchable keys (BATCHABLE_KEYS, seed aside) in which the
    runs differ. A group trains together only if its runs differ in nothing else."""
    first = shape_key(configs[0])
    for c in configs[1:]:
        if shape_key(c) != first:
            raise ValueError(f"runs trained as one group may differ only in {', '.join(BATCHABLE_KEYS)}")
    return {
        key: [get_value(c, key) for c in configs]
        for key in BATCHABLE_KEYS
        if key != "seed" and len({get_value(c, key) for c in configs}) > 1
    }


def run_sharding(n_runs: int):
    """Spreads the leading run axis over the devices (the largest count that divides the runs);
    None on one device."""
    devices = jax.devices()
    count = max(k for k in range(1, len(devices) + 1) if n_runs % k == 0)
    if count == 1:
        return None
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    return NamedSharding(Mesh(np.array(devices[:count]), ("runs",)), PartitionSpec("runs"))


def check_resume(run_dir, config: Config, force: bool = False) -> tuple[checkpoint.Checkpoint, list[str]]:
    """The checkpoint `resume_run` continues from, and what differs from it (accepted with `force`); a
    UserError where the config or code differs (without `force`) or nothing is left to train."""
    stored, forced = checkpoint.load_for_resume(run_dir, to_dict(config), force)
    if stored.meta["epoch"] >= config.train.epochs:
        raise UserError(f"{run_dir}: the run has completed its {stored.meta['epoch']} epochs; nothing to resume "
                        "(more epochs: --epochs N --force)")
    return stored, forced


def resume_run(run_dir, dataset, config: Config, force: bool = False, writer=None,
               on_epoch: Callable[[EpochReport], None] = lambda r: None,
               on_progress: Callable[[int, int, int], None] = lambda epoch, step, steps: None,
               checked: tuple[checkpoint.Checkpoint, list[str]] | None = None) -> dict:
    """Continues the run in `run_dir` from its checkpoints/last.npz, into the same folder, with `config`
    (its config.yaml, with any changes): the result equals an uninterrupted run's. A config or code that
    differs from the checkpoint's is a UserError naming the differences, unless `force` (then recorded
    in summary.json's `resumed`); `checked`: check_resume's answer where the caller has it. Returns the
    summary, as `train`."""
    stored, forced = checked or check_resume(run_dir, config, force)
    return train(config, dataset, writer or RunWriter(Path(run_dir)), on_epoch, resume=stored, forced=forced,
                 on_progress=on_progress)


def train(config: Config, dataset, writer, on_epoch: Callable[[EpochReport], None] = lambda r: None,
          resume: checkpoint.Checkpoint | None = None, forced: list[str] = (),
          on_progress: Callable[[int, int, int], None] = lambda epoch, step, steps: None) -> dict:
    """Trains one run; writes config, metrics, alignment and summary through `writer`.

    Returns the summary. Ctrl-C ends the run with status 'interrupted', divergence (`divergence_reason`)
    with status 'diverged'; what was measured until then is kept. `resume`: continue from this
    checkpoint of the run (checkpoint.read; resume_run checks it first). `on_progress(epoch, steps done
    in it, steps per epoch)` after every chunk of steps (train.chunk_steps).
    """
    return train_group([config], dataset, [writer], lambda i, report: on_epoch(report),
                       resume=None if resume is None else [resume], forced=[list(forced)], on_progress=on_progress)[0]


class _RunLog:
    """Host-side bookkeeping of one run of a group."""

    BOOKKEEPING = ("epochs_done", "initial_loss", "best_val", "best_val_epoch", "last")  # what a checkpoint keeps

    def __init__(self, config: Config, writer, summary: dict, schedule: Callable):
        self.config, self.writer, self.summary = config, writer, summary
        self.schedule = schedule  # step -> this run's learning rate
        self.step_lr = jax.jit(schedule)  # the same, for steps.jsonl: compiled once (eager: 3 ms a call, measured)
        self.status, self.epochs_done, self.diverged_epoch = "completed", 0, None
        self.initial_loss, self.divergence, self.stopped_by = None, None, None
        self.best_val, self.best_val_epoch, self.last = -1.0, 0, {}

    @property
    def active(self) -> bool:
        return self.status == "completed"

    def bookkeeping(self) -> dict:
        return {name: getattr(self, name) for name in self.BOOKKEEPING}

    def finish(self, wall_time: float, train_time: float, examples: int, compile_time: float) -> dict:
        self.summary.update(
            status=self.status,
            stopped_by=self.stopped_by,
            epochs_completed=self.epochs_done,
            diverged_epoch=self.diverged_epoch,
            divergence=self.divergence,
            test_accuracy=self.last.get("test_accuracy"),
            **({"test_top5_accuracy": self.last.get("test_top5_accuracy")} if "test_top5_accuracy" in self.last else {}),
            test_loss=self.last.get("test_loss"),
            val_accuracy=self.last.get("val_accuracy"),
            best_val_accuracy=self.best_val if self.best_val >= 0 else None,
            best_val_epoch=self.best_val_epoch or None,
            final_mean_update_angle=self.last.get("mean_update_angle"),
            wall_time_s=wall_time,
            train_time_s=train_time,
            compile_time_s=compile_time,
            examples_per_s=examples / train_time if train_time else None,
        )
        self.writer.summary(self.summary)
        return self.summary


def train_group(configs: list[Config], dataset, writers: list, on_epoch: Callable[[int, EpochReport], None] = lambda i, r: None,
                resume: list[checkpoint.Checkpoint] | None = None, forced: list[list[str]] | None = None,
                on_progress: Callable[[int, int, int], None] = lambda epoch, step, steps: None) -> list[dict]:
    """Trains runs that differ only in their seed and batchable values (learning rate, beta,
    scales: config.BATCHABLE_KEYS) together: one compiled program, vmapped over a leading run
    axis, spread over the devices where there are several. Each run writes its own files, the
    same as it would alone (tested). A run that diverges stops writing; the others go on.
    Each run checkpoints its whole training state (checkpoint.py: checkpoints/last.npz every
    train.checkpoint_every epochs and when training stops; checkpoints/best.npz at each new best
    validation accuracy); `resume` (one checkpoint per run, all at one position) continues from
    them, cutting each run's JSON-lines logs back to where its checkpoint was taken; `forced`: per
    run, the differences from the checkpoint accepted with --force (recorded in summary.json).
    When training ends (completed or interrupted), each run writes its final parameters to
    params.npz (train.save_params); a diverged run does not: non-finite weights are useless.
    Ctrl-C (SIGINT) ends every active run with status 'interrupted' at the next boundary (after
    compilation, between chunks of steps); see sigint_flag. So does a spent train.max_minutes
    (stopped_by says which).
    """
    live.require_live(configs[0].log.live)
    if configs[0].log.live:  # the live curves mirror what each writer writes (bioprop_cli/live.py)
        writers = [live.mirrored(w, c.log.live, to_dict(c), None if resume is None else resume[i].meta["step"] + 1)
                   for i, (c, w) in enumerate(zip(configs, writers))]
    try:
        with sigint_flag():  # before the first summary is written: Ctrl-C from here on is recorded
            return _train_group(configs, dataset, writers, on_epoch, resume, forced or [[] for _ in configs], on_progress)
    finally:
        for writer in writers:
            if isinstance(writer, live.Mirrored):
                writer.close()


class _BudgetSpent(Exception):
    """train.max_minutes would be exceeded by the next chunk of steps."""


class _Mark(NamedTuple):
    """A point where the training state and every run's logs agree: what a checkpoint stores."""

    state: Any  # TrainState, leading run axis
    partial: list  # the current epoch's chunk outputs so far (numpy, leading run axis); [] at an epoch's end
    epoch: int  # epochs completed
    step_in_epoch: int  # steps of the next epoch done
    books: list[dict]  # _RunLog.bookkeeping() of each run
    files: list[dict]  # {log file: bytes} of each run
    times: dict


def _resumed_summary(writer, stored: checkpoint.Checkpoint, forced: list[str]) -> dict:
    summary = writer.previous_summary()
    meta = stored.meta
    resumed = {"from_epoch": meta["epoch"], "from_step": meta["step"],
               "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "forced": forced}
    return {**summary, "status": "running", "resumed": [*summary.get("resumed", []), resumed]}


def _train_group(configs: list[Config], dataset, writers: list, on_epoch: Callable[[int, EpochReport], None],
                 resume: list[checkpoint.Checkpoint] | None, forced: list[list[str]],
                 on_progress: Callable[[int, int, int], None]) -> list[dict]:
    varying = batched_values(configs)
    config = configs[0]
    plan = feed_plan(config, dataset, device_memory_bytes())
    splits = make_splits(config, dataset, keep_uint8=config.data.storage == "uint8", train_on_device=not plan.streamed)
    n_train = splits.x_train.shape[0]
    program = build_program(config, n_train, splits.x_train.shape[1], splits.pixels, plan.chunk_steps)
    sharding = run_sharding(len(configs)) if len(configs) > 1 else None
    batched = seed_batched(program, config.alignment.probe_size, len(configs), runs_one_after_another(program.arch, sharding))
    seeds = jnp.asarray([c.seed for c in configs], jnp.int32)
    hyper = {key: jnp.asarray(values, jnp.float32) for key, values in varying.items()}
    keys = jax.vmap(derive_keys)(seeds)
    if sharding is not None:
        seeds, hyper, keys = jax.device_put((seeds, hyper, keys), sharding)
    if plan.streamed:
        probe_x, probe_y, probe_idx = _host_probe(keys.probe, splits.x_train, splits.y_train, config.alignment.probe_size)
    else:
        probe_x, probe_y, probe_idx = batched.probe(keys.probe, splits.x_train, splits.y_train)
    align, steps_per_epoch, batch_size = config.alignment, program.steps_per_epoch, config.train.batch_size
    start_epoch, start_step, times = 0, 0, {"train_time_s": 0.0, "compile_time_s": 0.0, "examples": 0, "wall_time_s": 0.0}
    if resume is not None:
        positions = {(c.meta["epoch"], c.meta["step_in_epoch"]) for c in resume}
        if len(positions) > 1:
            raise ValueError(f"runs resumed together must stop at one position; their checkpoints are at {sorted(positions)}")
        (start_epoch, start_step), = positions
        if start_step % program.chunk_steps:
            streamed = f", data.stream_steps={config.data.stream_steps} (streamed)" if plan.streamed else ""
            raise UserError(f"the checkpoint is {start_step} steps into epoch {start_epoch + 1}, not a multiple of "
                            f"the {program.chunk_steps}-step chunks of train.chunk_steps={config.train.chunk_steps}"
                            f"{streamed}; resume with the run's train.chunk_steps (and data.stream, data.stream_steps)")
        times = dict(resume[0].meta["times"])

    logs = []
    for i, (c, writer) in enumerate(zip(configs, writers)):
        if resume is None:
            writer.config(to_dict(c))
            summary = {
                "status": "running", "rule": c.rule, "depth": c.model.depth, "seed": c.seed,
                "dataset": c.data.dataset, "num_classes": program.arch.sizes[-1],
                "architecture": program.arch.describe(), "layer_sizes": list(program.arch.sizes), "n_train": n_train,
                "n_val": int(jnp.sum(splits.mask_val)), "n_test": int(jnp.sum(splits.mask_test)),
                "steps_per_epoch": steps_per_epoch, "data_feed": _feed_record(plan), "runs_trained_together": len(configs),
                "batched_keys": sorted(varying), "devices_used": sharding.num_devices if sharding else 1,
                "runs_one_after_another": len(configs) > 1 and runs_one_after_another(program.arch, sharding),
                **environment(), **process_stamp(), "provenance": checkpoint.provenance(),
            }
        else:
            writer.truncate_logs(resume[i].meta["files"])  # lines logged after the checkpoint are logged again
            summary = {**_resumed_summary(writer, resume[i], forced[i]), **environment(), **process_stamp(),
                       "provenance": checkpoint.provenance(), "data_feed": _feed_record(plan)}
        writer.summary(summary)
        log = _RunLog(c, writer, summary, make_schedule(c.optimizer, steps_per_epoch, c.train.epochs))
        if resume is not None:
            for name, value in resume[i].meta["log"].items():
                setattr(log, name, value)
        logs.append(log)

    t_start = time.perf_counter()
    state, mark, saved, feeder = None, None, None, None
    budget = None if config.train.max_minutes is None else config.train.max_minutes * 60

    def elapsed_times() -> dict:
        return {**times, "wall_time_s": times["wall_time_s"] + time.perf_counter() - t_start}

    def set_mark(state, partial, epoch, step_in_epoch):
        return _Mark(state, list(partial), epoch, step_in_epoch, [log.bookkeeping() for log in logs],
                     [log.writer.log_sizes() for log in logs], elapsed_times())

    try:
        with sigint_flag() as interrupted:  # the flag of train_group's handler
            state = batched.init(seeds, hyper)
            partial = []
            if resume is not None:
                state, partial = _restored(resume, state, batched, splits, probe_x, probe_y, probe_idx, keys)
            params_bytes = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(state.params)) // len(configs)
            for log in logs:  # the size of params.npz is known now: room for it, or a DiskFull before training
                if log.config.train.save_params:
                    log.writer.reserve(params_bytes)
            if sharding is not None:  # every array of the state carries the run axis first
                state, probe_x, probe_y, probe_idx = jax.device_put((state, probe_x, probe_y, probe_idx), sharding)
            t0 = time.perf_counter()
            if plan.streamed:
                feeder = ChunkFeeder(splits.x_train, splits.y_train, lambda e: np.asarray(batched.order(keys, e)),
                                     program.chunk_steps, steps_per_epoch, config.train.epochs, sharding)
                chunk_fn = batched.streamed_chunk.lower(state, *feeder.shapes(len(configs)), probe_x, probe_y,
                                                        probe_idx, keys, batched.order(keys, 0), 0, 0).compile()
                run_chunk = lambda state, batches, e, begin: chunk_fn(
                    state, *feeder.take(e, begin), probe_x, probe_y, probe_idx, keys, batches, e, begin)
            else:
                chunk_args = (splits.x_train, splits.y_train, probe_x, probe_y, probe_idx, keys)
                chunk_fn = batched.chunk.lower(state, *chunk_args, batched.order(keys, 0), 0, 0).compile()
                run_chunk = lambda state, batches, e, begin: chunk_fn(state, *chunk_args, batches, e, begin)
            times["compile_time_s"] += time.perf_counter() - t0
            if interrupted():  # Ctrl-C while compiling: before the (costly, for ep) first measurement
                raise KeyboardInterrupt
            step_keys = lambda step: jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys.probe, step)
            if align.enabled and resume is None:
                measured = batched.measure(state, probe_x, probe_y, keys.probe, probe_idx)
                for i, log in enumerate(logs):
                    log.writer.alignment(alignment_records(_seed(measured, i), 0, 0))
            mark = set_mark(state, partial, start_epoch, start_step)
            saved = mark if resume is not None else None  # the checkpoint resumed from is this mark
            expected, eval_time = 0.0, 0.0  # seconds the next chunk and an epoch's evaluation are expected to take
            for epoch in range(start_epoch + 1, config.train.epochs + 1):
                if not any(log.active for log in logs):
                    break
                batches = batched.order(keys, epoch - 1)
                t_epoch, epoch_time = time.perf_counter(), 0.0
                first = start_step if epoch == start_epoch + 1 else 0
                # Each chunk is dispatched before the previous one is logged (JAX dispatches asynchronously): the
                # device works on while the host logs. A stop (Ctrl-C, the budget) waits for the chunk in flight.
                flight, t_free = None, time.perf_counter()  # flight: (state after it, outputs, first step, dispatched at)
                for begin in [*range(first, steps_per_epoch, program.chunk_steps), None]:
                    stop, launched = None, None
                    if begin is not None:
                        if interrupted():
                            stop = KeyboardInterrupt
                        elif budget is not None and (time.perf_counter() - t_start + expected * (2 if flight else 1)
                                                     + eval_time > budget):
                            stop = _BudgetSpent
                    if begin is not None and stop is None:  # timed from before the call: a streamed chunk's wait
                        t_call = time.perf_counter()  # for its examples counts
                        launched = (*run_chunk(flight[0] if flight else state, batches, epoch - 1, begin), begin, t_call)
                    if flight is not None:
                        state, out, at, t0 = flight
                        done = min(program.chunk_steps, steps_per_epoch - at)
                        out = jax.tree_util.tree_map(lambda v: np.asarray(v)[:, :done], out)  # waits for the chunk
                        now = time.perf_counter()
                        chunk_time, t_free = now - max(t0, t_free), now
                        times["train_time_s"] += chunk_time
                        times["examples"] += done * batch_size
                        expected, epoch_time = chunk_time, epoch_time + chunk_time
                        partial.append(out)
                        if config.log.every_steps:
                            _log_steps(logs, epoch, (epoch - 1) * steps_per_epoch + at, out, batch_size,
                                       config.log.every_steps)
                        on_progress(epoch, at + done, steps_per_epoch)
                        if at + done < steps_per_epoch:
                            mark = set_mark(state, partial, epoch - 1, at + done)
                    if stop is not None:
                        raise stop
                    flight = launched
                out = jax.tree_util.tree_map(lambda *parts: np.concatenate(parts, axis=1), *partial)
                partial = []
                losses = out["loss"]
                t0 = time.perf_counter()
                step = epoch * steps_per_epoch
                measured = None
                if align.enabled and epoch % align.every_epochs == 0:
                    measured = batched.measure(state, probe_x, probe_y, step_keys(step), probe_idx)
                evaluations = {
                    split: batched.evaluate(state, *(getattr(splits, f"{part}_{split}") for part in ("x", "y", "mask")))
                    for split in ("val", "test") if logs[0].summary[f"n_{split}"]
                }
                for i, log in enumerate(logs):
                    if log.active:
                        _log_epoch(log, i, epoch, step, losses[i], _seed(out, i), measured, evaluations, program,
                                   epoch_time, elapsed_times()["wall_time_s"], on_epoch)
                eval_time = time.perf_counter() - t0
                mark = set_mark(state, [], epoch, 0)
                every = config.train.checkpoint_every
                due = epoch % every == 0 if every is not None else time.perf_counter() - t_epoch > 60
                if due or epoch == config.train.epochs:
                    saved = _save(mark, logs, configs, steps_per_epoch, program.chunk_steps, "last")
                _save_best(mark, logs, configs, steps_per_epoch, program.chunk_steps, saved)
    except KeyboardInterrupt:
        for log in logs:
            if log.active:
                log.status, log.stopped_by = "interrupted", "Ctrl-C"
    except _BudgetSpent:
        for log in logs:
            if log.active:
                log.status, log.stopped_by = "interrupted", "train.max_minutes"
    finally:
        if feeder is not None:
            feeder.close()
    if mark is not None and mark is not saved:  # stopped: the last point where state and logs agree
        _save(mark, logs, configs, steps_per_epoch, program.chunk_steps, "last")
    wall = elapsed_times()["wall_time_s"]
    # numpy: slicing out each run's part compiles nothing; no state: interrupted before it existed
    final = None if state is None else jax.device_get(state.params)
    for i, log in enumerate(logs):  # params.npz before the final summary; not for a diverged run
        mine = None if final is None else _seed(final, i)
        if log.config.train.save_params and log.status != "diverged" and mine is not None and _finite(mine):
            log.writer.params(mine)
    return [log.finish(wall, times["train_time_s"], times["examples"], times["compile_time_s"]) for log in logs]


class ChunkFeeder:
    """Sends each chunk's training examples from host memory to the device: the examples at the chunk's positions
    of the epoch's order (the same minibatches as the resident path), gathered and put on the device by a worker
    thread while the previous chunk computes. `take(epoch, start)` returns the chunk's examples and labels (N runs,
    chunk_steps, batch, ...) and starts sending the next chunk's; the steps past an epoch's end of its last chunk
    get position 0's examples (the compiled chunk skips those steps)."""

    def __init__(self, x_train: np.ndarray, y_train: np.ndarray, order: Callable[[int], np.ndarray],
                 chunk_steps: int, steps_per_epoch: int, epochs: int, sharding=None):
        self.x_train, self.y_train, self.order = x_train, y_train, order
        self.chunk_steps, self.steps_per_epoch, self.epochs, self.sharding = chunk_steps, steps_per_epoch, epochs, sharding
        self.positions = {}  # epoch index -> its minibatches (N, steps_per_epoch, batch), for the current and next epoch
        self.worker = ThreadPoolExecutor(1)
        self.next = None  # ((epoch, start), the future of its examples on the device)

    def shapes(self, n_runs: int):
        batch = self.order(0).shape[-1]
        lead = (n_runs, self.chunk_steps, batch)
        return (jax.ShapeDtypeStruct(lead + self.x_train.shape[1:], self.x_train.dtype, sharding=self.sharding),
                jax.ShapeDtypeStruct(lead, self.y_train.dtype, sharding=self.sharding))

    def send(self, epoch: int, start: int):
        if epoch not in self.positions:
            self.positions = {e: p for e, p in self.positions.items() if e >= epoch - 1}
            self.positions[epoch] = self.order(epoch)
        idx = self.positions[epoch][:, start:start + self.chunk_steps]
        if idx.shape[1] < self.chunk_steps:
            idx = np.pad(idx, ((0, 0), (0, self.chunk_steps - idx.shape[1]), (0, 0)))
        return jax.device_put((self.x_train[idx], self.y_train[idx]), self.sharding)

    def take(self, epoch: int, start: int):
        if self.next is not None and self.next[0] == (epoch, start):
            chunk = self.next[1].result()
        else:
            chunk = self.send(epoch, start)
        after = (epoch, start + self.chunk_steps) if start + self.chunk_steps < self.steps_per_epoch else (epoch + 1, 0)
        self.next = (after, self.worker.submit(self.send, *after)) if after[0] < self.epochs else None
        return chunk

    def close(self) -> None:
        self.worker.shutdown(wait=True, cancel_futures=True)


def _host_probe(probe_keys, x_train: np.ndarray, y_train: np.ndarray, size: int):
    """The probe batch of each run (draw_probe's), gathered from a training split in host memory."""
    idx = jax.vmap(lambda key: probe_indices(key, x_train.shape[0], size))(probe_keys)
    positions = np.asarray(idx)
    return jnp.asarray(x_train[positions]), jnp.asarray(y_train[positions]), idx


def _feed_record(plan) -> dict:
    """summary.json's data_feed: how the training split reached the device (splits.feed_plan)."""
    return {"streamed": plan.streamed, "train_bytes": plan.train_bytes, "device_bytes": plan.device_bytes,
            "limit_bytes": plan.limit_bytes, "chunk_steps": plan.chunk_steps, "chunk_bytes": plan.chunk_bytes}


def _restored(resume: list[checkpoint.Checkpoint], state, batched: SeedBatched, splits, probe_x, probe_y, probe_idx, keys):
    """The resumed runs' training state (stacked on the run axis) and the outputs of the current
    epoch's steps before the checkpoint, in the structure `state` and the chunk function have."""
    template = _seed(state, 0)
    states = [checkpoint.restore(template, c.state, "checkpoint") for c in resume]
    state = jax.tree_util.tree_map(lambda *runs: jnp.asarray(np.stack(runs)), *states)
    if not resume[0].partial:
        return state, []
    shapes = jax.eval_shape(batched.chunk, state, splits.x_train, splits.y_train, probe_x, probe_y, probe_idx, keys,
                            jax.ShapeDtypeStruct((len(resume), 1, 1), jnp.int32), 0, 0)[1]
    treedef = jax.tree_util.tree_structure(shapes)
    leaves = [np.stack(runs) for runs in zip(*(c.partial for c in resume))]
    return state, [jax.tree_util.tree_unflatten(treedef, leaves)]


def _checkpoint_bytes(mark: _Mark, i: int, config: Config, steps_per_epoch: int, chunk_steps: int, state_np) -> bytes:
    meta = {
        "epoch": mark.epoch, "step_in_epoch": mark.step_in_epoch, "step": mark.epoch * steps_per_epoch + mark.step_in_epoch,
        "steps_per_epoch": steps_per_epoch, "chunk_steps": chunk_steps, "log": mark.books[i], "files": mark.files[i],
        "times": mark.times, "config": to_dict(config), "code": checkpoint.code_version(),
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    partial = []
    if mark.partial:
        joined = jax.tree_util.tree_map(lambda *parts: np.concatenate(parts, axis=1), *mark.partial)
        partial = jax.tree_util.tree_leaves(_seed(joined, i))
    return checkpoint.to_bytes(jax.tree_util.tree_leaves(_seed(state_np, i)), partial, meta)


def _save(mark: _Mark, logs: list[_RunLog], configs: list[Config], steps_per_epoch: int, chunk_steps: int,
          name: str) -> _Mark:
    """Writes checkpoint `name` of every run that has not diverged; returns the mark saved."""
    state_np = jax.device_get(mark.state)
    for i, log in enumerate(logs):
        if log.status != "diverged":
            log.writer.checkpoint(name, _checkpoint_bytes(mark, i, configs[i], steps_per_epoch, chunk_steps, state_np))
    return mark


def _save_best(mark: _Mark, logs: list[_RunLog], configs: list[Config], steps_per_epoch: int, chunk_steps: int,
               saved: _Mark | None) -> None:
    """checkpoints/best.npz of each run whose validation accuracy is a new best at the mark's epoch:
    a link to last.npz where that was just written, else its own write."""
    state_np = None
    for i, log in enumerate(logs):
        if log.status == "diverged" or log.best_val_epoch != mark.epoch or mark.step_in_epoch:
            continue
        if saved is mark:
            log.writer.link_checkpoint("last", "best")
            continue
        state_np = jax.device_get(mark.state) if state_np is None else state_np
        log.writer.checkpoint("best", _checkpoint_bytes(mark, i, configs[i], steps_per_epoch, chunk_steps, state_np))


def _log_steps(logs: list[_RunLog], epoch: int, first_step: int, out: dict, batch_size: int, every: int) -> None:
    """steps.jsonl: each active run's training loss and accuracy over each `every` steps of a chunk that
    began at global step `first_step` (a chunk starts on a multiple of `every`; an epoch's last window
    may be shorter), one record per window, at the step that ends it."""
    n = out["loss"].shape[1]
    windows = [(start, min(start + every, n)) for start in range(0, n, every)]
    for i, log in enumerate(logs):
        if log.active:
            ends = first_step + np.asarray([end for _, end in windows])
            lrs = np.broadcast_to(np.asarray(log.step_lr(ends)), ends.shape)  # one call a chunk (a constant: a scalar)
            losses, correct = out["loss"][i], out["correct"][i]
            log.writer.steps([{"epoch": epoch, "step": first_step + end, "lr": float(lr),
                               "train_loss": float(np.mean(losses[start:end])),
                               "train_accuracy": float(np.sum(correct[start:end]) / ((end - start) * batch_size))}
                              for (start, end), lr in zip(windows, lrs)])


def _finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(v))) for v in jax.tree_util.tree_leaves(tree))


def divergence_reason(losses: np.ndarray, initial_loss: float, factor: float | None) -> str | None:
    """Why an epoch with these per-step training losses diverged, or None: a non-finite loss, or a mean
    loss above `factor` times the initial loss (the first step's, at the initial parameters)."""
    if not np.all(np.isfinite(losses)):
        return "non-finite loss"
    if factor is not None and np.mean(losses) > factor * initial_loss:
        return f"loss above {factor:g} x initial"
    return None


def _log_epoch(log: _RunLog, i: int, epoch: int, step: int, losses, out, measured, evaluations, program,
               epoch_time: float, wall_time: float, on_epoch) -> None:
    """Writes one run's epoch: its metrics line and its alignment lines; marks divergence."""
    config = log.config
    if log.initial_loss is None:  # the first step of epoch 1 ran at the initial parameters
        log.initial_loss = float(losses[0])
    record = {
        "epoch": epoch,
        "step": step,
        "lr": float(log.schedule(step)),
        "train_loss": float(np.mean(losses)),
        "train_accuracy": float(np.sum(out["correct"]) / (program.steps_per_epoch * config.train.batch_size)),
    }
    reason = divergence_reason(losses, log.initial_loss, config.train.divergence_factor)
    if reason is not None:
        log.status, log.diverged_epoch = "diverged", epoch
        log.divergence = {"reason": reason, "epoch": epoch, "loss": record["train_loss"], "initial_loss": log.initial_loss}
        record.update(epoch_time_s=epoch_time, wall_time_s=wall_time)
        log.writer.metrics(record)
        log.epochs_done = epoch
        on_epoch(i, EpochReport(record, []))
        return
    alignment = in_epoch_alignment(out, epoch, program.steps_per_epoch)
    if measured is not None:
        mine = _seed(measured, i)
        alignment += alignment_records(mine, epoch, step)
        record.update({name: float(v) for name, v in mine["network"].items()})
    for split in ("val", "test"):
        loss_value, accuracy, top_k = evaluations.get(split, (None, None, None))
        record[f"{split}_loss"] = None if loss_value is None else float(loss_value[i])
        record[f"{split}_accuracy"] = None if accuracy is None else float(accuracy[i])
        if program.arch.sizes[-1] > TOP_K_FROM:
            record[f"{split}_top5_accuracy"] = None if top_k is None else float(top_k[i])
    record.update(epoch_time_s=epoch_time, wall_time_s=wall_time)
    log.writer.alignment(alignment)
    log.writer.metrics(record)
    log.epochs_done = epoch
    if record["val_accuracy"] is not None and record["val_accuracy"] > log.best_val:
        log.best_val, log.best_val_epoch = record["val_accuracy"], epoch
    log.last = record
    on_epoch(i, EpochReport(record, alignment))
