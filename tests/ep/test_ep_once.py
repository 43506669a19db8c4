"""Every EP measurement measures the code that trains (bioprop_cli/ep.py, bioprop_cli/network.py):
the beta sweep's estimate is the training estimate, the measurement uses the probe's persistent
particles, `conditions --run` rebuilds the random feedback training used, `--x64` casts the same network."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bioprop_cli.models.arch import dense
from bioprop_cli.config import load_config
from bioprop_cli.studies.conditions import run as measure_conditions
from bioprop_cli.models.layers import init_params
from bioprop_cli.rules import make_rule
from bioprop_cli.metrics.measure import make_measure
from helpers import _flat_weights, make_fake_dataset

SIZES = (6, 5, 4, 3)
TINY_DATA = [("data.train_limit", 300), ("data.validation_size", 60), ("data.test_limit", 60)]


def _problem(batch=7):
    params = init_params(jax.random.PRNGKey(0), dense(SIZES), "glorot_uniform", 1.0)
    params = [{"w": p["w"], "b": p["b"] + 0.1} for p in params]
    kx, ky = jax.random.split(jax.random.PRNGKey(100))
    x = jax.random.uniform(kx, (batch, SIZES[0]))
    y = jax.nn.one_hot(jax.random.randint(ky, (batch,), 0, SIZES[-1]), SIZES[-1])
    return params, x, y


def _config(**ep):
    return load_config(overrides=[("rule", "ep"), ("model.depth", 2)] + [(f"ep.{k}", v) for k, v in ep.items()])



@pytest.mark.parametrize("estimator", ["one-sided", "symmetric"])
def test_sweep_beta_estimate_at_the_configured_beta_is_the_training_estimate(estimator):
    from bioprop_cli.studies.beta import make_batch_estimates

    params, x, y = _problem()
    config = _config(estimator=estimator, beta=0.3, free_steps=12, nudged_steps=5, reference_steps=50)
    rule = make_rule(config, dense(SIZES))
    key = jax.random.PRNGKey(3)
    trained = jax.jit(rule.estimate)(params, (), x, y, key).grads
    _, swept, _ = make_batch_estimates(config, jnp.asarray([0.3, 0.05]), (estimator,))(params, (), x, y, key)
    np.testing.assert_allclose(swept[estimator][0], _flat_weights(trained), rtol=1e-5, atol=1e-7)
    assert float(jnp.max(jnp.abs(swept[estimator][1] - _flat_weights(trained)))) > 1e-3  # another beta, another estimate


def test_the_measurement_starts_from_the_probe_examples_persistent_particles():
    params, x, y = _problem()
    config = _config(persistent=True, free_steps=3, nudged_steps=4, beta=0.2, reference_steps=200)
    rule = make_rule(config, dense(SIZES), n_train=20)
    idx = jnp.arange(7) + 5
    state = rule.init(jax.random.PRNGKey(0), params)
    estimate = jax.jit(lambda state, key: rule.estimate(params, state, x, y, key, idx=idx))  # one program, four calls
    for k in range(3):  # three training steps on these examples move their particles
        state = estimate(state, jax.random.PRNGKey(k)).state
    key = jax.random.PRNGKey(9)
    measure = jax.jit(make_measure(config, dense(SIZES), rule))
    persistent, from_zero = measure(params, state, x, y, key, idx=idx)["network"], measure(params, state, x, y, key)["network"]
    # the measured estimate is the update this step would train with: the training's free phase from the particles
    k_estimate, _ = jax.random.split(key)
    update = estimate(state, k_estimate)
    assert float(persistent["free_residual"]) == pytest.approx(float(update.aux["free_residual"]), rel=1e-5)
    assert float(persistent["free_residual"]) < 0.7 * float(from_zero["free_residual"])  # measured: 0.098 against 0.179
    assert abs(float(persistent["update_angle"]) - float(from_zero["update_angle"])) > 0.1


def test_conditions_on_a_run_with_random_feedback_measure_the_feedback_it_trained_with(tmp_path):
    """`conditions --run`: the random B is drawn with the INITIAL weights' norm, as in training, so
    the conditions' update angle at the trained weights is the run's own last measurement."""
    from bioprop_cli.network import init_state
    from bioprop_cli.runs import RunWriter, load_params, read_jsonl
    from bioprop_cli.train import train

    dataset = make_fake_dataset(n_train=300, n_test=60)
    config = load_config(overrides=[
        ("rule", "ep"), ("model.width", 12), ("model.activation", "sigmoid"), ("ep.feedback", "random"),
        ("ep.free_steps", 8), ("ep.nudged_steps", 4),
        ("ep.reference_steps", 100), ("train.epochs", 2), ("train.batch_size", 10), ("optimizer.name", "adamw"),
        ("optimizer.lr", 0.02), ("optimizer.weight_decay", 1.0),
        ("alignment.probe_size", 16), *TINY_DATA])
    train(config, dataset, RunWriter(tmp_path))
    params = load_params(tmp_path)
    _, initial, _ = init_state(config, dense((784, 12, 10)), config.seed)
    growth = float(np.linalg.norm(params[1]["w"]) / jnp.linalg.norm(initial[1]["w"]))
    assert abs(growth - 1) > 0.1, growth  # training changed |W_1|: B must keep the initial norm
    last = [r for r in read_jsonl(tmp_path / "alignment.jsonl") if r["layer"] == "all"][-1]
    table = measure_conditions(config, dataset, 16, params=params)
    assert last["update_angle"] is not None  # sigmoid: no unit pinned, the gradient is never exactly zero
    assert table["gradient_equivalence"]["network"]["update_angle"] == pytest.approx(last["update_angle"], abs=0.01)


# slow: two conditions tables; cheap twins: the next test (seed_network_probe's float64 cast of the same
# network, which `conditions --x64` shares), studies/test_conditions.py's converged table (conditions with x64)
@pytest.mark.slow
def test_x64_measures_the_same_network_in_float64():
    dataset = make_fake_dataset(n_train=300, n_test=60)
    config = load_config(overrides=[("rule", "ep"), ("model.width", 12), ("ep.free_steps", 6),
                                    ("ep.reference_steps", 300), *TINY_DATA])
    single, double = (measure_conditions(config, dataset, 8, x64=x64)["gradient_equivalence"]["network"]
                      for x64 in (False, True))
    for name in ("update_angle", "spectral_radius", "bptt_update_angle"):
        assert double[name] == pytest.approx(single[name], rel=1e-3), name


def test_sweep_condition_x64_measures_the_same_network_in_float64():
    from bioprop_cli.splits import make_splits
    from bioprop_cli.studies.condition import BASE, PointMeasurer

    config = load_config(overrides=BASE + [("model.width", 8), ("model.depth", 1), *TINY_DATA])
    splits = make_splits(config, make_fake_dataset(n_train=300, n_test=60))
    single, double = (PointMeasurer(splits, [0], 8, x64)(config) for x64 in (False, True))
    assert double["spectral_radius"] == pytest.approx(single["spectral_radius"], rel=2e-3)  # power iteration's rounding
    assert double["update_angle"] == pytest.approx(single["update_angle"], abs=0.01)  # both ~0: converged, beta 0.01
