"""The learning rules, a registry found by name: `bioprop.rule("fa", scale=1.0)`.

A rule is a record of pure functions over a `kernels` pytree (the model's parameters with None at every
leaf that gets no feedback; `bioprop.kernels`): 2-d leaves are dense weights (n_in, n_out), 4-d leaves
HWIO conv kernels. Feedback is a pytree of the same structure, in transport's layout (W^T for a dense
weight, the kernel itself for a conv kernel; `bioprop.transport`):

    state = rule.init(key, kernels, sites)           # the rule's feedback state (B drawn from key)
    fb = rule.feedback(kernels, state, key)          # what each feedback layer sends its error through
    extra, state_update = rule.learn(kernels, state, hebbian, key, sites)   # kp, wm only

`sites` (`bioprop.sites`) describes each feedback layer as the model calls it (input shape, the
convolution's settings, a tap's shape); only dfa (D's shapes) and wm (its noise) read it. `hebbian`
is the gradient of the loss with respect to fb (the feedback layers' dfb, transport(dW)). `learn`
returns an extra term of the weights' update (kp's decay; None if none) and the update of the state,
both descent directions like jax.grad's, for an optimizer to apply.

Defaults are bioprop_cli's (configs/default.yaml, feedback.*): feedback std = scale * init_scale *
scheme(fan_in, fan_out) (the initial std of W under lecun, glorot or he variance scaling), drawn
`uniform` or `normal`; kp and wm: decay 0.003; wm: mirror noise 1.0, mirror rate 0.003.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from bioprop.layers import as_weight, conv_kernel_vjp, convolve, fans, transport

# Standard deviation of the initial weights as a function of (fan_in, fan_out).
INIT_STD: dict[str, Callable[[int, int], float]] = {
    "lecun": lambda fan_in, fan_out: 1.0 / math.sqrt(fan_in),
    "glorot": lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out)),
    "he": lambda fan_in, fan_out: math.sqrt(2.0 / fan_in),
}


class Rule(NamedTuple):
    name: str
    init: Callable[..., Any]  # init(key, kernels, sites=None) -> state
    feedback: Callable[..., Any]  # feedback(kernels, state, key) -> fb, a pytree like kernels
    learn: Callable[..., tuple] | None = None  # learn(kernels, state, hebbian, key, sites) -> (extra, state update)
    direct: bool = False  # the feedback is direct (Direct(d, e) at each layer): fb leaves are D, not B
    needs_sites: bool = False  # learn reads sites


def sample(key: jax.Array, shape: tuple[int, ...], std: float, distribution: str) -> jax.Array:
    """Zero-mean samples with the given standard deviation ('normal' or 'uniform')."""
    if distribution == "normal":
        return std * jax.random.normal(key, shape)
    limit = math.sqrt(3.0) * std
    return jax.random.uniform(key, shape, minval=-limit, maxval=limit)


def _mix32(x):
    """A bijective 32-bit integer mixer (the 'lowbias32' constants of C. Wellons' hash prospector)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def fast_uniform(key, shape) -> jax.Array:
    """Uniform floats in (0, 1) from a keyed counter-based hash: mix(mix(i + k0) ^ k1).

    brsf redraws every feedback magnitude at every step; threefry bits for that cost more than
    the step's matrix products on a CPU, this costs about a sixth of them. Two 32-bit keys from
    the step's JAX key make the streams of two steps unrelated (not shifted copies).
    """
    k0, k1 = jax.random.bits(key, (2,), jnp.uint32)
    counter = lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    bits = _mix32(_mix32(counter + k0) ^ k1)
    return ((bits >> 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))


def map_with_keys(f: Callable, key: jax.Array, tree, *rest):
    """tree_map(f, key_i, leaf_i, *rest_i) over the non-None leaves of `tree`, one key split from
    `key` per leaf (in flattening order)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = treedef.unflatten(list(jax.random.split(key, max(len(leaves), 1))[: len(leaves)]))
    return jax.tree_util.tree_map(f, keys, tree, *rest)


def _std(w_shape, scale, init_scale, scheme) -> float:
    return scale * init_scale * INIT_STD[scheme](*fans(w_shape))


def _frozen(tree):
    return jax.tree_util.tree_map(lax.stop_gradient, tree)


def _random_feedback(key, kernels, std, distribution):
    """B per kernel in transport's layout, zero-mean, std(W's shape)."""
    return map_with_keys(lambda k, w: sample(k, transport(w).shape, std(w.shape), distribution), key, kernels)


def bp(**unused) -> Rule:
    """Backpropagation: fb = transport(W), the exact gradient."""
    return Rule("bp", lambda key, kernels, sites=None: (),
                lambda kernels, state, key: _frozen(jax.tree_util.tree_map(transport, kernels)))


def fa(scale=1.0, distribution="uniform", scheme="lecun", init_scale=1.0) -> Rule:
    """Feedback alignment (Lillicrap et al. 2016): a fixed random B per layer, std = scale * W's initial std."""
    std = lambda shape: _std(shape, scale, init_scale, scheme)
    return Rule("fa", lambda key, kernels, sites=None: _random_feedback(key, kernels, std, distribution),
                lambda kernels, state, key: state)


