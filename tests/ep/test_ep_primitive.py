"""Laborieux et al. 2021's networks in their own terms (ep.dynamics primitive; models/energy.py
primitive_dynamics): their activations `mysig` and `my_hard_sig`, their update s <- rho(dPhi/ds)
against autograd of their primitive function Phi, its energy, and EP's estimate against the exact
gradient of the cost at its fixed point."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import central_difference, random_directions

from bioprop_cli import ep as eqprop
from bioprop_cli.config import load_config
from bioprop_cli.errors import UserError
from bioprop_cli.models import conv_energy
from bioprop_cli.models.arch import Pool, dense, stack
from bioprop_cli.models.energy import RHOS, contrast, cost, energy, input_drive, primitive_dynamics, step
from bioprop_cli.models.layers import init_params
from bioprop_cli.precision import float64
from bioprop_cli.rules import make_rule

SIZES = (6, 5, 4, 3)
BATCH = 7
U = np.linspace(-3.0, 4.0, 29)  # includes the kinks 0, 1 and 2 of the hard sigmoids


def _problem(dtype=jnp.float64, scale=1.0, seed=0, sizes=SIZES):
    params = init_params(jax.random.PRNGKey(seed), dense(sizes), "glorot_uniform", scale)
    params = [{"w": p["w"].astype(dtype), "b": p["b"].astype(dtype) + 0.1} for p in params]
    kx, ky = jax.random.split(jax.random.PRNGKey(seed + 100))
    x = jax.random.uniform(kx, (BATCH, sizes[0]), dtype)
    y = jax.nn.one_hot(jax.random.randint(ky, (BATCH,), 0, sizes[-1]), sizes[-1], dtype=dtype)
    return params, x, y


def _states(seed, sizes, dtype=jnp.float64):
    keys = jax.random.split(jax.random.PRNGKey(seed), len(sizes))
    return [jax.random.uniform(k, (BATCH, n), dtype) for k, n in zip(keys, sizes)]


def _flat(tree):
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree_util.tree_leaves(tree)])


def _rel(a, b):
    return float(jnp.linalg.norm(_flat(a) - _flat(b)) / jnp.linalg.norm(_flat(b)))


def test_the_activations_are_their_code_s():
    # model_utils.py: my_sigmoid(x) = 1/(1+exp(-4*(x-0.5))), my_hard_sig(x) = (1+hardtanh(x-1))*0.5
    np.testing.assert_allclose(RHOS["unit_slope_sigmoid"].f(U), 1 / (1 + np.exp(-4 * (U - 0.5))), rtol=1e-6)
    np.testing.assert_allclose(RHOS["half_slope_hard_sigmoid"].f(U), (1 + np.clip(U - 1, -1, 1)) * 0.5, rtol=1e-6)
    assert float(RHOS["unit_slope_sigmoid"].df(jnp.asarray(0.5))) == pytest.approx(1.0)
    # the hard sigmoid's slope 1/2 on the closed interval [0, 2], 0 outside
    np.testing.assert_array_equal(RHOS["half_slope_hard_sigmoid"].df(U), np.where((U >= 0) & (U <= 2), 0.5, 0.0))


@pytest.mark.parametrize("name", ["unit_slope_sigmoid", "half_slope_hard_sigmoid"])
def test_each_activation_s_derivative_is_its_autodiff_derivative(name):
    rho = RHOS[name]
    np.testing.assert_allclose(jax.vmap(jax.grad(rho.f))(jnp.asarray(U)), rho.df(jnp.asarray(U)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name, low, high", [("hard_sigmoid", 0.05, 0.95), ("half_slope_hard_sigmoid", 0.1, 1.9),
                                             ("sigmoid", -2, 2), ("unit_slope_sigmoid", -1, 2), ("tanh", -2, 2)])
def test_inverse_primitive_differentiates_to_the_inverse(name, low, high):
    """G'(rho(u)) = u where rho is invertible: the leak of the primitive dynamics' energy."""
    with float64():
        rho = RHOS[name]
        u = jnp.linspace(low, high, 13, dtype=jnp.float64)
        np.testing.assert_allclose(jax.vmap(jax.grad(rho.inverse_primitive))(rho.f(u)), u, rtol=1e-9, atol=1e-9)


def _their_phi(params, states, x, y, beta, readout=None):
    """P_MLP.Phi (P_CNN.Phi with --softmax for a readout), per batch: sum_l s_{l+1}.(s_l W_l + b_l) - beta L."""
    layers = [x] + list(states)
    phi = sum(jnp.sum((h @ p["w"] + p["b"]) * s) for h, p, s in zip(layers, params, layers[1:]))
    if readout is None:
        loss = 0.5 * jnp.sum((states[-1] - y) ** 2)
    else:
        loss = -jnp.sum(y * jax.nn.log_softmax(states[-1] @ readout["w"] + readout["b"]))
    return phi - beta * loss


@pytest.mark.parametrize("name", ["unit_slope_sigmoid", "half_slope_hard_sigmoid"])
@pytest.mark.parametrize("with_readout", [False, True])
def test_the_step_is_rho_of_the_gradient_of_their_primitive_function(name, with_readout):
    """At eps = 1 every layer at once to rho(dPhi/ds), dPhi/ds by autodiff as their forward does; at
    eps < 1 the step moves a fraction eps of the way there."""
    with float64():
        params, x, y = _problem()
        readout = params[-1] if with_readout else None
        dynamic = params[:-1] if with_readout else params
        sizes = SIZES[1:-1] if with_readout else SIZES[1:]
        y = jax.nn.one_hot(jnp.arange(BATCH) % 3, 3, dtype=jnp.float64)
        rho, states = RHOS[name], [2.0 * s for s in _states(3, sizes)]
        net = primitive_dynamics(rho)


        @jax.jit  # one program for the three betas: op by op, each operation would compile on its own
        def target_step_and_damped(beta):
            grads = jax.grad(lambda s: _their_phi(dynamic, s, x, y, beta, readout))(states)
            return ([rho.f(g) for g in grads], step(dynamic, states, input_drive(dynamic, x), y, beta, net, 1.0, readout=readout),
                    step(dynamic, states, input_drive(dynamic, x), y, beta, net, 0.3, readout=readout))

        for beta in (0.0, 0.4, -0.3):
            target, got, damped = target_step_and_damped(beta)
            for a, b in zip(got, target):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
            for a, s, b in zip(damped, states, target):
                np.testing.assert_allclose(a, 0.7 * s + 0.3 * b, rtol=1e-12, atol=1e-12)


def test_the_conv_step_is_rho_of_the_gradient_of_their_primitive_function():
    """P_CNN: Phi = sum_l <s_{l+1}, P(W_l * s_l + b_l)> - beta C (conv_energy.coupling); their update."""
    arch = stack("cnn", (8, 8, 1), [(4, 3, 1, 1, Pool("max", 2, 2)), (3, 3, 1, 1, Pool("avg", 2, 2))], (), 10)
    with float64():
        params = [jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), p)
                  for p in init_params(jax.random.PRNGKey(1), arch, "glorot_uniform", 1.5)]
        x = jax.random.uniform(jax.random.PRNGKey(2), (BATCH, arch.sizes[0]), jnp.float64)
        y = jax.nn.one_hot(jnp.arange(BATCH) % 10, 10, dtype=jnp.float64)
        rho = RHOS["half_slope_hard_sigmoid"]
        states = [2.0 * s for s in _states(4, arch.sizes[1:])]
        phi = lambda s: jnp.sum(conv_energy.coupling(arch, params, s, x)) - 0.5 * jnp.sum(0.5 * (s[-1] - y) ** 2)
        target, got = jax.jit(lambda states: (  # one program: op by op, each operation would compile on its own
            [rho.f(g) for g in jax.grad(phi)(states)],
            step(params, states, input_drive(params, x, arch), y, 0.5, primitive_dynamics(rho), 1.0, arch=arch)))(states)
        for a, b in zip(got, target):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["unit_slope_sigmoid", "tanh"])
def test_the_fixed_point_is_a_stationary_point_of_sum_g_minus_phi(name):
    """E = sum G(s) - Phi (G' = rho^{-1}) as `energy` computes it, and dF/ds = 0 at the settled state
    of the nudged dynamics, F = E + beta C."""
    with float64():
        params, x, y = _problem(scale=0.5)
        rho = RHOS[name]
        net = primitive_dynamics(rho)
        states = [0.5 * s for s in _states(5, SIZES[1:])]
        beta = 0.3

        @jax.jit  # one program: op by op, each operation would compile on its own
        def energies_and_settled_gradient(states):
            expected = jnp.sum(sum(jnp.sum(rho.inverse_primitive(s), -1) for s in states)) - _their_phi(params, states,
                                                                                                        x, y, 0.0)
            settled = eqprop.settle(params, eqprop.zero_states(params, BATCH, jnp.float64), input_drive(params, x), y,
                                    beta, net, 1.0, 2000, 1e-14)
            total = lambda s: jnp.sum(energy(params, s, x, net) + beta * cost(s, y))
            return jnp.sum(energy(params, states, x, net)), expected, settled.residual, jax.grad(total)(settled.states)

        got, expected, residual, grads = energies_and_settled_gradient(states)
        assert float(got) == pytest.approx(float(expected), rel=1e-12)
        assert float(residual) < 1e-13
        for g in grads:
            assert float(jnp.max(jnp.abs(g))) < 1e-12


def _config(name, readout=False, **ep):
    overrides = [("rule", "ep"), ("model.depth", 2), ("model.activation", name), ("ep.dynamics", "primitive"),
                 ("ep.eps", 1.0), ("model.loss", "cross_entropy" if readout else "mse")]
    return load_config(overrides=overrides + [(f"ep.{k}", v) for k, v in ep.items()])


CONVERGED = dict(free_steps=3000, nudged_steps=3000, tolerance=1e-14)


@pytest.mark.parametrize("name, readout", [("unit_slope_sigmoid", False), ("half_slope_hard_sigmoid", False),
                                           ("unit_slope_sigmoid", True)])
def test_ep_estimates_the_implicit_gradient_of_the_primitive_network(name, readout):
    """EP's theorem for E = sum G(s) - Phi: the symmetric estimate at beta 1e-3 within 1e-4 of the
    implicit gradient of the cost at the free fixed point (itself checked by finite differences of
    the settled cost and by BPTT through the settling), the one-sided error shrinking like beta."""
    with float64():
        params, x, y = _problem(scale=1.0)
        config = _config(name, readout, **CONVERGED)
        net = eqprop.network(config, params, ())
        assert net.rho.update is RHOS[name] and (net.readout is not None) == readout


        @jax.jit  # one program: op by op, each operation would compile on its own
        def fixed_and_implicit(params):
            n = eqprop.network(config, params, ())
            fixed = eqprop.free_fixed_point(n.running, x, n.rho, 1.0, 3000, 1e-14)
            return fixed, eqprop.implicit_gradient(n.trainable, fixed.states, x, y, n.rho, 1.0, 3000, 1e-13,
                                                   readout=n.readout)

        fixed, (implicit, misfit) = fixed_and_implicit(params)
        assert float(fixed.residual) < 1e-13
        assert float(misfit) < 1e-10
        bptt = jax.jit(lambda p: eqprop.bptt_gradient(p, x, y, net.rho, 1.0, int(fixed.steps) + 50,
                                                      readout=net.readout))(net.trainable)
        assert _rel(bptt, implicit) < 1e-8

        @jax.jit
        def loss(p):
            n = eqprop.network(config, p, ())
            s = eqprop.free_fixed_point(n.running, x, n.rho, 1.0, 3000, 1e-14).states
            return jnp.mean(cost(s, y, n.readout, n.rho))

        for d in random_directions(params, jax.random.PRNGKey(5), 2):
            assert float(jnp.vdot(_flat(implicit), _flat(d))) == pytest.approx(central_difference(loss, params, d),
                                                                               rel=1e-5, abs=1e-10)

        def estimate(**ep):
            rule = make_rule(_config(name, readout, **CONVERGED, **ep), dense(SIZES))
            key = jax.random.PRNGKey(0)
            return jax.jit(lambda p: rule.estimate(p, rule.init(key, p), x, y, key).grads)(params)

        assert _rel(estimate(estimator="symmetric", beta=1e-3), implicit) < 1e-4
        errors = [_rel(estimate(estimator="one-sided", beta=b), implicit) for b in (1e-2, 1e-3)]
        assert errors[1] == pytest.approx(errors[0] / 10, rel=0.2)


def test_the_primitive_contrast_is_the_hebbian_product_of_the_states_themselves():
    """Their compute_syn_grads: (Phi(s^b) - Phi(s^0)) / (0 - beta), differentiated for theta."""
    with float64():
        params, x, y = _problem()
        a, b = _states(6, SIZES[1:]), _states(7, SIZES[1:])
        net = primitive_dynamics(RHOS["unit_slope_sigmoid"])
        beta = 0.2
        got = contrast(a, b, x, net, 1.0 / beta, params)
        # phi_2 = Phi(s^beta).mean(), phi_1 = Phi(s^0).mean(), (phi_2 - phi_1) / (beta_1 - beta_2), beta_1 = 0
        their = jax.grad(lambda p: (_their_phi(p, a, x, y, beta) - _their_phi(p, b, x, y, 0.0)) / BATCH / -beta)(params)
        assert _rel(got, their) < 1e-12


def test_config_refuses_what_the_dynamics_cannot_run():
    with pytest.raises(UserError, match="model.activation"):
        load_config(overrides=[("rule", "ep"), ("model.activation", "half_slope_hard_sigmoid")])
    with pytest.raises(UserError, match="model.activation.*rule ep's only"):
        load_config(overrides=[("rule", "bp"), ("model.activation", "unit_slope_sigmoid")])
    with pytest.raises(UserError, match="ep.dynamics"):
        load_config(overrides=[("rule", "ep"), ("ep.dynamics", "leaky")])
    config = load_config(overrides=[("rule", "ep"), ("model.activation", "unit_slope_sigmoid")])
    assert config.ep.dynamics == "gradient"  # mysig also runs under the gradient dynamics


def test_the_paper_preset_is_their_network():
    config = load_config("configs/papers/laborieux-2021-mlp.yaml")
    assert (config.model.activation, config.ep.dynamics, config.ep.eps) == ("unit_slope_sigmoid", "primitive", 1.0)
    assert (config.ep.estimator, config.ep.beta, config.ep.free_steps, config.ep.nudged_steps) == ("one-sided", 0.1,
                                                                                                 30, 10)


def test_jtranspose_refuses_the_primitive_dynamics(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bioprop_cli.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["jtranspose", "--set", "ep.dynamics=primitive"])
    assert result.exit_code == 2, result.output
    assert "ep.dynamics" in result.output and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())


def test_the_spectral_radius_of_the_primitive_map_is_its_jacobian_s():
    """Power iteration (the primitive map's J = diag(rho') d^2Phi/ds^2 is not symmetric) against the dense
    eigenvalues of jax.jacobian of the step, per example, at the free fixed point."""
    with float64():
        params, x, _ = _problem(scale=2.0)
        net = primitive_dynamics(RHOS["unit_slope_sigmoid"])
        fixed = jax.jit(lambda p: eqprop.free_fixed_point(p, x, net, 1.0, 3000, 1e-14).states)(params)
        drive0, y = input_drive(params, x), jnp.zeros((BATCH, SIZES[-1]), jnp.float64)
        shapes = [s.shape for s in fixed]
        cuts = np.cumsum([np.prod(sh) for sh in shapes])[:-1]

        def flat_step(flat):  # the whole batch's J, block-diagonal: its spectrum is the union of the examples'
            states = [part.reshape(sh) for part, sh in zip(jnp.split(flat, cuts), shapes)]
            return jnp.concatenate([s.ravel() for s in step(params, states, drive0, y, 0.0, net, 1.0)])

        jacobian = jax.jit(jax.jacobian(flat_step))(jnp.concatenate([s.ravel() for s in fixed]))
        radii = [float(np.max(np.abs(np.linalg.eigvals(np.asarray(jacobian)))))]
        radius, error = jax.jit(lambda p, s: eqprop.spectral_radius_with_error(p, s, x, net, 1.0, jax.random.PRNGKey(0),
                                                                                400))(params, fixed)
        assert np.isnan(float(error)) and 0.05 < max(radii) < 1
        assert float(radius) == pytest.approx(max(radii), rel=1e-3)


def test_the_half_slope_hard_sigmoid_fixed_point_is_a_kkt_point_of_sum_g_minus_phi_on_the_box():
    """my_hard_sig: G(s) = s^2 on [0, 1] (piecewise: E is minimised on the box). At the settled nudged
    state dF/ds = 0 on the units strictly inside, dF/ds >= 0 at 0 and <= 0 at 1 (units present in each case)."""
    with float64():
        params, x, y = _problem(scale=2.0)
        net = primitive_dynamics(RHOS["half_slope_hard_sigmoid"])
        beta = 0.3


        @jax.jit  # one program: op by op, each operation would compile on its own
        def settled_and_gradient(params):
            settled = eqprop.settle(params, eqprop.zero_states(params, BATCH, jnp.float64), input_drive(params, x), y,
                                    beta, net, 1.0, 3000, 1e-14)
            return settled, jax.grad(lambda s: jnp.sum(energy(params, s, x, net) + beta * cost(s, y)))(settled.states)

        settled, grads = settled_and_gradient(params)
        assert float(settled.residual) < 1e-13
        s, g = jnp.concatenate([a.ravel() for a in settled.states]), jnp.concatenate([a.ravel() for a in grads])
        inner, low, high = (s > 0) & (s < 1), s == 0, s == 1
        assert int(inner.sum()) > 0 and int(low.sum()) > 0 and int(high.sum()) > 0
        assert float(jnp.max(jnp.abs(jnp.where(inner, g, 0.0)))) < 1e-12
        assert float(jnp.min(jnp.where(low, g, jnp.inf))) > 0 and float(jnp.max(jnp.where(high, g, -jnp.inf))) < 0
