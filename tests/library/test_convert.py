"""The converters (bioprop.convert: Flax linen, Flax nnx, Equinox) on one user-style network written three times:
a stride-2 conv, BatchNorm in train mode, a residual 1x1 stride-2 conv, LayerNorm, two dense layers. Against
jax.grad of the unconverted model (bp; fa with B := W^T) and against the same network written by hand in plain JAX
with bioprop's layers and the same feedback (fa with random B, kp's one step, dfa)."""

from __future__ import annotations

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import bioprop
from bioprop.convert import UnconvertibleLayer
from bioprop.convert import equinox as bio_eqx
from bioprop.convert import linen as bio_linen
from bioprop.convert import nnx as bio_nnx

EPS = 1e-5  # BatchNorm's and LayerNorm's epsilon in all three frameworks
F64 = dict(param_dtype=jnp.float64)


@pytest.fixture(autouse=True)
def float64():
    """Every test in float64: equalities to jax.grad hold to rounding."""
    with jax.enable_x64(True):
        global X, Y
        X = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 2))  # NHWC
        Y = jax.nn.one_hot(jnp.arange(4) % 3, 3)
        yield


def loss(out, y):
    return optax.softmax_cross_entropy(out, y).mean()


def _close(a, b, tol=1e-10):
    """Leaf by leaf, to tol relative to the largest entry of b (the conv bias before BatchNorm has a zero gradient,
    computed as 1e-17 by both)."""
    leaves = jax.tree_util.tree_leaves(b)
    scale = max(float(jnp.abs(v).max()) for v in leaves)
    for u, v in zip(jax.tree_util.tree_leaves(a), leaves, strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol * scale)


# ---------------------------------------------------------------------------------------------- the reference


def reference(p, fb, x):
    """The network by hand: bioprop's layers with feedback fb[name], BatchNorm over the batch, LayerNorm."""
    h = bioprop.conv(x, p["conv"]["w"], p["conv"]["b"], fb["conv"], stride=2, padding=1)
    h = (h - h.mean((0, 1, 2))) / jnp.sqrt(h.var((0, 1, 2)) + EPS) * p["bn"]["scale"] + p["bn"]["bias"]
    h = jax.nn.relu(h) + bioprop.conv(x, p["skip"]["w"], p["skip"]["b"], fb["skip"], stride=2, padding=0)
    h = h.reshape(h.shape[0], -1)
    h = (h - h.mean(-1, keepdims=True)) / jnp.sqrt(h.var(-1, keepdims=True) + EPS) * p["ln"]["scale"] + p["ln"]["bias"]
    h = jax.nn.relu(bioprop.dense(h, p["d0"]["w"], p["d0"]["b"], fb["d0"]))
    return bioprop.dense(h, p["d1"]["w"], p["d1"]["b"], fb["d1"])


WEIGHTS = ("conv", "skip", "d0", "d1")


# ---------------------------------------------------------------------------------------------- linen


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        h = nn.Conv(4, (3, 3), strides=2, padding=1, name="conv", **F64)(x)
        h = nn.BatchNorm(use_running_average=not train, epsilon=EPS, name="bn", **F64)(h)
        h = nn.relu(h) + nn.Conv(4, (1, 1), strides=2, padding=0, name="skip", **F64)(x)
        h = nn.LayerNorm(epsilon=EPS, name="ln", **F64)(h.reshape(h.shape[0], -1))
        return nn.Dense(3, name="d1", **F64)(nn.relu(nn.Dense(5, name="d0", **F64)(h)))


