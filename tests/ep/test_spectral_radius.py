"""The settling map's spectral radius (bioprop_cli/ep.py): Lanczos against the dense eigenvalues,
on a nearly marginal network where 100 power iterations fall short."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bioprop_cli.ep import lanczos_extremes, spectral_radius, spectral_radius_with_error
from bioprop_cli.models.energy import RHOS, input_drive, step
from bioprop_cli.precision import float64

N_IN, N_HIDDEN, N_OUT, EPS = 5, 40, 8, 0.5
SINGULAR = 0.998 - 0.002 * np.arange(N_OUT)  # W_1's singular values: the top of the spectrum crowds


def _marginal_network():
    """784-500-10 in miniature: a hidden layer coupled to the output by W_1 with singular values
    0.998, 0.996, ...; biases that put the fixed point at s = 1/2 (every unit free), so that the
    Jacobian is (1 - eps) I + eps M with eigenvalues 1/2 +- sigma_i / 2: radius 0.999, the next
    ones 0.998, 0.997, ... The second example pins one hidden unit at 0 (strong negative drive)."""
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((N_HIDDEN, N_OUT)))
    v, _ = np.linalg.qr(rng.standard_normal((N_OUT, N_OUT)))
    w1 = u @ np.diag(SINGULAR) @ v.T
    w0 = rng.standard_normal((N_IN, N_HIDDEN)) * 0.1
    x = np.zeros((2, N_IN))
    b0 = 0.5 - 0.5 * np.ones(N_OUT) @ w1.T  # s_1 = drive + s_2 W_1^T = 1/2 at s_2 = 1/2
    b1 = 0.5 - 0.5 * np.ones(N_HIDDEN) @ w1
    params = [{"w": jnp.asarray(w0), "b": jnp.asarray(b0)}, {"w": jnp.asarray(w1), "b": jnp.asarray(b1)}]
    x[1] = -5.0 * w0[:, 0] / np.sum(w0[:, 0] ** 2)  # example 1: hidden unit 0 driven far below 0
    s1 = np.full((2, N_HIDDEN), 0.5)
    s1[1, 0] = 0.0
    return params, jnp.asarray(x), [jnp.asarray(s1), jnp.full((2, N_OUT), 0.5)]


def _dense_radius(params, x, states, rho):
    """max over the examples of |eigenvalues| of each example's Jacobian, computed densely."""
    widths = [s.shape[1] for s in states]

    def phi(v, example):
        parts = jnp.split(v, np.cumsum(widths)[:-1])
        out = step(params, [p[None] for p in parts], input_drive(params, example[None]), jnp.zeros((1, N_OUT), x.dtype),
                   0.0, rho, EPS)
        return jnp.concatenate([o[0] for o in out])

    # every example's Jacobian in one program: op by op, each operation would compile on its own
    jacobians = jax.jit(jax.vmap(jax.jacfwd(phi)))(jnp.concatenate(states, axis=1), x)
    return max(np.abs(np.linalg.eigvals(np.asarray(jac))).max() for jac in jacobians)


def _plain_power_iteration(params, x, states, rho, iterations=100):
    """The estimate bioprop used before: |J v| / |v| after `iterations` normalised steps."""
    y = jnp.zeros((x.shape[0], N_OUT), x.dtype)
    _, jvp = jax.linearize(lambda s: step(params, s, input_drive(params, x), y, 0.0, rho, EPS), states)
    norm = lambda t: jnp.sqrt(sum(jnp.sum(a**2) for a in t))
    v = [jax.random.normal(k, s.shape, s.dtype) for k, s in zip(jax.random.split(jax.random.PRNGKey(0), 2), states)]

    def power_step(_, carry):
        v, _ = carry
        jv = jvp(v)
        return [a / norm(jv) for a in jv], norm(jv) / norm(v)

    _, growth = jax.jit(lambda v: jax.lax.fori_loop(0, iterations, power_step, (v, jnp.zeros((), x.dtype))))(v)
    return float(growth)


def test_lanczos_finds_the_radius_of_a_marginal_network_where_power_iteration_falls_short():
    with float64():
        params, x, states = _marginal_network()
        rho = RHOS["hard_sigmoid"]
        dense = _dense_radius(params, x, states, rho)
        assert dense == pytest.approx(0.5 + 0.5 * SINGULAR[0], abs=1e-9)  # 0.999
        assert _plain_power_iteration(params, x, states, rho) < dense - 5e-5  # a lower bound, short of it
        estimate, error = (float(v) for v in jax.jit(
            lambda s: spectral_radius_with_error(params, s, x, rho, EPS, jax.random.PRNGKey(1), 60))(states))
        assert estimate == pytest.approx(dense, abs=1e-10)
        assert 0 <= error < 1e-9  # converged: the estimate stopped moving
        radius = jax.jit(lambda s: spectral_radius(params, s, x, rho, EPS, jax.random.PRNGKey(1), 60))(states)
        assert float(radius) == estimate


def test_too_few_lanczos_steps_say_so_in_the_error():
    with float64():
        params, x, states = _marginal_network()
        estimate, error = (float(v) for v in spectral_radius_with_error(params, states, x, RHOS["hard_sigmoid"], EPS,
                                                                        jax.random.PRNGKey(1), 3))
        dense = _dense_radius(params, x, states, RHOS["hard_sigmoid"])
        assert estimate < dense and error > 1e-3  # three steps: short of the radius, and not converged


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_lanczos_extremes_of_symmetric_matrices(shift):
    with float64():
        rng = np.random.default_rng(1)
        eigenvalues = [np.linspace(-0.7, 0.999, 50) + shift, np.linspace(-0.9995, 0.4, 50)]
        mats = []
        for lam in eigenvalues:
            q, _ = np.linalg.qr(rng.standard_normal((50, 50)))
            mats.append(q @ np.diag(lam) @ q.T)
        a = jnp.asarray(np.stack(mats))
        low, high, change = lanczos_extremes(lambda v: jnp.einsum("bij,bj->bi", a, v),
                                             jnp.asarray(rng.standard_normal((2, 50))), 50)
        np.testing.assert_allclose(low, [lam.min() for lam in eigenvalues], atol=1e-10)
        np.testing.assert_allclose(high, [lam.max() for lam in eigenvalues], atol=1e-10)
        assert float(jnp.max(change)) < 1e-4  # converged within the first 25 steps already
