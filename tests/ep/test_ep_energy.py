"""Equilibrium propagation: the energy, the dynamics, the estimators against exact gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradcheck import central_difference, random_directions

from bioprop_cli.models.arch import dense
from bioprop_cli.config import load_config
from bioprop_cli.ep import (
    bptt_gradient,
    free_fixed_point,
    implicit_gradient,
    spectral_radius,
)
from bioprop_cli.models.energy import RHOS, cost, energy, energy_gradient, input_drive, settle, step
from bioprop_cli.precision import float64
from bioprop_cli.rules import make_rule
from bioprop_cli.metrics.measure import make_measure
from helpers import CONVERGED, SIZES, _ep_estimate, _flat, _problem, _rel


def _config(**ep):
    overrides = [("rule", "ep"), ("model.depth", 2)] + [(f"ep.{k}", v) for k, v in ep.items()]
    return load_config(overrides=overrides)



@pytest.mark.parametrize("rho_name", ["hard_sigmoid", "sigmoid", "tanh"])
def test_energy_gradient_is_jax_grad_of_the_total_energy(rho_name):
    params, x, y = _problem()
    rho = RHOS[rho_name]
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    states = [jax.random.uniform(k, (x.shape[0], n)) for k, n in zip(keys, SIZES[1:])]
    states[0] = states[0].at[0, 0].set(0.0).at[1, 1].set(1.0)  # units on the ends of [0, 1]
    beta = 0.3

    def total(states):
        return jnp.sum(energy(params, states, x, rho) + beta * cost(states, y))

    # one program for both sides: op by op, each operation would compile on its own
    expected, got = jax.jit(lambda s: (jax.grad(total)(s), energy_gradient(params, s, input_drive(params, x), y, beta, rho)))(states)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_energy_by_hand_on_one_unit_per_layer():
    # x=1, one hidden unit s1, one output s2; W0=2, W1=3, biases 0.5, 0.25; rho = clip.
    params = [{"w": jnp.array([[2.0]]), "b": jnp.array([0.5])}, {"w": jnp.array([[3.0]]), "b": jnp.array([0.25])}]
    x, s1, s2 = jnp.array([[1.0]]), jnp.array([[0.4]]), jnp.array([[0.7]])
    e = 0.5 * (0.4**2 + 0.7**2) - (1 * 2 * 0.4 + 0.4 * 3 * 0.7) - (0.5 * 0.4 + 0.25 * 0.7)
    assert float(energy(params, [s1, s2], x, RHOS["hard_sigmoid"])[0]) == pytest.approx(e, rel=1e-6)


def _dense_spectral_radius(params, fixed_states, x, rho, eps):
    """max over examples of |eigenvalues| of one example's settling-map Jacobian, densely."""
    zeros_y = jnp.zeros((1, SIZES[-1]))
    sizes = [s.shape[1] for s in fixed_states]

    def phi_flat(v, example):
        parts = jnp.split(v, np.cumsum(sizes)[:-1])
        out = step(params, [p[None] for p in parts], input_drive(params, example[None]), zeros_y, 0.0, rho, eps)
        return jnp.concatenate([o[0] for o in out])

    # every example's Jacobian in one program
    jacobians = jax.jit(jax.vmap(jax.jacfwd(phi_flat)))(jnp.concatenate(fixed_states, axis=1), x)
    return max(max(abs(np.linalg.eigvals(np.asarray(jac)))) for jac in jacobians)


def test_free_phase_converges_and_contracts_with_small_weights():
    params, x, y = _problem(scale=0.5)
    rho = RHOS["hard_sigmoid"]
    fixed = jax.jit(lambda p: free_fixed_point(p, x, rho, eps=0.5, max_steps=500, tol=1e-6))(params)
    assert float(fixed.residual) < 1e-6 and int(fixed.steps) < 500
    radius = float(jax.jit(lambda s: spectral_radius(params, s, x, rho, 0.5, jax.random.PRNGKey(0)))(fixed.states))
    assert radius < 1.0
    assert radius == pytest.approx(_dense_spectral_radius(params, fixed.states, x, rho, 0.5), rel=1e-2)


