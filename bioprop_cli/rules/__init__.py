"""The registry of learning rules: name -> factory(config, sizes) -> LearningRule."""

from __future__ import annotations

from typing import Callable

from bioprop_cli.errors import UserError
from bioprop_cli.rules import (
    backprop,
    direct_feedback,
    equilibrium,
    feedback_alignment,
    kolen_pollack,
    predictive_coding,
    sign_symmetric,
    weight_mirror,
)
from bioprop_cli.rules.base import Estimate, LearningRule

_REGISTRY: dict[str, Callable[..., LearningRule]] = {
    "bp": backprop.make,
    "fa": feedback_alignment.make,
    "dfa": direct_feedback.make,
    "usf": sign_symmetric.make_usf,
    "frsf": sign_symmetric.make_frsf,
    "brsf": sign_symmetric.make_brsf,
    "kp": kolen_pollack.make,
    "wm": weight_mirror.make,
    "ep": equilibrium.make,
    "pc": predictive_coding.make,
}


def available_rules() -> list[str]:
    return list(_REGISTRY)


def make_rule(config, sizes: tuple[int, ...], n_train: int = 0) -> LearningRule:
    """Builds the rule `config.rule` for a network with the given layer sizes (and training-set
    size, for rules that keep per-example state)."""
    try:
        factory = _REGISTRY[config.rule]
    except KeyError:
        raise UserError(f"unknown rule {config.rule!r}; known rules: {', '.join(_REGISTRY)}") from None
    return factory(config, sizes, n_train)


__all__ = ["Estimate", "LearningRule", "available_rules", "make_rule"]
