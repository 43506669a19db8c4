"""What the three converters share: the one-line refusal of a weight layer they cannot convert, the user's list of
layers left exact, the rule's initial state."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import jax

import bioprop


class UnconvertibleLayer(ValueError):
    """A layer holding a weight that the converter cannot run through a feedback layer (one-line message)."""


def refuse(type_name: str, path: str, shape: Iterable[int]) -> UnconvertibleLayer:
    return UnconvertibleLayer(
        f"cannot convert {type_name} at '{path}' (it holds a weight of shape {tuple(shape)}): "
        f"replace it by a Dense/Linear or Conv layer, or leave it exact with exact=('{path}',)")


def check_exact(exact: Iterable[str], weights: Mapping[str, Any]) -> tuple[str, ...]:
    """The user's exact=(paths...) as a tuple, each naming a layer that holds a weight (a typo is refused)."""
    exact = (exact,) if isinstance(exact, str) else tuple(exact)
    for path in exact:
        if path not in weights:
            known = ", ".join(sorted(weights)) or "none"
            raise UnconvertibleLayer(f"exact=('{path}',) names no layer holding a weight; layers with weights: {known}")
    return exact


def initial_state(rule, key, model, params, x, mask):
    """bioprop.init compiled as one program (eagerly, each leaf's draw compiles on its own: seconds on a ResNet)."""
    return jax.jit(lambda key, params, x: bioprop.init(rule, key, model, params, x, mask))(key, params, x)
