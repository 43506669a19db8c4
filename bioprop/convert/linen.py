"""Flax linen models run with a feedback rule: every nn.Dense, nn.DenseGeneral and nn.Conv call is intercepted
(flax.linen.intercept_methods) and computed by bioprop's feedback layers with the layer's own parameters, so the
user's model, its variables (params, batch_stats, any mutable collection) and its apply(...) stay as they are.

    converted, state = bioprop.convert.linen.convert(model, variables, rule, key, x_example, train=True,
                                                     mutable=["batch_stats"])
    y, updates = converted.apply(variables, state, x, key=step_key, train=True, mutable=["batch_stats"])

`state` is the rule's feedback state (its own pytree, `rule.init(key, kernels)`); each apply draws the feedback
`rule.feedback(kernels, state, key)` for the kernels {layer path: kernel} it is given. A layer holding a weight
that is not Dense/DenseGeneral/Conv (nn.Einsum, nn.ConvTranspose, nn.Embed, a custom module with a 'kernel') is
refused in one line naming its path, unless `exact=` lists it: then it stays backprop, by the user's choice.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import flax.linen as nn

from bioprop.convert import _flax_layers as fl
from bioprop.convert._common import Layer, UnconvertibleLayer, check_exact, refuse, rule_feedback

_KINDS = {nn.Dense: "dense", nn.DenseGeneral: "dense_general", nn.Conv: "conv"}


def _unsupported(module) -> str | None:
    kind = _KINDS[type(module)]
    if kind == "conv":
        custom = module.conv_general_dilated is not None or module.conv_general_dilated_cls is not None
        return fl.conv_unsupported(module, custom)
    if module.dot_general is not None or module.dot_general_cls is not None:
        return "a custom dot_general"
    if kind == "dense_general" and module.batch_dims:
        return "batch_dims"
    return None


def _params_of(module) -> tuple[jax.Array, jax.Array | None]:
    kernel = nn.meta.unbox(module.get_variable("params", "kernel"))
    bias = module.get_variable("params", "bias")
    return kernel, None if bias is None else nn.meta.unbox(bias)


def _as_bioprop_kernel(kind: str, kernel: jax.Array, axes: int = 1) -> jax.Array:
    """The kernel in bioprop's layout: DenseGeneral's (in dims..., features...) as (prod in, prod features)."""
    if kind == "dense_general":
        return kernel.reshape(math.prod(kernel.shape[:axes]), -1)
    return kernel


def _n_axes(module) -> int:
    return 1 if isinstance(module.axis, int) else len(module.axis)


def _intercept(feedback: dict | None, layers: dict | None, types: dict | None, exact: tuple):
    """The interceptor computing converted layers. Discovery (feedback None): zeros as B, and every module's
    type and every converted layer's description recorded in `types` and `layers`."""

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        path = "/".join(module.path)
        if types is not None:
            types.setdefault(path, type(module).__name__)
        kind = _KINDS.get(type(module))
        if kind is None or context.method_name != "__call__" or path in exact:
            return next_fun(*args, **kwargs)
        reason = _unsupported(module)
        if reason is not None:
            raise UnconvertibleLayer(f"cannot convert {type(module).__name__} at '{path}' ({reason}); "
                                     f"leave it exact with exact=('{path}',)")
        x = args[0] if args else kwargs["inputs"]
        kernel, bias = _params_of(module)
        x, kernel, bias = module.promote_dtype(x, kernel, bias, dtype=module.dtype)
        flat = _as_bioprop_kernel(kind, kernel, _n_axes(module) if kind == "dense_general" else 1)
        b = jnp.zeros(flat.shape[::-1] if kind != "conv" else flat.shape, x.dtype) if feedback is None else feedback[path].astype(x.dtype)
        if kind == "dense":
            y = fl.dense_forward(x, kernel, bias, b)
        elif kind == "dense_general":
            y = fl.dense_general_forward(module, x, kernel, bias, b)
        else:
            y = fl.conv_forward(module, x, kernel, bias, b)
        if layers is not None:
            layers.setdefault(path, fl.layer("conv" if kind == "conv" else "dense", flat, x, y))
        return y

    return interceptor


class Converted:
    """A linen model whose Dense/DenseGeneral/Conv layers run the rule. `layers`: {path: Layer}."""

    def __init__(self, model: nn.Module, rule, layers: dict[str, Layer], kinds: dict[str, str], exact: tuple):
        self.model, self.rule, self.layers, self._kinds, self.exact = model, rule, layers, kinds, exact

    def kernels(self, params) -> dict[str, jax.Array]:
        """{path: kernel} in bioprop's layout, read from the model's params (differentiable)."""
        out = {}
        for path, kind in self._kinds.items():
            node = nn.meta.unbox(params)
            for name in path.split("/"):
                node = node[name]
            kernel = node["kernel"]
            out[path] = kernel.reshape(self.layers[path].kernel_shape) if kind == "dense_general" else kernel
        return out

    def feedback(self, params, state, key) -> dict[str, jax.Array]:
        """{path: B} the rule sends each layer's error through (not differentiated)."""
        return rule_feedback(self.rule, self.kernels(params), state, key)

    def apply(self, variables, state, *args, key: jax.Array | None = None, **kwargs) -> Any:
        """model.apply(variables, *args, **kwargs) with the rule's feedback drawn from `state` and `key`."""
        return self.apply_feedback(variables, self.feedback(variables["params"], state, key), *args, **kwargs)

    def apply_feedback(self, variables, feedback: dict[str, jax.Array], *args, **kwargs) -> Any:
        """model.apply with the given feedback {path: B} (B: W^T's layout for a dense layer, W's for a conv)."""
        with nn.intercept_methods(_intercept(feedback, None, None, self.exact)):
            return self.model.apply(variables, *args, **kwargs)


def convert(model: nn.Module, variables, rule, key: jax.Array, *args, exact: Iterable[str] = (), **kwargs):
    """(Converted, the rule's initial feedback state). `args`, `kwargs`: one example call of model.apply
    (traced abstractly to find the layers; nothing is computed)."""
    types: dict[str, str] = {}
    layers: dict[str, Layer] = {}
    weights = _weights(variables.get("params", {}))
    exact = check_exact(exact, weights)
    with nn.intercept_methods(_intercept(None, layers, types, exact)):
        jax.eval_shape(lambda v: model.apply(v, *args, **kwargs), variables)
    for path, shape in weights.items():
        if path not in layers and path not in exact:
            raise refuse(types.get(path, "a module"), path, shape)
    kinds = {path: ("dense_general" if types[path] == "DenseGeneral" else layers[path].kind) for path in layers}
    converted = Converted(model, rule, layers, kinds, exact)
    return converted, rule.init(key, converted.kernels(variables["params"]))


def _weights(params) -> dict[str, tuple[int, ...]]:
    """{module path: shape} of every parameter with two or more axes (a weight), by the module holding it."""
    out = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))[0]:
        if jnp.ndim(leaf) >= 2:
            out.setdefault("/".join(k.key for k in keys[:-1]), tuple(jnp.shape(leaf)))
    return out
