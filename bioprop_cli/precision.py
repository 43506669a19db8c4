"""Precision on demand: float64 (the beta sweep and the tests of equilibrium propagation need it),
and full float32 matrix products for the measurements.

JAX's default float32 matrix product may round its inputs (TF32 on NVIDIA GPUs, bf16 passes on
TPUs), which moves exactly the small angles and small-beta differences bioprop measures. Training
keeps the fast default; the exact references and the alignment measurements run at "highest".
The same holds for conv EP's Winograd convolutions on the CPU (models/conv_energy.py), whose float32
rounding is several times a direct convolution's: `fast_convolutions`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

# A study parameter (a beta, a gamma) enters the network's float32 arithmetic: it must be a positive normal
# float32 number there (1e308 would be inf, 1e-320 zero).
FLOAT32_TINY, FLOAT32_MAX = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)


def float32_normal_problem(value: float) -> str | None:
    """Why a positive study parameter is not a normal float32 number, or None."""
    if FLOAT32_TINY <= value <= FLOAT32_MAX:
        return None
    return f"{value:g} is outside float32's normal range [{FLOAT32_TINY:.3g}, {FLOAT32_MAX:.3g}], which the network computes in"


def float64():
    """A context manager in which JAX computes in float64 by default."""
    return jax.enable_x64(True)


def full_float32(fn):
    """`fn` with every matrix product it traces at full float32 precision, whatever the default
    (the precision is fixed per product when traced, so this holds inside jit too; `fn.__wrapped__`
    is the function at the default precision)."""

    @functools.wraps(fn)
    def at_highest(*args, **kwargs):
        with jax.default_matmul_precision("highest"):
            return fn(*args, **kwargs)

    return at_highest


FULL_FLOAT32 = ("highest", "float32", "F32_F32_F32")  # jax.default_matmul_precision's names of full float32


def fast_convolutions() -> bool:
    """Whether what is being traced may trade rounding for speed in its convolutions: not under `full_float32`
    (nor a user's jax.default_matmul_precision("highest")). Read at trace time; jit's cache keys on it."""
    return jax.config.jax_default_matmul_precision not in FULL_FLOAT32


def cast_floats(tree, dtype):
    """Every floating-point leaf of `tree` as `dtype` (integer leaves are left alone): --x64 measures
    the float32 network cast, the same network in higher precision."""
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, tree)
