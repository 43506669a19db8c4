"""Equilibrium propagation, once: the network that runs, the contrastive estimate, the exact references.

Training (rules/equilibrium.py) and every EP measurement (metrics/equilibrium.py, metrics/conditions.py,
metrics/jtranspose.py and the studies in studies/) call these pure functions, so that a
measurement measures the code that trains. The dynamics themselves are models/energy.py.

The network that runs (`network`). Feedback weights (`ep.feedback`, `ep.learn_feedback`): layer
l+1 sends its output down to layer l through B_l (shape of W_l^T, l = 1 .. L-1) instead of W_l^T,
the vector-field generalisation of EP (Scellier, Goyal, Binas, Mesnard & Bengio 2018; Laborieux et
al. 2021 use it too). Every B_l has the Frobenius norm of W_l^T (it differs in direction only):
- symmetric (default): B_l = W_l^T, the energy-based network.
- random: B_l = |W_l|_F G_l/|G_l|_F, G_l standard normal, drawn ONCE at initialisation (rule state)
  and fixed: as in feedback alignment, nothing ties it to W afterwards (its norm is W's initial one).
- sign: B_l = c_l sign(W_l^T), c_l = |W_l|_F/sqrt(#nonzero entries) (so |B_l|_F = |W_l|_F),
  recomputed from the CURRENT W every step (sign-concordant feedback tracks W).
- mixed: B_l = cos(a) W_l^T + sin(a) R_l, a = `ep.feedback_angle`, R_l = |W_l|_F P_l/|P_l|_F with
  P_l the part of a fixed random direction G_l (drawn once) orthogonal to the CURRENT W_l^T, so that
  the angle between B_l and W_l^T is exactly a at every step; recomputed every step.
- learn_feedback: B_l is a trainable parameter params[l]["fb"] (see rules/equilibrium.py).
With the cross-entropy readout (model.loss = cross_entropy) the last layer of params is the readout,
outside the dynamics. `network` returns the layers the dynamics train, those they run on (the fixed
feedback inserted) and the readout; `Network.feedback` (trainable -> running) is what the exact
references differentiate through, so their gradients are total derivatives with respect to the
trainable parameters (for sign and mixed feedback, functions of W). `Network.arch` carries a
conv net's layers (model.arch cnn or lenet; None for an MLP: the dense layers of its params' shapes) and
every function below runs the one energy of models/conv_energy.py on them (separate feedback on dense
layers only).

The estimate (`free_phase`, `second_phase`, `estimate`): the network settles freely to s^0 (T1 steps,
from zero or from persistent particles), is nudged towards the target with strength beta (T2 steps
from s^0), and each weight changes by the difference of two Hebbian products,
    grad theta ~ (1/beta) (dE/dtheta(s^beta) - dE/dtheta(s^0)),
which tends to the gradient of the cost at the free fixed point as beta -> 0 (Scellier & Bengio
2017, Theorem 1). `one-sided`: s^0 and s^{+beta}, bias O(beta); `negative`: s^{-beta} and s^0,
(1/beta)(dE/dtheta(s^0) - dE/dtheta(s^{-beta})), bias O(beta) with the first-order term of
one-sided's of opposite sign (Scellier, Ernoult, Kendall & Kumar 2023, NeurIPS, "Energy-based
learning algorithms for analog computing: a comparative study": NEP; one-sided is their PEP);
`symmetric`: s^{+beta} and s^{-beta}, (1/2beta)(...), bias O(beta^2) (Laborieux et al. 2021,
eq. 5; the study's centered CEP; to first order the mean of one-sided and negative);
`random-sign`: one-sided with the sign of beta drawn per batch (Scellier & Bengio 2017, sec. 4);
`holomorphic`: N = ep.holomorphic_points complex nudges beta exp(2 pi i k/N) on the circle of radius
beta, the first Fourier coefficient of dE/dtheta along it, bias O(beta^N) at a finite beta (Laborieux &
Zenke 2022; `holomorphic_contrast`, docs/holomorphic_ep.md).
The readout's estimate is dC/dR at the nudged state(s) (its local delta rule); a learned B_l
receives W_l's update transposed.

The clamped second phases (`clamped_contrast`; mean-squared cost only, the output layer is the
one clamped): the network settles from s^0 with the output layer s_L held fixed (no free unit) at
    c = (1 - eta) s_L^0 + eta y,
and the update is (1/eta)(dE/dtheta(s^c) - dE/dtheta(s^0)).
- `coupled`: coupled learning (Stern, Hexner, Rocks & Liu 2021, PRX 11:021045), eta = ep.beta (one
  knob, the strength of the second phase, so `sweep beta` sweeps eta), in (0, 1].
- `clamped`: contrastive learning (Movellan 1991; Baldi & Pineda 1991): the output clamped to the
  target, c = y, i.e. coupled learning at eta = 1, dE/dtheta(s^clamped) - dE/dtheta(s^0) with no
  1/beta. It is the gradient of E(s^clamped) - E(s^0) >= 0, not an estimate of the cost's gradient,
  and it does not depend on beta. Its scale: at eta = 1 coupled learning's 1/eta is 1, and clamping
  is the beta -> infinity limit of nudging, so clamped = lim beta * one-sided(beta) (tested): it
  is on the scale of an output error of size |y - s_L^0|, the same as the gradient's and the
  others' (which estimate the gradient), and trains at the same learning rate.
As eta -> 0 coupled learning does NOT tend to the cost's gradient in general: with J = ds_L/dtheta
at the free fixed point, the gradient is J^T (s_L - y) (EP's nudge applies the force beta (y - s_L)
to the output), while holding the output displaced by d = eta (y - s_L) takes the force S d, with
S = ((H^{-1})_LL)^{-1} the Schur complement on the output layer of the energy's Hessian H at s^0;
so coupled learning tends, with an error O(eta), to J^T S (s_L - y), the gradient with the output
error weighted by S (tested). S = I only where the output is uncoupled from the hidden layers;
for weak coupling (small weights, small rho') S is close to I.

The exact references (`implicit_reference`, `exact_references`), of the cost at the free fixed point:
- implicit differentiation of the fixed point s* = Phi(theta, s*) of the settling map (recurrent
  backprop, Almeida 1987, Pineda 1987): (I - dPhi/ds^T) lambda = dC/ds, then
  dC/dtheta = (dPhi/dtheta)^T lambda;
- backprop through time through exactly the T1 free steps the network runs (Ernoult et al. 2019,
  NeurIPS, "Updates of equilibrium prop match gradients of backprop through time").
They agree once the free phase has converged (tested). With separate feedback there is no energy:
the adjoint system uses the transpose of the NON-symmetric Jacobian (the error travels down
through W^T while the dynamics send it down through B) and is solved by BiCGSTAB instead of
conjugate gradients; the spectral radius is that of the non-symmetric Jacobian.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


from bioprop_cli.models import arch as architectures
from bioprop_cli.models.arch import Architecture
from bioprop_cli.models.energy import (
    RHOS,
    Rho,
    Settled,
    contrast as hebbian_contrast,
    cost,
    free_units,
    input_drive,
    mixed_feedback,
    primitive_dynamics,
    random_feedback,
    residual,
    settle,
    settle_fixed,
    sign_feedback,
    split_readout,
    step,
    symmetric_jacobian,
    with_feedback,
    with_linear_output,
    zero_states,
)
from bioprop_cli.ep_options import CLAMPED_ESTIMATORS, ESTIMATORS
from bioprop_cli.precision import full_float32

# ----------------------------------------------------------------------------------------------
# The network that runs.


def separate_feedback(ep) -> bool:
    """Whether the network has feedback weights of its own (params or rule state), not W^T."""
    return ep.feedback != "symmetric" or ep.learn_feedback


def has_readout(config) -> bool:
    """model.loss = cross_entropy: the last layer of params is a softmax readout outside the dynamics."""
    return config.model.loss == "cross_entropy"


def feedback_state(ep, key, params) -> dict:
    """The fixed random parts of the feedback, drawn once from the INITIAL params: random: the
    matrices B_l; mixed: the directions G_l (standard normal, shape of W_l^T); sign, symmetric: nothing."""
    keys = jax.random.split(key, len(params))
    layers = range(1, len(params))
    if ep.feedback == "random":
        return {"feedback": [random_feedback(keys[l], params[l]["w"]) for l in layers]}
    if ep.feedback == "mixed":
        w = [params[l]["w"] for l in layers]
        return {"feedback_directions": [jax.random.normal(keys[l], a.T.shape, a.dtype) for l, a in zip(layers, w)]}
    return {}


def feedback_matrices(ep, params, fixed, angle=None) -> dict:
    """{l: B_l} for l = 1 .. L-1 as `ep.feedback` defines them from the current W (see the module
    docstring); `fixed` is feedback_state's draw; `angle` overrides ep.feedback_angle (mixed)."""
    layers = range(1, len(params))
    if ep.feedback == "random":
        return {l: fixed["feedback"][l - 1] for l in layers}
    if ep.feedback == "sign":
        return {l: sign_feedback(params[l]["w"]) for l in layers}
    if ep.feedback == "mixed":
        a = ep.feedback_angle if angle is None else angle
        return {l: mixed_feedback(params[l]["w"], fixed["feedback_directions"][l - 1], a) for l in layers}
    return {l: params[l]["w"].T for l in layers}


