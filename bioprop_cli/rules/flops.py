"""Matrix-product FLOPs of one training step per example, the figure `bioprop bench` divides by the
machine's matmul peak. Each rule's registry record names its formula; `arch` is the network
(models/arch.py). One pass through a layer (its forward map, its weight gradient, or the error sent back
through it) costs 2 n_in n_out for a dense layer and 2 H'W' k^2 C_in C_out for a conv layer (H'W'
output positions, each a k^2 C_in-long dot product per output channel); pooling and activations are
not matrix products and are not counted."""

from __future__ import annotations

import math

from bioprop_cli.models.arch import Architecture, Conv


def layer_pass(op) -> int:
    """FLOPs of one pass through the layer's linear map, per example."""
    if isinstance(op, Conv):
        h, w, _ = op.out_shape
        return 2 * h * w * op.kernel * op.kernel * op.in_shape[2] * op.channels
    return 2 * op.n_in * op.n_out


def _passes(arch: Architecture) -> list[int]:
    return [layer_pass(layer.op) for layer in arch.layers]


def _forward_and_weight_gradients(arch: Architecture) -> int:
    return 2 * sum(_passes(arch))


def chained(arch: Architecture, config=None) -> int:
    """Forward, weight gradients, and delta_{l+1} -> delta_l through B_l (the transposed map) for
    every layer but the first (bp, fa, usf, frsf, brsf, kp: kp's feedback update is W's, no product of its own)."""
    return _forward_and_weight_gradients(arch) + sum(_passes(arch)[1:])


def direct(arch: Architecture, config) -> int:
    """dfa: the output error e (n_out) goes to every hidden layer straight through D_l: 2 n_out units per
    example onto the layer's pooled output (pooled) or its pre-activation (pre_pool), or for pooled_conv
    below a conv layer one pass of that layer's convolution with n_out channels (config.feedback.dfa_target)."""
    from bioprop_cli.rules.base import projection_conv

    target = config.feedback.dfa_target
    n_out = arch.sizes[-1]

    def projection(l: int) -> int:
        conv = projection_conv(arch, l, n_out) if target == "pooled_conv" else None
        if conv is not None:
            return layer_pass(conv)
        units = arch.pre_shapes[l] if target == "pre_pool" else arch.layers[l].out_shape
        return 2 * n_out * math.prod(units)

    return _forward_and_weight_gradients(arch) + sum(projection(l) for l in range(len(arch.layers) - 1))


def mirrored(arch: Architecture, config=None) -> int:
    """wm: fa's step plus the mirror phase, which sends noise through every layer with feedback
    (its linear map) and forms the correlation y^T x: two passes each."""
    return chained(arch) + 2 * sum(_passes(arch)[1:])


def settling_steps(config) -> int:
    """Settling steps per example and training step of ep: T1, plus T2 per nudged phase (holomorphic: N//2 + 1
    phases settled, in complex arithmetic, a complex product costing four real ones: bioprop_cli/ep.py)."""
    ep = config.ep
    if ep.estimator == "holomorphic":
        return ep.free_steps + ep.nudged_steps * 4 * (ep.holomorphic_points // 2 + 1)
    return ep.free_steps + ep.nudged_steps * (2 if ep.estimator == "symmetric" else 1)


def settling(arch: Architecture, config) -> int:
    """ep: the input drive once, every settling step's layer-to-layer drives (each inner layer's map
    drives both its layers: its pass and its transpose), and the contrastive update (x^T d rho_1,
    two passes per inner layer); each pass as layer_pass counts it (a conv layer's convolution)."""
    passes = _passes(arch)
    drive_once = passes[0]
    per_step = sum(2 * p for p in passes[1:])
    update = drive_once + sum(2 * p for p in passes[1:])
    return drive_once + settling_steps(config) * per_step + update


def predictive_coding(arch: Architecture, config) -> int:
    """pc: the feedforward pass, each inference step's predictions from the free nodes (the clamped
    input's once, in the feedforward pass) and their errors sent down through W^T, the same once more
    where inference ends (energy and residual), and the weight gradients. fixed_prediction's steps send
    errors only; zero_divergence adds each layer's learning signal at its own step."""
    passes = _passes(arch)
    forward_flops = sum(passes)
    inner = sum(passes[1:])
    pc = config.pc
    if pc.variant == "fixed_prediction":
        inference = (pc.inference_steps + 2) * inner
    elif pc.variant == "zero_divergence":
        inference = len(passes) * 2 * inner + inner  # L-1 steps, then the end
    else:
        inference = (pc.inference_steps + 1) * 2 * inner
    return 2 * forward_flops + inference