class Linen:
    """The linen network converted: bioprop's model(params, fb, x), and the maps to the reference's names."""

    def __init__(self, rule, key=None):
        key = jax.random.PRNGKey(2) if key is None else key
        self.variables = jax.jit(LinenNet().init)(jax.random.PRNGKey(0), X)
        self.converted, self.state = bio_linen.convert(LinenNet(), self.variables, rule, key, X,
                                                       mutable=["batch_stats"])
        self.params = self.variables["params"]
        stats = {"batch_stats": self.variables["batch_stats"]}
        self.model = lambda p, fb, x: self.converted.model(stats, mutable=["batch_stats"])(p, fb, x)[0]
        self.exact = lambda p, x: LinenNet().apply({**stats, "params": p}, x, mutable=["batch_stats"])[0]

    def plain(self, tree):
        names = {"conv": "conv", "skip": "skip", "d0": "d0", "d1": "d1", "bn": "bn", "ln": "ln"}
        return {k: _plain_layer(tree[v]) for k, v in names.items()}

    def plain_feedback(self, fb):
        return {k: fb[k]["kernel"] for k in WEIGHTS}

    def kernel_leaves(self, tree):
        return {k: tree[k]["kernel"] for k in WEIGHTS}

    def originals(self, grads):
        return grads


def _plain_layer(d):
    return {"w": d["kernel"], "b": d["bias"]} if "kernel" in d else {"scale": d["scale"], "b": None, "bias": d["bias"]}


# ---------------------------------------------------------------------------------------------- nnx


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(2, 4, (3, 3), strides=2, padding=1, rngs=rngs, **F64)
        self.bn = nnx.BatchNorm(4, epsilon=EPS, rngs=rngs, **F64)
        self.skip = nnx.Conv(2, 4, (1, 1), strides=2, padding=0, rngs=rngs, **F64)
        self.ln = nnx.LayerNorm(64, epsilon=EPS, rngs=rngs, **F64)
        self.layers = nnx.List([nnx.Linear(64, 5, rngs=rngs, **F64), nnx.Linear(5, 3, rngs=rngs, **F64)])

    def __call__(self, x):
        h = nnx.relu(self.bn(self.conv(x))) + self.skip(x)
        h = self.ln(h.reshape(h.shape[0], -1))
        return self.layers[1](nnx.relu(self.layers[0](h)))


class Nnx:
    def __init__(self, rule, key=None):
        key = jax.random.PRNGKey(2) if key is None else key
        module = NnxNet(nnx.Rngs(0))
        self.converted, self.state = bio_nnx.convert(module, rule, key, X)
        self.params, rest = self.converted.params, self.converted.rest
        self.model = lambda p, fb, x: self.converted.model(rest)(p, fb, x)[0]
        self.exact = lambda p, x: self.converted.original(p, rest)(x)

    @staticmethod
    def _named(tree):
        d = nnx.to_pure_dict(tree)
        return {"conv": d["conv"], "skip": d["skip"], "d0": d["layers"][0], "d1": d["layers"][1],
                "bn": d["bn"], "ln": d["ln"]}

    def plain(self, tree):
        return {k: _plain_layer(v) for k, v in self._named(tree).items()}

    def plain_feedback(self, fb):
        named = self._named(fb)
        return {k: named[k]["kernel"] for k in WEIGHTS}

    def kernel_leaves(self, tree):
        return self.plain_feedback(tree)

    def originals(self, grads):
        return grads


# ---------------------------------------------------------------------------------------------- equinox


class EqxNet(eqx.Module):
    conv: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm
    skip: eqx.nn.Conv2d
    ln: eqx.nn.LayerNorm
    layers: list

    def __init__(self, key):
        k = jax.random.split(key, 4)
        self.conv = eqx.nn.Conv2d(2, 4, 3, stride=2, padding=1, key=k[0])
        self.bn = eqx.nn.BatchNorm(4, axis_name="batch", eps=EPS, mode="ema")
        self.skip = eqx.nn.Conv2d(2, 4, 1, stride=2, key=k[1])
        self.ln = eqx.nn.LayerNorm(64, eps=EPS)
        self.layers = [eqx.nn.Linear(64, 5, key=k[2]), eqx.nn.Linear(5, 3, key=k[3])]

    def __call__(self, x, state):  # one example, channels first
        h, state = self.bn(self.conv(x), state)
        h = jax.nn.relu(h) + self.skip(x)
        h = self.ln(jnp.transpose(h, (1, 2, 0)).reshape(-1))  # flattened as (H, W, C), as the reference does
        return self.layers[1](jax.nn.relu(self.layers[0](h))), state