def effective_params(ep, params, state):
    """The parameters the dynamics run on: params itself when B = W^T (symmetric) or when B is
    learned (params[l]["fb"] is already there); else params with the fixed B_l inserted as "fb"."""
    if not separate_feedback(ep) or ep.learn_feedback:
        return params
    return with_feedback(params, feedback_matrices(ep, params, state))


class Network(NamedTuple):
    trainable: list  # the layers of the dynamics, as trained (a learned B_l is params[l]["fb"])
    running: list  # the layers the dynamics run on: trainable with the fixed feedback inserted
    readout: dict | None  # the cross-entropy readout, or None (mean-squared cost on s_L)
    feedback: Callable | None  # trainable -> running (None: the identity), for the exact references
    rho: Rho
    arch: Architecture | None = None  # the dynamics' layers (models/conv_energy.py); None: dense, of params' shapes


def dynamics_architecture(config) -> Architecture | None:
    """The layers the dynamics run on when model.arch is a conv net (the readout left out), else None:
    an MLP's are the dense layers of its params' shapes (energy.layers_of), the same one code path."""
    full = architectures.of_config(config)
    if full.is_mlp:
        return None
    return full._replace(layers=full.layers[:-1]) if has_readout(config) else full


def network(config, params, state) -> Network:
    """The network EP runs on, from the trainable params and the rule state (its fixed feedback)."""
    ep = config.ep
    trainable, readout = split_readout(params, has_readout(config))
    feedback = (lambda p: effective_params(ep, p, state)) if separate_feedback(ep) else None
    running = feedback(trainable) if feedback else trainable
    return Network(trainable, running, readout, feedback, neuron_model(config), dynamics_architecture(config))


