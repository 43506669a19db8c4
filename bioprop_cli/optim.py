"""Optimisers and learning-rate schedules from optax, chosen by name in the config."""

from __future__ import annotations

import jax
import optax

from bioprop_cli.config import OptimizerConfig


def make_schedule(cfg: OptimizerConfig, steps_per_epoch: int, epochs: int) -> optax.Schedule:
    s, lr = cfg.schedule, cfg.lr
    total = max(1, steps_per_epoch * epochs)
    if s.name == "constant":
        return optax.constant_schedule(lr)
    if s.name == "cosine":
        return optax.cosine_decay_schedule(lr, total, alpha=s.final_fraction)
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
    lr = make_schedule(cfg, steps_per_epoch, epochs)
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
    if cfg.layer_lr:
        optimizer = optax.chain(optimizer, scale_by_layer(cfg.layer_lr))
    return optimizer


def _is_zero(value) -> bool:
    """A weight decay known to be 0 (a traced, batched value is not known: it may differ between runs)."""
    return isinstance(value, (int, float)) and value == 0


def scale_by_layer(multipliers) -> optax.GradientTransformation:
    """Multiplies layer l's update (weights and biases) by multipliers[l]: per-layer learning rates."""

    def update(updates, state, params=None):
        return [jax.tree_util.tree_map(lambda u, m=m: m * u, layer) for layer, m in zip(updates, multipliers)], state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
