"""Add a learning rule in 20 lines, train a small conv net with it, and measure it against backprop.

The new rule, "noisy transport", sends errors through W^T corrupted by fresh Gaussian noise every step
(B = W^T + noise * std(W) * N(0, 1)): weight transport through a noisy channel. A rule is its feedback
as a function of the weights (`kernels`, a pytree of the model's 2-d and 4-d weights), a state (here
none) and the step's key; everything else (the custom backward passes, the update, the measurement)
is bioprop's.

    python examples/add_a_rule.py          # about 15 s of CPU time
"""

import jax
import jax.numpy as jnp
import optax

import bioprop


def noisy_transport(noise: float = 0.5) -> bioprop.Rule:
    """B = W^T + noise * std(W) * N(0, 1), redrawn from every step's key."""

    def feedback(kernels, state, key):
        def one(k, w):
            b = bioprop.transport(w)
            return jax.lax.stop_gradient(b + noise * jnp.std(b) * jax.random.normal(k, b.shape))

        return bioprop.rules.map_with_keys(one, key, kernels)

    return bioprop.Rule("noisy_transport", init=lambda key, kernels, sites=None: (), feedback=feedback)


def model(params, fb, x):
    """8x8x1 images -> conv 4@3x3 stride 2 -> relu -> dense 32 -> relu -> dense 4."""
    h = jax.nn.relu(bioprop.conv(x, params["conv"]["w"], params["conv"]["b"], fb["conv"]["w"], stride=2, padding=1))
    h = jax.nn.relu(bioprop.dense(h.reshape(x.shape[0], -1), params["hidden"]["w"], params["hidden"]["b"],
                                  fb["hidden"]["w"]))
    return bioprop.dense(h, params["out"]["w"], params["out"]["b"], fb["out"]["w"])


def loss(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def init_params(key):
    k = jax.random.split(key, 3)
    lecun = lambda k, shape, fan_in: jax.random.normal(k, shape) / jnp.sqrt(fan_in)
    return {"conv": {"w": lecun(k[0], (3, 3, 1, 4), 9), "b": jnp.zeros(4)},
            "hidden": {"w": lecun(k[1], (64, 32), 64), "b": jnp.zeros(32)},
            "out": {"w": lecun(k[2], (32, 4), 32), "b": jnp.zeros(4)}}


def data(key, n=512):
    """Four classes: which quadrant of the image is brightest, in noise."""
    kq, kx = jax.random.split(key)
    labels = jax.random.randint(kq, (n,), 0, 4)
    quadrant = jnp.zeros((4, 8, 8, 1)).at[0, :4, :4].set(1).at[1, :4, 4:].set(1).at[2, 4:, :4].set(1).at[3, 4:, 4:].set(1)
    return quadrant[labels] + jax.random.normal(kx, (n, 8, 8, 1)), labels


def train(rule, steps=150, seed=0):
    """(first loss, last loss, the hidden layer's update angle to backprop's at the end, in degrees)."""
    key, k_params, k_fb = jax.random.split(jax.random.PRNGKey(seed), 3)
    x, y = data(jax.random.PRNGKey(1))
    params = init_params(k_params)
    state = bioprop.init(rule, k_fb, model, params, x[:64])
    opt = optax.adam(3e-3)
    opt_state = opt.init((params, state))

    @jax.jit
    def step(params, state, opt_state, key, xb, yb):
        up = bioprop.update(rule, model, loss, params, state, key, xb, yb)
        updates, opt_state = opt.update((up.grads, up.feedback_grads), opt_state, (params, state))
        params, state = optax.apply_updates((params, state), updates)
        return params, state, opt_state, up.loss

    losses = []
    for t in range(steps):
        key, k = jax.random.split(key)
        i = (t * 64) % x.shape[0]
        params, state, opt_state, value = step(params, state, opt_state, k, x[i:i + 64], y[i:i + 64])
        losses.append(float(value))
    report = bioprop.measure(rule, model, loss, params, state, key, x[:64], y[:64])
    return losses[0], losses[-1], float(report["update"]["angle"]["hidden"]["w"])


def main(steps=150):
    results = {name: train(rule, steps) for name, rule in
               [("bp", bioprop.rule("bp")), ("fa", bioprop.rule("fa")), ("noisy_transport", noisy_transport(0.5))]}
    for name, (first, last, angle) in results.items():
        print(f"{name:16s} loss {first:.3f} -> {last:.3f}   hidden-layer update angle to backprop {angle:5.1f} deg")
    return results


if __name__ == "__main__":
    main()
