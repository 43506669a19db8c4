"""Equinox models run with a feedback rule: tree surgery (eqx.tree_at) replaces every eqx.nn.Linear and 2-d
eqx.nn.Conv (Conv2d) by a FeedbackLinear / FeedbackConv2d holding the same weights in bioprop's layout (dense
(n_in, n_out), conv HWIO) and computing them with bioprop's feedback layers.

    forward = lambda model, x: jax.vmap(model)(x)              # the user's batched call (any, e.g. with eqx State)
    converted, state = bioprop.convert.equinox.convert(model, bioprop.rule("fa"), key, x, forward)
    params = converted.params                                   # the converted model's arrays (eqx.partition)
    fb = converted.feedback(params, state, key)                 # like bioprop.kernels(params, converted.mask)
    y = forward(converted.assemble(params, fb), x)              # == converted.model(forward)(params, fb, x)

Feedback is never a parameter: it lives in the rule's state and enters the model only for a call (`assemble`).
`converted.original(tree)` turns a params (or gradient) tree back into the user's layers and layouts. Direct feedback
(dfa) under jax.vmap needs the vmapped axis's name (axis_name=, as eqx.nn.BatchNorm does) to give each example its
own output error. An array with two or more axes outside a Linear/Conv2d (eqx.nn.Embedding, ConvTranspose2d, a custom
module's weight) is refused in one line naming its path, unless `exact=` lists it: then it stays backprop.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Hashable, Iterable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

import bioprop
from bioprop.layers import Measured
from bioprop.convert._common import UnconvertibleLayer, check_exact, initial_state as _initial_state, refuse


def _per_example(fb, axis_name):
    """Under jax.vmap each example sends back its own output error's projection: Direct's row of e for this
    example, found by the vmapped axis's index."""
    if isinstance(fb, Measured):  # bioprop.measure's probe around the feedback
        return dataclasses.replace(fb, fb=_per_example(fb.fb, axis_name))
    if not isinstance(fb, bioprop.Direct):
        return fb
    if axis_name is None:
        raise UnconvertibleLayer("dfa on an Equinox model called under jax.vmap needs the vmapped axis's name: "
                                 "convert(..., axis_name='batch') and jax.vmap(..., axis_name='batch')")
    return bioprop.Direct(fb.d, lax.dynamic_slice_in_dim(fb.e, lax.axis_index(axis_name), 1))


class FeedbackLinear(eqx.Module):
    """eqx.nn.Linear through bioprop.dense: kernel (n_in, n_out) = Linear's weight transposed."""

    kernel: jax.Array
    bias: jax.Array | None
    in_features: int | str = eqx.field(static=True)
    out_features: int | str = eqx.field(static=True)
    axis_name: Hashable = eqx.field(static=True, default=None)
    feedback: Any = None  # this call's feedback leaf (Converted.assemble); None in the stored model

    def __call__(self, x, *, key=None):
        x = jnp.reshape(x, (1, -1))
        y = bioprop.dense(x, self.kernel, self.bias, _per_example(self.feedback, self.axis_name))[0]
        return y[0] if self.out_features == "scalar" else y


class FeedbackConv2d(eqx.Module):
    """eqx.nn.Conv2d (channels first, one example) through bioprop.conv (NHWC, HWIO kernel)."""

    kernel: jax.Array
    bias: jax.Array | None  # (C_out,)
    stride: tuple = eqx.field(static=True)
    padding: Any = eqx.field(static=True)
    dilation: tuple = eqx.field(static=True)
    groups: int = eqx.field(static=True)
    axis_name: Hashable = eqx.field(static=True, default=None)
    feedback: Any = None

    def __call__(self, x, *, key=None):
        fb = _per_example(self.feedback, self.axis_name)
        y = bioprop.conv(jnp.transpose(x, (1, 2, 0))[None], self.kernel, self.bias, fb, stride=self.stride,
                         padding=self.padding, dilation=self.dilation, groups=self.groups)
        return jnp.transpose(y[0], (2, 0, 1))


def _linear(layer: eqx.nn.Linear, axis_name) -> FeedbackLinear:
    return FeedbackLinear(layer.weight.T, layer.bias, layer.in_features, layer.out_features, axis_name)


def _conv(layer: eqx.nn.Conv, axis_name) -> FeedbackConv2d:
    bias = None if layer.bias is None else layer.bias.reshape(-1)
    return FeedbackConv2d(jnp.transpose(layer.weight, (2, 3, 1, 0)), bias, tuple(layer.stride), layer.padding,
                          tuple(layer.dilation), layer.groups, axis_name)


def _unsupported(layer) -> str | None:
    if isinstance(layer, eqx.nn.Conv):
        if layer.num_spatial_dims != 2:
            return f"a {layer.num_spatial_dims}-d convolution (bioprop.conv is 2-d)"
        if layer.padding_mode != "ZEROS":
            return f"padding_mode {layer.padding_mode}"
    return None


