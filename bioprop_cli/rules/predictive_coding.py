"""pc: predictive coding (Whittington & Bogacz 2017, Neural Computation 29:1229), in the formulation of
Millidge, Tschantz & Buckley 2022 (their code, BerenMillidge/PredictiveCodingBackprop layers.py
FCLayer: f(x W)): a layer predicts the next as f(x_l W_l + b_l), the nonlinearity after the weights,
so that the feedforward pass is the MLP's. Whittington & Bogacz 2017 predict W f(x) + b (the
nonlinearity on the predicting node, before the weights): a different energy, with different
equilibria. jpc's `make_mlp` (thebuckleylab/jpc, jpc/_utils.py) built f(W z) layers until May 2025
and builds W phi(z) ones since (nn.Lambda(act) before nn.Linear, for its muPC scalings).

The default output precision differs from both libraries: gamma = `pc.output_precision` = 0.1
weights the output energy ten times below each hidden layer's, where jpc (`pc_energy_fn`,
output_energy_scaling None = 1) and pcx (`ce_energy`, no factor) weight every layer's energy
equally. `--set pc.output_precision=1` is their weighting (docs/results.md, Predictive coding,
compares the two).

The MLP of models/mlp.py read as a hierarchy of value nodes x_0 = input (clamped), x_1 .. x_{L-1}
(hidden, free), each predicting the next: mu_{l+1} = f(a_l), a_l = x_l W_l + b_l, the last
prediction mu_L = a_{L-1} being the logits. Per example, the energy is
    F = sum_{l=1}^{L-1} |e_l|^2 / 2 + gamma loss(mu_L, y),   e_l = x_l - mu_l,
the output node clamped to the target. Its output term is the loss itself, as in jpc
(thebuckleylab/jpc, `pc_energy_fn(loss="ce")`) and pcx (`ce_energy`), and as Millidge, Tschantz &
Buckley 2022 (Neural Computation 34:1329) generalise the output error to any loss: the output
error is e_L = -gamma dloss/dmu_L, gamma (y - mu_L) for mse, gamma (y - softmax(mu_L)) for
cross-entropy. gamma = `pc.output_precision` is the output layer's precision 1/Sigma_L of
Whittington & Bogacz (default 0.1). Writing eps_l = e_{l+1} * f'(a_l) for hidden l and
eps_{L-1} = e_L (linear output),
    dF/dx_l = e_l - eps_l W_l^T,    dF/dW_l = -x_l^T eps_l,    dF/db_l = -sum eps_l.
The value nodes start at the feedforward pass (all hidden errors 0, F = gamma loss) and relax by
x_l <- x_l - pc.inference_lr dF/dx_l for pc.inference_steps steps; the weights then learn from the
local error and the presynaptic activity, returned like every rule's gradient, as the descent
direction of the batch mean: grad W_l = x_l^T delta_l, delta_l = -eps_l / (batch gamma) (at the
feedforward pass delta_{L-1} is the loss's error, so the output layer's update starts as backprop's).
pc.inference_steps is a loop bound, not a shape: it may be a traced integer, so one compiled program
measures every step count (metrics/predictive_coding.py).

Variants (`pc.variant`):
- standard: as above. At equilibrium e_l = eps_l W_l^T, backprop's recursion, but evaluated at
  the relaxed nodes and started from the relaxed output error, which is a fixed linear map of the
  feedforward one (for one linear hidden layer, r (I + gamma W^T W)^{-1} W^T instead of r W^T):
  shrinking the error by moving the target towards the output does not remove that bias, a small
  output precision does. The update tends to backprop's as gamma -> 0 with enough inference
  (bias O(gamma), like EP's O(beta)): Whittington & Bogacz 2017's condition of a large output
  variance; Rosenbaum 2022 (PLoS ONE 17:e0266102) reviews it.
- fixed_prediction: the fixed-prediction assumption (Millidge, Tschantz & Buckley 2022): every
  prediction mu_l and its derivative f'(a_l) are held at their feedforward values, so
  e_l <- e_l - lr (e_l - eps_l W_l^T) with eps_l fixed by e_{l+1}: a linear, triangular system
  whose fixed point is backprop's deltas (times gamma); the weights learn from the feedforward
  activity h_l and the relaxed errors. Equal to backprop once inference has converged (exactly
  after L-1 steps at rate 1).
- zero_divergence: Z-IL (Song, Lukasiewicz, Xu & Bogacz 2020, NeurIPS): rate 1, the value nodes
  start at the feedforward pass, and W_l learns at inference step L-1-l (counted from the
  output), when the error e_{l+1} has just arrived and x_l has not moved yet; equal to backprop.
  Its schedule fixes the number of steps (L-1) and the rate (1): pc.inference_steps and
  pc.inference_lr do not apply. Each layer's update is recorded at its step and applied by the
  optimizer after inference, like every rule's (the weights stay fixed during inference).
Predictions at test time are the feedforward pass. Diagnostics (`aux`, logged with the alignment
measurements): the batch-mean energy when inference ends, its decrease from the feedforward
pass, and the residual, the largest per-example |dF/dx| left (the variant's own force).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from bioprop_cli.errors import UserError
from bioprop_cli.models.layers import weight_vjp
from bioprop_cli.models.mlp import Activation, Forward, Loss, forward
from bioprop_cli.rules.base import Estimate, LearningRule, model_functions


class Network(NamedTuple):
    act: Activation
    loss: Loss
    gamma: float  # pc.output_precision: the output energy is gamma * loss


class Inference(NamedTuple):
    presynaptic: list  # x_l that W_l learns from, l = 0 .. L-1
    eps: list  # eps_l = e_{l+1} * f'(a_l) that W_l learns from
    energy: jax.Array  # F of every example at the value nodes when inference ends
    residual: jax.Array  # max over the batch of |dF/dx| (the variant's force) when inference ends


class Local(NamedTuple):
    """What the value nodes define locally: pre-activations, prediction errors, weighted errors."""

    pre: list  # a_0 .. a_{L-1}
    errors: list  # e_1 .. e_L
    eps: list  # eps_0 .. eps_{L-1}


def pre_activations(params, nodes: list, first: jax.Array | None = None) -> list:
    """a_l = x_l W_l + b_l for every layer (nodes = [x_0 .. x_{L-1}]); `first`: a_0, when known
    (x_0 is clamped, so inference computes a_0 once)."""
    first = nodes[0] @ params[0]["w"] + params[0]["b"] if first is None else first
    return [first] + [x @ layer["w"] + layer["b"] for x, layer in zip(nodes[1:], params[1:])]


def output_error(net: Network, logits, y) -> jax.Array:
    """e_L = -gamma dloss/dmu_L of every example (loss.error carries 1/batch)."""
    return -net.gamma * y.shape[0] * net.loss.error(logits, y)


def local(net: Network, params, nodes: list, y, first=None) -> Local:
    """e_l = x_l - f(a_{l-1}) for the hidden nodes, e_L = -gamma dloss/dmu_L at the output;
    eps_l = e_{l+1} * f'(a_l) for hidden layers, e_L at the linear output."""
    pre = pre_activations(params, nodes, first)
    errors = [x - net.act.f(a) for x, a in zip(nodes[1:], pre[:-1])] + [output_error(net, pre[-1], y)]
    eps = [e * net.act.df(a) for e, a in zip(errors[:-1], pre[:-1])] + [errors[-1]]
    return Local(pre, errors, eps)


