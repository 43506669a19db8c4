"""What the three converters share: the description of a converted layer, the one-line refusal, and the
feedback a converted model's layers receive (the rule's, from the kernels, never differentiated)."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, NamedTuple

import jax


class UnconvertibleLayer(ValueError):
    """A layer holding a weight that the converter cannot run through a feedback layer (one-line message)."""


class Layer(NamedTuple):
    """A converted layer: `kind` "dense" or "conv", its kernel's shape in bioprop's layout (dense (n_in, n_out),
    conv HWIO) and the shapes of one call's input and output as the feedback layer sees them (dense
    (batch, n_in) -> (batch, n_out), conv NHWC)."""

    kind: str
    kernel_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]

    @property
    def feedback_shape(self) -> tuple[int, ...]:
        """B's shape: W^T's (n_out, n_in) for a dense layer, the kernel's own for a conv layer."""
        return self.kernel_shape[::-1] if self.kind == "dense" else self.kernel_shape


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


def rule_feedback(rule, kernels: dict, state, key) -> dict:
    """The rule's feedback for every converted layer, outside differentiation: a converted model's gradient
    never flows into W through B (bp's B = W^T, usf's sign(W))."""
    return jax.lax.stop_gradient(rule.feedback(kernels, state, key))


def flat_units(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