def test_settle_stops_at_tolerance_and_reports_steps():
    params, x, y = _problem(scale=0.5)
    rho = RHOS["hard_sigmoid"]
    drive0 = input_drive(params, x)
    zeros = [jnp.zeros((x.shape[0], n)) for n in SIZES[1:]]
    loose = settle(params, zeros, drive0, y, 0.0, rho, 0.5, 1000, 1e-2)
    tight = settle(params, zeros, drive0, y, 0.0, rho, 0.5, 1000, 1e-5)
    fixed = settle(params, zeros, drive0, y, 0.0, rho, 0.5, 7, 0.0)
    assert 0 < int(loose.steps) < int(tight.steps) < 1000
    assert float(loose.residual) < 1e-2 <= float(settle(params, zeros, drive0, y, 0.0, rho, 0.5, int(loose.steps) - 1, 0.0).residual)
    assert int(fixed.steps) == 7


@pytest.mark.parametrize("rho_name", ["sigmoid", "hard_sigmoid"])
def test_implicit_gradient_matches_finite_differences_and_converged_bptt(rho_name):
    with float64():
        params, x, y = _problem(jnp.float64, scale=0.5)
        rho = RHOS[rho_name]
        fixed = jax.jit(lambda p: free_fixed_point(p, x, rho, 0.5, 5000, 1e-13))(params)
        implicit, adjoint_residual = jax.jit(lambda p, s: implicit_gradient(p, s, x, y, rho, 0.5, 5000, 1e-12))(
            params, fixed.states)
        assert float(adjoint_residual) < 1e-11
        bptt = jax.jit(lambda p: bptt_gradient(p, x, y, rho, 0.5, int(fixed.steps) + 50))(params)
        assert _rel(bptt, implicit) < 1e-8

        @jax.jit  # one program for every evaluation of the finite differences
        def loss_at_fixed_point(p):
            s = free_fixed_point(p, x, rho, 0.5, 5000, 1e-13).states
            return jnp.mean(cost(s, y))

        for direction in random_directions(params, jax.random.PRNGKey(5), 3):
            numeric = central_difference(loss_at_fixed_point, params, direction)
            analytic = float(jnp.vdot(_flat(implicit), _flat(direction)))
            assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-10)



@pytest.mark.parametrize("rho_name", ["sigmoid", "hard_sigmoid"])
def test_symmetric_ep_equals_the_implicit_gradient_at_small_beta(rho_name):
    with float64():
        params, x, y = _problem(jnp.float64, scale=0.5)
        config = load_config(overrides=[("rule", "ep"), ("model.depth", 2), ("model.activation", rho_name)]
                             + [(f"ep.{k}", v) for k, v in dict(estimator="symmetric", beta=1e-3, **CONVERGED).items()])

        @jax.jit  # one program: op by op, each operation would compile on its own
        def estimate_and_implicit(params):
            fixed = free_fixed_point(params, x, RHOS[rho_name], 0.5, 5000, 1e-13)
            implicit, _ = implicit_gradient(params, fixed.states, x, y, RHOS[rho_name], 0.5, 5000, 1e-12)
            return _ep_estimate(config, params, x, y).grads, implicit

        grads, implicit = estimate_and_implicit(params)
        assert _rel(grads, implicit) < 1e-3


def test_one_sided_bias_is_linear_and_symmetric_bias_quadratic_in_beta():
    with float64():
        params, x, y = _problem(jnp.float64, scale=0.5)
        rho = RHOS["hard_sigmoid"]

        @jax.jit
        def implicit_at(params):
            fixed = free_fixed_point(params, x, rho, 0.5, 5000, 1e-13)
            return implicit_gradient(params, fixed.states, x, y, rho, 0.5, 5000, 1e-12)[0]

        implicit = implicit_at(params)
        from bioprop_cli import ep as eqprop

        errors = {}
        for estimator in ("one-sided", "symmetric"):
            config = _config(estimator=estimator, **CONVERGED)
            net = eqprop.network(config, params, ())
            start = eqprop.start_states(config, net, x)
            # one program per estimator, beta its argument
            at = jax.jit(lambda beta: eqprop.estimate(config, net, x, y, jax.random.PRNGKey(0), start, beta)[1].grads)
            for beta in (0.01, 0.001):  # (at beta >= 0.03 units start to cross the ends of [0, 1])
                errors[estimator, beta] = _rel(at(beta), implicit)
        slope_one_sided = np.log10(errors["one-sided", 0.01] / errors["one-sided", 0.001])
        slope_symmetric = np.log10(errors["symmetric", 0.01] / errors["symmetric", 0.001])
        assert slope_one_sided == pytest.approx(1.0, abs=0.1)  # measured: 0.99
        assert slope_symmetric == pytest.approx(2.0, abs=0.1)  # measured: 2.00
        assert errors["symmetric", 0.01] < errors["one-sided", 0.01] / 10


