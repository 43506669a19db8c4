"""A layered Hopfield-style energy network, the model of equilibrium propagation.

Scellier & Bengio 2017 ("Equilibrium propagation", Front. Comput. Neurosci. 11:24), eq. (1)-(3).
Layers k = 0 .. L: s_0 = x is clamped, s_1 .. s_L are free, s_L is the output. Parameters have the
MLP's structure, params[l] = {"w": W_l (n_l, n_{l+1}), "b": b_l (n_{l+1},)}, W_l connecting layers
l and l+1 symmetrically. Per example,

    E(s) = 1/2 sum_{k>=1} |s_k|^2 - sum_l rho(s_l) . W_l rho(s_{l+1}) - sum_l b_l . rho(s_{l+1}),

with rho(s_0) = x (the input is not squashed), C(s) = 1/2 |y - s_L|^2 and F = E + beta C.
The state follows the gradient dynamics s <- s - eps dF/ds, projected onto [0, 1] when rho is the
hard sigmoid (Scellier & Bengio's discretisation); its fixed points do not depend on eps.
dE/ds_k = s_k - rho'(s_k) * (rho(s_{k-1}) W_{k-1} + b_{k-1} + rho(s_{k+1}) W_k^T).

Separate feedback weights (the vector-field generalisation of EP: Scellier, Goyal, Binas, Mesnard
& Bengio 2018, "Generalization of equilibrium propagation to vector field dynamics"). States are
row vectors, as above. A layer dict may carry params[l]["fb"] = B_l, of shape (n_{l+1}, n_l) (the
shape of W_l^T), for l >= 1: the matrix through which layer l+1 sends its output DOWN to layer l.
Layer k then receives bottom-up input through W_{k-1} and top-down input through B_k:

    v_k(s) = -s_k + rho'(s_k) * (rho(s_{k-1}) W_{k-1} + b_{k-1} + rho(s_{k+1}) B_k) - beta dC/ds_k  (+ u_k),

and the state follows s <- s + eps v(s) (projected onto [0, 1] for the hard sigmoid). With
B_k = W_k^T (no "fb" key, the default) v = -dF/ds and everything above holds; with B_k != W_k^T
the vector field v is no gradient: there is no energy (`energy` refuses such params), and the
fixed point is characterised by v(s*) = 0 only. A layer without "fb" uses W_k^T, so the symmetric
network runs exactly the code it always ran. u_k (`external`, default none) is an extra drive added
to the vector field, used to differentiate the fixed point with respect to a drive injected at any
layer (bioprop_cli/metrics/jtranspose.py). The helpers at the end build the fixed feedback
matrices of `ep.feedback` (sign, mixed, random) from W.

Cross-entropy readout (model.loss = cross_entropy; Laborieux, Ernoult, Scellier, Bengio, Grollier
& Querlioz 2021, Front. Neurosci. 15:633674, sec. 2.3). The last layer of params is then no layer
of the dynamics but a readout R = {"w": W_out, "b": b_out}: the dynamics run on params[:-1], their
top layer s_top = s_{L-1} is the last hidden layer, and the prediction is
    yhat = softmax(rho(s_top) W_out + b_out),   C(s, R) = -sum_j y_j log yhat_j,
so dC/ds_top = rho'(s_top) * ((yhat - y) W_out^T) replaces s_L - y in the nudge; the energy E of
the hidden layers is unchanged. The functions below take `readout=R` (None: the mean-squared cost
on s_L, as before, the same code).

Laborieux et al.'s primitive dynamics (ep.dynamics primitive, `primitive_dynamics`): the state is the
neurons' output and every layer moves to rho(dPhi/ds - beta dC/ds), Phi = sum_l <s_{l+1}, f_l(s_l)>;
a Rho whose `update` is set carries it (its f is the identity, so the drives, the contrast and the
readout above read the states themselves); its energy is sum G(s) - Phi, G' = rho^{-1}.

A linear output layer (ep.output_layer linear; `Rho.linear_output`): rho(s_L) = s_L and rho'(s_L) = 1
on the output layer only, its state unbounded (the projection onto [0, 1] skips it), as the output
layer of Scellier, Ernoult, Kendall & Kumar 2023's deep (convolutional) Hopfield networks (NeurIPS,
"Energy-based learning algorithms for analog computing: a comparative study"; their code's
LinearLayer). E keeps its form with r_L = s_L: its output part 1/2 |s_L|^2 - rho(s_{L-1}) W s_L - b s_L
is quadratic in s_L, so with the mean-squared cost the output's fixed point is
s_L = (rho(s_{L-1}) W_{L-1} + b_{L-1} + beta y) / (1 + beta) for any sign of beta > -1 (with a hard
sigmoid output, one-hot targets sit on the edge of [0, 1] and the projection cuts the push of a
negative beta). `Rho.layers` is the one place that decides each layer's rho; the energy, the step,
the contrast and, through them, the exact references follow it.

Any architecture (model.arch mlp, cnn or lenet): the functions below take `arch`, the Architecture of
the dynamics' layers (None: the dense layers of params' shapes, the MLP above); the layers' drives, the
input's drive, the energy and the contrast are models/conv_energy.py's (the energy of Ernoult et al. 2019
and Laborieux et al. 2021, whose dense layers are the MLP's above: one code path for every network), the
states flat as here.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from bioprop_cli.models import conv_energy
from bioprop_cli.models.arch import Architecture, dense

Params = list
States = list  # [s_1, ..., s_L], each (batch, n_k)


@jax.custom_jvp
def hard_sigmoid(s):
    """rho(s) = clip(s, 0, 1) with rho' = 1 on the closed interval [0, 1].

    States live in [0, 1]: a unit at 0 or 1 must still feel its input (with rho'(0) = 0 a unit
    that reached 0 could never leave it). Theano's clip, used by Scellier & Bengio, has the same
    derivative; jnp.clip's is 1/2 at the ends.
    """
    return jnp.clip(s, 0.0, 1.0)


@hard_sigmoid.defjvp
def _hard_sigmoid_jvp(primals, tangents):
    (s,), (ds,) = primals, tangents
    return hard_sigmoid(s), ds * ((s >= 0.0) & (s <= 1.0)).astype(s.dtype)


@jax.custom_jvp
def half_slope_hard_sigmoid(s):
    """rho(s) = clip(s/2, 0, 1), Laborieux et al. 2021's `my_hard_sig` (their model_utils.py,
    (1 + hardtanh(x - 1)) / 2), with rho' = 1/2 on the closed interval [0, 2] (as hard_sigmoid's)."""
    return jnp.clip(0.5 * s, 0.0, 1.0)


@half_slope_hard_sigmoid.defjvp
def _half_slope_hard_sigmoid_jvp(primals, tangents):
    (s,), (ds,) = primals, tangents
    return half_slope_hard_sigmoid(s), ds * 0.5 * ((s >= 0.0) & (s <= 2.0)).astype(s.dtype)


def unit_slope_sigmoid(s):
    """rho(s) = 1 / (1 + exp(-4 (s - 1/2))), Laborieux et al. 2021's `mysig` (their model_utils.py
    `my_sigmoid`): the logistic sigmoid centred at 1/2 with slope 1 there, like hard_sigmoid."""
    return jax.nn.sigmoid(4.0 * (s - 0.5))


def _binary_entropy_part(s):
    """s log s + (1 - s) log(1 - s), the primitive of logit(s) (0 at s = 0 and 1)."""
    return jax.scipy.special.xlogy(s, s) + jax.scipy.special.xlogy(1.0 - s, 1.0 - s)


class Rho(NamedTuple):
    f: Callable
    df: Callable
    bounded: bool  # project the state onto [0, 1] after every step
    # G, the primitive of rho's inverse on rho's range (G' = rho^{-1}; for the hard sigmoids on
    # [0, 1]): the leak of the primitive dynamics' energy E = sum G(s) - Phi (see `primitive_dynamics`)
    inverse_primitive: Callable | None = None
    # the primitive dynamics s <- rho(dPhi/ds): the activation rho; f is then the identity (the state is
    # the neuron's output). None: the gradient dynamics above.
    update: "Rho | None" = None
    # the output layer s_L is linear: rho = identity there, its state unbounded (not projected), as the
    # output layer of Scellier, Ernoult, Kendall & Kumar 2023's deep (convolutional) Hopfield networks
    # (their code's LinearLayer); False: the output layer has the hidden layers' rho (`ep.output_layer`)
    linear_output: bool = False

    def layers(self, n: int) -> list["Rho"]:
        """Each free layer's rho, layers 1 .. n (the one place that decides it): this one, the last
        the identity when linear_output."""
        return [LINEAR if self.linear_output and k == n - 1 else self for k in range(n)]

    def outputs(self, states: list) -> list:
        """rho_k(s_k) for every free layer."""
        return [r.f(s) for r, s in zip(self.layers(len(states)), states)]


RHOS: dict[str, Rho] = {
    "hard_sigmoid": Rho(hard_sigmoid, lambda s: ((s >= 0.0) & (s <= 1.0)).astype(s.dtype), True,
                        lambda s: 0.5 * s**2),
    "half_slope_hard_sigmoid": Rho(half_slope_hard_sigmoid, lambda s: 0.5 * ((s >= 0.0) & (s <= 2.0)).astype(s.dtype),
                                   True, lambda s: s**2),
    "sigmoid": Rho(jax.nn.sigmoid, lambda s: jax.nn.sigmoid(s) * (1.0 - jax.nn.sigmoid(s)), False,
                   _binary_entropy_part),
    "unit_slope_sigmoid": Rho(unit_slope_sigmoid,
                              lambda s: 4.0 * unit_slope_sigmoid(s) * (1.0 - unit_slope_sigmoid(s)), False,
                              lambda s: 0.5 * s + 0.25 * _binary_entropy_part(s)),
    "tanh": Rho(jnp.tanh, lambda s: 1.0 - jnp.tanh(s) ** 2, False,
                lambda s: s * jnp.arctanh(s) + 0.5 * jnp.log1p(-s**2)),
}


LINEAR = Rho(lambda s: s, jnp.ones_like, False, lambda s: 0.5 * s**2)  # the identity: a linear layer


def with_linear_output(rho: Rho) -> Rho:
    """rho on the hidden layers, the identity on the output layer (`Rho.linear_output`)."""
    return rho._replace(linear_output=True)


def primitive_dynamics(rho: Rho) -> Rho:
    """The primitive-function dynamics of Laborieux, Ernoult, Scellier, Bengio, Grollier & Querlioz
    2021 (their code's P_MLP / P_CNN `forward`): the state s IS the neurons' output, the layers see
    s itself (Phi = sum_l <s_{l+1}, s_l W_l + b_l>, f the identity below), and a step maps every
    layer at once (synchronously) to s <- (1 - eps) s + eps rho(dPhi/ds - beta dC/ds), at eps = 1
    their update. Its fixed points s = rho(dPhi/ds - beta dC/ds) are the stationary points of
        E(s) = sum_k G(s_k) - Phi(s),   G' = rho^{-1},
    (for a hard sigmoid: E's minima on the box [0, 1], its KKT points), with F = E + beta C:
    Phi's parameters enter E through -Phi only, so EP's contrast is -dPhi/dtheta, their
    compute_syn_grads (tested against the implicit gradient). The output layer is squashed too
    (their mean-squared network; the cross-entropy readout reads s_top W_out + b_out)."""
    return Rho(lambda s: s, jnp.ones_like, False, update=rho)


def layers_of(params: Params, arch: Architecture | None) -> Architecture:
    """The dynamics' layers: `arch`, or (None) the dense layers of params' shapes, the MLP
    n_0-n_1-...-n_L with W_l of shape (n_l, n_{l+1})."""
    if arch is not None:
        return arch
    return dense((params[0]["w"].shape[0],) + tuple(layer["w"].shape[1] for layer in params))


def zero_states(params: Params, batch: int, dtype=jnp.float32, arch: Architecture | None = None) -> States:
    return conv_energy.zero_states(layers_of(params, arch), batch, dtype)


def has_separate_feedback(params: Params) -> bool:
    """True when some layer carries its own feedback matrix params[l]["fb"] (a static, trace-time fact)."""
    return any("fb" in layer for layer in params)


def energy(params: Params, states: States, x: jax.Array, rho: Rho, arch: Architecture | None = None) -> jax.Array:
    """E per example, shape (batch,). Only the symmetric network has one."""
    if has_separate_feedback(params):
        raise ValueError("a network with separate feedback weights (params[l]['fb']) has no energy")
    if rho.update is not None:  # primitive dynamics: sum G(s) - Phi = (1/2 |s|^2 - Phi) + sum (G(s) - s^2/2)
        leak = sum(jnp.sum(rho.update.inverse_primitive(s) - 0.5 * s**2, axis=-1) for s in states)
        return leak + energy(params, states, x, rho._replace(update=None), arch)
    return conv_energy.energy(layers_of(params, arch), params, states, x, rho)


def logits(top: jax.Array, readout: dict, rho: Rho) -> jax.Array:
    """rho(s_top) W_out + b_out: the cross-entropy readout's pre-softmax output."""
    return rho.f(top) @ readout["w"] + readout["b"]


def cost(states: States, y: jax.Array, readout=None, rho: Rho | None = None) -> jax.Array:
    """C per example: 1/2 |y - s_L|^2, or with a readout the cross-entropy -sum y log softmax(logits)."""
    if readout is None:
        return 0.5 * jnp.sum((y - states[-1]) ** 2, axis=-1)
    return -jnp.sum(y * jax.nn.log_softmax(logits(states[-1], readout, rho)), axis=-1)


def output(states: States, readout, rho: Rho) -> jax.Array:
    """What the network answers: s_L, or the readout's logits."""
    return states[-1] if readout is None else logits(states[-1], readout, rho)


def cost_gradient(top: jax.Array, y: jax.Array, readout, rho: Rho) -> jax.Array:
    """dC/ds_top: s_L - y, or rho'(s_top) * ((softmax(logits) - y) W_out^T)."""
    if readout is None:
        return top - y
    return rho.df(top) * ((jax.nn.softmax(logits(top, readout, rho)) - y) @ readout["w"].T)


def input_drive(params: Params, x: jax.Array, arch: Architecture | None = None) -> jax.Array:
    """f_0(x) (x W_0 + b_0 for a dense first layer; models/conv_energy.py): the clamped input's
    contribution to layer 1, computed once per batch."""
    return conv_energy.input_drive(layers_of(params, arch), params, x)


def _drives(params: Params, r: States, drive0: jax.Array, arch: Architecture | None) -> States:
    """The input every free layer s_{k+1} receives from its neighbours' outputs r (r_k = rho(s_k)):
    for dense layers rho(s_k) W_k + b_k + rho(s_{k+2}) B_{k+1}, drive0 in place of the first term for
    k = 0 (models/conv_energy.py `drives`)."""
    return conv_energy.drives(layers_of(params, arch), params, r, drive0)


def energy_gradient(params: Params, states: States, drive0: jax.Array, y, beta, rho: Rho, external=None,
                    readout=None, arch: Architecture | None = None) -> States:
    """dF/ds_k for every free layer, with F = E + beta C; in general -v_k(s), the negative vector
    field (with separate feedback, or an external drive u = `external`, it is no gradient). For the
    primitive dynamics (`primitive_dynamics`) -v_k = s_k - rho(dPhi/ds_k - beta dC/ds_k) - u_k: zero
    where dF/ds is, but not dF/ds."""
    if rho.update is not None:
        grads = [s - rho.update.f(u) for s, u in zip(states, _primitive_drives(params, states, drive0, y, beta, rho,
                                                                                 readout, arch))]
        return grads if external is None else [g - u for g, u in zip(grads, external)]
    drives = _drives(params, rho.outputs(states), drive0, arch)
    grads = [s - rho_k.df(s) * drive for s, rho_k, drive in zip(states, rho.layers(len(states)), drives)]
    grads[-1] = grads[-1] + beta * cost_gradient(states[-1], y, readout, rho)
    if external is not None:
        grads = [g - u for g, u in zip(grads, external)]
    return grads


def step(params: Params, states: States, drive0, y, beta, rho: Rho, eps: float, external=None, readout=None,
         arch: Architecture | None = None) -> States:
    """One step of the discretised gradient dynamics (the settling map Phi).

    For the hard sigmoid the states stay in [0, 1], where rho(s) = s and rho'(s) = 1, so the step
    is s <- clip((1 - eps) s + eps (drive - beta dC/ds), 0, 1) without evaluating rho (the same map,
    with the same derivatives there, as the general form; tested). Separate feedback (params[l]["fb"])
    and the external drive u go through the same fast path: s <- clip(s + eps v(s), 0, 1).
    """
    if rho.bounded:
        return _bounded_step(params, states, drive0, y, beta, eps, external, readout, arch, rho.linear_output)
    if rho.update is not None:  # (1 - eps) s + eps (rho(dPhi/ds - beta dC/ds) + u): at eps = 1 exactly rho(...)
        drives = _primitive_drives(params, states, drive0, y, beta, rho, readout, arch)
        pulls = [rho.update.f(u) for u in drives]
        if external is not None:
            pulls = [p + u for p, u in zip(pulls, external)]
        return [(1.0 - eps) * s + eps * p for s, p in zip(states, pulls)]
    grads = energy_gradient(params, states, drive0, y, beta, rho, external, readout, arch)
    return [s - eps * g for s, g in zip(states, grads)]


def _primitive_drives(params, states, drive0, y, beta, rho: Rho, readout=None, arch=None) -> States:
    """dPhi/ds_k - beta dC/ds_k for every free layer, the layers seeing the states themselves."""
    drives = _drives(params, states, drive0, arch)
    drives[-1] = drives[-1] - beta * cost_gradient(states[-1], y, readout, rho)
    return drives


def symmetric_jacobian(params: Params, rho: Rho) -> bool:
    """Whether the settling map's Jacobian restricted to the free units is symmetric (the adjoint
    solve may use conjugate gradients, the spectral radius Lanczos): tied feedback and the gradient
    dynamics. The primitive dynamics' J = diag(rho'(u)) d^2Phi/ds^2 is not (for a smooth rho); its
    eigenvalues are real (it is similar to a symmetric matrix), but the solvers treat it as general."""
    return not has_separate_feedback(params) and rho.update is None


def _bounded_step(params, states, drive0, y, beta, eps, external=None, readout=None, arch=None, linear_output=False):
    """The hard sigmoid's step: every layer projected onto [0, 1], a linear output layer not (there too
    rho(s) = s and rho'(s) = 1, so the unprojected step is the general one)."""
    new = _unprojected_step(params, states, drive0, y, beta, eps, external, readout, arch)
    if linear_output:
        return [hard_sigmoid(pre) for pre in new[:-1]] + [new[-1]]
    return [hard_sigmoid(pre) for pre in new]


def _unprojected_step(params, states, drive0, y, beta, eps, external=None, readout=None, arch=None) -> States:
    new = []
    for k, (s, drive) in enumerate(zip(states, _drives(params, states, drive0, arch))):
        if k + 1 == len(states):  # on [0, 1] rho(s) = s and rho'(s) = 1
            drive = drive - beta * (s - y if readout is None else (jax.nn.softmax(s @ readout["w"] + readout["b"]) - y) @ readout["w"].T)
        if external is not None:
            drive = drive + external[k]
        new.append(s + eps * (drive - s))
    return new


def free_units(params, states, drive0, y, beta, rho: Rho, eps: float, external=None, readout=None,
               arch: Architecture | None = None) -> States:
    """1 where a unit moves with its input at this state, 0 where the projection onto [0, 1] pins
    it (the rows of the settling map's Jacobian that are not zero)."""
    if not rho.bounded:
        return [jnp.ones_like(s) for s in states]
    pre = _unprojected_step(params, states, drive0, y, beta, eps, external, readout, arch)
    return [((p >= 0.0) & (p <= 1.0)).astype(p.dtype) if r.bounded else jnp.ones_like(p)
            for p, r in zip(pre, rho.layers(len(pre)))]


def residual(new: States, old: States) -> jax.Array:
    """Per-example |s_{t+1} - s_t| over all free units, shape (batch,) (real for complex states too)."""
    squared = lambda d: jnp.real(d * jnp.conj(d)) if jnp.iscomplexobj(d) else d**2
    return jnp.sqrt(sum(jnp.sum(squared(a - b), axis=-1) for a, b in zip(new, old)))


class Settled(NamedTuple):
    states: States
    steps: jax.Array  # steps taken
    residual: jax.Array  # max over the batch of |s_T - s_{T-1}|


def clamp_output(states: States, clamp) -> States:
    """states with the output layer s_L replaced by `clamp` (None: states unchanged)."""
    return states if clamp is None else list(states[:-1]) + [clamp]


def settle(params, states, drive0, y, beta, rho: Rho, eps: float, max_steps: int, tol: float, external=None,
           readout=None, clamp=None, arch: Architecture | None = None) -> Settled:
    """Runs the dynamics until every example's step is below `tol`, or for `max_steps` steps.

    With tol = 0 (static) it runs exactly max_steps steps in a loop that measures
    the residual on the last step only; otherwise a while loop checks it after every step.
    `clamp`: the output layer is held at this state (no free unit: it is set before the first step
    and after every step), as in the second phase of contrastive and coupled learning.
    """
    dtype = jnp.finfo(drive0.dtype).dtype  # the residual's: real for complex states (holomorphic EP)
    states = clamp_output(states, clamp)
    params = conv_energy.for_settling(layers_of(params, arch), params)

    def advance(s):
        return clamp_output(step(params, s, drive0, y, beta, rho, eps, external, readout, arch), clamp)

    if tol == 0:

        def body(_, s):
            return advance(s)

        before_last = jax.lax.fori_loop(0, max_steps - 1, body, states)
        final = advance(before_last)
        return Settled(final, jnp.asarray(max_steps, jnp.int32), jnp.max(residual(final, before_last)))

    def cond(carry):
        _, t, res = carry
        return (t < max_steps) & (res >= tol)

    def body(carry):
        s, t, _ = carry
        new = advance(s)
        return new, t + 1, jnp.max(residual(new, s))

    init = (states, jnp.asarray(0, jnp.int32), jnp.asarray(jnp.inf, dtype))
    final, steps, res = jax.lax.while_loop(cond, body, init)
    return Settled(final, steps, res)


def settle_fixed(params, states, x, y, beta, rho: Rho, eps: float, steps: int, readout=None,
                 arch: Architecture | None = None) -> States:
    """Exactly `steps` steps with lax.scan: differentiable end to end (for BPTT)."""
    drive0 = input_drive(params, x, arch)

    def body(s, _):
        return step(params, s, drive0, y, beta, rho, eps, readout=readout, arch=arch), None

    final, _ = jax.lax.scan(body, states, None, length=steps)
    return final


def contrast(states_a: States, states_b: States, x: jax.Array, rho: Rho, scale, params: Params,
             arch: Architecture | None = None) -> Params:
    """scale * (dE/dtheta(s_a) - dE/dtheta(s_b)), averaged over the batch.

    Equilibrium propagation's local contrastive rule (Scellier & Bengio 2017, eq. 10): with
    dE/dW_l = -rho(s_l)^T rho(s_{l+1}), the difference is a difference of Hebbian products.
    The clamped input's term is one product, x^T (rho(s_a1) - rho(s_b1)). A conv layer's depends on
    the weights through the pooling's winners: models/conv_energy.py, at `params`.
    """
    return conv_energy.contrast(layers_of(params, arch), params, states_a, states_b, x, rho, scale)


# ----------------------------------------------------------------------------------------------
# Fixed feedback matrices built from W (ep.feedback: sign, mixed, random; see bioprop_cli/ep.py).
# Each has the Frobenius norm of W^T, so the feedback differs from W^T in direction only.


def sign_feedback(w: jax.Array) -> jax.Array:
    """B = c sign(W^T) with c = |W|_F / sqrt(#nonzero entries of W): |B|_F = |W|_F (c is the RMS of
    the nonzero entries of W). Its angle to W^T is arccos(|W|_1 / (sqrt(#nonzero) |W|_F))."""
    wt = w.T
    count = jnp.maximum(jnp.sum(wt != 0), 1).astype(w.dtype)
    return (jnp.linalg.norm(wt) / jnp.sqrt(count)) * jnp.sign(wt)


def mixed_feedback(w: jax.Array, direction: jax.Array, angle_degrees) -> jax.Array:
    """B = cos(a) W^T + sin(a) R, with R = |W|_F P/|P|_F and P = G - (<G, W^T>/|W|_F^2) W^T the part of
    the fixed random direction G (shape of W^T) orthogonal to W^T. R is orthogonal to W^T and has its
    norm, so |B|_F = |W|_F and the angle between B and W^T is exactly a (for a in [0, 180])."""
    wt = w.T
    norm2 = jnp.sum(wt * wt)
    p = direction - (jnp.sum(direction * wt) / norm2) * wt
    r = p * (jnp.sqrt(norm2) / jnp.linalg.norm(p))
    a = jnp.deg2rad(jnp.asarray(angle_degrees, w.dtype))
    return jnp.cos(a) * wt + jnp.sin(a) * r


def random_feedback(key: jax.Array, w: jax.Array) -> jax.Array:
    """B = |W|_F G/|G|_F with G standard normal of the shape of W^T: random, with W^T's norm."""
    g = jax.random.normal(key, w.T.shape, w.dtype)
    return g * (jnp.linalg.norm(w) / jnp.linalg.norm(g))


def split_readout(params: Params, has_readout: bool) -> tuple[Params, dict | None]:
    """(the layers of the dynamics, the readout or None): params[:-1] and params[-1] with a readout."""
    return (params[:-1], params[-1]) if has_readout else (params, None)


def with_feedback(params: Params, matrices: dict) -> Params:
    """params with params[l]["fb"] = matrices[l] for each l in `matrices` (new dicts; params untouched)."""
    return [dict(layer, fb=matrices[l]) if l in matrices else layer for l, layer in enumerate(params)]
