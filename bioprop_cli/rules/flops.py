"""Matrix-product FLOPs of one training step per example, the figure `bioprop bench` divides by the
machine's matmul peak. Each rule's registry record names its formula; `sizes` are the layer sizes."""

from __future__ import annotations


def _pairs(sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    return list(zip(sizes[:-1], sizes[1:]))


def _forward_and_weight_gradients(sizes: tuple[int, ...]) -> int:
    return 2 * sum(2 * a * b for a, b in _pairs(sizes))


def chained(sizes: tuple[int, ...], config=None) -> int:
    """Forward, weight gradients h^T delta, and delta_{l+1} -> delta_l through an (n_{l+1} x n_l)
    matrix for every layer but the first (bp, fa, usf, frsf, brsf, kp: kp's feedback update is the
    transpose of W's, no product of its own)."""
    return _forward_and_weight_gradients(sizes) + sum(2 * a * b for a, b in _pairs(sizes)[1:])


def direct(sizes: tuple[int, ...], config=None) -> int:
    """dfa: the output error e (n_out) goes to every hidden layer straight through D_l."""
    return _forward_and_weight_gradients(sizes) + sum(2 * sizes[-1] * b for _, b in _pairs(sizes)[:-1])


def mirrored(sizes: tuple[int, ...], config=None) -> int:
    """wm: fa's step plus the mirror phase, which sends noise through every W_l with feedback
    (x @ W_l) and forms y^T x: two products each."""
    return chained(sizes) + sum(2 * 2 * a * b for a, b in _pairs(sizes)[1:])


def settling_steps(config) -> int:
    """Settling steps per example and training step of ep: T1, plus T2 per nudged phase."""
    ep = config.ep
    return ep.free_steps + ep.nudged_steps * (2 if ep.estimator == "symmetric" else 1)


def settling(sizes: tuple[int, ...], config) -> int:
    """ep: the input drive once, every settling step's layer-to-layer drives (each inner W_l drives
    both its layers), and the contrastive update (x^T d rho_1, two products per inner W_l)."""
    pairs = _pairs(sizes)
    drive_once = 2 * pairs[0][0] * pairs[0][1]
    per_step = sum(2 * 2 * a * b for a, b in pairs[1:])
    update = drive_once + sum(2 * 2 * a * b for a, b in pairs[1:])
    return drive_once + settling_steps(config) * per_step + update


def predictive_coding(sizes: tuple[int, ...], config) -> int:
    """pc: the feedforward pass, each inference step's predictions from the free nodes (the clamped
    input's once, in the feedforward pass) and their errors sent down through W^T, the same once more
    where inference ends (energy and residual), and the weight gradients. fixed_prediction's steps send
    errors only; zero_divergence adds each layer's learning signal at its own step."""
    pairs = _pairs(sizes)
    forward_flops = sum(2 * a * b for a, b in pairs)
    inner = sum(2 * a * b for a, b in pairs[1:])
    pc = config.pc
    if pc.variant == "fixed_prediction":
        inference = (pc.inference_steps + 2) * inner
    elif pc.variant == "zero_divergence":
        inference = len(pairs) * 2 * inner + inner  # L-1 steps, then the end
    else:
        inference = (pc.inference_steps + 1) * 2 * inner
    return 2 * forward_flops + inference
