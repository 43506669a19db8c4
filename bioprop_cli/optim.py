"""Optimisers and learning-rate schedules from optax, chosen by name in the config."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bioprop_cli.config import OptimizerConfig


def make_schedule(cfg: OptimizerConfig, steps_per_epoch: int, epochs: int, lr=None) -> optax.Schedule:
    """The learning rate at each step (of `lr`, default optimizer.lr); with schedule.every epoch it changes
    at epoch boundaries only (torch's lr_scheduler stepped once per epoch)."""
    schedule = _per_step_schedule(cfg, steps_per_epoch, epochs, cfg.lr if lr is None else lr)
    if cfg.schedule.every == "epoch":
        return lambda count: schedule((count // steps_per_epoch) * steps_per_epoch)
    return schedule


def _per_step_schedule(cfg: OptimizerConfig, steps_per_epoch: int, epochs: int, lr) -> optax.Schedule:
    s = cfg.schedule
    total = max(1, steps_per_epoch * epochs)
    if s.name == "constant":
        return optax.constant_schedule(lr)
    if s.name == "cosine":
        # torch's CosineAnnealingLR(T_max = period, eta_min = final_lr): final_lr + (lr - final_lr)(1 + cos(pi t/T))/2,
        # then final_lr (optax's alpha is final_lr / lr)
        period = total if s.period_epochs is None else max(1, round(s.period_epochs * steps_per_epoch))
        alpha = s.final_fraction if s.final_lr is None else s.final_lr / lr
        return optax.cosine_decay_schedule(lr, period, alpha=alpha)
    if s.name == "warmup_cosine":
        warmup = min(total - 1, round(s.warmup_epochs * steps_per_epoch))
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total, end_value=lr * s.final_fraction)
    if s.name == "exponential":  # reaches lr * decay_rate at the end of training
        return optax.exponential_decay(lr, transition_steps=total, decay_rate=s.decay_rate)
    if s.name == "step":
        return optax.piecewise_constant_schedule(
            lr, {round(b * steps_per_epoch): s.decay_rate for b in s.boundaries}
        )
    raise ValueError(f"unknown schedule {s.name}")  # unreachable: the config type forbids it


def make_optimizer(cfg: OptimizerConfig, steps_per_epoch: int, epochs: int) -> optax.GradientTransformation:
    # an absolute final rate (schedule.final_lr, torch's eta_min) with per-layer rates: each layer has its own
    # schedule, from its rate lr * layer_lr[l] down to final_lr, applied after an optimizer at rate 1 (every
    # optimizer's update is proportional to its rate)
    per_layer = bool(cfg.layer_lr) and cfg.schedule.name == "cosine" and cfg.schedule.final_lr is not None
    lr = 1.0 if per_layer else make_schedule(cfg, steps_per_epoch, epochs)
    builders = {
        "sgd": lambda: optax.sgd(lr),
        "momentum": lambda: optax.sgd(lr, momentum=cfg.momentum),
        "nesterov": lambda: optax.sgd(lr, momentum=cfg.momentum, nesterov=True),
        "adam": lambda: optax.adam(lr),
        "adamw": lambda: optax.adamw(lr, weight_decay=cfg.weight_decay),
        "rmsprop": lambda: optax.rmsprop(lr),
        "adagrad": lambda: optax.adagrad(lr),
    }
    optimizer = builders[cfg.name]()
    if cfg.name != "adamw" and not _is_zero(cfg.weight_decay):
        # L2 decay added to the gradient before the optimizer, as torch.optim's weight_decay (adamw's is decoupled)
        optimizer = optax.chain(optax.add_decayed_weights(cfg.weight_decay), optimizer)
    if per_layer:
        schedules = [make_schedule(cfg, steps_per_epoch, epochs, lr=cfg.lr * m) for m in cfg.layer_lr]
        optimizer = optax.chain(optimizer, scale_by_layer_schedule(schedules))
    elif cfg.layer_lr:
        optimizer = optax.chain(optimizer, scale_by_layer(cfg.layer_lr))
    return optimizer


def _is_zero(value) -> bool:
    """A weight decay known to be 0 (a traced, batched value is not known: it may differ between runs)."""
    return isinstance(value, (int, float)) and value == 0


def scale_by_layer_schedule(schedules) -> optax.GradientTransformation:
    """Multiplies layer l's update (weights and biases) by schedules[l](step): per-layer learning-rate schedules."""

    def init(params):
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        scaled = [jax.tree_util.tree_map(lambda u, f=f: f(state.count) * u, layer) for layer, f in zip(updates, schedules)]
        return scaled, optax.ScaleByScheduleState(count=optax.safe_int32_increment(state.count))

    return optax.GradientTransformation(init, update)


def scale_by_layer(multipliers) -> optax.GradientTransformation:
    """Multiplies layer l's update (weights and biases) by multipliers[l]: per-layer learning rates."""

    def update(updates, state, params=None):
        return [jax.tree_util.tree_map(lambda u, m=m: m * u, layer) for layer, m in zip(updates, multipliers)], state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
