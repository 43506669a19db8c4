"""Angles between tensors, in degrees."""

import jax.numpy as jnp


def angle_degrees(a, b):
    """arccos of the cosine similarity of the flattened tensors, in degrees; NaN if either is zero.

    Computed as 2 atan2(|u - v|, |u + v|) with u, v the unit vectors, which equals
    arccos(u . v) but keeps full precision near 0 and 180 degrees, where arccos does not.
    """
    a, b = jnp.ravel(a), jnp.ravel(b)
    na, nb = jnp.linalg.norm(a), jnp.linalg.norm(b)
    u, v = a / na, b / nb
    return jnp.degrees(2.0 * jnp.arctan2(jnp.linalg.norm(u - v), jnp.linalg.norm(u + v)))


def norm_ratio(a, b):
    """|a| / |b| with Frobenius norms."""
    return jnp.linalg.norm(jnp.ravel(a)) / jnp.linalg.norm(jnp.ravel(b))