def usf(scale=1.0, scheme="lecun", init_scale=1.0, **unused) -> Rule:
    """Uniform sign-concordant feedback (Liao et al. 2016): B = s sign(W^T), s = scale * W's initial std."""
    def feedback(kernels, state, key):
        return _frozen(jax.tree_util.tree_map(
            lambda w: transport(_std(w.shape, scale, init_scale, scheme) * jnp.sign(w)), kernels))

    return Rule("usf", lambda key, kernels, sites=None: (), feedback)


def _signed(kernels, magnitudes):
    return _frozen(jax.tree_util.tree_map(lambda w, m: transport(m * jnp.sign(w)), kernels, magnitudes))


def frsf(scale=1.0, distribution="uniform", scheme="lecun", init_scale=1.0) -> Rule:
    """Fixed random-magnitude sign-concordant feedback (Moskovitz et al. 2018): B = |R| sign(W^T), |R|
    drawn once like fa's B (state: |R| in W's layout)."""
    std = lambda shape: _std(shape, scale, init_scale, scheme)

    def init(key, kernels, sites=None):
        drawn = _random_feedback(key, kernels, std, distribution)
        return jax.tree_util.tree_map(lambda r: as_weight(jnp.abs(r)), drawn)

    return Rule("frsf", init, lambda kernels, state, key: _signed(kernels, state))


def brsf(scale=1.0, distribution="uniform", scheme="lecun", init_scale=1.0) -> Rule:
    """Batchwise random-magnitude sign-concordant feedback (Moskovitz et al. 2018): B = |R_t| sign(W^T),
    |R_t| redrawn from every step's key (uniform on [0, sqrt(3) std] or half-normal)."""
    def magnitude(k, w):
        u = fast_uniform(k, w.shape).astype(w.dtype)
        std = _std(w.shape, scale, init_scale, scheme)
        if distribution == "uniform":
            return math.sqrt(3.0) * std * u
        return std * math.sqrt(2.0) * lax.erf_inv(u)  # |N(0, std)| by its inverse CDF

    return Rule("brsf", lambda key, kernels, sites=None: (),
                lambda kernels, state, key: _signed(kernels, map_with_keys(magnitude, key, kernels)))


def kp(decay=0.003, scale=1.0, distribution="uniform", scheme="lecun", init_scale=1.0) -> Rule:
    """Kolen-Pollack (Akrout et al. 2019): B drawn like fa's and learned: update(W) = dW + decay W,
    update(B) = transport(dW) + decay B (the Hebbian product of B's two sides), so that under SGD
    W^T - B shrinks by (1 - lr decay) per step."""
    base = fa(scale, distribution, scheme, init_scale)

    def learn(kernels, state, hebbian, key, sites=None):
        extra = jax.tree_util.tree_map(lambda w: decay * w, kernels)
        return extra, jax.tree_util.tree_map(lambda h, b: h + decay * b, hebbian, state)

    return base._replace(name="kp", learn=learn)


