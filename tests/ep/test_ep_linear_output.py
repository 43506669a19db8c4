"""A linear output layer (ep.output_layer linear; models/energy.py `Rho.linear_output`): rho = identity
and an unbounded state on the output layer only, as Scellier et al. 2023's deep Hopfield networks.
The energy's force against jax.grad, the output's fixed point against its closed form, and EP's
estimate against the implicit gradient (itself against finite differences and BPTT), MLP and conv."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import central_difference, random_directions

from bioprop_cli import ep as eqprop
from bioprop_cli.config import load_config
from bioprop_cli.errors import UserError
from bioprop_cli.models.arch import Pool, dense, stack
from bioprop_cli.models.energy import RHOS, contrast, cost, energy, energy_gradient, input_drive, step
from bioprop_cli.models.layers import init_params
from bioprop_cli.precision import float64

SIZES = (6, 5, 4, 3)
BATCH = 7
CONV = stack("cnn", (8, 8, 1), [(4, 3, 1, 1, Pool("max", 2, 2)), (3, 3, 1, 1, Pool("avg", 2, 2))], (), 10)
CONVERGED = dict(free_steps=3000, nudged_steps=3000, tolerance=1e-14, reference_steps=3000, reference_tolerance=1e-14,
                 adjoint_steps=3000)


def _problem(arch, scale=1.0, seed=0):
    params = init_params(jax.random.PRNGKey(seed), arch, "glorot_uniform", scale)
    params = [{"w": p["w"].astype(jnp.float64), "b": p["b"].astype(jnp.float64) + 0.1} for p in params]
    kx, ky = jax.random.split(jax.random.PRNGKey(seed + 100))
    n_out = arch.sizes[-1]
    x = jax.random.uniform(kx, (BATCH, arch.sizes[0]), jnp.float64)
    y = jax.nn.one_hot(jax.random.randint(ky, (BATCH,), 0, n_out), n_out, dtype=jnp.float64)
    return params, x, y


def _config(arch="mlp", output_layer="linear", activation="hard_sigmoid", **ep):
    overrides = [("rule", "ep"), ("model.arch", arch), ("model.activation", activation),
                 ("ep.output_layer", output_layer)]
    return load_config(overrides=overrides + [(f"ep.{k}", v) for k, v in ep.items()])


def _flat(tree):
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree_util.tree_leaves(tree)])


def _rel(a, b):
    return float(jnp.linalg.norm(_flat(a) - _flat(b)) / jnp.linalg.norm(_flat(b)))


def test_the_option_makes_only_the_output_layer_linear():
    rho = eqprop.neuron_model(_config())
    layers = rho.layers(3)
    assert layers[0] is layers[1] is rho and layers[2].f(jnp.asarray(-2.5)) == -2.5
    assert float(layers[2].df(jnp.asarray(7.0))) == 1.0 and not layers[2].bounded
    assert eqprop.neuron_model(_config(output_layer="clipped")) is RHOS["hard_sigmoid"]


@pytest.mark.parametrize("name", ["hard_sigmoid", "sigmoid"])
def test_the_force_is_jax_grad_of_the_energy_with_a_linear_output(name):
    """dF/ds = jax.grad of E + beta C, E with r_L = s_L (1/2 |s_L|^2 - rho(s_{L-1}) W s_L - b s_L), at
    states inside (0, 1) for the hidden layers and outside [0, 1] for the output."""
    with float64():
        params, x, y = _problem(dense(SIZES))
        rho = eqprop.neuron_model(_config(activation=name))
        keys = jax.random.split(jax.random.PRNGKey(3), 3)
        states = [jax.random.uniform(k, (BATCH, n), jnp.float64, 0.05, 0.95) for k, n in zip(keys, SIZES[1:])]
        states[-1] = 4.0 * states[-1] - 2.0
        beta = -0.4
        total = lambda s: jnp.sum(energy(params, s, x, rho) + beta * cost(s, y))
        got, expected = jax.jit(lambda s: (energy_gradient(params, s, input_drive(params, x), y, beta, rho),
                                           jax.grad(total)(s)))(states)  # one program, not op by op
        assert _rel(got, expected) < 1e-12
        r1, r2 = rho.f(states[1]), states[2]
        by_hand = 0.5 * jnp.sum(states[2] ** 2, -1) - jnp.sum((r1 @ params[2]["w"]) * r2, -1) - r2 @ params[2]["b"]
        no_output = energy(params[:2], states[:2], x, RHOS[name])  # the network below the output layer
        assert _rel(energy(params, states, x, rho), no_output + by_hand) < 1e-12


def test_the_output_settles_to_its_closed_form_outside_the_unit_interval():
    """Negative nudging: s_L = (rho(s_{L-1}) W + b + beta y) / (1 + beta) at beta = -0.5, below 0 where
    y = 0 pushes it, not projected back onto [0, 1]; the clipped network's output stays in [0, 1]."""
    with float64():
        params, x, y = _problem(dense(SIZES), scale=0.5)
        rho = eqprop.neuron_model(_config())
        beta = -0.5
        drive0 = input_drive(params, x)
        s = eqprop.settle(params, eqprop.zero_states(params, BATCH, jnp.float64), drive0, y, beta, rho, 0.5, 3000,
                          1e-14).states
        closed = (s[1] @ params[2]["w"] + params[2]["b"] + beta * y) / (1.0 + beta)
        np.testing.assert_allclose(s[2], closed, rtol=1e-12, atol=1e-12)
        assert float(jnp.min(s[2])) < 0.0
        clipped = eqprop.settle(params, eqprop.zero_states(params, BATCH, jnp.float64), drive0, y, beta,
                                RHOS["hard_sigmoid"], 0.5, 3000, 1e-14).states
        assert float(jnp.min(clipped[2])) >= 0.0