class Eqx:
    def __init__(self, rule, key=None):
        key = jax.random.PRNGKey(2) if key is None else key
        module, bn_state = eqx.nn.make_with_state(EqxNet)(jax.random.PRNGKey(0))
        forward = lambda m, x: jax.vmap(m, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
            jnp.transpose(x, (0, 3, 1, 2)), bn_state)[0]
        self.converted, self.state = bio_eqx.convert(module, rule, key, X, forward, axis_name="batch")
        self.params = self.converted.params
        self.model = self.converted.model(forward)
        original, static = eqx.partition(module, eqx.is_array)
        self.original_params = original
        self.exact = lambda p, x: forward(eqx.combine(p, static), x)

    @staticmethod
    def _named(tree):
        return {"conv": tree.conv, "skip": tree.skip, "d0": tree.layers[0], "d1": tree.layers[1]}

    def plain(self, tree):
        out = {k: {"w": v.kernel, "b": v.bias} for k, v in self._named(tree).items()}
        out["bn"] = {"scale": tree.bn.weight, "b": None, "bias": tree.bn.bias}
        out["ln"] = {"scale": tree.ln.weight, "b": None, "bias": tree.ln.bias}
        return out

    def plain_feedback(self, fb):
        return {k: v.kernel for k, v in self._named(fb).items()}

    def kernel_leaves(self, tree):
        return self.plain_feedback(tree)

    def originals(self, grads):
        return self.converted.original(grads)


FRAMEWORKS = {"linen": Linen, "nnx": Nnx, "equinox": Eqx}


def _exact_grads(case):
    params = case.original_params if isinstance(case, Eqx) else case.params
    return jax.jit(jax.grad(lambda p: loss(case.exact(p, X), Y)))(params)


def _update(case):
    """bioprop.update on the converted model, compiled (eagerly, the many small ops of the backward pass take
    seconds to dispatch)."""
    rule, mask = case.converted.rule, case.converted.mask
    step = jax.jit(lambda p, s: bioprop.update(rule, case.model, loss, p, s, jax.random.PRNGKey(3), X, Y, mask))
    return step(case.params, case.state)


def _by_hand(case, fb):
    """jax.grad of the reference network with the converted model's parameters and feedback fb."""
    plain = case.plain(case.params)
    return jax.jit(jax.grad(lambda p, fb: loss(reference(p, fb, X), Y)))(plain, fb)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_bp_equals_jax_grad_of_the_unconverted_model(framework):
    case = FRAMEWORKS[framework]("bp")
    _close(case.originals(_update(case).grads), _exact_grads(case))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_fa_with_b_the_transpose_of_w_equals_jax_grad(framework):
    case = FRAMEWORKS[framework]("fa")
    kernels = bioprop.kernels(case.params, case.converted.mask)
    case.state = jax.tree_util.tree_map(bioprop.transport, kernels)  # B := W^T (the kernel itself for a conv)
    _close(case.originals(_update(case).grads), _exact_grads(case))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_fa_equals_the_network_by_hand_with_the_same_feedback(framework):
    case = FRAMEWORKS[framework]("fa")
    fb = case.plain_feedback(case.converted.feedback(case.params, case.state, jax.random.PRNGKey(3)))
    assert not np.allclose(fb["d1"], case.plain(case.params)["d1"]["w"].T)  # random B, not W^T
    grads = _update(case).grads
    _close(case.plain(grads), _by_hand(case, fb))
    with pytest.raises(AssertionError):  # and not backprop's update
        _close(case.originals(grads), _exact_grads(case))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_kp_learns_its_feedback_through_the_converter(framework):
    """One step of Kolen-Pollack: update(W) = dW + decay W, update(B) = transport(dW) + decay B, dW fa's with B."""
    decay = 0.1
    case = FRAMEWORKS[framework](bioprop.rule("kp", decay=decay))
    up = _update(case)
    b = case.plain_feedback(case.state)
    by_hand = _by_hand(case, b)
    w = {k: v["w"] for k, v in case.plain(case.params).items() if k in WEIGHTS}
    mine = case.plain(up.grads)
    _close({k: mine[k]["w"] for k in WEIGHTS}, {k: by_hand[k]["w"] + decay * w[k] for k in WEIGHTS})
    _close(case.plain_feedback(up.feedback_grads),
           {k: bioprop.transport(by_hand[k]["w"]) + decay * b[k] for k in WEIGHTS})