def _is_layer(node) -> bool:
    return isinstance(node, (eqx.nn.Linear, eqx.nn.Conv))


def _name(path) -> str:
    return "/".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)


def _get(tree, path):
    for k in path:
        if isinstance(k, jax.tree_util.GetAttrKey):
            tree = getattr(tree, k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            tree = tree[k.idx]
        else:
            tree = tree[k.key]
    return tree


class Converted:
    """An Equinox model whose Linear/Conv2d layers run a rule. `params`, `static`: eqx.partition of the converted
    model; `paths`: the converted layers; `mask`: True at their kernels, like params; `exact`: layers left exact."""

    def __init__(self, model, templates: dict, rule, exact: tuple):
        self.params, self.static = eqx.partition(model, eqx.is_array)
        self._paths = tuple(templates)
        self._templates = templates
        self.paths = tuple(_name(p) for p in self._paths)
        self.rule, self.exact = rule, exact
        falses = jax.tree_util.tree_map(lambda _: False, self.params)
        self.mask = eqx.tree_at(lambda m: [_get(m, p).kernel for p in self._paths], falses,
                                [True] * len(self._paths)) if self._paths else falses

    def assemble(self, params, fb=None):
        """The converted model (callable like the user's) with params and each layer's feedback leaf from fb
        (fb like bioprop.kernels(params, self.mask); None: no feedback inserted)."""
        model = eqx.combine(params, self.static)
        if fb is None or not self._paths:
            return model
        return eqx.tree_at(lambda m: [_get(m, p).feedback for p in self._paths], model,
                           [_get(fb, p).kernel for p in self._paths], is_leaf=lambda v: v is None)

    def model(self, forward: Callable) -> Callable:
        """bioprop's model(params, fb, x) = forward(self.assemble(params, fb), x)."""
        return lambda params, fb, x: forward(self.assemble(params, fb), x)

    def layers(self, tree) -> dict[str, Any]:
        """{path: the node of a params-like tree (params, grads, fb, a measure report) at that layer}."""
        return {name: _get(tree, path) for name, path in zip(self.paths, self._paths)}

    def feedback(self, params, state, key) -> Any:
        """The rule's feedback for every converted layer (bioprop.feedback_arrays with this mask)."""
        return bioprop.feedback_arrays(self.rule, params, state, key, self.mask)

    def original(self, tree):
        """A params- or gradient-tree of the converted model in the user's layers and layouts (Linear's
        (out, in) weight, Conv2d's OIHW weight and (C_out, 1, 1) bias)."""
        def back(path):
            node, template = _get(tree, path), self._templates[path]
            if isinstance(template, eqx.nn.Linear):
                weight = node.kernel.T
            else:
                weight = jnp.transpose(node.kernel, (3, 2, 0, 1))
            if template.bias is None:
                return eqx.tree_at(lambda l: l.weight, template, weight)
            return eqx.tree_at(lambda l: (l.weight, l.bias), template, (weight, node.bias.reshape(template.bias.shape)))

        if not self._paths:
            return tree
        return eqx.tree_at(lambda t: [_get(t, p) for p in self._paths], tree, [back(p) for p in self._paths])


def convert(model, rule: bioprop.Rule | str, key: jax.Array, x, forward: Callable | None = None, *,
            exact: Iterable[str] = (), axis_name: Hashable = None) -> tuple[Converted, Any]:
    """(Converted, the rule's initial feedback state drawn from key). forward(model, x): the user's batched call
    (default jax.vmap(model)(x)), traced abstractly once on x to find the layers' shapes."""
    rule = bioprop.rule(rule) if isinstance(rule, str) else rule
    forward = forward or (lambda m, x: jax.vmap(m)(x))
    leaves = jax.tree_util.tree_flatten_with_path(model, is_leaf=_is_layer)[0]
    layers = {tuple(p): node for p, node in leaves if _is_layer(node)}
    weights = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(model)[0]:
        if eqx.is_array(leaf) and leaf.ndim >= 2:
            owner = next((p for p in layers if tuple(path[:len(p)]) == p), tuple(path[:-1]))
            weights.setdefault(_name(owner), (owner, leaf.shape))
    exact = check_exact(exact, weights)
    templates = {}
    for name, (owner, shape) in weights.items():
        if name in exact:
            continue
        if owner not in layers:
            raise refuse(type(_get(model, owner)).__name__, name, shape)
        reason = _unsupported(layers[owner])
        if reason is not None:
            raise UnconvertibleLayer(f"cannot convert {type(layers[owner]).__name__} at '{name}' ({reason}); "
                                     f"leave it exact with exact=('{name}',)")
        templates[owner] = layers[owner]
    replace = [(_linear if isinstance(l, eqx.nn.Linear) else _conv)(l, axis_name) for l in templates.values()]
    surgery = eqx.tree_at(lambda m: [_get(m, p) for p in templates], model, replace) if templates else model
    converted = Converted(surgery, templates, rule, exact)
    return converted, _initial_state(rule, key, converted.model(forward), converted.params, x, converted.mask)
