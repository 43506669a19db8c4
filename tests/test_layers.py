"""The layer primitives against independent references: numpy loops for convolution and pooling,
and the MLP's own initialisation for dense layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bioprop_cli.models import arch as archs
from bioprop_cli.models.layers import init_params, pool, pre_activation
from bioprop_cli.models.mlp import init_params as mlp_init_params


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


def test_dense_init_is_the_mlps():
    a = archs.mlp((28, 28, 1), 2, 16, 10)
    key = jax.random.PRNGKey(3)
    for ours, theirs in zip(init_params(key, a, "glorot_uniform", 1.3), mlp_init_params(key, a.sizes, "glorot_uniform", 1.3)):
        np.testing.assert_array_equal(ours["w"], theirs["w"])
        np.testing.assert_array_equal(ours["b"], theirs["b"])


def test_lenet_shapes_and_conv_init_std():
    a = archs.lenet((28, 28, 1), 10)
    assert a.sizes == (784, 14 * 14 * 6, 5 * 5 * 16, 120, 84, 10)
    params = init_params(jax.random.PRNGKey(0), a, "he_normal", 1.0)
    assert params[0]["w"].shape == (5, 5, 1, 6) and params[1]["b"].shape == (16,)
    # he: std = sqrt(2 / fan_in), fan_in of a kernel = k^2 C_in = 150 for the second conv layer
    assert abs(float(jnp.std(params[1]["w"])) - (2 / 150) ** 0.5) < 0.01