def test_random_sign_draws_the_sign_of_beta_per_batch():
    with float64():
        params, x, y = _problem(jnp.float64, scale=0.5)
        rule = make_rule(_config(estimator="random-sign", beta=0.05, **CONVERGED), dense(SIZES))
        random_sign = jax.jit(rule.estimate)  # compiled once for the eight draws
        plus = _ep_estimate(_config(estimator="one-sided", beta=0.05, **CONVERGED), params, x, y)
        signs = []
        for k in range(8):
            est = random_sign(params, rule.init(jax.random.PRNGKey(k), params), x, y, jax.random.PRNGKey(k))
            sign = 1 if _rel(est.grads, plus.grads) < 1e-9 else -1
            if sign < 0:  # -beta: s^{-beta} from the same free state, the other one-sided estimate
                assert 1e-6 < _rel(est.grads, plus.grads) < 1.0
            signs.append(sign)
        assert set(signs) == {1, -1}


def test_ep_delivers_state_shifts_and_settling_diagnostics():
    params, x, y = _problem(scale=0.5)
    config = _config(estimator="one-sided", beta=0.1, free_steps=30, nudged_steps=10)
    est = _ep_estimate(config, params, x, y)
    assert [d.shape for d in est.deltas] == [(7, 5), (7, 4), (7, 3)]
    assert int(est.aux["free_steps"]) == 30 and int(est.aux["nudged_steps"]) == 10
    assert float(est.aux["free_residual"]) > 0
    # the output's shift under a positive nudge points towards the target: (y - s0) . shift > 0
    rule = make_rule(config, dense(SIZES))
    s_out = rule.predict(params, (), x)
    assert float(jnp.sum((y - s_out) * est.deltas[-1])) > 0


def test_exact_references_and_measurement_fields():
    params, x, y = _problem(scale=0.5)
    config = _config(estimator="symmetric", beta=0.01, free_steps=200, nudged_steps=200)
    rule = make_rule(config, dense(SIZES))
    m = jax.jit(make_measure(config, dense(SIZES), rule))(params, (), x, y, jax.random.PRNGKey(0))
    assert set(m["layers"]) >= {"update_angle", "update_rel_error", "bptt_update_angle"}
    net = m["network"]
    for name in ("update_angle", "update_rel_error", "bptt_update_angle", "implicit_vs_bptt_angle", "spectral_radius",
                 "free_steps", "free_residual", "nudged_steps", "nudged_residual", "reference_steps", "mean_update_angle"):
        assert name in net, name
    assert float(net["spectral_radius"]) < 1
    assert float(net["update_angle"]) < 2.0  # converged phases, small beta: nearly the exact gradient
    assert float(net["implicit_vs_bptt_angle"]) < 0.5  # 200 free steps: converged


def test_persistent_particles_start_the_next_free_phase():
    params, x, y = _problem(scale=0.5)
    config = load_config(overrides=[("rule", "ep"), ("model.depth", 2), ("ep.persistent", True), ("ep.free_steps", 3)])
    rule = make_rule(config, dense(SIZES), n_train=20)
    state = rule.init(jax.random.PRNGKey(0), params)
    assert [p.shape for p in state["particles"]] == [(20, 5), (20, 4), (20, 3)]
    idx = jnp.arange(7) + 10
    estimate = jax.jit(lambda state, key: rule.estimate(params, state, x, y, key, idx=idx))  # one program, twice
    est = estimate(state, jax.random.PRNGKey(0))
    # the stored particles are the free states after 3 steps from zero...
    drive0 = input_drive(params, x)
    zeros = [jnp.zeros((7, n)) for n in SIZES[1:]]
    settled = jax.jit(lambda n: settle(params, zeros, drive0, y, 0.0, RHOS["hard_sigmoid"], 0.5, n, 0.0).states)
    three = settled(3)
    for p, s in zip(est.state["particles"], three):
        np.testing.assert_allclose(p[10:17], s, rtol=1e-6)
        assert float(jnp.abs(p[:10]).max()) == 0.0
    # ...and the next free phase continues from them: 3 + 3 steps from zero
    est2 = estimate(est.state, jax.random.PRNGKey(1))
    six = settled(6)
    for p, s in zip(est2.state["particles"], six):
        np.testing.assert_allclose(p[10:17], s, rtol=1e-5, atol=1e-7)


