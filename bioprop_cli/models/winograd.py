"""Winograd's minimal filtering for stride-1 convolutions (Lavin & Gray 2016, "Fast Algorithms for Convolutional
Neural Networks", CVPR, sec. 4, eqs. 8-10), forward and transposed.

F(m x m, k x k) computes an m x m tile of a valid correlation of an n x n input tile d (n = m + k - 1) with a k x k
kernel w as, channels summed per transformed position (a, b),

    Y = A^T [ sum_c U_c * V_c ] A,   U = G w G^T,   V = B^T d B,

so n^2 multiply-adds per (tile, input channel, output channel) against m^2 k^2 directly: for F(4 x 4, 5 x 5),
64 against 400 (Laborieux et al.'s MNIST conv net's second layer: 0.52 M multiply-adds per example against 3.28 M).
A^T, G and B^T come from Toom-Cook interpolation at the points 0, +-1, +-2, +-1/2 and infinity (`toom_cook`).
The transposed convolution (the forward's adjoint) runs the same stages transposed, with the same count:
per m x m tile of the output gradient e, E = A e A^T, F_c = sum_o U_co E_o, and the input tile's gradient
B F B^T, the tiles' overlaps added.

The transforms are sums over the matrices' few nonzero entries (mostly 0, +-1, +-2, +-1/2, ...), written out so that
XLA fuses them into loops; the channel mixing is one batched matrix product over the n^2 positions. Its float32
rounding is several times a direct convolution's (docs/speed.md measures it), and outputs that are equal exactly
(equal receptive fields) come out unequal: a max pooling that follows needs its ties found otherwise
(conv_energy.tied_fields).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5)  # then infinity: Lavin & Gray's points, at most 8 in all
LARGEST_TILE = len(POINTS) + 1


def output_tile(kernel: int) -> int | None:
    """m of F(m x m, k x k): 4 while the input tile n = m + k - 1 has at most 8 points (kernels 2 to 5), then the
    largest m that fits (kernels 6 and 7); None where Winograd does not apply (k = 1, k > 7)."""
    if not 2 <= kernel <= LARGEST_TILE - 1:
        return None
    return min(4, LARGEST_TILE + 1 - kernel)


@functools.lru_cache(maxsize=None)
def toom_cook(m: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A^T (m x n), G (n x r), B^T (n x n) in float64 with y = A^T [(G g) * (B^T d)] the valid correlation of
    d (length n = m + r - 1) with g (length r), y_i = sum_k d_{i+k} g_k: A^T's columns are the powers of the
    n - 1 finite points, G's rows the kernel's powers over prod_{l != j} (a_j - a_l) (Lagrange), the point at
    infinity the last column / row; B^T is solved from the bilinear identity and rounded to its exact binary
    values (multiples of 1/64 for these points)."""
    n = m + r - 1
    points = POINTS[: n - 1]
    at, g = np.zeros((m, n)), np.zeros((n, r))
    for j, a in enumerate(points):
        scale = np.prod([a - b for l, b in enumerate(points) if l != j])
        at[:, j] = [a**i for i in range(m)]
        g[j] = [a**k / scale for k in range(r)]
    at[m - 1, n - 1] = g[n - 1, r - 1] = 1.0
    system = np.array([at[i] * g[:, k] for i in range(m) for k in range(r)])  # rows (i, k), columns j
    wanted = np.array([[float(p == i + k) for p in range(n)] for i in range(m) for k in range(r)])
    bt = np.linalg.lstsq(system, wanted, rcond=None)[0]
    rounded = np.round(bt * 64) / 64
    if not np.allclose(bt, rounded, atol=1e-9):
        raise ValueError(f"F({m}, {r}): B^T is not a multiple of 1/64")
    return at, g, rounded


def kernel_transform(w: jax.Array) -> jax.Array:
    """U = G w G^T per channel pair, as (n^2, C_in, C_out), for w (k, k, C_in, C_out) (HWIO)."""
    k, m = w.shape[0], output_tile(w.shape[0])
    g = jnp.asarray(toom_cook(m, k)[1], w.dtype)
    n = g.shape[0]
    return jnp.einsum("ai,ijco,bj->abco", g, w, g).reshape(n * n, w.shape[2], w.shape[3])


