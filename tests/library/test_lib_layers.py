"""bioprop's feedback layers against jax.grad / jax.vjp of the plain products: forward, weight and bias
vjps, the error sent below through fb, the Hebbian cotangent of fb, on every conv path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import bioprop
from bioprop.layers import conv_spec, convolve


def _close(a, b, tol=2e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def _normal(seed, shape):
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


def test_dense_forward_exact_and_backward_through_fb():
    x, w, b, fb, g = _normal(0, (3, 5)), _normal(1, (5, 4)), _normal(2, (4,)), _normal(3, (4, 5)), _normal(4, (3, 4))
    out, vjp = jax.vjp(bioprop.dense, x, w, b, fb)
    np.testing.assert_array_equal(out, x @ w + b)
    dx, dw, db, dfb = vjp(g)
    _close(dw, x.T @ g)
    _close(db, g.sum(0))
    _close(dx, g @ fb)  # the rule's feedback, not W^T
    _close(dfb, g.T @ x)  # the Hebbian product of the feedback synapses' two sides
    # transport(W) is backprop
    exact = jax.grad(lambda x, w, b: jnp.sum(jnp.sin(x @ w + b)), argnums=(0, 1, 2))(x, w, b)
    mine = jax.grad(lambda x, w, b: jnp.sum(jnp.sin(bioprop.dense(x, w, b, lax.stop_gradient(w.T)))),
                    argnums=(0, 1, 2))(x, w, b)
    for u, v in zip(mine, exact):
        _close(u, v)


def test_dense_reads_leading_axes_and_no_bias():
    x, w, fb, g = _normal(0, (2, 3, 5)), _normal(1, (5, 4)), _normal(3, (4, 5)), _normal(4, (2, 3, 4))
    out, vjp = jax.vjp(lambda x, w, fb: bioprop.dense(x, w, None, fb), x, w, fb)
    _close(out, x @ w)
    dx, dw, dfb = vjp(g)
    _close(dw, jnp.einsum("bti,bto->io", x, g))
    _close(dx, g @ fb)
    _close(dfb, dw.T)


def test_no_feedback_sends_no_error():
    x, w = _normal(0, (3, 5)), _normal(1, (5, 4))
    dx = jax.grad(lambda x: jnp.sum(bioprop.dense(x, w, None, None) ** 2))(x)
    np.testing.assert_array_equal(dx, 0.0)


CONV_CASES = [  # (input NHWC, kernel HWIO, stride, padding, dilation, groups)
    ((2, 8, 8, 3), (3, 3, 3, 4), 1, 1, 1, 1),
    ((2, 9, 9, 3), (3, 3, 3, 4), 2, 1, 1, 1),  # the stride's floor drops a row
    ((2, 8, 7, 2), (3, 2, 2, 3), (2, 1), ((1, 0), (2, 1)), 1, 1),  # asymmetric everything
    ((2, 8, 8, 2), (3, 3, 2, 3), 2, "SAME", 1, 1),
    ((2, 8, 8, 2), (5, 5, 2, 3), 1, "VALID", 1, 1),
    ((2, 9, 9, 2), (3, 3, 2, 4), 1, 2, 2, 1),  # dilated kernel: the general path
    ((2, 8, 8, 4), (3, 3, 2, 6), 2, 1, 1, 2),  # feature groups: the general path
]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation, groups", CONV_CASES)
def test_conv_vjps_equal_jax_vjp(x_shape, w_shape, stride, padding, dilation, groups):
    x, w, b, fb = _normal(0, x_shape), _normal(1, w_shape), _normal(2, w_shape[-1:]), _normal(3, w_shape)
    settings = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    spec = conv_spec(x_shape[1:3], w_shape[:2], stride, padding, dilation, groups)
    g = _normal(4, jax.eval_shape(lambda: bioprop.conv(x, w, b, fb, **settings)).shape)

    @jax.jit  # each side one program, not one per operation (docs/testing.md)
    def by_bioprop(x, w, b, fb, g):
        out, vjp = jax.vjp(lambda x, w, b, fb: bioprop.conv(x, w, b, fb, **settings), x, w, b, fb)
        dx_bp = jax.vjp(lambda x: bioprop.conv(x, w, b, w, **settings), x)[1](g)[0]  # fb = W: backprop
        return out, vjp(g), dx_bp

    @jax.jit
    def by_lax(x, w, fb, g):
        out = lax.conv_general_dilated(x, w, spec.strides, spec.padding, rhs_dilation=spec.dilation,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
        named = jax.lax.conv_general_dilated(x, w, spec.strides, padding, rhs_dilation=spec.dilation,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                             feature_group_count=groups) if isinstance(padding, str) else None
        exact_dx_with_w, exact_dw = jax.vjp(lambda x, w: convolve(spec, x, w), x, w)[1](g)
        exact_dx_with_fb = jax.vjp(lambda x: convolve(spec, x, fb), x)[1](g)[0]
        return out, named, exact_dx_with_w, exact_dw, exact_dx_with_fb

    out, (dx, dw, db, dfb), dx_bp = by_bioprop(x, w, b, fb, g)
    reference, named, exact_dx_with_w, exact_dw, exact_dx_with_fb = by_lax(x, w, fb, g)
    _close(out, reference + b)
    if isinstance(padding, str):  # a padding named by a string means what it means to lax
        _close(out, named + b)
    _close(dw, exact_dw, 1e-4)
    _close(db, g.sum((0, 1, 2)), 1e-4)
    _close(dx, exact_dx_with_fb, 1e-4)
    _close(dfb, exact_dw, 1e-4)
    _close(dx_bp, exact_dx_with_w, 1e-4)


def test_tap_replaces_the_cotangent_only_under_direct_feedback():
    h, d, e = _normal(0, (3, 2, 2, 2)), _normal(1, (4, 8)), _normal(2, (3, 4))
    f = lambda h, fb: jnp.sum(jnp.sin(bioprop.tap(h, fb)))
    _close(jax.grad(f)(h, None), jnp.cos(h))
    _close(jax.grad(f)(h, bioprop.Direct(d, e)), (e @ d).reshape(h.shape))


def test_direct_feedback_reaches_the_layer_input_and_a_tap_moves_it():
    x, w, d, e = _normal(0, (3, 6)), _normal(1, (6, 4)), _normal(2, (5, 6)), _normal(3, (3, 5))
    below = lambda x: jnp.tanh(x)
    at_input = jax.grad(lambda x: jnp.sum(bioprop.dense(below(x), w, None, bioprop.Direct(d, e)) ** 2))(x)
    _close(at_input, (e @ d) * (1 - jnp.tanh(x) ** 2))

    def tapped(x):
        fb = bioprop.Direct(d, e)
        return jnp.sum(bioprop.dense(below(bioprop.tap(x, fb)), w, None, fb) ** 2)

    _close(jax.grad(tapped)(x), e @ d)  # delivered below the tanh, which is then bypassed


def test_float64_layers_are_jax_grad_to_the_last_bit_with_transported_feedback():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 2), dtype=jnp.float64)
        w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2, 3), dtype=jnp.float64)
        v = jax.random.normal(jax.random.PRNGKey(2), (27, 4), dtype=jnp.float64)

        def net(x, w, v, layer_conv, layer_dense):
            h = jnp.tanh(layer_conv(x, w)).reshape(x.shape[0], -1)
            return jnp.sum(jnp.sin(layer_dense(h, v)))

        mine = jax.grad(lambda x, w, v: net(
            x, w, v, lambda x, w: bioprop.conv(x, w, None, lax.stop_gradient(w), stride=2, padding="SAME"),
            lambda h, v: bioprop.dense(h, v, None, lax.stop_gradient(v.T))), argnums=(0, 1, 2))(x, w, v)
        exact = jax.grad(lambda x, w, v: net(
            x, w, v, lambda x, w: lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")),
            lambda h, v: h @ v), argnums=(0, 1, 2))(x, w, v)
        for u, e in zip(mine, exact):
            assert u.dtype == jnp.float64
            np.testing.assert_allclose(u, e, rtol=1e-13, atol=1e-13)