def test_ep_preset_and_validation():
    c = load_config(overrides=[("rule", "ep")])
    assert (c.model.depth, c.model.width, c.model.activation, c.model.loss) == (1, 500, "hard_sigmoid", "mse")
    assert c.optimizer.layer_lr == (1.0, 0.5) and c.optimizer.name == "sgd"
    assert c.model.init.scale == 1.0 and c.ep.output_layer == "clipped"
    linear = load_config(overrides=[("rule", "ep"), ("ep.output_layer", "linear")])
    assert linear.model.init.scale == 0.5  # Scellier et al. 2023's gain: a linear output diverges at 1.0
    chosen = load_config(overrides=[("rule", "ep"), ("ep.output_layer", "linear"), ("model.init.scale", 0.8)])
    assert chosen.model.init.scale == 0.8
    deeper = load_config(overrides=[("rule", "ep"), ("model.depth", 2)])
    assert deeper.optimizer.layer_lr == ()  # the per-layer rates of the preset are for depth 1
    same_sizes_bp = load_config(overrides=[("rule", "bp"), ("model.depth", 1), ("model.width", 500)])
    assert same_sizes_bp.model.width == 500
    from bioprop_cli.errors import UserError

    readout = load_config(overrides=[("rule", "ep"), ("model.loss", "cross_entropy")])  # the softmax readout
    assert readout.model.loss == "cross_entropy"
    with pytest.raises(UserError, match="optimizer.layer_lr"):
        load_config(overrides=[("rule", "ep"), ("optimizer.layer_lr", [1.0, 1.0, 1.0])])
    with pytest.raises(UserError, match="ep.eps"):
        load_config(overrides=[("rule", "ep"), ("ep.eps", 1.5)])


def test_the_fast_hard_sigmoid_step_is_the_general_gradient_step():
    params, x, y = _problem()
    rho = RHOS["hard_sigmoid"]
    keys = jax.random.split(jax.random.PRNGKey(8), 3)
    states = [jax.random.uniform(k, (x.shape[0], n)) for k, n in zip(keys, SIZES[1:])]
    states[1] = states[1].at[0].set(0.0).at[1].set(1.0)
    from bioprop_cli.models.energy import hard_sigmoid

    for beta in (0.0, 0.7, -0.3):
        grads = energy_gradient(params, states, input_drive(params, x), y, beta, rho)
        general = [hard_sigmoid(s - 0.4 * g) for s, g in zip(states, grads)]
        fast = step(params, states, input_drive(params, x), y, beta, rho, 0.4)
        for a, b in zip(fast, general):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_implicit_gradient_is_zero_when_every_output_is_pinned():
    """Outputs clipped at 0 or 1 do not move with the parameters: the cost's gradient is exactly 0."""
    params, x, y = _problem(scale=0.5)
    params[-1] = {"w": params[-1]["w"], "b": jnp.array([5.0, -5.0, 5.0])}  # outputs pinned at 1, 0, 1
    rho = RHOS["hard_sigmoid"]


    @jax.jit  # one program: op by op, each operation would compile on its own
    def fixed_output_and_implicit(params):
        fixed = free_fixed_point(params, x, rho, 0.5, 500, 1e-7)
        return fixed.states[-1], implicit_gradient(params, fixed.states, x, y, rho, 0.5, 200, 1e-6)[0]

    output, grads = fixed_output_and_implicit(params)
    np.testing.assert_array_equal(output, jnp.broadcast_to(jnp.array([1.0, 0.0, 1.0]), (7, 3)))
    for leaf in jax.tree_util.tree_leaves(grads):
        assert np.all(np.asarray(leaf) == 0.0)


