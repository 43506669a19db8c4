"""Float64 on demand (the beta sweep and the tests of equilibrium propagation need it)."""

import jax


def float64():
    """A context manager in which JAX computes in float64 by default."""
    return jax.enable_x64(True)