def energy_of(net: Network, loc: Local, y) -> jax.Array:
    """F of every example: the hidden |e_l|^2 / 2 plus gamma times the loss of the output prediction."""
    hidden = sum(0.5 * jnp.sum(e**2, axis=-1) for e in loc.errors[:-1])
    return hidden + net.gamma * net.loss.per_example(loc.pre[-1], y)


def energy(net: Network, params, nodes: list, y) -> jax.Array:
    """F of every example at the value nodes `nodes`."""
    return energy_of(net, local(net, params, nodes, y), y)


def forces(params, loc: Local) -> list:
    """dF/dx_l = e_l - eps_l W_l^T for the free nodes x_1 .. x_{L-1}."""
    return [e - d @ layer["w"].T for e, d, layer in zip(loc.errors[:-1], loc.eps[1:], params[1:])]


def node_gradients(net: Network, params, nodes: list, y, first=None) -> list:
    return forces(params, local(net, params, nodes, y, first))


def inference_step(net: Network, params, nodes: list, y, lr, first=None) -> list:
    """x_l <- x_l - lr dF/dx_l for the free nodes (all at once); x_0 stays clamped."""
    grads = node_gradients(net, params, nodes, y, first)
    return [nodes[0]] + [x - lr * g for x, g in zip(nodes[1:], grads)]


def max_norm(arrays: list) -> jax.Array:
    """The largest per-example Euclidean norm of the arrays' rows taken together."""
    return jnp.max(jnp.sqrt(sum(jnp.sum(a**2, axis=-1) for a in arrays)))


