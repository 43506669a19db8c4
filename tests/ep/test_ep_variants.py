"""The second-state variants of the energy-based network (bioprop_cli/ep.py, `ep.estimator`): negative
nudging, contrastive learning (clamped) and coupled learning, against the exact gradients of
small float64 networks, and through the CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

import bioprop_cli.cli.train as cli_train
from bioprop_cli.cli import app
from bioprop_cli.config import load_config
from bioprop_cli.ep import free_fixed_point, implicit_gradient, solve_adjoint
from bioprop_cli.ep_options import ESTIMATORS
from bioprop_cli.models.energy import RHOS, energy, input_drive, step
from bioprop_cli.precision import float64
from helpers import CONVERGED, SIZES, _ep_estimate, _flat, _problem, _rel, assert_nothing_written, assert_user_error


def _config(activation="hard_sigmoid", **ep):
    overrides = [("rule", "ep"), ("model.depth", 2), ("model.activation", activation)]
    return load_config(overrides=overrides + [(f"ep.{k}", v) for k, v in ep.items()])


def _implicit(params, x, y, rho_name):
    rho = RHOS[rho_name]

    @jax.jit  # one compiled program, not the settling loops op by op
    def both(params, x, y):
        fixed = free_fixed_point(params, x, rho, 0.5, 5000, 1e-13)
        return fixed, implicit_gradient(params, fixed.states, x, y, rho, 0.5, 5000, 1e-12)[0]

    return both(params, x, y)


def test_negative_and_positive_biases_are_first_order_and_opposite_and_their_mean_is_symmetric():
    with float64():
        params, x, y = _problem(jnp.float64, scale=0.5)
        _, implicit = _implicit(params, x, y, "hard_sigmoid")
        from bioprop_cli import ep as eqprop

        def estimator_at(estimator):  # one program per estimator, beta its argument
            config = _config(estimator=estimator, **CONVERGED)
            net = eqprop.network(config, params, ())
            start = eqprop.start_states(config, net, x)
            return jax.jit(lambda beta: eqprop.estimate(config, net, x, y, jax.random.PRNGKey(0), start, beta)[1].grads)

        estimators = {e: estimator_at(e) for e in ("one-sided", "negative", "symmetric")}
        est = {(e, b): estimators[e](b) for e in estimators for b in (0.01, 0.001)}
        errors = {k: _rel(g, implicit) for k, g in est.items()}
        assert np.log10(errors["negative", 0.01] / errors["negative", 0.001]) == pytest.approx(1.0, abs=0.1)
        for b in (0.01, 0.001):
            plus = _flat(est["one-sided", b]) - _flat(implicit)
            minus = _flat(est["negative", b]) - _flat(implicit)
            cosine = float(jnp.vdot(plus, minus) / (jnp.linalg.norm(plus) * jnp.linalg.norm(minus)))
            assert cosine < -0.99  # measured: -0.9999 (0.01), -1.0000 (0.001)
            # (1/2beta)(E'(s+) - E'(s-)) = mean of (1/beta)(E'(s+) - E'(s0)) and (1/beta)(E'(s0) - E'(s-))
            mean = jax.tree_util.tree_map(lambda a, c: (a + c) / 2, est["one-sided", b], est["negative", b])
            assert _rel(mean, est["symmetric", b]) < 1e-8
            assert errors["symmetric", b] < errors["negative", b] / 10
        assert np.log10(errors["symmetric", 0.01] / errors["symmetric", 0.001]) == pytest.approx(2.0, abs=0.1)


def _output_schur_weighted_gradient(params, fixed, x, y, rho_name):
    """dC_S/dtheta at the free fixed point, C_S with dC_S/ds_L = S (s_L - y): S = ((H^{-1})_LL)^{-1}, the
    Schur complement on the output of each example's energy Hessian H (dense), through ep's adjoint solve."""
    rho, n = RHOS[rho_name], x.shape[0]
    sizes = [s.shape[1] for s in fixed.states]
    out = sizes[-1]

    def schur(params, states, x_i):
        unflatten = lambda v: [a[None] for a in jnp.split(v, np.cumsum(sizes)[:-1])]
        flat = jnp.concatenate(states)
        h = jax.hessian(lambda v: energy(params, unflatten(v), x_i[None], rho)[0])(flat)
        return jnp.linalg.inv(jnp.linalg.inv(h)[-out:, -out:])

    @jax.jit  # one compiled program, not the Hessians and the adjoint solve op by op
    def weighted(params, states, x, y):
        s = jax.vmap(schur, in_axes=(None, 0, 0))(params, states, x)  # each example's own Hessian
        g = [jnp.zeros_like(a) for a in states[:-1]] + [jnp.einsum("nij,nj->ni", s, states[-1] - y) / n]
        lam, misfit = solve_adjoint(params, states, x, y, g, rho, 0.5, 5000, 1e-12)
        phi = lambda p: step(p, states, input_drive(p, x), y, 0.0, rho, 0.5)
        return jax.vjp(phi, params)[1](lam)[0], misfit

    gradient, misfit = weighted(params, fixed.states, x, y)
    assert float(misfit) < 1e-8
    return gradient


def test_coupled_learning_tends_linearly_in_eta_to_the_output_schur_weighted_gradient_not_the_gradient():
    """As eta -> 0, (1/eta)(E'(s^c) - E'(s^0)) with s_L^c = s_L^0 + eta (y - s_L^0) tends to
    -(d2E/dtheta ds) H^{-1} [0; S (y - s_L)]: holding the output displaced by d takes the force S d."""
    with float64():  # tanh: rho' up to 1 couples the output to the hidden layers strongly (S far from I)
        params, x, y = _problem(jnp.float64)
        fixed, implicit = _implicit(params, x, y, "tanh")
        weighted = _output_schur_weighted_gradient(params, fixed, x, y, "tanh")
        coupled = {eta: _ep_estimate(_config("tanh", estimator="coupled", beta=eta, **CONVERGED), params, x, y).grads
                   for eta in (0.01, 0.001)}
        errors = {eta: _rel(g, weighted) for eta, g in coupled.items()}
        assert np.log10(errors[0.01] / errors[0.001]) == pytest.approx(1.0, abs=0.05)  # measured: 1.00
        assert errors[0.001] < 1e-3  # measured: 4.9e-4
        assert _rel(weighted, implicit) > 0.2  # not the gradient (measured: 0.32)
        assert _rel(coupled[0.001], implicit) > 0.2


def test_clamped_is_the_large_beta_limit_of_beta_times_one_sided_and_coupled_at_eta_one():
    with float64():
        params, x, y = _problem(jnp.float64, scale=0.5)
        slow = dict(free_steps=200_000, nudged_steps=200_000, tolerance=1e-13)
        clamped = _ep_estimate(_config("sigmoid", estimator="clamped", eps=0.5, **slow), params, x, y).grads
        coupled = _ep_estimate(_config("sigmoid", estimator="coupled", beta=1.0, eps=0.5, **slow), params, x, y).grads
        assert _rel(coupled, clamped) < 1e-10
        errors = {}
        for beta in (30.0, 300.0):  # the explicit step is stable for eps (1 + beta) < 2
            one_sided = _ep_estimate(_config("sigmoid", estimator="one-sided", beta=beta, eps=1.0 / (1.0 + beta), **slow),
                                     params, x, y).grads
            errors[beta] = _rel(jax.tree_util.tree_map(lambda g: beta * g, one_sided), clamped)
        assert np.log10(errors[30.0] / errors[300.0]) == pytest.approx(1.0, abs=0.15)  # O(1/beta)
        assert errors[300.0] < 0.05


def test_the_clamped_update_vanishes_where_the_free_output_is_the_target():
    with float64():
        params, x, _ = _problem(jnp.float64, scale=0.5)
        fixed, _ = _implicit(params, x, jnp.zeros((x.shape[0], SIZES[-1])), "hard_sigmoid")
        for estimator in ("clamped", "coupled"):
            est = _ep_estimate(_config(estimator=estimator, beta=0.3, **CONVERGED), params, x, fixed.states[-1])
            assert float(jnp.max(jnp.abs(_flat(est.grads)))) < 1e-10
        y = jax.nn.one_hot(jnp.arange(x.shape[0]) % SIZES[-1], SIZES[-1], dtype=jnp.float64)  # elsewhere it does not
        est = _ep_estimate(_config(estimator="clamped", **CONVERGED), params, x, y)
        assert float(jnp.max(jnp.abs(_flat(est.grads)))) > 1e-3


@pytest.mark.parametrize("estimator", ["negative", "clamped", "coupled"])
def test_sweep_beta_estimates_the_new_variants_as_training_does(estimator):
    from bioprop_cli.studies.beta import make_batch_estimates
    from helpers import _flat_weights

    params, x, y = _problem(scale=0.5)
    config = _config(estimator=estimator, beta=0.3, free_steps=12, nudged_steps=5, reference_steps=50)
    key = jax.random.PRNGKey(3)
    trained = _ep_estimate(config, params, x, y, key).grads
    _, swept, _ = make_batch_estimates(config, jnp.asarray([0.3, 0.05]), (estimator,))(params, (), x, y, key)
    np.testing.assert_allclose(swept[estimator][0], _flat_weights(trained), rtol=1e-5, atol=1e-7)
    moved = float(jnp.max(jnp.abs(swept[estimator][1] - _flat_weights(trained))))
    assert moved == 0.0 if estimator == "clamped" else moved > 1e-3  # clamped does not depend on beta


def _train_args(results_dir, *sets):
    args = ["train", "--rule", "ep", "--depth", "1", "--width", "16", "--epochs", "1", "--batch-size", "50",
            "--results-dir", str(results_dir), "--no-progress", "--set", "data.train_limit=200",
            "--set", "data.validation_size=50", "--set", "data.test_limit=50", "--set", "ep.free_steps=6",
            "--set", "ep.nudged_steps=3", "--set", "alignment.probe_size=16"]
    for s in sets:
        args += ["--set", s]
    return args


@pytest.mark.parametrize("estimator", ["negative", "clamped", "coupled"])
def test_each_variant_trains_through_the_cli(runner, tmp_path, monkeypatch, fake_dataset, estimator):
    monkeypatch.setattr(cli_train, "load_dataset", lambda name, data_dir=None, options=None: fake_dataset)
    result = runner.invoke(app, _train_args(tmp_path, f"ep.estimator={estimator}"))
    assert result.exit_code == 0, result.output
    (run,) = [p for p in tmp_path.glob("*/*") if p.is_dir()]
    assert yaml.safe_load((run / "config.yaml").read_text())["ep"]["estimator"] == estimator
    records = [json.loads(line) for line in (run / "alignment.jsonl").read_text().splitlines()]
    for epoch in (0, 1):  # ep's output layer is not exact: the mean is over every layer (clamped: finite too)
        layers = [r["update_angle"] for r in records if r["epoch"] == epoch and r["layer"] != "all"]
        [whole] = [r for r in records if r["epoch"] == epoch and r["layer"] == "all"]
        assert len(layers) == 2 and whole["mean_update_angle"] == pytest.approx(sum(layers) / 2, rel=1e-5)


@pytest.mark.parametrize("sets, fragments", [
    (["ep.estimator=clamp"], ["ep.estimator"] + list(ESTIMATORS)),
    (["ep.estimator=coupled", "ep.beta=1.5"], ["ep.beta", "(0, 1]", "coupled"]),
    (["ep.estimator=clamped", "model.loss=cross_entropy"], ["ep.estimator", "cross_entropy"]),
])
def test_bad_estimator_settings_are_one_line_errors(runner, tmp_path, monkeypatch, fake_dataset, sets, fragments):
    monkeypatch.setattr(cli_train, "load_dataset", lambda name, data_dir=None, options=None: fake_dataset)
    assert_user_error(runner.invoke(app, _train_args(tmp_path, *sets)), *fragments)
    assert_nothing_written(tmp_path)


def test_sweep_beta_lists_every_estimator_when_one_is_unknown(runner, tmp_path):
    result = runner.invoke(app, ["sweep", "beta", "--estimators", "negative,centred", "--results-dir", str(tmp_path)])
    assert_user_error(result, "--estimators", "centred", *ESTIMATORS)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("estimator, phases", [
    ("negative", ["free", "-beta"]),
    ("clamped", ["free", "output clamped to the target"]),
    ("coupled", ["free", "output clamped to (1 - beta) s_L + beta y"]),
])
def test_the_conditions_table_measures_each_variant(estimator, phases):
    from bioprop_cli.studies.conditions import run as measure_conditions
    from helpers import CONVERGED_EP, make_fake_dataset

    table = measure_conditions(load_config(overrides=CONVERGED_EP + [("ep.estimator", estimator)]),
                               make_fake_dataset(n_train=400, n_test=100), 8)
    rows = {r["condition"]: r for r in table["conditions"]}
    assert rows[3]["values"]["phases"] == phases
    bias = rows[6]
    if estimator == "negative":  # beta = 1e-3: the gradient up to O(beta)
        assert bias["status"] == "holds", bias
    if estimator == "clamped":  # not a gradient estimate, whatever beta
        assert bias["status"] != "holds" and "contrastive learning" in bias["reason"], bias