def test_squared_cost_estimate_matches_the_implicit_gradient_of_the_squared_cost():
    """ep.cost squared (Scellier & Bengio's |y - s_L|^2): at small beta the one-sided estimate is the
    implicit gradient of THAT cost, twice the half-squared one's; the reported loss doubles too."""
    from bioprop_cli import ep as eqprop

    with float64():
        params, x, y = _problem(jnp.float64, scale=0.5)
        half = _config(estimator="one-sided", beta=1e-4, **CONVERGED)
        squared = _config(estimator="one-sided", beta=1e-4, cost="squared", **CONVERGED)

        @jax.jit  # one program: op by op, each operation would compile on its own
        def references_and_estimates(params):
            refs = {name: eqprop.implicit_reference(config, eqprop.network(config, params, ()), x, y)[1]
                    for name, config in (("half", half), ("squared", squared))}
            return refs, _ep_estimate(squared, params, x, y), _ep_estimate(half, params, x, y)

        refs, est_sq, est_half = references_and_estimates(params)
        assert _rel(refs["squared"], jax.tree_util.tree_map(lambda g: 2 * g, refs["half"])) < 1e-12
        assert _rel(est_sq.grads, refs["squared"]) < 1e-3
        assert _rel(est_sq.grads, refs["half"]) > 0.9  # not the half-squared cost's gradient
        assert float(est_sq.loss) == pytest.approx(2 * float(est_half.loss), rel=1e-12)


def test_squared_cost_is_refused_where_it_weights_nothing():
    from bioprop_cli.errors import UserError

    with pytest.raises(UserError, match="ep.cost"):
        load_config(overrides=[("rule", "ep"), ("ep.cost", "squared"), ("model.loss", "cross_entropy")])
    with pytest.raises(UserError, match="ep.cost"):
        load_config(overrides=[("rule", "ep"), ("ep.cost", "squared"), ("ep.estimator", "clamped")])


def _scellier_bengio_energy(params, states, x, rho):
    """Scellier & Bengio 2017, eq. (1), written out here for dense layers (independent of models/):
    1/2 sum_k |s_k|^2 - sum_l rho(s_l) W_l rho(s_{l+1}) - sum_l b_l rho(s_{l+1}), rho(s_0) = x."""
    r = [x] + [rho.f(s) for s in states]
    e = 0.5 * sum(jnp.sum(s**2, axis=-1) for s in states)
    return e - sum(jnp.sum((r[l] @ p["w"] + p["b"]) * r[l + 1], axis=-1) for l, p in enumerate(params))


def test_the_one_path_on_dense_layers_is_scellier_bengios_mlp():
    """The one EP path (models/conv_energy.py) on dense layers against the MLP's formulas written out
    in the test: the energy, the force (jax.grad of it plus beta C), the contrast (jax.grad of the
    energies' difference in the parameters), and with a separate feedback matrix B_1 the top-down
    drive rho(s_2) B_1 in place of rho(s_2) W_1^T (no energy: the vector field written out)."""
    from bioprop_cli.models.energy import contrast, with_feedback

    with float64():
        params, x, y = _problem(jnp.float64)
        rho, beta = RHOS["sigmoid"], 0.3
        keys = jax.random.split(jax.random.PRNGKey(4), 6)
        a = [jax.random.normal(k, (x.shape[0], n), jnp.float64) for k, n in zip(keys[:3], SIZES[1:])]
        b = [jax.random.normal(k, (x.shape[0], n), jnp.float64) for k, n in zip(keys[3:], SIZES[1:])]
        by_hand = _scellier_bengio_energy(params, a, x, rho)
        assert _rel(energy(params, a, x, rho), by_hand) < 1e-14
        force = jax.grad(lambda s: jnp.sum(_scellier_bengio_energy(params, s, x, rho) + beta * cost(s, y)))(a)
        assert _rel(energy_gradient(params, a, input_drive(params, x), y, beta, rho), force) < 1e-14
        hebbian = jax.grad(lambda p: 2.0 * jnp.mean(_scellier_bengio_energy(p, a, x, rho)
                                                    - _scellier_bengio_energy(p, b, x, rho)))(params)
        assert _rel(contrast(a, b, x, rho, 2.0, params), hebbian) < 1e-14

        fb = jax.random.normal(jax.random.PRNGKey(9), params[1]["w"].T.shape, jnp.float64)
        r = [x] + [rho.f(s) for s in a]
        hidden = r[0] @ params[0]["w"] + params[0]["b"] + r[2] @ fb
        got = energy_gradient(with_feedback(params, {1: fb}), a, input_drive(params, x), y, beta, rho)
        np.testing.assert_allclose(got[0], a[0] - rho.df(a[0]) * hidden, rtol=1e-13)
        for g, f in zip(got[1:], force[1:]):  # B_1 only carries layer 2 down to layer 1
            np.testing.assert_allclose(g, f, rtol=1e-13)
