"""Float64 on demand (the beta sweep and the tests of equilibrium propagation need it)."""

import jax


def float64():
    """A context manager in which JAX computes in float64 by default."""
    if hasattr(jax, "enable_x64"):  # jax >= 0.7
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older jax

    return enable_x64()