def learning_signal(net: Network, params, nodes: list, y, l: int, first) -> jax.Array:
    """eps_l at these value nodes (one product: a_l only)."""
    a = first if l == 0 else nodes[l] @ params[l]["w"] + params[l]["b"]
    if l == len(params) - 1:
        return output_error(net, a, y)
    return (nodes[l + 1] - net.act.f(a)) * net.act.df(a)


def standard(net: Network, params, fwd: Forward, y, pc) -> Inference:
    """Relaxation from the feedforward pass by gradient descent on F; every W_l learns at the end."""
    first = fwd.pre[0]

    def body(_, nodes):
        return inference_step(net, params, nodes, y, pc.inference_lr, first)

    nodes = jax.lax.fori_loop(0, pc.inference_steps, body, fwd.inputs)
    loc = local(net, params, nodes, y, first)
    return Inference(nodes, loc.eps, energy_of(net, loc, y), max_norm(forces(params, loc)))


def fixed_prediction(net: Network, params, fwd: Forward, y, pc) -> Inference:
    """Errors relaxed with every prediction and f'(a_l) held at the feedforward pass; W_l learns
    from the feedforward activity h_l and the relaxed e_{l+1} * f'(a_l)."""
    top = output_error(net, fwd.logits, y)
    slopes = [net.act.df(a) for a in fwd.pre[:-1]]

    def fixed(errors):  # errors = [e_1 .. e_{L-1}]; predictions and slopes at the feedforward pass
        return Local(fwd.pre, errors + [top], [e * s for e, s in zip(errors, slopes)] + [top])

    def body(_, errors):
        return [e - pc.inference_lr * g for e, g in zip(errors, forces(params, fixed(errors)))]

    zeros = [jnp.zeros_like(h) for h in fwd.inputs[1:]]
    errors = jax.lax.fori_loop(0, pc.inference_steps, body, zeros)
    nodes = [fwd.inputs[0]] + [h + e for h, e in zip(fwd.inputs[1:], errors)]
    reached = energy_of(net, local(net, params, nodes, y, fwd.pre[0]), y)  # with the true predictions
    return Inference(fwd.inputs, fixed(errors).eps, reached, max_norm(forces(params, fixed(errors))))


def zero_divergence(net: Network, params, fwd: Forward, y, pc) -> Inference:
    """Z-IL: rate-1 inference for L-1 steps from the feedforward pass; W_l learns at step L-1-l."""
    n_layers, first = len(params), fwd.pre[0]

    def body(nodes, _):
        new = inference_step(net, params, nodes, y, 1.0, first)
        return new, new

    final, trajectory = jax.lax.scan(body, fwd.inputs, None, length=n_layers - 1)
    at_step = [fwd.inputs] + [[x[t] for x in trajectory] for t in range(n_layers - 1)]
    presynaptic = [at_step[n_layers - 1 - l][l] for l in range(n_layers)]
    eps = [learning_signal(net, params, at_step[n_layers - 1 - l], y, l, first) for l in range(n_layers)]
    loc = local(net, params, final, y, first)
    return Inference(presynaptic, eps, energy_of(net, loc, y), max_norm(forces(params, loc)))


VARIANTS = {"standard": standard, "fixed_prediction": fixed_prediction, "zero_divergence": zero_divergence}


def make(config, arch, n_train: int = 0) -> LearningRule:
    if not arch.is_mlp:
        raise UserError("config key 'model.arch': pc runs on model.arch mlp only")
    pc = config.pc
    act, loss = model_functions(config)
    net, infer = Network(act, loss, pc.output_precision), VARIANTS[pc.variant]

    def estimate(params, state, x, y, key, idx=None):
        fwd = forward(params, x, act)
        inference = infer(net, params, fwd, y, pc)
        # descent direction of the batch-mean loss; 1/gamma makes it an estimate of the gradient
        deltas = [-d / (x.shape[0] * net.gamma) for d in inference.eps]
        grads = [weight_vjp(layer.op, h, d) for layer, h, d in zip(arch.layers, inference.presynaptic, deltas)]
        value = loss.value(fwd.logits, y)
        final = jnp.mean(inference.energy)  # it starts at gamma * loss: the hidden errors are 0
        aux = {"energy": final, "energy_decrease": net.gamma * value - final, "inference_residual": inference.residual}
        return Estimate(grads, state, deltas, value, fwd.logits, aux)

    def predict(params, state, x):
        return forward(params, x, act).logits

    # errors travel through W^T itself: no separate feedback to compare (like bp)
    return LearningRule(lambda key, params: (), estimate, lambda params, state, key: {}, predict)
