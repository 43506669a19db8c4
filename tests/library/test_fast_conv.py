"""The written-out convolution (bioprop/layers.py: banded_convolve) against XLA's own, lax.conv_general_dilated,
on strides and uneven paddings LeNet does not have, and the transposed convolution it runs against jax.vjp."""

import jax
import numpy as np
import pytest
from jax import lax

import bioprop.layers as L

DIMENSIONS = ("NHWC", "HWIO", "NHWC")
CASES = [((1, 1), ((2, 2), (2, 2))), ((2, 1), ((2, 1), (0, 3))), ((2, 3), ((0, 0), (1, 0)))]


def xla_conv(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DIMENSIONS)


@pytest.mark.parametrize("strides, padding", CASES)
@pytest.mark.parametrize("c_in", [1, 2])
def test_banded_convolve_is_xla_convolution(strides, padding, c_in):
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x, w = jax.random.normal(kx, (3, 9, 8, c_in)), jax.random.normal(kw, (3, 2, c_in, 4))
    banded = jax.jit(lambda x, w: L.banded_convolve(x, w, strides, padding))  # one program each (docs/testing.md)
    np.testing.assert_allclose(banded(x, w), jax.jit(lambda x, w: xla_conv(x, w, strides, padding))(x, w),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", [((0, 0), (0, 0)), ((2, 1), (1, 2)), ((3, 0), (0, 3))])
@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_banded_transposed_convolution_is_the_vjp(padding, dtype, tol):
    """conv_input_vjp on a narrow image into few channels (banded_pays: LeNet's conv2 transposed) against
    jax.vjp of lax's convolution."""
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(1), 3)
    with jax.enable_x64(dtype == "float64"):
        x = jax.random.normal(kx, (2, 6, 5, 4), dtype)
        w = jax.random.normal(kw, (3, 3, 4, 5), dtype)
        spec = L.conv_spec(x.shape[1:3], w.shape[:2], 1, padding)
        g = jax.random.normal(kg, jax.eval_shape(lambda: xla_conv(x, w, (1, 1), padding)).shape, dtype)
        flipped_shape = (3, 3, 5, 4)
        assert L.banded_pays(g.shape, flipped_shape)
        exact = jax.jit(lambda x, w, g: jax.vjp(lambda z: xla_conv(z, w, (1, 1), padding), x)[1](g)[0])(x, w, g)
        mine = jax.jit(lambda g, w: L.conv_input_vjp(spec, g, w, x.shape))(g, w)  # one program each (docs/testing.md)
        np.testing.assert_allclose(mine, exact, rtol=tol, atol=tol)
