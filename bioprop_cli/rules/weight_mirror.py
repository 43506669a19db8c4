"""wm: the weight mirror (Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019, "Deep learning
without weight transport", NeurIPS).

Forward learning is fa through a feedback matrix B_l of the shape of W_l^T (delta_l =
(delta_{l+1} @ B_{l+1}) * f'(a_l), updates h_l^T delta_l and sum delta_l). B_l is LEARNED, in a
separate noise-driven "mirror" phase that needs no data and no error: in every training step,
for every layer l = 1 .. L-1, zero-mean noise x_l of variance sigma^2 (one row per example of the batch) is
injected as layer l's input (the output of the layer below), propagated through W_l,
y_l = x_l @ W_l (row-vector convention, bias and nonlinearity left out: the mirror reads the
synapses' linear transmission), and B_l moves along the Hebbian product of the feedback
path's input and output,

    M_l = y_l^T x_l / (batch sigma^2),   E[M_l] = W_l^T E[x^T x] / (batch sigma^2) = W_l^T,

with decay: the update handed to the optimizer (which descends) is

    update(B_l) = lambda B_l - s M_l,     lambda = feedback.decay, s = feedback.mirror_lr_scale,

i.e. Akrout et al.'s Delta B = eta x y^T - lambda B with eta = s / (batch sigma^2) in units of
the optimizer's learning rate. In expectation B_l relaxes to (s / lambda) W_l^T: the angle to
W_l^T goes to 0 (up to the noise of M_l, std about |W_l column| / sqrt(batch) per entry), the
norm ratio to s / lambda (1 with the defaults). Under SGD the relaxation rate is lr * lambda per
step; under adam only s / lambda matters (the normalisation removes the common scale).
B_l sits in params[l]["fb"], drawn at initialisation like fa's fixed matrices, so wm starts as
fa. W_0 has no feedback matrix and learns no mirror. The noise comes from the step's key; it is
uniform on [-sqrt(3) sigma, sqrt(3) sigma] (Akrout et al. use a Gaussian: only the mean and
variance enter E[M_l]), drawn with brsf's counter-based hash, which halves wm's step time on a
CPU against Gaussian threefry noise.

Through a conv layer the mirror is the same with images: x_l is noise of the layer's input shape
(batch, H, W, C_in), y_l its convolution with W_l's kernel, and M_l the vjp of the feedback path (the
transposed convolution) w.r.t. its kernel with input y_l and cotangent x_l, i.e. the correlation of
x_l and y_l per kernel entry (x^T y generalised; layers.feedback_vjp). Its mean is W_l's kernel times
batch sigma^2 times the number of output positions each kernel entry meets inside the image (all
of H'W' without padding, fewer at the border with padding): M_l is divided by that count per entry
(1 for a dense layer), so that E[M_l] = W_l's kernel.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bioprop_cli.models.arch import Dense
from bioprop_cli.models.layers import feedback_vjp, linear
from bioprop_cli.rules.base import LearningRule
from bioprop_cli.rules.kolen_pollack import learned_feedback_rule
from bioprop_cli.rules.sign_symmetric import fast_uniform


def mirror_updates(arch, params, key, batch: int, sigma) -> list:
    """[None, M_1, ..., M_{L-1}]: M_l = y^T x / (batch sigma^2 count), x zero-mean uniform with
    variance sigma^2 of the layer's input shape (batch, n_l), y = x @ W_l (the layer's linear map);
    an unbiased estimate of W_l^T (of W_l's kernel for a conv layer)."""
    keys = jax.random.split(key, len(params))
    out = [None]
    for l in range(1, len(params)):
        op, w = arch.layers[l].op, params[l]["w"]
        u = fast_uniform(keys[l], (batch,) + op.in_shape).astype(w.dtype)
        x = (sigma * math.sqrt(3.0)) * (2.0 * u - 1.0)
        y = linear(op, w, x)
        out.append(feedback_vjp(op, y, x) / (batch * sigma**2 * positions(op, w.dtype)))
    return out


def positions(op, dtype) -> jax.Array | int:
    """How many products of one example each entry of M_l sums: 1 for a dense layer; for a conv layer
    the number of output positions whose window puts the kernel entry inside the (unpadded) image,
    the correlation of an all-ones input with an all-ones output (a constant of the architecture)."""
    if isinstance(op, Dense):
        return 1
    with jax.ensure_compile_time_eval():
        return feedback_vjp(op, jnp.ones((1,) + op.out_shape, dtype), jnp.ones((1,) + op.in_shape, dtype))


def make(config, arch, n_train: int = 0) -> LearningRule:
    base = learned_feedback_rule(config, arch)
    fb = config.feedback
    decay, sigma, scale = fb.decay, fb.mirror_noise, fb.mirror_lr_scale

    def estimate(params, state, x, y, key, idx=None):
        est = base.estimate(params, state, x, y, key)
        mirror = mirror_updates(arch, params, jax.random.fold_in(key, 0x3A11), x.shape[0], sigma)
        grads = [dict(est.grads[0])] + [
            {**g, "fb": decay * layer["fb"] - scale * m}
            for g, layer, m in zip(est.grads[1:], params[1:], mirror[1:])
        ]
        return est._replace(grads=grads)

    return base._replace(estimate=estimate, gradient_estimate=base.estimate)
