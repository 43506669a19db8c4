"""Measure fa, usf and kp on your own Equinox ResNet: an Equinox ResNet with BatchNorm (eqx.nn.State), converted by
tree surgery (its Conv2d and Linear layers run the rule's backward), trained a few optax steps, each layer's update
angle to jax.grad printed.

    python examples/equinox_resnet.py   # about 30 s of CPU; MNIST batches if $BIOPROP_DATA_DIR holds MNIST's .gz files
"""

import gzip
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import bioprop
from bioprop.convert import equinox as bio_eqx


class ResNet(eqx.Module):  # the user's own model: nothing in it knows about bioprop
    convs: list
    norms: list
    head: eqx.nn.Linear

    def __init__(self, key):
        def conv(c_in, c_out, size, stride, key):
            return eqx.nn.Conv2d(c_in, c_out, size, stride, size // 2, use_bias=False, key=key)

        k = jax.random.split(key, 5)
        self.convs = [conv(1, 8, 3, 1, k[0]), conv(8, 16, 3, 2, k[1]), conv(16, 16, 3, 1, k[2]), conv(8, 16, 1, 2, k[3])]
        self.norms = [eqx.nn.BatchNorm(c, axis_name="batch", mode="batch") for c in (8, 16, 16, 16)]
        self.head = eqx.nn.Linear(16, 10, key=k[4])

    def __call__(self, x, state):  # one image, channels first
        def conv_norm(i, h, state):
            return self.norms[i](self.convs[i](h), state)

        x, state = conv_norm(0, x, state)
        x = jax.nn.relu(x)
        h, state = conv_norm(1, x, state)  # a residual block, stride 2
        h, state = conv_norm(2, jax.nn.relu(h), state)
        shortcut, state = conv_norm(3, x, state)  # its projection shortcut
        return self.head(jax.nn.relu(h + shortcut).mean((1, 2))), state


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


def forward(model, state, x):
    """The batch (NHWC images) through the model: (logits, the BatchNorm state after it)."""
    return jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(jnp.transpose(x, (0, 3, 1, 2)), state)


def train(rule_name, steps=30, batch=32, seed=0):
    """(first loss, last loss, {layer path: update angle to jax.grad in degrees} after training)."""
    k_init, k_fb, k_data, key = jax.random.split(jax.random.PRNGKey(seed), 4)
    x, y = data(steps * batch, k_data)
    model, bn_state = eqx.nn.make_with_state(ResNet)(k_init)
    model_of = lambda bn_state: lambda m, x: forward(m, bn_state, x)  # -> (logits, state): has_aux
    converted, state = bio_eqx.convert(model, rule_name, k_fb, x[:batch], model_of(bn_state), axis_name="batch")
    params, opt = converted.params, optax.adam(1e-3)
    opt_state = opt.init((params, state))

    @jax.jit
    def step(params, state, bn_state, opt_state, key, xb, yb):
        up = bioprop.update(converted.rule, converted.model(model_of(bn_state)), loss, params, state, key, xb, yb,
                            converted.mask, has_aux=True)
        updates, opt_state = opt.update((up.grads, up.feedback_grads), opt_state, (params, state))
        params, state = optax.apply_updates((params, state), updates)
        return params, state, up.aux, opt_state, up.loss

    losses = []
    for t in range(steps):
        key, k = jax.random.split(key)
        xb, yb = x[t * batch:(t + 1) * batch], y[t * batch:(t + 1) * batch]
        params, state, bn_state, opt_state, value = step(params, state, bn_state, opt_state, k, xb, yb)
        losses.append(float(value))
    measure = jax.jit(lambda params, state, bn_state: bioprop.measure(
        converted.rule, converted.model(model_of(bn_state)), loss, params, state, key, xb, yb, converted.mask,
        has_aux=True))
    report = measure(params, state, bn_state)
    angles = converted.layers(report["update"]["angle"])
    return losses[0], losses[-1], {path: float(layer.kernel) for path, layer in angles.items()}


def main(steps=30, rules=("fa", "usf", "kp")):
    results = {name: train(name, steps) for name in rules}
    for name, (first, last, angles) in results.items():
        print(f"{name}: loss {first:.3f} -> {last:.3f}; each layer's update angle to jax.grad (degrees):")
        print("\n".join(f"    {path:12s} {angle:5.1f}" for path, angle in angles.items()))
    return results


if __name__ == "__main__":
    main()
