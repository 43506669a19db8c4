"""Flax nnx models run with a feedback rule: in a copy of the model every nnx.Linear and nnx.Conv becomes a
FeedbackLinear / FeedbackConv (the same object with the same Params at the same paths, its class swapped: module
surgery), whose call runs bioprop's feedback layer with the feedback leaf it is handed for that call.

    converted, state = bioprop.convert.nnx.convert(model, bioprop.rule("fa"), key, x)
    params, rest = converted.params, converted.rest      # nnx.Param state, everything else (BatchStat, RngState)
    fb = converted.feedback(params, state, key)         # like bioprop.kernels(params)
    y, rest = converted.apply(params, rest, fb, x)      # rest after the call (BatchNorm's running statistics)

`converted.model(rest)` is bioprop's model(params, fb, x) (returning (y, rest)), `converted.mask` its mask, and
`converted.original(params, rest)` the user's own (unconverted) module with these parameters. A module holding a
weight that is not Linear/Conv (nnx.Einsum, nnx.LinearGeneral, nnx.ConvTranspose, nnx.Embed, a custom module) is
refused in one line naming its path, unless `exact=` lists it: then it stays backprop, by the user's choice.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
from jax import lax
from flax import nnx

import bioprop
from bioprop.convert import _flax_layers as fl
from bioprop.convert._common import UnconvertibleLayer, check_exact, initial_state as _initial_state, refuse

_FEEDBACK = "bioprop_feedback"  # the attribute a converted layer reads its feedback leaf from, during one call


def _promoted(layer, inputs):
    bias = layer.bias[...] if layer.bias is not None else None
    return layer.promote_dtype((inputs, layer.kernel[...], bias), dtype=layer.dtype)


class FeedbackLinear(nnx.Linear):
    """nnx.Linear whose backward is the rule's (bioprop.dense)."""

    def __call__(self, inputs, out_sharding=None):
        x, kernel, bias = _promoted(self, inputs)
        return bioprop.dense(x, kernel, bias, fl.cast(getattr(self, _FEEDBACK), x.dtype))


class FeedbackConv(nnx.Conv):
    """nnx.Conv whose backward is the rule's (bioprop.conv)."""

    def __call__(self, inputs, out_sharding=None):
        x, kernel, bias = _promoted(self, inputs)
        return fl.conv_forward(self, x, kernel, bias, fl.cast(getattr(self, _FEEDBACK), x.dtype))


_CONVERTED = {nnx.Linear: FeedbackLinear, nnx.Conv: FeedbackConv}


def _unsupported(module) -> str | None:
    if isinstance(module, nnx.Conv):
        return fl.conv_unsupported(module, module.conv_general_dilated is not lax.conv_general_dilated)
    return None if module.dot_general is lax.dot_general else "a custom dot_general"


def _name(path) -> str:
    return "/".join(str(p) for p in path)


def _at(module, path):
    for part in path:
        module = getattr(module, part) if isinstance(part, str) else module[part]
    return module


def _leaf(fb, path):
    """fb's leaf for the layer at path (an nnx.State like the params: the kernel Param's value)."""
    leaf = fb
    for part in tuple(path) + ("kernel",):
        leaf = leaf[part]
    return leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf


class Converted:
    """An nnx model whose Linear/Conv layers run a rule. `paths`: the converted layers ('blocks/0/conv', ...);
    `mask`: True at their kernels, like the params; `exact`: layers left exact."""

    def __init__(self, converted: nnx.Module, original: nnx.Module, rule, paths: tuple, exact: tuple):
        self.graphdef, self.params, self.rest = nnx.split(converted, nnx.Param, ...)
        self._original = nnx.graphdef(original)
        self.rule, self.exact = rule, exact
        self._paths = paths
        self.paths = tuple(_name(p) for p in paths)
        self.mask = jax.tree_util.tree_map_with_path(
            lambda keys, _: _kernel_owner(keys) in paths, self.params)

    def apply(self, params, rest, fb, *args, **kwargs) -> tuple[Any, nnx.State]:
        """(the model's output for *args, **kwargs with each converted layer's error sent through fb's leaf,
        the non-Param state after the call)."""
        module = nnx.merge(self.graphdef, params, rest, copy=True)
        layers = [_at(module, path) for path in self._paths]
        for path, layer in zip(self._paths, layers):
            object.__setattr__(layer, _FEEDBACK, _leaf(fb, path))
        try:
            y = module(*args, **kwargs)
        finally:
            for layer in layers:
                object.__delattr__(layer, _FEEDBACK)
        return y, nnx.state(module, nnx.Not(nnx.Param))

    def model(self, rest, *args, **kwargs) -> Callable:
        """bioprop's model(params, fb, x) -> (y, rest after the call)."""
        return lambda params, fb, x: self.apply(params, rest, fb, x, *args, **kwargs)

    def layers(self, tree) -> dict[str, Any]:
        """{path: the subtree of a params-like State (params, grads, fb, a measure report) at that layer}."""
        out = {}
        for name, path in zip(self.paths, self._paths):
            node = tree
            for part in path:
                node = node[part]
            out[name] = node
        return out

    def feedback(self, params, state, key) -> Any:
        """The rule's feedback for every converted layer (bioprop.feedback_arrays with this mask)."""
        return bioprop.feedback_arrays(self.rule, params, state, key, self.mask)

    def original(self, params, rest) -> nnx.Module:
        """The user's module, unconverted, with these parameters and state (for jax.grad, evaluation, saving)."""
        return nnx.merge(self._original, params, rest, copy=True)


def _kernel_owner(keys):
    names = tuple(k.key if hasattr(k, "key") else k.name for k in keys)
    if names[-1] == "value":
        names = names[:-1]
    return names[:-1] if names[-1] == "kernel" else None


def convert(model: nnx.Module, rule: bioprop.Rule | str, key: jax.Array, x, *args, exact: Iterable[str] = (),
            **kwargs) -> tuple[Converted, Any]:
    """(Converted, the rule's initial feedback state drawn from key). The model is copied (nnx.clone), not changed.
    x, args, kwargs: one example call of the model, traced abstractly (only dfa and wm read the shapes)."""
    rule = bioprop.rule(rule) if isinstance(rule, str) else rule
    modules = {tuple(path): node for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Module)}
    weights = {}
    for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if jnp.ndim(value.get_value()) >= 2:
            weights.setdefault(_name(path[:-1]), (tuple(path[:-1]), jnp.shape(value.get_value())))
    exact = check_exact(exact, weights)
    paths = []
    for name, (path, shape) in weights.items():
        module = modules.get(path)
        if name in exact:
            continue
        if type(module) not in _CONVERTED:
            raise refuse(type(module).__name__ if module is not None else "a module", name, shape)
        reason = _unsupported(module)
        if reason is not None:
            raise UnconvertibleLayer(f"cannot convert {type(module).__name__} at '{name}' ({reason}); "
                                     f"leave it exact with exact=('{name}',)")
        paths.append(path)
    copy = nnx.clone(model)
    for path in paths:
        layer = _at(copy, path)
        layer.__class__ = _CONVERTED[type(layer)]
    converted = Converted(copy, model, rule, tuple(paths), exact)
    model_fn = converted.model(converted.rest, *args, **kwargs)
    return converted, _initial_state(rule, key, model_fn, converted.params, x, converted.mask)
