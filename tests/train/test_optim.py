"""Weight decay as torch.optim applies it: L2 (wd * W added to the gradient, before momentum) for
every optimizer but adamw, whose decay is decoupled; per-layer rates scale both terms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bioprop_cli.config import load_config
from bioprop_cli.optim import make_optimizer

PARAMS = [{"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([0.5, 0.0])},
          {"w": jnp.array([[3.0], [1.0]]), "b": jnp.array([-1.0])}]
GRADS = [{"w": jnp.array([[0.1, 0.2]]), "b": jnp.array([0.0, 0.3])},
         {"w": jnp.array([[-0.4], [0.0]]), "b": jnp.array([0.2])}]


def _steps(overrides, n=2):
    cfg = load_config(overrides=[("optimizer.schedule.name", "constant"), ("model.depth", 1), *overrides]).optimizer
    opt = make_optimizer(cfg, steps_per_epoch=10, epochs=1)
    params, state = PARAMS, opt.init(PARAMS)
    for _ in range(n):
        updates, state = opt.update(GRADS, state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_sgd_momentum_with_weight_decay_is_torchs_update_by_hand():
    lr, mu, wd, rates = 0.1, 0.9, 0.01, (1.0, 0.5)
    got = _steps([("optimizer.name", "momentum"), ("optimizer.lr", lr), ("optimizer.momentum", mu),
                  ("optimizer.weight_decay", wd), ("optimizer.layer_lr", list(rates))])
    params, velocity = PARAMS, jax.tree_util.tree_map(jnp.zeros_like, PARAMS)
    for _ in range(2):  # torch.optim.SGD: d = g + wd p; v = mu v + d; p -= lr_l v
        d = jax.tree_util.tree_map(lambda g, p: g + wd * p, GRADS, params)
        velocity = jax.tree_util.tree_map(lambda v, d: mu * v + d, velocity, d)
        params = [jax.tree_util.tree_map(lambda p, v, r=r: p - lr * r * v, layer, vel)
                  for layer, vel, r in zip(params, velocity, rates)]
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_no_weight_decay_changes_nothing_and_some_changes_the_update(name):
    plain = _steps([("optimizer.name", name)])
    reference = _steps([("optimizer.name", name), ("optimizer.weight_decay", 0.0)])
    decayed = _steps([("optimizer.name", name), ("optimizer.weight_decay", 0.1)])
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(reference)):
        np.testing.assert_array_equal(a, b)
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), decayed, plain)
    assert max(jax.tree_util.tree_leaves(moved)) > 1e-4


@pytest.mark.parametrize("every", ["step", "epoch"])
@pytest.mark.parametrize("rates", [(), (1.0, 0.5)])
def test_cosine_with_period_and_final_lr_is_torchs_cosine_annealing(every, rates):
    """CosineAnnealingLR(T_max, eta_min) per layer group: eta_min + (lr_l - eta_min)(1 + cos(pi t / T_max)) / 2 up
    to T_max, then eta_min (Laborieux et al. step it per epoch and stop at T_max); t in steps or in whole epochs."""
    lr, floor, spe, period = 0.2, 0.01, 3, 2.0
    cfg = load_config(overrides=[("model.depth", 1), ("optimizer.name", "sgd"), ("optimizer.lr", lr),
                                 ("optimizer.layer_lr", list(rates)), ("optimizer.schedule.name", "cosine"),
                                 ("optimizer.schedule.period_epochs", period), ("optimizer.schedule.final_lr", floor),
                                 ("optimizer.schedule.every", every)]).optimizer
    opt = make_optimizer(cfg, steps_per_epoch=spe, epochs=4)
    ones = jax.tree_util.tree_map(jnp.ones_like, PARAMS)
    state = opt.init(PARAMS)
    for step in range(4 * spe):
        updates, state = opt.update(ones, state, PARAMS)
        t = step if every == "step" else (step // spe) * spe
        for layer, m in zip(updates, rates or (1.0, 1.0)):
            expected = floor + (lr * m - floor) * (1 + np.cos(np.pi * min(t, period * spe) / (period * spe))) / 2
            for u in jax.tree_util.tree_leaves(layer):
                np.testing.assert_allclose(u, -expected, rtol=1e-6)


@pytest.mark.parametrize("overrides, key", [
    ([("optimizer.schedule.name", "constant"), ("optimizer.schedule.final_lr", 0.0)], "optimizer.schedule.final_lr"),
    ([("optimizer.schedule.period_epochs", 0.0)], "optimizer.schedule.period_epochs"),
    ([("optimizer.lr", 0.1), ("optimizer.schedule.final_lr", 0.2)], "optimizer.schedule.final_lr"),
    ([("optimizer.schedule.final_lr", 0.0), ("optimizer.schedule.final_fraction", 0.1)], "optimizer.schedule.final_lr"),
])
def test_cosine_period_and_final_lr_are_checked(overrides, key):
    from bioprop_cli.errors import UserError

    with pytest.raises(UserError, match=key):
        load_config(overrides=[("optimizer.schedule.name", "cosine"), *overrides])