def neuron_model(config) -> Rho:
    """model.activation under `ep.dynamics`: gradient, s <- s - eps dF/ds (Scellier & Bengio 2017);
    primitive, s <- rho(dPhi/ds) (Laborieux et al. 2021; energy.primitive_dynamics); with
    `ep.output_layer` linear the output layer's rho is the identity (energy.with_linear_output)."""
    rho = RHOS[config.model.activation]
    if config.ep.dynamics == "primitive":
        return primitive_dynamics(rho)
    return with_linear_output(rho) if config.ep.output_layer == "linear" else rho


# ----------------------------------------------------------------------------------------------
# The contrastive estimate.


class Contrast(NamedTuple):
    grads: list  # the estimate as a gradient (descent direction), structured like the trainable params
    shift: list  # per layer (s^beta - s^0)/beta, or (s^{+beta} - s^{-beta})/2beta
    steps: jax.Array  # nudged steps taken
    residual: jax.Array  # nudged phase's last step, largest over the batch


def start_states(config, net: Network, x, state=(), idx=None) -> list:
    """Where the free phase starts: the examples' persistent particles (ep.persistent, idx their
    positions in the training split), else zero."""
    if config.ep.persistent and idx is not None:
        return [p[idx] for p in state["particles"]]
    return zero_states(net.running, x.shape[0], x.dtype, net.arch)


def free_phase(config, net: Network, x, y, start, steps: int, tol: float) -> tuple[jax.Array, Settled]:
    """(the clamped input's drive, the free phase settled from `start` for `steps` steps or to `tol`)."""
    ep = config.ep
    drive0 = input_drive(net.running, x, net.arch)
    return drive0, settle(net.running, start, drive0, y, 0.0, net.rho, ep.eps, steps, tol, readout=net.readout,
                          arch=net.arch)


def cost_weight(ep) -> float:
    """C over 1/2 |y - s_L|^2: 1 (half_squared) or 2 (squared). The squared cost's nudged state at beta
    is the half-squared one's at 2 beta, and every gradient of it (the estimate's target, the implicit
    and BPTT references) is twice the half-squared one's, so the weight enters the nudge and the
    references, and the estimate keeps its 1/beta: (1/beta)(dE/dtheta(s^{2 beta}) - dE/dtheta(s^0))
    estimates the squared cost's gradient (tested)."""
    return 2.0 if ep.cost == "squared" else 1.0


def contrast(config, net: Network, x, y, drive0, s0, beta, symmetric: bool, steps: int, tol: float) -> Contrast:
    """The nudged phase(s) from the free state s0 and the contrastive estimate: (s^0, s^beta)
    one-sided, or (s^{+beta}, s^{-beta}) symmetric (both settled as one batch of twice the size)."""
    ep, rho = config.ep, net.rho
    weight = cost_weight(ep)

    def nudge(start, drive, target, b):  # the force of beta C: weight x the half-squared cost's
        return settle(net.running, start, drive, target, weight * b, rho, ep.eps, steps, tol, readout=net.readout,
                      arch=net.arch)

    if symmetric:
        n = y.shape[0]
        twice = lambda a: jnp.concatenate([a, a])
        signs = jnp.concatenate([jnp.full((n, 1), beta, y.dtype), jnp.full((n, 1), -beta, y.dtype)])
        both = nudge([twice(s) for s in s0], twice(drive0), twice(y), signs)
        plus, minus = [s[:n] for s in both.states], [s[n:] for s in both.states]
        grads = hebbian_contrast(plus, minus, x, rho, 1.0 / (2.0 * beta), net.running, net.arch)
        shift = [(a - b) / (2.0 * beta) for a, b in zip(plus, minus)]
        settled, tops = both, [plus[-1], minus[-1]]
    else:
        settled = nudge(s0, drive0, y, beta)
        grads = hebbian_contrast(settled.states, s0, x, rho, 1.0 / beta, net.running, net.arch)
        shift = [(a - b) / beta for a, b in zip(settled.states, s0)]
        tops = [settled.states[-1]]
    if net.readout is not None:
        grads = grads + [_readout_gradient(tops, y, net.readout, rho)]
    return Contrast(_with_learned_feedback(config, net, grads), shift, settled.steps, settled.residual)


def clamped_contrast(config, net: Network, x, y, drive0, s0, eta, steps: int, tol: float) -> Contrast:
    """The second phase from the free state s0 with the output layer clamped to
    (1 - eta) s_L^0 + eta y, and (1/eta)(dE/dtheta(s^c) - dE/dtheta(s^0)): coupled learning, and
    at eta = 1 contrastive learning (the module docstring). Mean-squared cost (no readout)."""
    ep, rho = config.ep, net.rho
    clamp = (1.0 - eta) * s0[-1] + eta * y
    settled = settle(net.running, s0, drive0, y, 0.0, rho, ep.eps, steps, tol, clamp=clamp, arch=net.arch)
    grads = hebbian_contrast(settled.states, s0, x, rho, 1.0 / eta, net.running, net.arch)
    shift = [(a - b) / eta for a, b in zip(settled.states, s0)]
    return Contrast(_with_learned_feedback(config, net, grads), shift, settled.steps, settled.residual)


def _with_learned_feedback(config, net: Network, grads: list) -> list:
    """ep.learn_feedback: B_l learns W_l's update transposed (the same Hebbian products)."""
    if not config.ep.learn_feedback:
        return grads
    return [dict(g, fb=g["w"].T) if "fb" in layer else g for g, layer in zip(grads, net.trainable)]