@pytest.mark.parametrize("framework", ["linen", "equinox"])  # nnx's path to the layers is linen's
def test_measure_on_a_converted_model_gives_the_angles_to_jax_grad_of_the_unconverted_model(framework):
    case = FRAMEWORKS[framework]("fa")
    rule, mask = case.converted.rule, case.converted.mask
    report = jax.jit(lambda p, s: bioprop.measure(rule, case.model, loss, p, s, jax.random.PRNGKey(3), X, Y, mask))(
        case.params, case.state)
    mine, exact = case.originals(_update(case).grads), _exact_grads(case)
    expected = jax.tree_util.tree_leaves(jax.tree_util.tree_map(_angle, mine, exact))
    reported = jax.tree_util.tree_leaves(report["update"]["angle"])
    # the conv bias before BatchNorm has a zero gradient (rounding noise in both): its angle means nothing
    defined = [float(jnp.linalg.norm(v)) > 1e-12 for v in jax.tree_util.tree_leaves(exact)]
    assert defined.count(False) == 1
    _close([r for r, d in zip(reported, defined) if d], [e for e, d in zip(expected, defined) if d], tol=1e-8)
    assert max(reported) > 10.0  # fa's update is not backprop's (the output layer's is: angle 0)


def _angle(u, v):
    """The angle between two arrays in degrees, by arccos (the measurement computes it otherwise)."""
    u, v = jnp.ravel(u), jnp.ravel(v)
    return jnp.degrees(jnp.arccos(jnp.clip(u @ v / (jnp.linalg.norm(u) * jnp.linalg.norm(v)), -1.0, 1.0)))


# ---------------------------------------------------------------------------------------------- running statistics


def _update_with_aux(converted, model, params, state):
    rule, mask = converted.rule, converted.mask
    step = jax.jit(lambda p, s: bioprop.update(rule, model, loss, p, s, jax.random.PRNGKey(3), X, Y, mask, has_aux=True))
    return step(params, state)


def test_batchnorm_statistics_come_back_from_the_update_as_from_the_unconverted_model():
    case = Linen("fa")
    stats = {"batch_stats": case.variables["batch_stats"]}
    up = _update_with_aux(case.converted, case.converted.model(stats, mutable=["batch_stats"]), case.params, case.state)
    _, theirs = jax.jit(lambda v: LinenNet().apply(v, X, mutable=["batch_stats"]))(case.variables)
    _close(up.aux, theirs)
    assert not np.allclose(up.aux["batch_stats"]["bn"]["mean"], case.variables["batch_stats"]["bn"]["mean"])

    case = Nnx("fa")
    up = _update_with_aux(case.converted, case.converted.model(case.converted.rest), case.params, case.state)

    @jax.jit
    def their_statistics(params):
        module = case.converted.original(params, case.converted.rest)
        module(X)
        return nnx.to_pure_dict(nnx.state(module, nnx.Not(nnx.Param)))

    _close(nnx.to_pure_dict(up.aux), their_statistics(case.params))

    module, bn_state = eqx.nn.make_with_state(EqxNet)(jax.random.PRNGKey(0))
    forward = lambda m, x: jax.vmap(m, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
        jnp.transpose(x, (0, 3, 1, 2)), bn_state)
    converted, state = bio_eqx.convert(module, "fa", jax.random.PRNGKey(2), X, forward, axis_name="batch")
    up = _update_with_aux(converted, converted.model(forward), converted.params, state)
    _close(up.aux, eqx.filter_jit(lambda m: forward(m, X)[1])(module))


# ---------------------------------------------------------------------------------------------- direct feedback


class LinenMlp(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="out", **F64)(nn.relu(nn.Dense(6, name="hidden", **F64)(x)))


class EqxMlp(eqx.Module):
    hidden: eqx.nn.Linear
    out: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.hidden, self.out = eqx.nn.Linear(5, 6, key=k1), eqx.nn.Linear(6, 3, key=k2)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


