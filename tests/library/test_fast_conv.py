"""The written-out single-channel convolution (bioprop/layers.py: banded_convolve) against XLA's own,
lax.conv_general_dilated, on strides and uneven paddings LeNet does not have."""

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
    np.testing.assert_allclose(L.banded_convolve(x, w, strides, padding), xla_conv(x, w, strides, padding),
                               rtol=1e-5, atol=1e-5)
