"""kp under momentum: W^T - B does not shrink by a constant factor (only plain SGD gives
1 - lr decay, tests/rules/test_learned_feedback.py); it follows a damped second-order recurrence."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bioprop_cli.config import load_config
from bioprop_cli.models.arch import dense
from bioprop_cli.models.layers import init_params
from bioprop_cli.optim import make_optimizer
from bioprop_cli.rules import make_rule

LR, DECAY, MU = 0.05, 0.1, 0.9
SIZES = (7, 5, 4)


def test_kp_momentum_gap_is_a_damped_oscillation_not_a_constant_factor():
    config = load_config(overrides=[("rule", "kp"), ("model.depth", 1), ("model.width", 5),
                                    ("feedback.decay", DECAY), ("optimizer.name", "momentum"),
                                    ("optimizer.momentum", MU), ("optimizer.lr", LR),
                                    ("optimizer.schedule.name", "constant")])
    kp = make_rule(config, dense(SIZES))
    params = kp.init_params(jax.random.PRNGKey(1), init_params(jax.random.PRNGKey(0), dense(SIZES), "lecun_normal", 1.0))
    opt = make_optimizer(config.optimizer, 10, 1)
    x = jax.random.normal(jax.random.PRNGKey(2), (16, SIZES[0]))
    y = jax.nn.one_hot(jnp.arange(16) % SIZES[-1], SIZES[-1])

    @jax.jit
    def step(params, opt_state):
        updates, opt_state = opt.update(kp.estimate(params, (), x, y, None).grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    gaps, opt_state = [], opt.init(params)
    for _ in range(60):
        gaps.append(np.asarray(params[1]["w"].T - params[1]["fb"], np.float64))
        params, opt_state = step(params, opt_state)
    # D_{t+1} = (1 + mu - lr decay) D_t - mu D_{t-1}
    for before, now, after in zip(gaps, gaps[1:], gaps[2:]):
        np.testing.assert_allclose(after, (1 + MU - LR * DECAY) * now - MU * before, rtol=1e-4, atol=1e-6)
    ratios = [np.linalg.norm(b) / np.linalg.norm(a) for a, b in zip(gaps, gaps[1:])]
    assert max(ratios) > 1 > 1 - LR * DECAY > min(ratios)  # grows on some steps: no (1 - lr decay) factor
    assert np.linalg.norm(gaps[-1]) < np.linalg.norm(gaps[0])  # and still decays overall