def _dfa_closed_form(x, w0, b0, w1, b1, d):
    """Nøkland's dfa on one hidden layer: e = dloss/dz, delta = (e D) * relu'(a); dW0 = x^T delta, dW1 = h^T e."""
    a = x @ w0 + b0
    h = jax.nn.relu(a)
    e = jax.grad(loss)(h @ w1 + b1, Y)
    delta = (e @ d) * (a > 0)
    return x.T @ delta, delta.sum(0), h.T @ e, e.sum(0)


def test_dfa_through_the_linen_converter_is_the_closed_form():
    x = X.reshape(4, -1)[:, :5]
    variables = LinenMlp().init(jax.random.PRNGKey(0), x)
    converted, state = bio_linen.convert(LinenMlp(), variables, "dfa", jax.random.PRNGKey(2), x, exact=())
    p = variables["params"]
    up = jax.jit(lambda p, s: bioprop.update(converted.rule, converted.model(), loss, p, s, jax.random.PRNGKey(3), x, Y,
                                             converted.mask))(p, state)
    d = state["out"]["kernel"]  # D at the output layer's input: the hidden layer's output (n_out, 6)
    assert d.shape == (3, 6)
    expected = jax.jit(_dfa_closed_form)(x, p["hidden"]["kernel"], p["hidden"]["bias"], p["out"]["kernel"],
                                         p["out"]["bias"], d)
    g = up.grads
    _close((g["hidden"]["kernel"], g["hidden"]["bias"], g["out"]["kernel"], g["out"]["bias"]), expected)


def test_dfa_through_the_equinox_converter_under_vmap_is_the_closed_form():
    x = X.reshape(4, -1)[:, :5]
    module = EqxMlp(jax.random.PRNGKey(0))
    forward = lambda m, x: jax.vmap(m, axis_name="batch")(x)
    converted, state = bio_eqx.convert(module, "dfa", jax.random.PRNGKey(2), x, forward, axis_name="batch")
    p = converted.params
    up = jax.jit(lambda p, s: bioprop.update(converted.rule, converted.model(forward), loss, p, s, jax.random.PRNGKey(3),
                                             x, Y, converted.mask))(p, state)
    expected = jax.jit(_dfa_closed_form)(x, p.hidden.kernel, p.hidden.bias, p.out.kernel, p.out.bias, state.out.kernel)
    g = up.grads
    _close((g.hidden.kernel, g.hidden.bias, g.out.kernel, g.out.bias), expected)
    # measure's D against backprop's Jacobian to the output layer's input: W^T for every example
    report = jax.jit(lambda p, s: bioprop.measure(converted.rule, converted.model(forward), loss, p, s,
                                                  jax.random.PRNGKey(3), x, Y, converted.mask))(p, state)
    _close(report["feedback"]["angle"].out.kernel, jax.jit(_angle)(state.out.kernel, p.out.kernel.T))
    with pytest.raises(UnconvertibleLayer, match="axis_name"):
        unnamed, state = bio_eqx.convert(module, "dfa", jax.random.PRNGKey(2), x, forward)
        bioprop.update(unnamed.rule, unnamed.model(forward), loss, unnamed.params, state, jax.random.PRNGKey(3),
                       x, Y, unnamed.mask)


# ---------------------------------------------------------------------------------------------- refusals


class LinenEinsum(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Einsum((5, 4), "bi,ij->bj", name="mix", **F64)(x)
        return nn.Dense(3, name="out", **F64)(h)


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_an_unconvertible_weight_layer_is_refused_in_one_line_naming_it():
    x = X.reshape(4, -1)[:, :5]
    variables = LinenEinsum().init(jax.random.PRNGKey(0), x)
    with pytest.raises(UnconvertibleLayer) as error:
        bio_linen.convert(LinenEinsum(), variables, "fa", jax.random.PRNGKey(2), x)
    assert "Einsum at 'mix'" in _one_line(error)

    class NnxEmbed(nnx.Module):
        def __init__(self, rngs):
            self.embed, self.out = nnx.Embed(10, 4, rngs=rngs), nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, tokens):
            return self.out(self.embed(tokens))

    with pytest.raises(UnconvertibleLayer) as error:
        bio_nnx.convert(NnxEmbed(nnx.Rngs(0)), "fa", jax.random.PRNGKey(2), jnp.arange(4))
    assert "Embed at 'embed'" in _one_line(error)

    decoder = [eqx.nn.ConvTranspose2d(2, 2, 3, key=jax.random.PRNGKey(0)),
               eqx.nn.Conv2d(2, 1, 3, key=jax.random.PRNGKey(1))]
    with pytest.raises(UnconvertibleLayer) as error:
        bio_eqx.convert(decoder, "fa", jax.random.PRNGKey(2), jnp.ones((1, 2, 6, 6)),
                        lambda m, x: jax.vmap(lambda v: m[1](m[0](v)))(x))
    assert "ConvTranspose2d at '0'" in _one_line(error)


