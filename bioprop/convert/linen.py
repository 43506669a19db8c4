"""Flax linen models run with a feedback rule: every nn.Dense, nn.Conv (and nn.DenseGeneral with a 2-d kernel)
call is intercepted (flax.linen.intercept_methods) and computed by bioprop's feedback layers with the layer's own
parameters, so the model, its variables (params, batch_stats, any mutable collection) and apply(...) stay the user's.

    converted, state = bioprop.convert.linen.convert(model, variables, bioprop.rule("fa"), key, x, train=True,
                                                     mutable=["batch_stats"])
    fb = converted.feedback(variables["params"], state, key)        # like bioprop.kernels(params)
    (y, updates) = converted.apply(variables, fb, x, train=True, mutable=["batch_stats"])

`converted.model(...)` is the same as bioprop's `model(params, fb, x)` for bioprop.update / bioprop.measure, with
`converted.mask` as their mask. A layer holding a weight that is not Dense/Conv (nn.Einsum, nn.ConvTranspose,
nn.Embed, a custom module with a 'kernel') is refused in one line naming its path, unless `exact=` lists it: then
it stays backprop, by the user's choice.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import flax.linen as nn

import bioprop
from bioprop.convert import _flax_layers as fl
from bioprop.convert._common import UnconvertibleLayer, check_exact, initial_state as _initial_state, refuse

_KINDS = {nn.Dense: "dense", nn.DenseGeneral: "dense", nn.Conv: "conv"}


def _unsupported(module, kernel) -> str | None:
    """Why this Dense/DenseGeneral/Conv cannot run through bioprop's layer (None: it can)."""
    if _KINDS[type(module)] == "conv":
        custom = module.conv_general_dilated is not None or module.conv_general_dilated_cls is not None
        return fl.conv_unsupported(module, custom)
    if module.dot_general is not None or module.dot_general_cls is not None:
        return "a custom dot_general"
    if isinstance(module, nn.DenseGeneral) and (module.batch_dims or kernel.ndim != 2):
        return "a DenseGeneral over several axes or with batch_dims"
    return None


def at(tree, path: str | tuple[str, ...]):
    """The subtree of a params-like tree (params, grads, fb, a measure report) at a layer's path ('Block_0/Conv_0')."""
    for name in path.split("/") if isinstance(path, str) else path:
        tree = tree[name]
    return tree


def _intercept(feedback, exact: tuple, types: dict | None = None):
    """The interceptor running converted layers with feedback[module path]["kernel"]. Discovery (types given):
    every module's type recorded in `types`, a bioprop.Site as each layer's feedback."""

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        path = "/".join(module.path)
        if types is not None:
            types.setdefault(path, type(module))
        kind = _KINDS.get(type(module))
        if kind is None or context.method_name != "__call__" or path in exact:
            return next_fun(*args, **kwargs)
        kernel = nn.meta.unbox(module.get_variable("params", "kernel"))
        reason = _unsupported(module, kernel)
        if reason is not None:
            raise UnconvertibleLayer(f"cannot convert {type(module).__name__} at '{path}' ({reason}); "
                                     f"leave it exact with exact=('{path}',)")
        bias = nn.meta.unbox(module.get_variable("params", "bias")) if module.use_bias else None
        x = args[0] if args else kwargs["inputs"]
        x, kernel, bias = module.promote_dtype(x, kernel, bias, dtype=module.dtype)
        fb = bioprop.Site() if types is not None else fl.cast(at(feedback, module.path)["kernel"], x.dtype)
        if kind == "dense":
            return bioprop.dense(x, kernel, bias, fb)
        return fl.conv_forward(module, x, kernel, bias, fb)

    return interceptor


class Converted:
    """A linen model whose Dense/Conv layers run a rule. `paths`: the converted layers ('Block_0/Conv_0', ...);
    `mask`: True at their kernels, like the params (bioprop.kernels(params, mask)); `exact`: layers left exact."""

    def __init__(self, model: nn.Module, rule: bioprop.Rule, paths: tuple[str, ...], mask, exact: tuple[str, ...]):
        self.module, self.rule, self.paths, self.mask, self.exact = model, rule, paths, mask, exact

    def apply(self, variables, fb, *args, **kwargs) -> Any:
        """module.apply(variables, *args, **kwargs) with each converted layer's error sent through fb's leaf
        (fb like bioprop.kernels(variables["params"], self.mask))."""
        with nn.intercept_methods(_intercept(fb, self.exact)):
            return self.module.apply(variables, *args, **kwargs)

    def model(self, others: dict | None = None, *args, **kwargs) -> Callable:
        """bioprop's model(params, fb, x) -> self.apply({"params": params, **others}, fb, x, *args, **kwargs):
        `others` the collections besides params (batch_stats), args and kwargs the rest of the call."""
        others = dict(others or {})
        return lambda params, fb, x: self.apply({**others, "params": params}, fb, x, *args, **kwargs)

    def layers(self, tree) -> dict[str, Any]:
        """{path: the subtree of a params-like tree (params, grads, fb, a measure report) at that layer}."""
        return {path: at(tree, path) for path in self.paths}

    def feedback(self, params, state, key) -> Any:
        """The rule's feedback for every converted layer (bioprop.feedback_arrays with this mask)."""
        return bioprop.feedback_arrays(self.rule, params, state, key, self.mask)


def convert(module: nn.Module, variables, rule: bioprop.Rule | str, key: jax.Array, x, *args,
            exact: Iterable[str] = (), **kwargs) -> tuple[Converted, Any]:
    """(Converted, the rule's initial feedback state drawn from key). x, args, kwargs: one example call of
    module.apply(variables, x, *args, **kwargs), traced abstractly to find the layers (nothing is computed)."""
    rule = bioprop.rule(rule) if isinstance(rule, str) else rule
    params = nn.meta.unbox(variables["params"])
    weights = _weights(params)
    exact = check_exact(exact, weights)
    types: dict[str, type] = {}
    with nn.intercept_methods(_intercept(None, exact, types)):
        jax.eval_shape(lambda v: module.apply(v, x, *args, **kwargs), variables)
    paths = tuple(p for p, cls in types.items() if cls in _KINDS and p in weights and p not in exact)
    for path, shape in weights.items():
        if path not in paths and path not in exact:
            raise refuse(types[path].__name__ if path in types else "a module", path, shape)
    mask = jax.tree_util.tree_map_with_path(
        lambda keys, _: keys[-1].key == "kernel" and "/".join(k.key for k in keys[:-1]) in paths, params)
    converted = Converted(module, rule, paths, mask, exact)
    others = {k: v for k, v in variables.items() if k != "params"}
    return converted, _initial_state(rule, key, converted.model(others, *args, **kwargs), params, x, mask)


def _weights(params) -> dict[str, tuple[int, ...]]:
    """{module path: shape} of every parameter with two or more axes (a weight), by the module holding it."""
    out = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if jnp.ndim(leaf) >= 2:
            out.setdefault("/".join(k.key for k in keys[:-1]), tuple(jnp.shape(leaf)))
    return out