def correlate(x: jax.Array, u: jax.Array, kernel: int, padding: int = 0) -> jax.Array:
    """The stride-1 correlation of x (N, H, W, C_in), zero-padded by `padding`, with the kernel whose transform is
    u (`kernel_transform`): (N, H', W', C_out), H' = H + 2 padding - k + 1, as lax.conv_general_dilated's
    NHWC / HWIO correlation."""
    m = output_tile(kernel)
    at, _, bt = toom_cook(m, kernel)
    n, out_h, out_w = x.shape[0], x.shape[1] + 2 * padding - kernel + 1, x.shape[2] + 2 * padding - kernel + 1
    th, tw = -(-out_h // m), -(-out_w // m)
    size = m + kernel - 1
    x = jnp.pad(x, ((0, 0), (padding, th * m + kernel - 1 - x.shape[1] - padding),
                    (padding, tw * m + kernel - 1 - x.shape[2] - padding), (0, 0)))
    v = _gather_transform(bt, _gather_transform(bt, x, 2, tw, m), 2, th, m)  # (n, n, N, th, tw, C_in)
    products = jnp.matmul(v.reshape(size * size, -1, x.shape[3]), u)
    y = products.reshape(size, size, n, th, tw, u.shape[2])
    y = _written_out(at, _written_out(at, y, 0), 1)  # (m, m, N, th, tw, C_out)
    y = y.transpose(2, 3, 0, 4, 1, 5).reshape(n, th * m, tw * m, u.shape[2])
    return y[:, :out_h, :out_w]


def correlate_transpose(g: jax.Array, u: jax.Array, kernel: int, in_shape: tuple[int, int, int],
                        padding: int = 0) -> jax.Array:
    """The adjoint of `correlate` (the transposed convolution): g (N, H', W', C_out) -> (N, H, W, C_in) for
    inputs of in_shape (H, W, C_in), through the transposed stages: E = A e A^T per m x m tile of g, the channels
    mixed by U^T, B F B^T per input tile, the tiles' overlaps added, the padding dropped."""
    m = output_tile(kernel)
    at, _, bt = toom_cook(m, kernel)
    n, out_h, out_w, c_out = g.shape
    th, tw = -(-out_h // m), -(-out_w // m)
    size = m + kernel - 1
    e = jnp.pad(g, ((0, 0), (0, th * m - out_h), (0, tw * m - out_w), (0, 0)))
    e = e.reshape(n, th, m, tw, m, c_out).transpose(2, 4, 0, 1, 3, 5)  # (m, m, N, th, tw, C_out)
    e = _written_out(at.T, _written_out(at.T, e, 0), 1).reshape(size * size, -1, c_out)
    f = jnp.einsum("pto,pco->ptc", e, u).reshape(size, size, n, th, tw, u.shape[1])
    # B F B^T per tile, its rows and columns placed beside the tile indices: (N, th, n, tw, n, C_in); the overlaps
    # added block by block along the tile axes (as a sum of padded, transposed tiles XLA's CPU loop is several
    # times slower)
    d = _written_out(bt.T, _written_out(bt.T, f, 0, 3), 0, 4)
    blocks = -(-size // m)
    d = jnp.pad(d, ((0, 0), (0, 0), (0, blocks * m - size), (0, 0), (0, blocks * m - size), (0, 0)))
    d = _overlap_add([d[:, :, q * m:(q + 1) * m] for q in range(blocks)], 1)
    d = _overlap_add([d[:, :, :, :, q * m:(q + 1) * m] for q in range(blocks)], 3)
    out = d.reshape(n, (th + blocks - 1) * m, (tw + blocks - 1) * m, -1)
    height, width, _ = in_shape
    return out[:, padding:padding + height, padding:padding + width]


def _overlap_add(parts: list, axis: int) -> jax.Array:
    """sum_q parts[q] shifted by q along `axis` (each of the same length L there; the result L + len(parts) - 1
    long), as slices and one concatenation per part."""
    out = parts[0]
    for q, part in enumerate(parts[1:], start=1):
        shared = out.shape[axis] - q
        out = jnp.concatenate([jax.lax.slice_in_dim(out, 0, q, axis=axis),
                               jax.lax.slice_in_dim(out, q, out.shape[axis], axis=axis)
                               + jax.lax.slice_in_dim(part, 0, shared, axis=axis),
                               jax.lax.slice_in_dim(part, shared, part.shape[axis], axis=axis)], axis)
    return out


def _written_out(mat: np.ndarray, t: jax.Array, axis: int, out_axis: int | None = None) -> jax.Array:
    """mat (rows x len) applied along `axis` of t, the result's axis at `out_axis` (default: in its place), as
    sums over mat's nonzero entries, which XLA fuses into loops (a product with the mostly-zero matrix would
    not be)."""
    rows = _row_sums(mat, lambda k: jax.lax.index_in_dim(t, k, axis, keepdims=False))
    return jnp.stack(rows, axis if out_axis is None else out_axis)


def _gather_transform(bt: np.ndarray, x: jax.Array, axis: int, tiles: int, m: int) -> jax.Array:
    """B^T applied along `axis` of x to each of the `tiles` input tiles (length n, stride m) cut from it, without
    cutting them: row a is sum_i B^T[a, i] x[i :: m][:tiles]; the result's rows stacked first, the tiles in place
    of `axis`."""
    return jnp.stack(_row_sums(bt, lambda i: jax.lax.slice_in_dim(x, i, i + m * (tiles - 1) + 1, m, axis)), 0)


def _row_sums(mat: np.ndarray, piece) -> list:
    """For each row of mat, sum_k mat[row, k] piece(k) over the row's nonzero entries."""
    rows = []
    for row in mat:
        terms = [float(c) * piece(k) for k, c in enumerate(row) if c != 0]
        rows.append(functools.reduce(jnp.add, terms[1:], terms[0]))
    return rows