def positions(site, dtype) -> jax.Array | int:
    """How many products of one example each entry of a conv layer's mirror sums: the correlation of an
    all-ones input with an all-ones output (1 for a dense layer)."""
    if site.kind == "dense":
        return 1
    with jax.ensure_compile_time_eval():
        ones_in = jnp.ones((1,) + tuple(site.in_shape[1:]), dtype)
        ones_out = jnp.ones((1,) + tuple(site.out_shape[1:]), dtype)
        return conv_kernel_vjp(site.conv, ones_in, ones_out, site.w_shape)


def mirror(site, w: jax.Array, noise: jax.Array, sigma: float) -> jax.Array:
    """M = y^T x / (rows sigma^2 count), y = the layer's linear map of the noise x (in transport's
    layout): an unbiased estimate of transport(W) (Akrout et al. 2019's weight mirror)."""
    if site.kind == "dense":
        x = noise.reshape(-1, noise.shape[-1])
        y = x @ w
        return y.T @ x / (x.shape[0] * sigma**2)
    y = convolve(site.conv, noise, w)
    hebbian = conv_kernel_vjp(site.conv, noise, y, w.shape)
    return hebbian / (noise.shape[0] * sigma**2 * positions(site, w.dtype))


def wm(decay=0.003, mirror_noise=1.0, mirror_lr_scale=0.003, scale=1.0, distribution="uniform",
       scheme="lecun", init_scale=1.0) -> Rule:
    """Weight mirror (Akrout et al. 2019): B drawn like fa's, learned from noise: x uniform with std
    mirror_noise injected at each layer's input, update(B) = decay B - mirror_lr_scale M (mirror), so
    that B relaxes to (mirror_lr_scale / decay) W^T."""
    base = fa(scale, distribution, scheme, init_scale)

    def learn(kernels, state, hebbian, key, sites):
        def step(k, w, b, site):
            u = fast_uniform(k, site.in_shape).astype(w.dtype)
            noise = (mirror_noise * math.sqrt(3.0)) * (2.0 * u - 1.0)
            return decay * b - mirror_lr_scale * mirror(site, w, noise, mirror_noise)

        return None, map_with_keys(step, jax.random.fold_in(key, 0x3A11), kernels, state, sites)

    return base._replace(name="wm", learn=learn, needs_sites=True)


def dfa(scale=1.0, distribution="uniform", scheme="lecun", init_scale=1.0) -> Rule:
    """Direct feedback alignment (Nøkland 2016): the output error e goes straight to every feedback
    layer's delivery point (its input, or its tap) through a fixed random D (n_out, units), std =
    scale * the output layer's initial std (the last feedback layer the model calls)."""
    def init(key, kernels, sites):
        if sites is None:
            raise ValueError("dfa draws D from the model's shapes: use bioprop.init(rule, key, model, params, x)")
        last = max(jax.tree_util.tree_leaves(sites), key=lambda s: s.order)
        std = _std(last.w_shape, scale, init_scale, scheme)
        n_out = last.out_shape[-1]

        def draw(k, w, site):
            target = site.tap_shape or site.in_shape
            return sample(k, (n_out, math.prod(target[1:])), std, distribution)

        return map_with_keys(draw, key, kernels, sites)

    return Rule("dfa", init, lambda kernels, state, key: state, direct=True)


RULES: dict[str, Callable[..., Rule]] = {
    "bp": bp, "fa": fa, "dfa": dfa, "usf": usf, "frsf": frsf, "brsf": brsf, "kp": kp, "wm": wm,
}


def rule(name: str, **options) -> Rule:
    """The rule `name` with its options (defaults: bioprop_cli's)."""
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; known rules: {', '.join(RULES)}")
    return RULES[name](**options)
