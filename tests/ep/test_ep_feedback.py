"""Equilibrium propagation with separate feedback weights B_l (ep.feedback, ep.learn_feedback)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradcheck import central_difference

from bioprop_cli.models.arch import dense
from bioprop_cli.config import Config, load_config
from bioprop_cli.errors import UserError
from bioprop_cli.metrics.angles import angle_degrees
from bioprop_cli.ep import effective_params, feedback_matrices, feedback_state, free_fixed_point, implicit_gradient, spectral_radius
from bioprop_cli.models.energy import RHOS, cost, energy, input_drive, step
from bioprop_cli.precision import float64
from bioprop_cli.rules import make_rule

SIZES = (6, 5, 4, 3)


def _problem(dtype=jnp.float32, scale=0.5, batch=7):
    """Glorot-uniform weights, biases 0.1, inputs in [0, 1], one-hot targets (numpy: nothing to compile)."""
    rng = np.random.default_rng(0)
    limits = [scale * np.sqrt(6.0 / (a + b)) for a, b in zip(SIZES[:-1], SIZES[1:])]
    params = [{"w": jnp.asarray(rng.uniform(-c, c, (a, b)), dtype), "b": jnp.full((b,), 0.1, dtype)}
              for c, a, b in zip(limits, SIZES[:-1], SIZES[1:])]
    x = jnp.asarray(rng.uniform(0.0, 1.0, (batch, SIZES[0])), dtype)
    y = jnp.asarray(np.eye(SIZES[-1])[rng.integers(0, SIZES[-1], batch)], dtype)
    return params, x, y


def _config(**ep):
    return load_config(overrides=[("rule", "ep"), ("model.depth", 2)] + [(f"ep.{k}", v) for k, v in ep.items()])


def _flat(grads):
    """The layers' weights flattened and concatenated, as every whole-network measurement takes them."""
    return jnp.concatenate([jnp.ravel(g["w"]) for g in grads])


def test_defaults_validation_and_each_mode_has_its_documented_feedback():
    assert Config().ep.feedback == "symmetric" and not Config().ep.learn_feedback
    with pytest.raises(UserError, match="ep.feedback_angle"):
        _config(feedback="mixed", feedback_angle=200.0)
    with pytest.raises(UserError, match="ep.feedback"):
        _config(feedback="transpose")
    params, _, _ = _problem()
    key = jax.random.PRNGKey(1)
    sym = make_rule(_config(), dense(SIZES))
    assert sym.feedback(params, sym.init(key, params), key) == {} and sym.init(key, params) == ()
    mixed = _config(feedback="mixed")
    rule = make_rule(mixed, dense(SIZES))
    assert sorted(rule.feedback(params, rule.init(key, params), key)) == [1, 2]
    fixed = feedback_state(mixed.ep, key, params)
    measured = jax.jit(lambda a: {l: (angle_degrees(b, params[l]["w"].T), jnp.linalg.norm(b) / jnp.linalg.norm(params[l]["w"]))
                                  for l, b in feedback_matrices(mixed.ep, params, fixed, angle=a).items()})
    for angle in (0.0, 30.0, 90.0, 135.0):  # mixed: exactly the angle a, and the norm of W^T
        for a, ratio in measured(angle).values():
            assert float(a) == pytest.approx(angle, abs=1e-3) and float(ratio) == pytest.approx(1.0, rel=1e-5)
    rule = make_rule(_config(feedback="sign"), dense(SIZES))
    for l, (b, wt) in rule.feedback(params, rule.init(key, params), key).items():
        scale = jnp.linalg.norm(wt) / jnp.sqrt(wt.size)  # |B| = |W|: the RMS of W's entries
        np.testing.assert_allclose(b, scale * jnp.sign(wt), rtol=1e-6)
    rule = make_rule(_config(feedback="random"), dense(SIZES))
    state = rule.init(key, params)
    moved = [{"w": 2.0 * p["w"], "b": p["b"]} for p in params]
    for (b, wt), (b2, _) in zip(rule.feedback(params, state, key).values(), rule.feedback(moved, state, key).values()):
        np.testing.assert_array_equal(b, b2)  # random: drawn once, does not follow W
        assert float(jnp.linalg.norm(b) / jnp.linalg.norm(wt)) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="no energy"):  # separate feedback: no energy function
        energy(effective_params(_config(feedback="random").ep, params, state), [], None, RHOS["hard_sigmoid"])