def test_a_layer_left_exact_by_name_is_backprop_and_a_misspelt_name_is_refused():
    x = X.reshape(4, -1)[:, :5]
    variables = LinenEinsum().init(jax.random.PRNGKey(0), x)
    converted, state = bio_linen.convert(LinenEinsum(), variables, "bp", jax.random.PRNGKey(2), x, exact=("mix",))
    assert converted.paths == ("out",)
    p = variables["params"]
    up = jax.jit(lambda p, s: bioprop.update(converted.rule, converted.model(), loss, p, s, jax.random.PRNGKey(3), x, Y,
                                             converted.mask))(p, state)
    _close(up.grads, jax.jit(jax.grad(lambda p: loss(LinenEinsum().apply({"params": p}, x), Y)))(p))
    with pytest.raises(UnconvertibleLayer) as error:
        bio_linen.convert(LinenEinsum(), variables, "bp", jax.random.PRNGKey(2), x, exact=("mixer",))
    assert "exact=('mixer',)" in _one_line(error)


class LinenConvOptions(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Conv(4, (3, 3), padding="CIRCULAR", kernel_dilation=2, name="dilated", **F64)(x)
        h = nn.Conv(4, (3, 3), strides=(2, 1), padding="SAME", feature_group_count=2, name="grouped", **F64)(
            jnp.tanh(h)[None])  # an extra leading axis, (1, 4, 8, 8, 4)
        return nn.Dense(3, name="out", **F64)(jnp.tanh(h)).mean((0, 2, 3))


def test_bp_through_dilated_grouped_circular_convs_and_leading_axes_equals_jax_grad():
    variables = LinenConvOptions().init(jax.random.PRNGKey(0), X)
    converted, state = bio_linen.convert(LinenConvOptions(), variables, "bp", jax.random.PRNGKey(2), X)
    assert converted.paths == ("dilated", "grouped", "out")
    p = variables["params"]
    mine = jax.jit(lambda p: bioprop.update(converted.rule, converted.model(), loss, p, state, jax.random.PRNGKey(3),
                                            X, Y, converted.mask).grads)(p)
    _close(mine, jax.jit(jax.grad(lambda p: loss(LinenConvOptions().apply({"params": p}, X), Y)))(p))


def test_wm_learns_its_feedback_through_the_linen_converter_as_on_the_network_by_hand():
    """The weight mirror's update of B (decay B - rate M, M from noise at each layer's input) and of W through the
    converter equal bioprop.update on the network written by hand with the same B and key."""
    case = Linen(bioprop.rule("wm", decay=0.1, mirror_lr_scale=0.1))
    up = _update(case)
    plain, b = case.plain(case.params), case.plain_feedback(case.state)
    by_hand = lambda p, fb, x: reference(p, {k: fb[k]["w"] for k in WEIGHTS}, x)
    kernels = bioprop.kernels(plain)  # None at every 1-d leaf
    state = {k: {**kernels[k], "w": b[k]} if k in WEIGHTS else kernels[k] for k in kernels}
    ref = jax.jit(lambda p, s: bioprop.update(case.converted.rule, by_hand, loss, p, s, jax.random.PRNGKey(3), X, Y))(
        plain, state)
    _close(case.plain_feedback(up.feedback_grads), {k: ref.feedback_grads[k]["w"] for k in WEIGHTS})
    _close(case.plain(up.grads), ref.grads)
    assert not np.allclose(up.feedback_grads["d0"]["kernel"], 0.1 * b["d0"])  # the mirror term is there