def holomorphic_points(n_points: int, radius, dtype) -> tuple[jax.Array, jax.Array]:
    """(beta_k, w_k) for k = 0 .. N//2: the nudges beta_k = r exp(2 pi i k / N) settled, and the weight of
    each in the Fourier sum, 1/N for k = 0 and k = N/2 (real nudges +r, -r) and 2/N for the others,
    which stand for themselves and their conjugates beta_{N-k} = conj(beta_k): with real parameters,
    input and target, the settled state at conj(beta) is the conjugate of the one at beta (the
    dynamics have real coefficients), so Re sum_{k<N} f(beta_k)/N = sum_{k<=N/2} w_k Re f(beta_k)
    (Laborieux & Zenke's fast_ep_gradN pairs the phases so as well)."""
    k = jnp.arange(n_points // 2 + 1)
    betas = radius * jnp.exp(2j * jnp.pi * k.astype(dtype) / n_points)
    weights = jnp.where((k == 0) | (2 * k == n_points), 1.0, 2.0) / n_points
    return betas.astype(dtype), weights.astype(jnp.real(betas).dtype)


def holomorphic_contrast(config, net: Network, x, y, drive0, s0, radius, steps: int, tol: float,
                         n_points: int | None = None) -> Contrast:
    """Holomorphic EP (Laborieux & Zenke 2022, NeurIPS, "Holomorphic equilibrium propagation computes
    exact gradients through finite size oscillations"): the network settles from the free state s0
    under the complex nudges beta_k = r exp(2 pi i k / N), k = 0 .. N-1 (complex states, the
    holomorphic extension of rho), all phases at once (vmap), and the estimate is the discrete first
    Fourier coefficient of dE/dtheta along the circle |beta| = r: Cauchy's formula
    f'(0) = (1/2 pi i) contour f(beta)/beta^2 dbeta = (1/2 pi r) int f(r e^{i phi}) e^{-i phi} dphi
    with the integral as an N-point sum (the paper's text was not reachable here to quote its equation
    number; this is what their code computes, models/mlp.py fast_ep_gradN, dE/dtheta / beta_k averaged):
        dL/dtheta ~ (1/N) sum_k (1/beta_k) dE/dtheta(s_{beta_k}) = (1/(N r)) sum_k e^{-2 pi i k/N} dE/dtheta(s_k),
    whose error is the sum of the Taylor coefficients a_{N+1} r^N + a_{2N+1} r^{2N} + ... of
    f(beta) = dE/dtheta(s_beta) (the N-point sum of beta_k^{m-1} vanishes unless N divides m - 1):
    O(r^N), at a finite r. The free state's dE/dtheta(s^0) drops out (sum_k 1/beta_k = 0); it is
    subtracted anyway (the contrast of each phase with s0, the same sum) so that the sum adds
    differences. N = 2 is symmetric nudging, (1/2r)(dE/dtheta(s^{+r}) - dE/dtheta(s^{-r})).
    The readout's estimate is the mean over the N phases of dC/dR(s_k) (its part of dF/dtheta / beta).
    The phases at beta_k and conj(beta_k) are settled once (`holomorphic_points`); the parameters
    run as complex numbers of the states' precision (complex128 in float64)."""
    ep, rho = config.ep, net.rho
    n_points = ep.holomorphic_points if n_points is None else n_points
    complex_dtype = jnp.result_type(drive0.dtype, jnp.complex64)
    betas, weights = holomorphic_points(n_points, radius, complex_dtype)
    as_complex = lambda tree: jax.tree_util.tree_map(lambda a: a.astype(complex_dtype), tree)
    params, start = as_complex(net.running), as_complex(s0)
    drive, target, readout = drive0.astype(complex_dtype), y.astype(complex_dtype), as_complex(net.readout)

    def phase(beta):
        settled = settle(params, start, drive, target, cost_weight(ep) * beta, rho, ep.eps, steps, tol,
                         readout=readout, arch=net.arch)
        scale = 1.0 / beta
        grads = hebbian_contrast(settled.states, start, x.astype(complex_dtype), rho, scale, params, net.arch)
        shift = [scale * (a - b) for a, b in zip(settled.states, start)]
        if readout is not None:
            grads = grads + [holomorphic_readout_gradient(settled.states[-1], target, readout, rho)]
        return grads, shift, settled.steps, settled.residual

    grads, shift, phase_steps, residuals = jax.vmap(phase)(betas)
    fourier = lambda a: jnp.tensordot(weights, jnp.real(a), axes=1)  # Re sum_k w_k a_k
    tmap = jax.tree_util.tree_map
    return Contrast(_with_learned_feedback(config, net, tmap(fourier, grads)), tmap(fourier, shift),
                    jnp.max(phase_steps), jnp.max(residuals))


def holomorphic_readout_gradient(top, y, readout, rho: Rho) -> dict:
    """dC/dR at a (complex) top layer, batch mean: the readout's delta rule rho(s_top)^T (softmax - y),
    holomorphic in s_top (jax.grad needs a real cost; this is its formula, tested against it)."""
    error = jax.nn.softmax(rho.f(top) @ readout["w"] + readout["b"]) - y
    return {"w": rho.f(top).T @ error / top.shape[0], "b": jnp.mean(error, axis=0)}


def parse_estimator(label: str) -> tuple[str, int | None] | None:
    """(estimator, holomorphic points) of an estimator label: a name of ESTIMATORS (points None: the
    config's ep.holomorphic_points), or 'holomorphic-N' (N >= 2), holomorphic EP at N points, as the
    beta sweep compares several N side by side; None for anything else."""
    if label in ESTIMATORS:
        return label, None
    name, _, points = label.partition("-")
    if name == "holomorphic" and points.isdigit() and int(points) >= 2:
        return name, int(points)
    return None


def second_phase(config, net: Network, x, y, drive0, s0, beta, key, steps: int, tol: float,
                 estimator: str | None = None) -> Contrast:
    """The second state(s) from the free state s0 and the estimate, as `estimator` (default
    ep.estimator; any label of `parse_estimator`) obtains them, at strength `beta` (eta for coupled;
    clamped ignores it; the radius r for holomorphic); `key` draws random-sign's sign."""
    estimator, points = parse_estimator(config.ep.estimator if estimator is None else estimator)
    if estimator == "holomorphic":
        return holomorphic_contrast(config, net, x, y, drive0, s0, beta, steps, tol, points)
    if estimator in CLAMPED_ESTIMATORS:
        eta = 1.0 if estimator == "clamped" else beta
        return clamped_contrast(config, net, x, y, drive0, s0, eta, steps, tol)
    return contrast(config, net, x, y, drive0, s0, signed_beta(estimator, beta, key), estimator == "symmetric", steps,
                    tol)


def _readout_gradient(top_states, y, readout, rho: Rho):
    """dC/dR (batch mean) at the top-layer states given, averaged over the list."""
    grad = lambda top: jax.grad(lambda r: jnp.mean(cost([top], y, r, rho)))(readout)
    grads = [grad(top) for top in top_states]
    return jax.tree_util.tree_map(lambda *g: sum(g) / len(g), *grads)


def signed_beta(estimator: str, beta, key):
    """The nudge's signed strength: random-sign: +beta or -beta drawn from `key` (any shape of
    beta); negative: -beta; else beta."""
    if estimator == "negative":
        return -beta
    if estimator != "random-sign":
        return beta
    return jnp.where(jax.random.bernoulli(key, shape=jnp.shape(beta)), beta, -beta)


def estimate(config, net: Network, x, y, key, start, beta=None) -> tuple[Settled, Contrast]:
    """The update that trains: the free phase from `start` (T1 steps), then the configured
    estimator's nudged phase(s) (T2 steps), at `beta` (default ep.beta); (free phase, estimate)."""
    ep = config.ep
    beta = ep.beta if beta is None else beta
    drive0, free = free_phase(config, net, x, y, start, ep.free_steps, ep.tolerance)
    return free, second_phase(config, net, x, y, drive0, free.states, beta, key, ep.nudged_steps, ep.tolerance)


# ----------------------------------------------------------------------------------------------
# The exact references.


def _identity(params):
    return params


def _tree_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(tree)))


