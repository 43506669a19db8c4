"""The layered energy of equilibrium propagation on any architecture: conv layers with pooling, then dense.

The convolutional Hopfield network of Ernoult, Grollier, Querlioz, Bengio & Scellier 2019 (NeurIPS,
"Updates of equilibrium prop match gradients of backprop through time in an RNN with static input",
sec. 4, the convolutional architecture) and Laborieux, Ernoult, Scellier, Bengio, Grollier & Querlioz
2021 (Front. Neurosci. 15:633674, sec. 2 and their code, P_CNN.Phi in model_utils.py). Layer l of
the architecture (models/arch.py) maps the layer below to a drive,
    f_l(h) = P_l(W_l * h + b_l)      (conv: the convolution, then the pooling P_l, max or average),
    f_l(h) = h W_l + b_l             (dense),
and the states s_1 .. s_L are the layers' outputs AFTER the pooling (P_CNN's neurons), kept flat,
(batch, H*W*C) in channel-last order, as arch.sizes counts them (layers.linear reads them back as
images). With r_0 = x and r_k = rho(s_k), per example

    E(s) = 1/2 sum_{k>=1} |s_k|^2 - sum_l <r_{l+1}, f_l(r_l)>,

Laborieux et al.'s primitive function Phi = sum_l <s_{l+1}, P(W_l * s_l)> plus the leak that turns
their update s <- rho(dPhi/ds) into a gradient flow on E: for the hard sigmoid, on [0, 1],
s <- clip(s - eps dE/ds, 0, 1) = clip((1 - eps) s + eps dPhi/ds, 0, 1), which at eps = 1 is their
update (their `hard_sigmoid` is clip(x/2, 0, 1): the same dynamics with W and b halved). For dense
layers E is exactly models/energy.py's MLP energy. The force on s_k is

    dE/ds_k = s_k - rho'(s_k) * (f_{k-1}(r_{k-1}) + J_{f_k}(r_k)^T r_{k+1}),

the bottom-up drive f_{k-1}(r_{k-1}) and the top-down one, the vector-Jacobian product of f_k at r_k
with r_{k+1}: for a conv layer the transposed convolution of r_{k+1} routed back through the pooling
(max pooling: to each window's winner; P is piecewise linear, so E is piecewise quadratic in s and
the force is its gradient wherever the winners are unique). The parameters' gradient of E, the
quantity EP contrasts, is -d/dtheta <r_{l+1}, f_l(r_l)>: for a dense layer the Hebbian product
-r_l^T r_{l+1}, for a conv layer its convolutional counterpart (the correlation of r_l with the
unpooled r_{l+1}), local to the layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bioprop_cli.models.arch import Architecture, Layer
from bioprop_cli.models.layers import pool, pre_activation


def layer_map(layer: Layer, params: dict, h: jax.Array) -> jax.Array:
    """f_l(h): the layer's pre-activation, pooled (conv layers), flattened: (batch, n_{l+1})."""
    return pool(layer.pool, pre_activation(layer.op, params, h)).reshape(h.shape[0], -1)


def zero_states(arch: Architecture, batch: int, dtype=jnp.float32) -> list:
    return [jnp.zeros((batch, n), dtype) for n in arch.sizes[1:]]


def input_drive(arch: Architecture, params: list, x: jax.Array) -> jax.Array:
    """f_0(x): the clamped input's drive of layer 1 (fixed for the batch: the pooling's winners
    depend on x and W_0 only)."""
    return layer_map(arch.layers[0], params[0], x)


def drives(arch: Architecture, params: list, r: list, drive0: jax.Array) -> list:
    """dPhi/dr_k for every free layer: f_{k-1}(r_{k-1}) + J_{f_k}(r_k)^T r_{k+1} (the last layer has no
    top-down term). One vjp per layer above the first gives both its bottom-up drive and its pull."""
    out = [drive0] + [None] * (len(r) - 1)
    for l in range(1, len(r)):
        up, pull = jax.vjp(lambda h, l=l: layer_map(arch.layers[l], params[l], h), r[l - 1])
        out[l] = up
        out[l - 1] = out[l - 1] + pull(r[l])[0]
    return out


def coupling(arch: Architecture, params: list, r: list, x: jax.Array) -> jax.Array:
    """sum_l <r_{l+1}, f_l(r_l)> per example (r_0 = x): Phi without the leak."""
    below = [x] + list(r[:-1])
    return sum(jnp.sum(layer_map(layer, p, h) * s, axis=-1) for layer, p, h, s in zip(arch.layers, params, below, r))


def energy(arch: Architecture, params: list, states: list, x: jax.Array, rho) -> jax.Array:
    """E per example, shape (batch,) (the module docstring)."""
    r = [rho.f(s) for s in states]
    return 0.5 * sum(jnp.sum(s**2, axis=-1) for s in states) - coupling(arch, params, r, x)


def contrast(arch: Architecture, params: list, states_a: list, states_b: list, x: jax.Array, rho, scale) -> list:
    """scale * (dE/dtheta(s_a) - dE/dtheta(s_b)), averaged over the batch: for each layer the
    difference of its local coupling gradients at the two states (Laborieux et al.'s
    compute_syn_grads, written as one gradient)."""
    ra, rb = [rho.f(s) for s in states_a], [rho.f(s) for s in states_b]

    def difference(p):
        return -scale * jnp.mean(coupling(arch, p, ra, x) - coupling(arch, p, rb, x))

    return jax.grad(difference)(params)
