"""Measure fa, usf and kp on your own Flax ResNet: a linen ResNet with BatchNorm, converted (its convs and its
dense layer run the rule's backward), trained a few optax steps, each layer's update angle to jax.grad printed.

    python examples/flax_resnet.py      # about 30 s of CPU; MNIST batches if $BIOPROP_DATA_DIR holds MNIST's .gz files
"""

import gzip
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import bioprop
from bioprop.convert import linen as bio_linen


class ResNet(nn.Module):  # the user's own model: nothing in it knows about bioprop
    @nn.compact
    def __call__(self, x, train: bool = True):
        norm = lambda h: nn.BatchNorm(use_running_average=not train)(h)
        x = nn.relu(norm(nn.Conv(8, (3, 3), padding=1, use_bias=False)(x)))
        h = nn.relu(norm(nn.Conv(16, (3, 3), 2, padding=1, use_bias=False)(x)))  # a residual block, stride 2
        h = norm(nn.Conv(16, (3, 3), padding=1, use_bias=False)(h))
        h = nn.relu(h + norm(nn.Conv(16, (1, 1), 2, use_bias=False)(x)))  # its projection shortcut
        return nn.Dense(10)(h.mean((1, 2)))


def data(n, key):
    """n MNIST training images from $BIOPROP_DATA_DIR, else n noisy copies of ten random 12x12 patterns."""
    folder = os.environ.get("BIOPROP_DATA_DIR", "")
    if os.path.exists(os.path.join(folder, "train-images-idx3-ubyte.gz")):
        def read(name, skip, size):
            return np.frombuffer(gzip.open(os.path.join(folder, name)).read()[skip:skip + size], np.uint8)
        x = read("train-images-idx3-ubyte.gz", 16, n * 784).reshape(n, 28, 28, 1) / 255.0
        return jnp.asarray(x, jnp.float32), jnp.asarray(read("train-labels-idx1-ubyte.gz", 8, n), jnp.int32)
    y = jnp.arange(n) % 10
    return jax.random.normal(jax.random.PRNGKey(9), (10, 12, 12, 1))[y] + 0.5 * jax.random.normal(key, (n, 12, 12, 1)), y


def loss(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train(rule_name, steps=30, batch=32, seed=0):
    """(first loss, last loss, {layer path: update angle to jax.grad in degrees} after training)."""
    k_init, k_fb, k_data, key = jax.random.split(jax.random.PRNGKey(seed), 4)
    x, y = data(steps * batch, k_data)
    variables = ResNet().init(k_init, x[:batch])
    converted, state = bio_linen.convert(ResNet(), variables, rule_name, k_fb, x[:batch], mutable=["batch_stats"])
    params, stats = variables["params"], variables["batch_stats"]
    model = lambda stats: converted.model({"batch_stats": stats}, mutable=["batch_stats"])  # -> (logits, updates)
    opt = optax.adam(1e-3)
    opt_state = opt.init((params, state))

    @jax.jit
    def step(params, state, stats, opt_state, key, xb, yb):
        up = bioprop.update(converted.rule, model(stats), loss, params, state, key, xb, yb, converted.mask, has_aux=True)
        updates, opt_state = opt.update((up.grads, up.feedback_grads), opt_state, (params, state))
        params, state = optax.apply_updates((params, state), updates)
        return params, state, up.aux["batch_stats"], opt_state, up.loss

    losses = []
    for t in range(steps):
        key, k = jax.random.split(key)
        xb, yb = x[t * batch:(t + 1) * batch], y[t * batch:(t + 1) * batch]
        params, state, stats, opt_state, value = step(params, state, stats, opt_state, k, xb, yb)
        losses.append(float(value))
    measure = jax.jit(lambda params, state, stats: bioprop.measure(converted.rule, model(stats), loss, params, state, key,
                                                                   xb, yb, converted.mask, has_aux=True))
    report = measure(params, state, stats)
    return losses[0], losses[-1], {p: float(a["kernel"]) for p, a in converted.layers(report["update"]["angle"]).items()}


def main(steps=30, rules=("fa", "usf", "kp")):
    results = {name: train(name, steps) for name in rules}
    for name, (first, last, angles) in results.items():
        print(f"{name}: loss {first:.3f} -> {last:.3f}; each layer's update angle to jax.grad (degrees):")
        print("\n".join(f"    {path:12s} {angle:5.1f}" for path, angle in angles.items()))
    return results


if __name__ == "__main__":
    main()
