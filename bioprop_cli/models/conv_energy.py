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
update with their `hard_sigmoid`, clip(x, 0, 1) (their `my_hard_sig`, clip(x/2, 0, 1), and any other rho
run as theirs under ep.dynamics primitive: models/energy.py primitive_dynamics). For dense
layers E is Scellier & Bengio's MLP energy (models/energy.py): this module is the one path of every
network EP runs, the MLP's included. The force on s_k is

    dE/ds_k = s_k - rho'(s_k) * (f_{k-1}(r_{k-1}) + J_{f_k}(r_k)^T r_{k+1}),

the bottom-up drive f_{k-1}(r_{k-1}) and the top-down one, the vector-Jacobian product of f_k at r_k
with r_{k+1}: for a conv layer the transposed convolution of r_{k+1} routed back through the pooling
(max pooling: to each window's winner; P is piecewise linear, so E is piecewise quadratic in s and
the force is its gradient wherever the winners are unique). The parameters' gradient of E, the
quantity EP contrasts, is -d/dtheta <r_{l+1}, f_l(r_l)>: for a dense layer the Hebbian product
-r_l^T r_{l+1}, for a conv layer its convolutional counterpart (the correlation of r_l with the
unpooled r_{l+1}), local to the layer.

A dense layer's maps are written out as matrix products (h W + b up, r_{k+1} B_k down), and its
top-down matrix may be a feedback matrix of its own, params[l]["fb"] = B_l in place of W_l^T (the
vector-field generalisation of EP, models/energy.py): the drives are then no gradient of E.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bioprop_cli.models import winograd
from bioprop_cli.models.arch import Architecture, Conv, Dense, Layer, Pool
from bioprop_cli.models.layers import conv_transpose, pool, pre_activation, weight_vjp
from bioprop_cli.precision import fast_convolutions


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
    top-down term); per layer above the first, its bottom-up drive and its pull (`up_and_down`)."""
    out = [drive0] + [None] * (len(r) - 1)
    for l in range(1, len(r)):
        out[l], down = up_and_down(arch.layers[l], params[l], r[l - 1], r[l])
        out[l - 1] = out[l - 1] + down
    return out


def written_out(layer: Layer) -> bool:
    """Whether a conv layer's vjps are written out (no pooling or non-overlapping pooling: `unpool`,
    `conv_transpose`, `weight_vjp`) rather than taken by jax.vjp (a dense layer's are matrix products)."""
    return layer.pool is None or layer.pool.window == layer.pool.stride


def up_and_down(layer: Layer, params: dict, h: jax.Array, above: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(f_l(h), J_{f_l}(h)^T above), flat. A dense layer's: (h W + b, above B) with B its top-down
    matrix (`top_down`). A conv layer's pull is written out: the pooling's vector-Jacobian product (`unpool`),
    then the transposed convolution. On the CPU a stride-1 layer with a kernel of 2 to 7 runs both
    convolutions as Winograd's minimal filtering (`winograd_up_and_down`) where the precision allows
    (precision.fast_convolutions: training, not the exact references and measurements); other layers' pull goes
    through `pull_back`. Inside the settling loop XLA's CPU backend runs jax.vjp's input-gradient convolution several
    times slower than this forward one (measured: docs/implementation-notes.md); overlapping pooling windows
    (window != stride) take jax.vjp."""
    op, n = layer.op, h.shape[0]
    if isinstance(op, Dense):
        return pre_activation(op, params, h), above @ top_down(params)
    if not written_out(layer):
        up, pull = jax.vjp(lambda g: layer_map(layer, params, g), h)
        return up, pull(above)[0]
    if takes_winograd(layer):
        return winograd_up_and_down(layer, params, h, above)
    a = pre_activation(op, params, h)
    pooled = pool(layer.pool, a)
    back = pull_back(op, params["w"], unpool(layer.pool, a, above.reshape(pooled.shape)))
    return pooled.reshape(n, -1), back.reshape(n, -1)


def takes_winograd(layer: Layer) -> bool:
    """Whether `up_and_down` runs the layer's convolutions as Winograd's: a written-out conv layer that
    `winograd_applies` to, on the CPU, where the precision allows (precision.fast_convolutions)."""
    return (isinstance(layer.op, Conv) and written_out(layer) and jax.default_backend() == "cpu"
            and winograd_applies(layer.op) and fast_convolutions())


def for_settling(arch: Architecture, params: list) -> list:
    """params with each Winograd layer's transformed kernel (winograd.kernel_transform) computed once, as
    params[l]["winograd"], for a settling loop to close over: XLA does not hoist it out of the loop by itself
    (the transform is larger than the kernel, and XLA leaves size-inflating work inside loops)."""
    return [dict(p, winograd=winograd.kernel_transform(p["w"])) if takes_winograd(layer) else p
            for layer, p in zip(arch.layers, params)]


def winograd_applies(op: Conv) -> bool:
    """Whether a conv layer's convolutions run as Winograd's F(m x m, k x k) (models/winograd.py): stride 1,
    kernels 2 to 7."""
    return op.stride == 1 and winograd.output_tile(op.kernel) is not None


def winograd_up_and_down(layer: Layer, params: dict, h: jax.Array, above: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`up_and_down` of a conv layer through Winograd's minimal filtering: the forward convolution
    (winograd.correlate), the pooling, its vjp and the transposed convolution (winograd.correlate_transpose)
    with one transformed kernel. Its rounding breaks the exact ties of a max pooling's window (outputs of equal
    receptive fields, e.g. in a region of zero states, all equal to the bias in exact arithmetic), so the ties
    are found from the input (`tied_fields`) and each window's winner is the first of its tied outputs, as jax's
    first maximum picks it from a direct convolution."""
    op, n = layer.op, h.shape[0]
    x = h.reshape((n,) + op.in_shape)
    u = params["winograd"] if "winograd" in params else winograd.kernel_transform(params["w"])
    a = winograd.correlate(x, u, op.kernel, op.padding) + params["b"]
    p = layer.pool
    tied = tied_fields(op, p.window, x) if p is not None and p.kind == "max" else None
    pooled, share = pool_and_share(p, a, tied)
    g = spread(p, share, above.reshape(pooled.shape), a.shape)
    back = winograd.correlate_transpose(g, u, op.kernel, op.in_shape, op.padding)
    return pooled.reshape(n, -1), back.reshape(n, -1)


def tied_fields(op: Conv, window: int, x: jax.Array) -> jax.Array:
    """For each output of each (window x window) max pooling window of the layer's convolution of x, whether an
    earlier output of its window (row-major) has the same receptive field, every input channel equal: then the
    two outputs are equal in exact arithmetic, whatever the kernel. (n, rows, cols, window^2, 1) bool. Each
    offset between two outputs of a window is compared once, pixel by pixel over the channels (`equal_pixels`),
    then over the kernel's k x k field (`whole_fields`)."""
    k, r, pad = window, op.kernel, op.padding
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows, cols = op.out_shape[0] // k, op.out_shape[1] // k
    positions = [(i, j) for i in range(k) for j in range(k)]
    equal = {(qy - py, qx - px): equal_pixels(xp, qy - py, qx - px)
             for q, (qy, qx) in enumerate(positions) for py, px in positions[:q]}
    tied = [jnp.zeros((x.shape[0], rows, cols), bool)]
    for q, (qy, qx) in enumerate(positions[1:], start=1):
        later = tied[0]
        for py, px in positions[:q]:
            dx = qx - px
            same = equal[(qy - py, dx)][:, py:, px + min(dx, 0):]  # pixel (y, x) against (y + dy, x + dx)
            later = later | whole_fields(same, r, k, rows, cols)
        tied.append(later)
    return jnp.stack(tied, axis=3)[..., None]


def equal_pixels(xp: jax.Array, dy: int, dx: int) -> jax.Array:
    """(n, H - dy, W - |dx|) bool: whether pixel (y, x + max(-dx, 0)) of xp (n, H, W, C) equals pixel
    (y + dy, x + max(-dx, 0) + dx) in every channel. The channels' equalities are packed four bytes to a 32-bit
    word before they are reduced (XLA's CPU reduction of C booleans is several times slower)."""
    height, width = xp.shape[1], xp.shape[2]
    left = max(-dx, 0)
    span = width - abs(dx)
    equal = (xp[:, :height - dy, left:left + span] == xp[:, dy:, left + dx:left + dx + span]).astype(jnp.uint8)
    equal = jnp.pad(equal, ((0, 0),) * 3 + ((0, -xp.shape[-1] % 4),), constant_values=1)
    words = jax.lax.bitcast_convert_type(equal.reshape(equal.shape[:-1] + (-1, 4)), jnp.uint32)
    return jnp.all(words == 0x01010101, axis=-1)


def whole_fields(same: jax.Array, r: int, k: int, rows: int, cols: int) -> jax.Array:
    """(n, rows, cols): whether `same` (n, H, W) holds over the whole r x r field at (R k, C k), for every
    window (R, C): its count there, two products with 0/1 band matrices, is r^2. (As products XLA keeps them
    apart; as logical ands they fuse into the pooling's reductions, recomputed for every channel.)"""
    def band(length: int, count: int) -> np.ndarray:
        start = np.arange(count) * k
        return ((np.arange(length)[:, None] >= start) & (np.arange(length)[:, None] < start + r)).astype(np.float32)
    counts = jnp.einsum("nyx,yR,xC->nRC", same.astype(jnp.float32), band(same.shape[1], rows), band(same.shape[2], cols))
    return counts == r * r


def pull_back(op: Conv, w: jax.Array, g: jax.Array) -> jax.Array:
    """The transposed convolution of g (batch, H', W', C_out) -> (batch, H, W, C_in) of a layer Winograd's
    minimal filtering does not take (`up_and_down`): on the CPU through the discrete Fourier transform
    (`spectral_conv_transpose`) for a stride-1 layer where that takes fewer multiply-adds
    (`spectral_is_cheaper`: kernels of 8 and more), else as a forward convolution (layers.conv_transpose)."""
    if jax.default_backend() == "cpu" and spectral_is_cheaper(op):
        return spectral_conv_transpose(op, w, g)
    return conv_transpose(op, w, g)


def spectral_is_cheaper(op: Conv) -> bool:
    """Whether a stride-1 layer's transposed convolution takes fewer multiply-adds per example through the
    DFT (its five stages: the inverse DFTs' transposes, the channel mixing, the DFTs' transposes) than as
    layers.conv_transpose's padded forward convolution (H W k^2 C_in C_out). E.g. Laborieux et al.'s
    MNIST net's second layer (12x12x32 -> 8x8x64, 5x5): 1.1 M against 7.4 M."""
    if op.stride != 1:
        return False
    (height, width, c_in), c_out, k, p = op.in_shape, op.channels, op.kernel, op.padding
    nh, nw = height + 2 * p, width + 2 * p
    ph, pw, v = nh - k + 1, nw - k + 1, nw // 2 + 1
    stages = (ph * pw * 2 * v * c_out + v * 2 * ph * 2 * nh * c_out + nh * v * 4 * c_in * c_out
              + v * 4 * nh * nh * c_in + nh * 2 * v * nw * c_in)
    return stages < height * width * k * k * c_in * c_out


def spectral_conv_transpose(op: Conv, w: jax.Array, g: jax.Array) -> jax.Array:
    """The transposed convolution of a stride-1 conv layer, exactly (to rounding) the adjoint of its forward
    convolution, computed through the discrete Fourier transform of the padded input's size N_h x N_w.

    The forward convolution's outputs (P_h x P_w, P = N - k + 1) read no wrapped-around input, so it is
    the circular cross-correlation with the kernel w (zero-padded to N_h x N_w), cropped: a(u) = IDFT(DFT(h)
    conj(DFT(w)))(u), u < P (the correlation theorem). Written as real linear stages, per channel a DFT
    along W (real -> N_w // 2 + 1 complex), one along H, the channels mixed per frequency by the kernel's
    conjugate spectrum, the inverse DFTs back to the P_h x P_w outputs; this function applies those stages'
    transposes in reverse order (their adjoint). Per example it costs N_h (N_w // 2 + 1) x 4 C_in C_out
    multiply-adds for the mixing plus the transforms, against N_h N_w k^2 C_in C_out for the padded forward
    convolution of layers.conv_transpose (docs/speed.md, "Conv EP against Laborieux's P_CNN", has the
    measured times)."""
    p = op.padding
    nh, nw = op.in_shape[0] + 2 * p, op.in_shape[1] + 2 * p
    ph, pw = g.shape[1], g.shape[2]
    c_in, c_out = w.shape[2], w.shape[3]
    n, v = g.shape[0], nw // 2 + 1
    real = jnp.finfo(g.dtype).dtype
    along_w, along_h, back_h, back_w, kernel_phases = (jnp.asarray(m, real) for m in _dft_stages(nh, nw, ph, pw, op.kernel))
    cos, sin = kernel_phases
    # the kernel's spectrum K[u, v] = sum_ij w[i, j] exp(-2 pi i (u i / N_h + v j / N_w)); the mixing multiplies
    # by conj(K): [x_re, x_im] @ [[K_re, -K_im], [K_im, K_re]] (real, (2 C_in, 2 C_out) per frequency)
    k_re, k_im = jnp.einsum("uvij,ijco->uvco", cos, w), -jnp.einsum("uvij,ijco->uvco", sin, w)
    mixing = jnp.concatenate([jnp.concatenate([k_re, -k_im], -1), jnp.concatenate([k_im, k_re], -1)], -2)
    z = jnp.einsum("npqo,vzq->npvzo", g, back_w)
    y = jnp.einsum("npvyo,uzpy->uvnzo", z, back_h).reshape(nh * v, n, 2 * c_out)
    x = jnp.einsum("fnm,fkm->fnk", y, mixing.reshape(nh * v, 2 * c_in, 2 * c_out)).reshape(nh, v, n, 2, c_in)
    x = jnp.einsum("uvnyc,azuy->navzc", x, along_h).reshape(n, nh, 2 * v, c_in)
    out = jnp.einsum("nhkc,bk->nhbc", x, along_w.reshape(nw, 2 * v))
    return out[:, p:nh - p, p:nw - p, :]


@functools.lru_cache(maxsize=None)
def _dft_stages(nh: int, nw: int, ph: int, pw: int, k: int) -> tuple:
    """The real matrices of `spectral_conv_transpose`'s forward stages (float64 numpy), with the complex
    values' real and imaginary parts as an axis of 2:
    along_w (N_w, V, 2): h(b) -> sum_b h(b) exp(-2 pi i v b / N_w), v < V = N_w // 2 + 1;
    along_h (N_h, 2, N_h, 2): complex x(a) -> sum_a x(a) exp(-2 pi i u a / N_h);
    back_h (N_h, 2, P_h, 2): complex Y(u) -> sum_u Y(u) exp(+2 pi i u r / N_h), r < P_h;
    back_w (V, 2, P_w): complex Z(v) -> (1 / N_h N_w) sum_v c_v Re(Z(v) exp(+2 pi i v q / N_w)), q < P_w, c_v = 2
    except 1 at v = 0 and at N_w / 2 (the half spectrum of a real signal);
    kernel_phases (2, N_h, V, k, k): cos and sin of 2 pi (u i / N_h + v j / N_w)."""
    a, b, v = np.arange(nh), np.arange(nw), np.arange(nw // 2 + 1)
    theta = 2 * np.pi * np.outer(b, v) / nw
    along_w = np.stack([np.cos(theta), -np.sin(theta)], -1)
    theta = 2 * np.pi * np.outer(a, a) / nh
    along_h = np.zeros((nh, 2, nh, 2))
    along_h[:, 0, :, 0], along_h[:, 1, :, 1] = np.cos(theta), np.cos(theta)
    along_h[:, 1, :, 0], along_h[:, 0, :, 1] = np.sin(theta), -np.sin(theta)
    theta = 2 * np.pi * np.outer(a, np.arange(ph)) / nh
    back_h = np.zeros((nh, 2, ph, 2))
    back_h[:, 0, :, 0], back_h[:, 1, :, 1] = np.cos(theta), np.cos(theta)
    back_h[:, 1, :, 0], back_h[:, 0, :, 1] = -np.sin(theta), np.sin(theta)
    weight = np.where((v == 0) | (2 * v == nw), 1.0, 2.0)[:, None] / (nh * nw)
    theta = 2 * np.pi * np.outer(v, np.arange(pw)) / nw
    back_w = np.stack([weight * np.cos(theta), -weight * np.sin(theta)], 1)
    i = np.arange(k)
    theta = 2 * np.pi * (a[:, None, None, None] * i[None, None, :, None] / nh
                         + v[None, :, None, None] * i[None, None, None, :] / nw)
    return along_w, along_h, back_h, back_w, np.stack([np.cos(theta), np.sin(theta)])


def top_down(params: dict) -> jax.Array:
    """B_l, the matrix through which a dense layer's output goes down: params["fb"] (separate feedback,
    models/energy.py) or W_l^T."""
    return params["fb"] if "fb" in params else params["w"].T


def unpool(p: Pool | None, a: jax.Array, g: jax.Array) -> jax.Array:
    """The vector-Jacobian product of non-overlapping pooling (window = stride) at its input a with g:
    max: g to each window's winner (the first maximum in row-major order, as jax.grad's choice),
    average: g / window^2 to every position; the rows and columns the pooling drops get zero."""
    return spread(p, pool_and_share(p, a)[1], g, a.shape)


def pool_and_share(p: Pool | None, a: jax.Array, tied: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
    """The non-overlapping pooling of a (n, H, W, C) and each window position's share of its output's gradient,
    (n, rows, cols, window^2, C) (None without pooling): max pooling's one-hot of the window's first maximum,
    outputs `tied` to an earlier one of their window (`tied_fields`) left out; average pooling's 1 / window^2."""
    if p is None:
        return a, None
    n, _, _, c = a.shape
    k = p.window
    rows, cols = a.shape[1] // k, a.shape[2] // k
    blocks = a[:, :rows * k, :cols * k].reshape(n, rows, k, cols, k, c).transpose(0, 1, 3, 2, 4, 5)
    blocks = blocks.reshape(n, rows, cols, k * k, c)
    if p.kind != "max":
        return jnp.mean(blocks, axis=3), jnp.full((1, 1, 1, k * k, 1), 1.0 / (k * k), a.dtype)
    if tied is not None:
        blocks = jnp.where(tied, -jnp.inf, blocks)
    share = jax.nn.one_hot(jnp.argmax(blocks, axis=3), k * k, axis=3, dtype=a.dtype)
    return jnp.max(blocks, axis=3), share


def spread(p: Pool | None, share: jax.Array | None, g: jax.Array, shape: tuple) -> jax.Array:
    """g (n, rows, cols, C) sent back to the pooling's input of `shape` by each position's share; the rows and
    columns the pooling drops get zero."""
    if p is None:
        return g
    n, height, width, c = shape
    k, rows, cols = p.window, g.shape[1], g.shape[2]
    back = (g[:, :, :, None, :] * share).reshape(n, rows, cols, k, k, c).transpose(0, 1, 3, 2, 4, 5)
    back = back.reshape(n, rows * k, cols * k, c)
    return jnp.pad(back, ((0, 0), (0, height - rows * k), (0, width - cols * k), (0, 0)))


def coupling(arch: Architecture, params: list, r: list, x: jax.Array) -> jax.Array:
    """sum_l <r_{l+1}, f_l(r_l)> per example (r_0 = x): Phi without the leak."""
    below = [x] + list(r[:-1])
    return sum(jnp.sum(layer_map(layer, p, h) * s, axis=-1) for layer, p, h, s in zip(arch.layers, params, below, r))


def energy(arch: Architecture, params: list, states: list, x: jax.Array, rho) -> jax.Array:
    """E per example, shape (batch,) (the module docstring)."""
    r = rho.outputs(states)
    return 0.5 * sum(jnp.sum(s**2, axis=-1) for s in states) - coupling(arch, params, r, x)


def contrast(arch: Architecture, params: list, states_a: list, states_b: list, x: jax.Array, rho, scale) -> list:
    """scale * (dE/dtheta(s_a) - dE/dtheta(s_b)), averaged over the batch: for each layer the
    difference of its local coupling gradients at the two states (Laborieux et al.'s
    compute_syn_grads). A conv layer's is written out (the pooling's vjp, then the kernel gradient as
    a forward convolution: layers.weight_vjp), as XLA's CPU backend runs jax.grad's kernel-gradient
    convolution several times slower inside the training loop; tested against jax.grad. The clamped
    input's layer sees x at both states (and the same pooling winners), so its gradient is linear in
    the state above: one product with rho(s_a1) - rho(s_b1)."""
    ra, rb = rho.outputs(states_a), rho.outputs(states_b)
    factor = -scale / x.shape[0]
    first = coupling_gradient(arch.layers[0], params[0], x, ra[0] - rb[0])
    out = [jax.tree_util.tree_map(lambda u: factor * u, first)]
    for layer, p, ha, sa, hb, sb in zip(arch.layers[1:], params[1:], ra[:-1], ra[1:], rb[:-1], rb[1:]):
        out.append(jax.tree_util.tree_map(lambda u: factor * u, coupling_difference(layer, p, ha, sa, hb, sb)))
    return out


def coupling_difference(layer: Layer, params: dict, ha: jax.Array, sa: jax.Array, hb: jax.Array, sb: jax.Array) -> dict:
    """coupling_gradient at (ha, sa) minus at (hb, sb); a dense layer's: the Hebbian products'
    difference ha^T sa - hb^T sb and, for the bias, one batch sum of sa - sb."""
    if isinstance(layer.op, Dense):
        return {"w": ha.T @ sa - hb.T @ sb, "b": jnp.sum(sa - sb, axis=0)}
    ga, gb = coupling_gradient(layer, params, ha, sa), coupling_gradient(layer, params, hb, sb)
    return jax.tree_util.tree_map(lambda u, v: u - v, ga, gb)


def coupling_gradient(layer: Layer, params: dict, h: jax.Array, s: jax.Array) -> dict:
    """{"w", "b"}: the gradient of sum over the batch of <s, f_l(h)> with respect to the layer's
    parameters."""
    op = layer.op
    if isinstance(op, Dense):
        return weight_vjp(op, h, s)
    if not written_out(layer):
        _, pull = jax.vjp(lambda q: layer_map(layer, q, h), params)
        return pull(s)[0]
    a = pre_activation(op, params, h)
    return weight_vjp(op, h, unpool(layer.pool, a, s.reshape(pool(layer.pool, a).shape)))
