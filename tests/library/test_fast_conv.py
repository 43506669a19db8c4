"""The written-out single-channel convolution (bioprop/layers.py: banded_convolve) and the tiled max pooling
(bioprop_cli/models/layers.py: tiled_max_pool) against XLA's own operations: lax.conv_general_dilated and
reduce_window with its derivative (select-and-scatter), on strides and uneven paddings LeNet does not have, and on
pooling inputs full of ties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import bioprop.layers as L
from bioprop_cli.models.layers import tiled_max_pool

DIMENSIONS = ("NHWC", "HWIO", "NHWC")
CASES = [((1, 1), ((2, 2), (2, 2))), ((2, 1), ((2, 1), (0, 3))), ((2, 3), ((0, 0), (1, 0)))]


def xla_conv(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DIMENSIONS)


@pytest.mark.parametrize("strides, padding", CASES)
@pytest.mark.parametrize("c_in", [1, 2])
def test_banded_convolve_is_xla_convolution(strides, padding, c_in):
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x, w = jax.random.normal(kx, (3, 9, 8, c_in)), jax.random.normal(kw, (3, 2, c_in, 4))
    np.testing.assert_allclose(L.banded_convolve(x, w, strides, padding), xla_conv(x, w, strides, padding),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k, shape", [(2, (2, 6, 4, 3)), (2, (1, 5, 7, 2)), (3, (2, 6, 9, 1))])
def test_tiled_max_pool_and_its_derivative_are_reduce_windows(k, shape):
    h = jnp.maximum(jnp.round(jax.random.normal(jax.random.PRNGKey(2), shape)), 0.0)  # many ties (0 and 1)
    reference = lambda z: lax.reduce_window(z, -jnp.inf, lax.max, (1, k, k, 1), (1, k, k, 1), "VALID")
    out, vjp = jax.vjp(lambda z: tiled_max_pool(k, z), h)
    expected, expected_vjp = jax.vjp(reference, h)
    np.testing.assert_array_equal(out, expected)
    g = jax.random.normal(jax.random.PRNGKey(3), out.shape)
    np.testing.assert_array_equal(vjp(g)[0], expected_vjp(g)[0])
    t = jax.random.normal(jax.random.PRNGKey(4), shape)
    np.testing.assert_array_equal(jax.jvp(lambda z: tiled_max_pool(k, z), (h,), (t,))[1],
                                  jax.jvp(reference, (h,), (t,))[1])