def test_nonsymmetric_implicit_gradient_matches_finite_differences_and_spectral_radius_is_dense():
    with float64():
        params, x, y = _problem(jnp.float64)
        config = _config(feedback="mixed", feedback_angle=60.0)
        rule = make_rule(config, dense(SIZES))
        state = rule.init(jax.random.PRNGKey(1), params)
        running = lambda p: effective_params(config.ep, p, state)  # B follows W: the total derivative
        rho = RHOS["hard_sigmoid"]
        settled = jax.jit(lambda p: free_fixed_point(running(p), x, rho, 0.5, 5000, 1e-13))
        fixed = settled(params)
        assert float(fixed.residual) < 1e-13
        loss = jax.jit(lambda p: jnp.mean(cost(settled(p).states, y)))

        @jax.jit
        def references(p, states):
            grads, misfit = implicit_gradient(p, states, x, y, rho, 0.5, 500, 1e-13, feedback=running)
            return grads, misfit, spectral_radius(running(p), states, x, rho, 0.5, jax.random.PRNGKey(0))

        grads, misfit, radius = references(params, fixed.states)
        assert float(misfit) < 1e-10
        rng = np.random.default_rng(5)  # a random direction (numpy: no compilation per shape)
        direction = jax.tree_util.tree_map(lambda a: rng.standard_normal(a.shape), params)
        numeric = central_difference(loss, jax.tree_util.tree_map(np.asarray, params), direction)
        analytic = sum(float(np.vdot(g, d)) for g, d in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(direction)))
        assert analytic == pytest.approx(numeric, rel=1e-6)

        # the spectral radius of the non-symmetric settling Jacobian, against its eigenvalues computed
        # densely (the batch's Jacobian is block-diagonal: its eigenvalues are the examples')
        net, states = running(params), fixed.states
        widths = [s.shape[1] for s in states]

        def phi(v):
            parts = [p.reshape(x.shape[0], -1) for p in jnp.split(v, np.cumsum([x.shape[0] * n for n in widths])[:-1])]
            return jnp.concatenate([o.ravel() for o in step(net, parts, input_drive(net, x), y * 0, 0.0, rho, 0.5)])

        jac = jax.jit(jax.jacfwd(phi))(jnp.concatenate([s.ravel() for s in states]))
        eigenvalues = np.linalg.eigvals(np.asarray(jac))
        assert np.abs(eigenvalues.imag).max() > 1e-3  # complex eigenvalues: no symmetric Jacobian here
        assert float(radius) == pytest.approx(np.abs(eigenvalues).max(), rel=0.03)


def test_learned_feedback_is_a_parameter_and_aligns_with_w_over_training():
    params, x, y = _problem(scale=1.0, batch=16)
    config = _config(feedback="random", learn_feedback=True, estimator="symmetric", beta=0.1, free_steps=30,
                     nudged_steps=10, reference_steps=300)
    rule = make_rule(config, dense(SIZES))
    params = rule.init_params(jax.random.PRNGKey(3), params)
    assert "fb" not in params[0] and [p["fb"].shape for p in params[1:]] == [(4, 5), (3, 4)]
    state = rule.init(jax.random.PRNGKey(4), params)

    @jax.jit
    def sgd_step(p, decay):  # SGD with decoupled weight decay on every parameter (as adamw's)
        est = rule.estimate(p, state, x, y, jax.random.PRNGKey(0))
        return jax.tree_util.tree_map(lambda a, g: a - 0.5 * (g + decay * a), p, est.grads), est.grads

    def angles(p):
        return np.array([float(angle_degrees(b, wt)) for b, wt in rule.feedback(p, state, None).values()])

    start = angles(params)
    plain, grads = params, None
    for _ in range(20):
        plain, grads = sgd_step(plain, 0.0)
    for l in (1, 2):  # B_l learns W_l's contrastive update, transposed: W_l^T - B_l never changes
        np.testing.assert_array_equal(grads[l]["fb"], grads[l]["w"].T)
        np.testing.assert_allclose(plain[l]["w"].T - plain[l]["fb"], params[l]["w"].T - params[l]["fb"], atol=1e-5)
    decayed = params
    for _ in range(100):  # with weight decay the difference decays too (Kolen-Pollack): B -> W^T
        decayed, _ = sgd_step(decayed, 0.1)
    end = angles(decayed)
    assert np.all(end < start - 15), (start, end)  # measured: 75.7 -> 28.4 and 91.5 -> 4.0 degrees


def test_beta_sweep_measures_the_network_with_its_feedback():
    """sweep beta with ep.feedback = mixed: the dynamics run with B, and the reference is the exact
    gradient of that network (not of the symmetric one), so EP's bias stays as beta -> 0."""
    from bioprop_cli.studies.beta import make_batch_estimates

    with float64():
        params, x, y = _problem(jnp.float64)
        config = _config(feedback="mixed", feedback_angle=60.0, free_steps=400, nudged_steps=400,
                         reference_steps=4000, reference_tolerance=1e-12, estimator="symmetric")
        ep, rho, key = config.ep, RHOS[config.model.activation], jax.random.PRNGKey(1)
        state = make_rule(config, dense(SIZES)).init(key, params)
        betas = jnp.asarray([1e-4, 1e-3], jnp.float64)
        exact, estimates, residual = make_batch_estimates(config, betas, ("symmetric",))(params, state, x, y, key)

        @jax.jit
        def references(p):  # the mixed network's gradient (B follows W), and the symmetric network's
            running = lambda q: effective_params(ep, q, state)
            fixed = free_fixed_point(running(p), x, rho, ep.eps, 4000, 1e-12)
            mixed, _ = implicit_gradient(p, fixed.states, x, y, rho, ep.eps, ep.adjoint_steps, 1e-12, feedback=running)
            fixed = free_fixed_point(p, x, rho, ep.eps, 4000, 1e-12)
            return mixed, implicit_gradient(p, fixed.states, x, y, rho, ep.eps, ep.adjoint_steps, 1e-12)[0]

        mixed, symmetric = references(params)
        rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
        assert float(residual) < 1e-10
        np.testing.assert_allclose(exact, _flat(mixed), rtol=1e-8, atol=1e-14)
        assert rel(exact, _flat(symmetric)) > 0.05  # not the symmetric network's gradient
        bias = [rel(e, exact) for e in estimates["symmetric"]]
        assert min(bias) > 0.05 and bias[0] == pytest.approx(bias[1], rel=0.05)  # does not vanish as beta -> 0