SMALLEST_BATCH = 16  # free_fixed_point's smallest batch of examples still settling


def free_fixed_point(params, x, rho: Rho, eps: float, max_steps: int, tol: float, start=None,
                     arch: Architecture | None = None) -> Settled:
    """The free equilibrium, settled from `start` (default zero): each example until its step is below
    `tol`, for at most `max_steps` steps. `residual`: the largest over the batch of the last step.

    Examples do not interact, so an example that has converged stops while the others go on, and
    once half the examples have stopped the rest continue as a batch of half the size (and so on
    down to SMALLEST_BATCH): the few slow examples of a probe batch do not cost a whole batch per
    step. Each example's state is the one it reaches alone, settled to `tol`. `arch`: a conv net's layers."""
    drive0 = input_drive(params, x, arch)
    states = zero_states(params, x.shape[0], x.dtype, arch) if start is None else start
    y = jnp.zeros_like(states[-1])
    n = x.shape[0]
    last = jnp.full((n,), jnp.inf, drive0.dtype)  # each example's last step
    moving, t = jnp.ones((n,), bool), jnp.asarray(0, jnp.int32)
    sizes = [n]
    while sizes[-1] // 2 >= SMALLEST_BATCH:
        sizes.append(sizes[-1] // 2)
    for size, smaller in zip(sizes, sizes[1:] + [0]):  # the last batch goes on until every example stopped
        at = jnp.argsort(~moving, stable=True)[:size]  # the moving examples first
        take = lambda a: a[at]
        sub_states, sub_last, sub_moving, t = _settle_examples(
            params, [take(s) for s in states], take(drive0), take(y), rho, eps, max_steps, tol, take(last),
            take(moving), t, smaller, arch)
        states = [s.at[at].set(u) for s, u in zip(states, sub_states)]
        last, moving = last.at[at].set(sub_last), moving.at[at].set(sub_moving)
    return Settled(states, t, jnp.max(last))


def _settle_examples(params, states, drive0, y, rho: Rho, eps: float, max_steps: int, tol: float, last, moving, t,
                     until: int, arch=None):
    """Steps the moving examples (the others keep their state) while more than `until` move and
    fewer than `max_steps` steps were taken; (states, last step per example, moving, steps)."""

    def cond(carry):
        _, _, moving, t = carry
        return (t < max_steps) & (jnp.sum(moving) > until)

    def body(carry):
        states, last, moving, t = carry
        new = step(params, states, drive0, y, 0.0, rho, eps, arch=arch)
        moved = residual(new, states)
        keep = lambda a, b: jnp.where(moving[:, None], a, b)
        return ([keep(a, b) for a, b in zip(new, states)], jnp.where(moving, moved, last), moving & (moved >= tol),
                t + 1)

    return jax.lax.while_loop(cond, body, (states, last, moving, t))


def solve_adjoint(params, fixed_point, x, y, g, rho: Rho, eps: float, max_iterations: int, tol: float = 1e-6,
                  external=None, readout=None, arch: Architecture | None = None):
    """lambda solving (I - J^T) lambda = g, J = dPhi/ds at the fixed point; returns (lambda, misfit).

    The settling map is a step along the vector field v followed by the projection onto [0, 1]:
    J = D (I + eps dv/ds), with D the 0/1 diagonal of units the projection leaves free. On the free
    units the system is -eps (dv/ds)_FF^T lambda_F = g_F; the pinned units follow,
    lambda = g + J^T lambda_F. With symmetric weights -dv/ds = H, the Hessian of E (symmetric,
    positive definite at a stable minimum): conjugate gradients. With separate feedback, or the
    primitive dynamics (J = diag(rho') d^2Phi/ds^2, models/energy.py), it is not symmetric: BiCGSTAB (Van der Vorst 1992), which needs no symmetry and compiles to a smaller
    program than jax's GMRES (measured: docs/implementation-notes.md); when the dynamics contract, the
    free block of I - J^T has its eigenvalues in the disc of radius rho(J) < 1 around 1, and it
    converges to rounding on the networks tested; the misfit below says when it did not.
    `misfit` = |(I - J^T) lambda - g| / |g| tells whether that worked: it stays large where the
    settled state is no fixed point (the free phase has not converged: see its residual).
    `external`: the extra drive u of the dynamics at that fixed point (models/energy.py), if any;
    `arch`: a conv net's layers.
    """
    drive0 = input_drive(params, x, arch)

    def phi(s):
        return step(params, s, drive0, y, 0.0, rho, eps, external, readout, arch)

    _, vjp_states = jax.vjp(phi, fixed_point)
    mask = free_units(params, fixed_point, drive0, y, 0.0, rho, eps, external, readout, arch)
    tmap = jax.tree_util.tree_map
    apply_mask = lambda v: tmap(jnp.multiply, mask, v)

    def adjoint_operator(lam):
        return tmap(jnp.subtract, lam, vjp_states(lam)[0])

    def relative_misfit(lam):
        return _tree_norm(tmap(jnp.subtract, adjoint_operator(lam), g)) / (_tree_norm(g) + 1e-30)

    rhs = apply_mask(g)
    operator = lambda v: apply_mask(adjoint_operator(apply_mask(v)))
    if not symmetric_jacobian(params, rho):
        free_part, _ = jax.scipy.sparse.linalg.bicgstab(operator, rhs, tol=tol, atol=0.0, maxiter=max_iterations)
    else:
        free_part = _conjugate_gradients(params, fixed_point, x, y, mask, rhs, rho, eps, max_iterations, tol,
                                         external, readout, arch)
    # every unit that the cost sees pinned by the projection: the gradient is exactly zero (and
    # the Krylov solvers would divide 0 by 0)
    nothing_free = _tree_norm(rhs) == 0
    free_part = tmap(lambda v: jnp.where(nothing_free, 0.0, v), free_part)
    lam = tmap(jnp.add, g, vjp_states(apply_mask(free_part))[0])
    return lam, relative_misfit(lam)


def _conjugate_gradients(params, fixed_point, x, y, mask, rhs, rho: Rho, eps: float, max_iterations: int, tol: float,
                         external=None, readout=None, arch=None):
    """The free part of solve_adjoint's symmetric system D (I - J^T) D v = rhs by conjugate gradients,
    per example: the system is block-diagonal (one block per example), so each example runs its own
    recurrence (its own step lengths) and stops once its residual is below tol times its right-hand
    side (then the whole batch's is too). One recurrence over the whole batch, as jax.scipy's cg
    runs it, couples the blocks through shared step lengths: in float32 it stalled at misfits of
    1e-2 where the per-example one reaches 1e-5 in a fraction of the iterations."""
    tmap = jax.tree_util.tree_map
    masked = lambda v: tmap(jnp.multiply, mask, v)
    drive0 = input_drive(params, x, arch)
    _, vjp_states = jax.vjp(lambda s: step(params, s, drive0, y, 0.0, rho, eps, external, readout, arch), fixed_point)
    operator = lambda v: masked(tmap(jnp.subtract, masked(v), vjp_states(masked(v))[0]))
    dot = lambda a, b: sum(jnp.sum(u * v, axis=-1) for u, v in zip(a, b))  # per example
    along = lambda a, b, c: [u + c[:, None] * v for u, v in zip(a, b)]
    rs = dot(rhs, rhs)
    target = tol**2 * rs  # |r|^2 <= tol^2 |b|^2, per example

    def cond(carry):
        *_, rs, t = carry
        return (t < max_iterations) & jnp.any(rs > target)

    def body(carry):
        solution, r, p, rs, t = carry
        moving = rs > target
        ap = operator(p)
        alpha = jnp.where(moving, rs / jnp.where(moving, dot(p, ap), 1.0), 0.0)
        solution, r = along(solution, p, alpha), along(r, ap, -alpha)
        rs_new = jnp.where(moving, dot(r, r), rs)
        beta = jnp.where(moving, rs_new / jnp.where(moving, rs, 1.0), 0.0)
        p = [jnp.where(moving[:, None], u + beta[:, None] * v, v) for u, v in zip(r, p)]
        return solution, r, p, rs_new, t + 1

    carry = (tmap(jnp.zeros_like, rhs), rhs, rhs, rs, jnp.asarray(0, jnp.int32))
    return jax.lax.while_loop(cond, body, carry)[0]


def implicit_gradient(params, fixed_point, x, y, rho: Rho, eps: float, max_iterations: int, tol: float = 1e-6,
                      feedback=None, readout=None, arch: Architecture | None = None):
    """dC/dtheta at the fixed point by implicit differentiation; returns (grads, residual).

    Solves the adjoint system (I - J^T) lambda = dC/ds (`solve_adjoint`), then
    dC/dtheta = (dPhi/dtheta)^T lambda. `params` are the trainable parameters of the dynamics;
    `feedback(params)` (default: the identity) the parameters the dynamics run on, differentiated
    through. With a cross-entropy `readout` R the cost is C(s_top, R) and the gradients get one more
    layer, dC/dR at the fixed point (the readout does not act on the free dynamics). `residual` is
    the adjoint solve's relative misfit. `arch`: a conv net's layers (the same formulas, the settling
    map being the conv energy's).
    """
    feedback = feedback or _identity

    def phi(p, s):
        q = feedback(p)
        return step(q, s, input_drive(q, x, arch), y, 0.0, rho, eps, readout=readout, arch=arch)

    g = jax.grad(lambda s: jnp.mean(cost(s, y, readout, rho)))(fixed_point)
    lam, misfit = solve_adjoint(feedback(params), fixed_point, x, y, g, rho, eps, max_iterations, tol, readout=readout,
                                arch=arch)
    _, vjp_params = jax.vjp(lambda p: phi(p, fixed_point), params)
    (grads,) = vjp_params(lam)
    if readout is not None:
        grads = list(grads) + [jax.grad(lambda r: jnp.mean(cost(fixed_point, y, r, rho)))(readout)]
    return grads, misfit


def bptt_gradient(params, x, y, rho: Rho, eps: float, steps: int, feedback=None, readout=None, start=None,
                  arch: Architecture | None = None):
    """dC/dtheta through exactly `steps` free steps from `start` (default zero; lax.scan, reverse-mode);
    `feedback`, `readout` and `arch` as in implicit_gradient (with a readout, its gradient is the last layer)."""
    feedback = feedback or _identity

    def loss(p, r):
        q = feedback(p)
        initial = zero_states(q, x.shape[0], x.dtype, arch) if start is None else start
        final = settle_fixed(q, initial, x, y, 0.0, rho, eps, steps, readout=r, arch=arch)
        return jnp.mean(cost(final, y, r, rho))

    if readout is None:
        return jax.grad(loss)(params, None)
    grads, readout_grad = jax.grad(loss, argnums=(0, 1))(params, readout)
    return list(grads) + [readout_grad]


def lanczos_extremes(matvec, start, iterations: int):
    """The extreme eigenvalues of a symmetric operator per example, by Lanczos: (lowest, highest,
    change), each of shape (batch,).

    `matvec` maps (batch, n) to (batch, n) and must be symmetric per example (block-diagonal over
    the batch); `start` (batch, n) is the starting vector. k = min(iterations, n) steps of the
    three-term recurrence give the tridiagonal T_k, whose extreme eigenvalues (the Ritz values)
    lie inside the spectrum: the highest never above the largest eigenvalue, the lowest never
    below the smallest. By interlacing they only move outwards as k grows, so `change`, the larger
    of the two extremes' moves between T_{k/2} and T_k, is the convergence check: near 0 they
    have stopped moving (converged), large means more steps are needed. Lanczos finds the
    extremes of a clustered spectrum in far fewer steps than power iteration: its error falls
    like exp(-2k sqrt(gap / spread)) against (1 - gap)^k (Parlett 1998, "The symmetric eigenvalue
    problem", ch. 12-13). The plain recurrence, as cheap as power iteration (one product and O(n)
    work per step, no stored basis; full reorthogonalisation of a 512-example probe took a minute
    of CPU): in floating point its vectors lose orthogonality once a Ritz value converges, which
    makes copies ("ghosts") of converged eigenvalues but no values outside the spectrum (Paige
    1980, Linear Algebra Appl. 34:235). Tested against dense eigenvalues.
    """
    batch, n = start.shape
    k = min(iterations, n)
    dtype = start.dtype
    eps = jnp.finfo(dtype).eps
    unit = lambda v: v / (jnp.linalg.norm(v, axis=-1, keepdims=True) + jnp.finfo(dtype).tiny)

    def body(j, carry):
        previous, v, beta_previous, alphas, betas = carry
        w = matvec(v) - beta_previous[:, None] * previous
        alpha = jnp.sum(w * v, axis=-1)
        w = w - alpha[:, None] * v
        beta = jnp.linalg.norm(w, axis=-1)
        # breakdown (an invariant subspace found): T_k's rest decouples with zeros, which lie in
        # [lowest, highest] of a spectrum that contains the pinned units' zeros anyway
        nxt = jnp.where(beta[:, None] > eps * (jnp.abs(alpha)[:, None] + 1.0), unit(w), 0.0)
        beta = jnp.where(jnp.any(nxt != 0, axis=-1), beta, 0.0)
        return v, nxt, beta, alphas.at[:, j].set(alpha), betas.at[:, j].set(beta)

    zeros = jnp.zeros((batch, k), dtype)
    carry = (jnp.zeros_like(start), unit(start), jnp.zeros((batch,), dtype), zeros, zeros)
    *_, alphas, betas = jax.lax.fori_loop(0, k, body, carry)
    ritz = jax.vmap(lambda d, e: jax.scipy.linalg.eigh_tridiagonal(d, e, eigvals_only=True))
    final = ritz(alphas, betas[:, :-1])
    half = max(k // 2, 1)
    earlier = ritz(alphas[:, :half], betas[:, : half - 1]) if half > 1 else alphas[:, :1]
    change = jnp.maximum(final[:, -1] - earlier[:, -1], earlier[:, 0] - final[:, 0])
    return final[:, 0], final[:, -1], change


def spectral_radius_with_error(params, fixed_point, x, rho: Rho, eps: float, key, iterations: int = 100,
                               arch: Architecture | None = None):
    """(radius, error): the spectral radius of the settling map's Jacobian J = dPhi/ds at the fixed
    point, the largest over the batch (J is block-diagonal, one block per example), and the
    estimate's convergence check.

    Symmetric feedback: J is similar to a symmetric matrix, so its eigenvalues are real. For a
    smooth rho, J = (1 - eps) I + eps (diag(rho'' drive) + R M R), R = diag(rho'), M the symmetric
    coupling of the layers by W and W^T: symmetric. For the hard sigmoid, J = D A with A symmetric
    and D the 0/1 diagonal of the units the projection leaves free: its nonzero eigenvalues are
    those of D A D (the rows of the pinned units are zero). So the operator v -> D J D v is
    symmetric with J's spectrum, and Lanczos (`lanczos_extremes`) gives its extremes: `radius`
    = max(theta_max, -theta_min) of the example where it is largest, never above the true radius,
    and `error` the largest over the examples of how far that estimate moved over the last half
    of the Lanczos steps (0: converged; not a rigorous bound). 100 plain power iterations fall
    short on a nearly marginal network (0.9915 for 0.9966 at 784-500-10, 0.993 for 1.003 at
    784-500-500-10 at initialisation, 64 and 16 probe examples: its top eigenvalues crowd
    together); Lanczos does not (tested against the dense eigenvalues).
    Separate feedback (J is not symmetric and may have complex eigenvalues) and the primitive
    dynamics (models/energy.py; J = (1 - eps) I + eps diag(rho') d^2Phi/ds^2 has real eigenvalues,
    but is not symmetric): the estimate is the
    geometric mean of the power iteration's growth over the second half of the iterations
    (|J^k v|^(1/k) tends to the radius whatever the eigenvalues, Gelfand's formula), with no error
    bound: `error` is NaN.
    """
    y = jnp.zeros_like(fixed_point[-1])
    drive0 = input_drive(params, x, arch)
    _, jvp = jax.linearize(lambda s: step(params, s, drive0, y, 0.0, rho, eps, arch=arch), fixed_point)
    keys = jax.random.split(key, len(fixed_point))
    v = [jax.random.normal(k, s.shape, s.dtype) for k, s in zip(keys, fixed_point)]

    if not symmetric_jacobian(params, rho):
        burn_in = iterations // 2

        def averaged(i, carry):
            v, log_sum = carry
            jv = jvp(v)
            norm = _tree_norm(jv)
            log_sum = log_sum + jnp.where(i >= burn_in, jnp.log(norm / _tree_norm(v) + 1e-30), 0.0)
            return [a / (norm + 1e-30) for a in jv], log_sum

        _, log_sum = jax.lax.fori_loop(0, iterations, averaged, (v, jnp.asarray(0.0, x.dtype)))
        return jnp.exp(log_sum / max(iterations - burn_in, 1)), jnp.asarray(jnp.nan, x.dtype)

    mask = jnp.concatenate(free_units(params, fixed_point, drive0, y, 0.0, rho, eps, arch=arch), axis=-1)
    widths = [s.shape[1] for s in fixed_point]
    cuts = [sum(widths[: i + 1]) for i in range(len(widths) - 1)]
    symmetric = lambda flat: mask * jnp.concatenate(jvp(jnp.split(mask * flat, cuts, axis=-1)), axis=-1)
    low, high, change = lanczos_extremes(symmetric, mask * jnp.concatenate(v, axis=-1), iterations)
    return jnp.max(jnp.maximum(high, -low)), jnp.max(change)


def spectral_radius(params, fixed_point, x, rho: Rho, eps: float, key, iterations: int = 100,
                    arch: Architecture | None = None):
    """The spectral radius of dPhi/ds at the fixed point, the largest over the batch: below 1 the
    settling dynamics contract towards it. `spectral_radius_with_error`'s estimate (Lanczos for
    symmetric feedback, power iteration for separate feedback)."""
    return spectral_radius_with_error(params, fixed_point, x, rho, eps, key, iterations, arch)[0]


def implicit_reference(config, net: Network, x, y, start=None) -> tuple[Settled, list, jax.Array]:
    """(the free fixed point, the implicit gradient there, the adjoint solve's relative misfit).

    The fixed point is settled to ep.reference_tolerance within ep.reference_steps steps from `start`
    (default zero); the gradient, of the cost ep.cost names, is with respect to the trainable params
    (readout last)."""
    ep = config.ep
    fixed = free_fixed_point(net.running, x, net.rho, ep.eps, ep.reference_steps, ep.reference_tolerance, start,
                             net.arch)
    grads, misfit = implicit_gradient(net.trainable, fixed.states, x, y, net.rho, ep.eps, ep.adjoint_steps,
                                      ep.reference_tolerance, feedback=net.feedback, readout=net.readout,
                                      arch=net.arch)
    return fixed, _weighted(grads, cost_weight(ep)), misfit


def _weighted(grads, weight: float):
    return grads if weight == 1.0 else jax.tree_util.tree_map(lambda g: weight * g, grads)


@full_float32  # a reference: at full float32 (precision.py)
def exact_references(config, net: Network, x, y, key, start=None) -> dict:
    """Fixed point, implicit and BPTT gradients, and the diagnostics of computing them; the free
    phase of the network (BPTT) and the reference's settling start from `start` (default zero)."""
    ep = config.ep
    fixed, implicit, misfit = implicit_reference(config, net, x, y, start)
    return {
        "fixed_point": fixed,
        "implicit": implicit,
        "adjoint_residual": misfit,
        "bptt": _weighted(bptt_gradient(net.trainable, x, y, net.rho, ep.eps, ep.free_steps, feedback=net.feedback,
                                        readout=net.readout, start=start, arch=net.arch), cost_weight(ep)),
        "spectral_radius": spectral_radius(net.running, fixed.states, x, net.rho, ep.eps, key, arch=net.arch),
    }
