"""The layer primitives against independent references: numpy loops for convolution and pooling,
the initial dense weights drawn by hand with jax.random."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bioprop_cli.models import arch as archs
from bioprop_cli.models import layers
from bioprop_cli.models.layers import init_params, pool, pre_activation


def conv_reference(x, w, b, stride, padding):
    """Direct loops: out[n, i, j, o] = b[o] + sum_{u, v, c} xpad[n, i s + u, j s + v, c] w[u, v, c, o]."""
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    k = w.shape[0]
    side = lambda n: (n + 2 * padding - k) // stride + 1
    out = np.zeros((x.shape[0], side(x.shape[1]), side(x.shape[2]), w.shape[3]))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            out[:, i, j, :] = np.einsum("nuvc,uvco->no", patch, w) + b
    return out


@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 2), (2, 1)])
def test_conv_pre_activation_matches_loops(stride, padding):
    op = archs.Conv((7, 6, 3), 4, 3, stride, padding)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7 * 6 * 3)).astype(np.float32)  # flat, as the data arrives
    w = rng.normal(size=op.weight_shape).astype(np.float32)
    b = rng.normal(size=(4,)).astype(np.float32)
    out = np.asarray(pre_activation(op, {"w": w, "b": b}, jnp.asarray(x)))
    assert out.shape[1:] == op.out_shape
    np.testing.assert_allclose(out, conv_reference(x.reshape(2, 7, 6, 3), w, b, stride, padding), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("in_shape,kernel,stride,padding", [((7, 6, 3), 3, 1, 0), ((7, 6, 3), 3, 2, 1),
                                                          ((8, 8, 2), 5, 2, 2), ((9, 7, 1), 5, 3, 0)])
def test_conv_vjps_written_as_forward_convolutions_equal_jax_vjp(in_shape, kernel, stride, padding):
    """The kernel gradient, the error sent back (the transposed convolution with the feedback kernel)
    and the feedback's own gradient (the Hebbian product, the kernel gradient again) equal jax.vjp of the convolution, strides that do not divide the
    input included (the positions the stride's floor drops get no error)."""
    op = archs.Conv(in_shape, 4, kernel, stride, padding)
    kx, kw, kd, kb = jax.random.split(jax.random.PRNGKey(3), 4)
    h = jax.random.normal(kx, (2,) + in_shape)
    w, fb = jax.random.normal(kw, op.weight_shape), jax.random.normal(kb, op.weight_shape)
    delta = jax.random.normal(kd, (2,) + op.out_shape)

    @jax.jit  # each side one program, not one per operation (docs/testing.md)
    def by_jax(h, w, fb, delta):
        by_w = jax.vjp(lambda w: layers.linear(op, w, h), w)[1](delta)[0]
        by_h = jax.vjp(lambda h: layers.linear(op, fb, h), h)[1](delta)[0]
        by_fb = jax.grad(lambda k: jnp.vdot(layers.send_back(op, k, delta, h.shape), h))(fb)
        return by_w, by_h, by_fb

    @jax.jit
    def written_out(h, fb, delta):
        return (layers.weight_vjp(op, h, delta), layers.send_back(op, layers.transport(op, fb), delta, h.shape),
                layers.conv_weight_gradient(op, h, delta))

    by_w, by_h, by_fb = by_jax(h, w, fb, delta)
    grads, sent, fb_grad = written_out(h, fb, delta)
    np.testing.assert_allclose(grads["w"], by_w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads["b"], delta.sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sent, by_h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fb_grad, by_fb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling_matches_loops(kind):
    p = archs.Pool(kind, 2, 2)
    x = np.random.default_rng(1).normal(size=(2, 5, 4, 3)).astype(np.float32)
    out = np.asarray(pool(p, jnp.asarray(x)))
    assert out.shape[1:] == p.out_shape((5, 4, 3)) == (2, 2, 3)
    reduce = np.max if kind == "max" else np.mean
    for i in range(2):
        for j in range(2):
            np.testing.assert_allclose(out[:, i, j], reduce(x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2], axis=(1, 2)), rtol=1e-6)


@pytest.mark.parametrize("scheme", ["glorot_uniform", "he_normal"])
def test_dense_init_is_the_variance_scaling_draw(scheme):
    """One key per layer split from the key; W_l ~ U(-sqrt(3) std, sqrt(3) std) or std N(0, 1) with
    std = scale sqrt(2 / (fan_in + fan_out)) (glorot) or scale sqrt(2 / fan_in) (he); zero biases."""
    sizes, scale, key = (5, 4, 3), 1.3, jax.random.PRNGKey(3)
    params = init_params(key, archs.dense(sizes), scheme, scale)
    keys = jax.random.split(key, 2)
    for l, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if scheme == "glorot_uniform":
            limit = math.sqrt(3.0) * scale * math.sqrt(2.0 / (fan_in + fan_out))
            want = jax.random.uniform(keys[l], (fan_in, fan_out), minval=-limit, maxval=limit)
        else:
            want = scale * math.sqrt(2.0 / fan_in) * jax.random.normal(keys[l], (fan_in, fan_out))
        np.testing.assert_allclose(params[l]["w"], want, rtol=1e-6)
        np.testing.assert_array_equal(params[l]["b"], np.zeros(fan_out))


def test_lenet_shapes_and_conv_init_std():
    a = archs.lenet((28, 28, 1), 10)
    assert a.sizes == (784, 14 * 14 * 6, 5 * 5 * 16, 120, 84, 10)
    params = init_params(jax.random.PRNGKey(0), a, "he_normal", 1.0)
    assert params[0]["w"].shape == (5, 5, 1, 6) and params[1]["b"].shape == (16,)
    # he: std = sqrt(2 / fan_in), fan_in of a kernel = k^2 C_in = 150 for the second conv layer
    assert abs(float(jnp.std(params[1]["w"])) - (2 / 150) ** 0.5) < 0.01


def test_fan_in_uniform_biases_are_torch_s_default_and_leave_the_weights_alone():
    """model.init.bias fan_in_uniform: U(-1/sqrt(fan_in), +1/sqrt(fan_in)) per layer (a conv kernel's fan_in is
    k^2 C_in), the weights as with zero biases."""
    network = archs.stack("cnn", (8, 8, 3), [(64, 3, 1, 1, None)], (), 500)
    zero = init_params(jax.random.PRNGKey(0), network, "lecun_uniform", 1.0)
    torch_like = init_params(jax.random.PRNGKey(0), network, "lecun_uniform", 1.0, bias="fan_in_uniform")
    for a, b, fan_in in zip(zero, torch_like, (3 * 3 * 3, 8 * 8 * 64)):
        np.testing.assert_array_equal(a["w"], b["w"])
        assert not np.any(a["b"])
        bound = 1 / math.sqrt(fan_in)
        assert float(jnp.max(jnp.abs(b["b"]))) <= bound
        assert float(jnp.max(jnp.abs(b["b"]))) > 0.8 * bound  # spread over the interval
        assert float(jnp.std(b["b"])) == pytest.approx(bound / math.sqrt(3), rel=0.25)