@pytest.mark.parametrize("arch_name, name", [("mlp", "hard_sigmoid"), ("mlp", "sigmoid"), ("cnn", "hard_sigmoid")])
def test_ep_estimates_the_implicit_gradient_with_a_linear_output(arch_name, name):
    """EP's theorem for the network with a linear output: the symmetric estimate at beta 1e-3 within
    1e-4 of the implicit gradient of the cost at the free fixed point, which finite differences of
    the settled cost and BPTT through the settling confirm; one-sided's error shrinks like beta."""
    arch = dense(SIZES) if arch_name == "mlp" else CONV
    with float64():
        params, x, y = _problem(arch, scale=1.5 if arch_name == "cnn" else 1.0)
        config = _config(arch_name, activation=name, **CONVERGED)
        net = eqprop.network(config, params, ())
        net = net._replace(arch=None if arch_name == "mlp" else CONV)
        fixed, implicit, misfit = jax.jit(lambda: eqprop.implicit_reference(config, net, x, y))()
        assert float(fixed.residual) < 1e-13 and float(misfit) < 1e-9
        assert float(jnp.max(jnp.abs(fixed.states[-1]))) > 0  # the output layer takes part
        bptt = jax.jit(lambda p: eqprop.bptt_gradient(p, x, y, net.rho, 0.5, int(fixed.steps) + 100,
                                                      arch=net.arch))(params)
        assert _rel(bptt, implicit) < 1e-8

        @jax.jit
        def loss(p):
            s = eqprop.free_fixed_point(p, x, net.rho, 0.5, 3000, 1e-14, arch=net.arch).states
            return jnp.mean(cost(s, y))

        for d in random_directions(params, jax.random.PRNGKey(5), 2):
            assert float(jnp.vdot(_flat(implicit), _flat(d))) == pytest.approx(central_difference(loss, params, d),
                                                                               rel=1e-5, abs=1e-10)

        def estimator_at(estimator):  # one program per estimator, beta its argument
            cfg = _config(arch_name, activation=name, estimator=estimator, **CONVERGED)
            return jax.jit(lambda beta: eqprop.estimate(cfg, net, x, y, jax.random.PRNGKey(0),
                                                        eqprop.start_states(cfg, net, x), beta)[1].grads)

        assert _rel(estimator_at("symmetric")(1e-3), implicit) < 1e-4
        negative = estimator_at("negative")
        errors = [_rel(negative(b), implicit) for b in (1e-2, 1e-3)]
        assert errors[1] == pytest.approx(errors[0] / 10, rel=0.2)


def test_the_contrast_reads_the_output_state_itself():
    """dE/dW_L = -rho(s_{L-1})^T s_L with a linear output: the Hebbian product of the output's state,
    not of its clip (the states here leave [0, 1])."""
    with float64():
        params, x, _ = _problem(dense(SIZES))
        rho = eqprop.neuron_model(_config())
        keys = jax.random.split(jax.random.PRNGKey(8), 6)
        a = [3.0 * jax.random.normal(k, (BATCH, n), jnp.float64) for k, n in zip(keys[:3], SIZES[1:])]
        b = [3.0 * jax.random.normal(k, (BATCH, n), jnp.float64) for k, n in zip(keys[3:], SIZES[1:])]
        got = contrast(a, b, x, rho, 2.0, params)
        expected = jax.grad(lambda p: 2.0 * jnp.mean(energy(p, a, x, rho) - energy(p, b, x, rho)))(params)
        assert _rel(got, expected) < 1e-12


def test_the_linear_output_step_leaves_hidden_layers_projected():
    """One step of the hard sigmoid network at beta = -0.5: hidden layers clipped to [0, 1], the output
    s_L + eps (rho(s_{L-1}) W + b - beta (s_L - y) - s_L), not."""
    with float64():
        params, x, y = _problem(dense(SIZES), scale=3.0)
        rho = eqprop.neuron_model(_config())
        keys = jax.random.split(jax.random.PRNGKey(9), 3)
        states = [jax.random.uniform(k, (BATCH, n), jnp.float64) for k, n in zip(keys[:2], SIZES[1:3])]
        states.append(3.0 * jax.random.normal(keys[2], (BATCH, SIZES[3]), jnp.float64))
        new = step(params, states, input_drive(params, x), y, -0.5, rho, 0.5)
        assert all(float(jnp.min(s)) >= 0 and float(jnp.max(s)) <= 1 for s in new[:2])
        drive = states[1] @ params[2]["w"] + params[2]["b"]
        np.testing.assert_allclose(new[2], states[2] + 0.5 * (drive + 0.5 * (states[2] - y) - states[2]), rtol=1e-12)
        assert float(jnp.min(new[2])) < 0.0 or float(jnp.max(new[2])) > 1.0


def test_config_refuses_a_linear_output_without_the_output_layer():
    with pytest.raises(UserError, match="ep.output_layer"):
        load_config(overrides=[("rule", "ep"), ("model.loss", "cross_entropy"), ("ep.output_layer", "linear")])
    with pytest.raises(UserError, match="ep.output_layer"):
        load_config(overrides=[("rule", "ep"), ("ep.dynamics", "primitive"), ("ep.output_layer", "linear")])
    with pytest.raises(UserError, match="ep.output_layer"):
        load_config(overrides=[("rule", "ep"), ("ep.output_layer", "tanh")])
