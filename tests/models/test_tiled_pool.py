"""Max pooling of disjoint tiles (bioprop_cli/models/layers.py: tiled_max_pool) against reduce_window's: values,
vjp (select-and-scatter: the first maximum of each window takes the cotangent) and jvp, on inputs full of ties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from bioprop_cli.models.layers import tiled_max_pool


@pytest.mark.parametrize("k, shape", [(2, (2, 6, 4, 3)), (2, (1, 5, 7, 2)), (3, (2, 6, 9, 1))])
def test_tiled_max_pool_and_its_derivative_are_reduce_windows(k, shape):
    h = jnp.maximum(jnp.round(jax.random.normal(jax.random.PRNGKey(2), shape)), 0.0)  # many ties (0 and 1)
    reference = lambda z: lax.reduce_window(z, -jnp.inf, lax.max, (1, k, k, 1), (1, k, k, 1), "VALID")
    g = jax.random.normal(jax.random.PRNGKey(3), jax.eval_shape(reference, h).shape)
    t = jax.random.normal(jax.random.PRNGKey(4), shape)

    def value_vjp_jvp(pool, h, g, t):  # one program per side (docs/testing.md), the arrays its arguments
        out, vjp = jax.vjp(pool, h)
        return out, vjp(g)[0], jax.jvp(pool, (h,), (t,))[1]

    tiled = jax.jit(lambda *a: value_vjp_jvp(lambda z: tiled_max_pool(k, z), *a))(h, g, t)
    for mine, expected in zip(tiled, jax.jit(lambda *a: value_vjp_jvp(reference, *a))(h, g, t), strict=True):
        np.testing.assert_array_equal(mine, expected)
