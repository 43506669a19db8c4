"""A multilayer perceptron written so that any backward pass can be plugged into it.

Layers are indexed l = 0 .. L-1 with L = depth + 1 weight matrices. Row-vector convention:
    a_l = h_l @ W_l + b_l,   h_0 = x,   h_{l+1} = f(a_l) for hidden layers,   logits z = a_{L-1}.
W_l has shape (n_l, n_{l+1}); the backprop error a layer receives is delta_l = dLoss/da_l.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from bioprop.rules import INIT_STD, sample  # the variance-scaling stds and the zero-mean draw, the library's

Params = list  # [{"w": (n_l, n_{l+1}), "b": (n_{l+1},)}, ...]


class Activation(NamedTuple):
    f: Callable[[jax.Array], jax.Array]
    df: Callable[[jax.Array], jax.Array]  # derivative, as a function of the pre-activation


def _hard_sigmoid(a):
    # clip(a, 0, 1), written with `where` so that jax.grad takes the derivative 0 at the kinks,
    # like _hard_sigmoid_grad (jnp.clip's gradient there would be 1/2).
    return jnp.where(a <= 0.0, 0.0, jnp.where(a >= 1.0, 1.0, a))


def _hard_sigmoid_grad(a):
    return ((a > 0.0) & (a < 1.0)).astype(a.dtype)


ACTIVATIONS: dict[str, Activation] = {
    "tanh": Activation(jnp.tanh, lambda a: 1.0 - jnp.tanh(a) ** 2),
    "relu": Activation(jax.nn.relu, lambda a: (a > 0).astype(a.dtype)),
    "sigmoid": Activation(jax.nn.sigmoid, lambda a: jax.nn.sigmoid(a) * (1.0 - jax.nn.sigmoid(a))),
    # rho(a) = clip(a, 0, 1), the hard sigmoid of equilibrium propagation (Scellier & Bengio 2017).
    "hard_sigmoid": Activation(_hard_sigmoid, _hard_sigmoid_grad),
}


class Loss(NamedTuple):
    per_example: Callable[[jax.Array, jax.Array], jax.Array]  # (logits, one-hot) -> loss of each example
    error: Callable[[jax.Array, jax.Array], jax.Array]  # (logits, one-hot) -> dLoss/dlogits of the mean loss

    def value(self, z: jax.Array, y: jax.Array) -> jax.Array:
        """The loss averaged over the batch."""
        return jnp.mean(self.per_example(z, y))


LOSSES: dict[str, Loss] = {
    # Softmax cross-entropy, averaged over the batch: dL/dz = (softmax(z) - y) / batch.
    "cross_entropy": Loss(
        lambda z, y: -jnp.sum(y * jax.nn.log_softmax(z), axis=-1),
        lambda z, y: (jax.nn.softmax(z) - y) / z.shape[0],
    ),
    # Squared error on linear outputs, 1/2 ||z - y||^2 averaged over the batch: dL/dz = (z - y) / batch.
    "mse": Loss(
        lambda z, y: 0.5 * jnp.sum((z - y) ** 2, axis=-1),
        lambda z, y: (z - y) / z.shape[0],
    ),
}


def init_std(scheme: str, scale: float, fan_in: int, fan_out: int) -> float:
    family = scheme.split("_")[0]
    return scale * INIT_STD[family](fan_in, fan_out)


class Forward(NamedTuple):
    inputs: list  # h_l, the input of each layer (h_0 = x)
    pre: list  # a_l, the pre-activation of each layer (the last one is the logits)

    @property
    def logits(self) -> jax.Array:
        return self.pre[-1]


def forward(params: Params, x: jax.Array, act: Activation, perturb: list | None = None) -> Forward:
    """The forward pass, keeping what a backward pass needs.

    `perturb` (one array per layer, added to a_l) exists only so that jax.grad can return the
    exact deltas dLoss/da_l as the gradient with respect to a zero perturbation.
    """
    inputs, pre = [], []
    h = x
    for l, layer in enumerate(params):
        inputs.append(h)
        a = h @ layer["w"] + layer["b"]
        if perturb is not None:
            a = a + perturb[l]
        pre.append(a)
        h = act.f(a)
    return Forward(inputs, pre)


def predict(params: Params, x: jax.Array, act: Activation) -> jax.Array:
    return forward(params, x, act).logits
