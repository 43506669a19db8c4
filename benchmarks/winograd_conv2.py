"""Winograd's F(4x4, 5x5) (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks", eq. 10) against
XLA's convolution on conv EP's second layer in Laborieux et al.'s MNIST conv net (12x12x32 -> 8x8x64, 5x5 kernel,
valid; batch 100): its float32 error against a float64 direct convolution, next to XLA's own float32 error, and
CPU milliseconds per call of each stage (tiles, input transform, the 64 matrix products, output transform) and of
the whole against XLA's (docs/speed.md, "Conv EP against Laborieux's P_CNN"). A prototype for issue 26's 5x: bioprop
does not use it yet.

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" taskset -c 1 \\
        python benchmarks/winograd_conv2.py --repeats 20
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

M, R = 4, 5  # output tile, kernel
N_TILE = M + R - 1
POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5)  # and infinity: Lavin & Gray's choice for F(4, 5)


def toom_cook(points=POINTS, m=M, r=R):
    """A^T (m x n), G (n x r), B^T (n x n) with y = A^T [(G g) * (B^T d)] the valid correlation of d (length n) with
    g (length r): A^T and G from the interpolation points (Vandermonde rows; G scaled by 1 / prod(a_j - a_l)), the
    point at infinity the last column / row; B^T solved from the bilinear identity, exact in float64."""
    n = m + r - 1
    at, g = np.zeros((m, n)), np.zeros((n, r))
    for j, a in enumerate(points):
        scale = np.prod([a - b for l, b in enumerate(points) if l != j])
        at[:, j] = [a**i for i in range(m)]
        g[j] = [a**k / scale for k in range(r)]
    at[m - 1, n - 1] = g[n - 1, r - 1] = 1.0
    bt = np.zeros((n, n))
    system = np.array([at[i] * g[:, k] for i in range(m) for k in range(r)])  # rows (i, k), columns j
    for p in range(n):
        wanted = np.array([float(p == i + k) for i in range(m) for k in range(r)])
        bt[:, p] = np.linalg.lstsq(system, wanted, rcond=None)[0]
    d, kernel = np.random.default_rng(0).normal(size=n), np.random.default_rng(1).normal(size=r)
    np.testing.assert_allclose(at @ ((g @ kernel) * (bt @ d)), [d[i:i + r] @ kernel for i in range(m)], atol=1e-12)
    return at, g, bt


def written_out(mat, t, axis):
    """mat applied along `axis` of t, as sums over mat's nonzero entries (0, ±1, ±2, ±1/2, ... : exact in binary),
    which XLA fuses into loops, instead of a product with the mostly-zero matrix."""
    rows = []
    for row in mat:
        terms = [float(c) * jax.lax.index_in_dim(t, k, axis, keepdims=False) for k, c in enumerate(row) if c != 0]
        rows.append(sum(terms[1:], terms[0]))
    return jnp.stack(rows, axis)


def stages(w, x_shape, dtype):
    """The four stages for images of x_shape (N, H, W, C_in) and the kernel w (R, R, C_in, C_out)."""
    at, g, bt = toom_cook()
    at, bt = np.round(at * 64) / 64, np.round(bt * 64) / 64  # their exact values (lstsq leaves ~1e-16)
    c_in, c_out = w.shape[2:]
    n, th, tw = x_shape[0], (x_shape[1] - R + 1) // M, (x_shape[2] - R + 1) // M  # images, tiles per column, per row
    g = jnp.asarray(g, dtype)
    u = jnp.einsum("ak,klco,bl->abco", g, w.astype(dtype), g).reshape(N_TILE * N_TILE, c_in, c_out)

    def tiles(x):  # (N, H, W, C) -> (8, 8, N * th * tw, C), tiles overlapping by R - 1, positions leading
        t = jnp.stack([jnp.stack([x[:, a:a + M * (th - 1) + 1:M, b:b + M * (tw - 1) + 1:M] for b in range(N_TILE)])
                       for a in range(N_TILE)])
        return t.reshape(N_TILE, N_TILE, -1, c_in)

    def transform_in(t):  # B^T d B per tile and channel -> (64, tiles, C)
        return written_out(bt, written_out(bt, t, 0), 1).reshape(N_TILE * N_TILE, -1, c_in)

    def products(v):  # one (tiles x C_in) @ (C_in x C_out) per transformed position
        return jnp.matmul(v, u)

    def transform_out(m):  # A^T m A -> (N, th * 4, tw * 4, C_out)
        y = written_out(at, written_out(at, m.reshape(N_TILE, N_TILE, -1, c_out), 0), 1)
        return y.reshape(M, M, n, th, tw, c_out).transpose(2, 3, 0, 4, 1, 5).reshape(n, th * M, tw * M, c_out)

    return tiles, transform_in, products, transform_out


def xla_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def cpu_ms(f, x, repeats):
    f(x).block_until_ready()
    start = time.process_time()
    for _ in range(repeats):
        f(x).block_until_ready()
    return (time.process_time() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    with jax.enable_x64(True):
        x64 = jax.random.uniform(kx, (100, 12, 12, 32), jnp.float64)
        x64 = jnp.where(x64 < 0.3, 0.0, x64)  # hard-sigmoid states: some clipped at 0
        bound = 1 / np.sqrt(5 * 5 * 32)  # torch's default init bound for conv2
        w64 = jax.random.uniform(kw, (5, 5, 32, 64), jnp.float64, -bound, bound)
        exact = np.asarray(xla_conv(x64, w64))
    x, w = jnp.asarray(x64, jnp.float32), jnp.asarray(w64, jnp.float32)
    tiles, transform_in, products, transform_out = stages(w, x.shape, jnp.float32)
    winograd = jax.jit(lambda x: transform_out(products(transform_in(tiles(x)))))
    xla = jax.jit(lambda x: xla_conv(x, w))
    scale = np.abs(exact).max()
    print(f"float32 max |error| / max |y|: Winograd {np.abs(np.asarray(winograd(x)) - exact).max() / scale:.2e}, "
          f"XLA {np.abs(np.asarray(xla(x)) - exact).max() / scale:.2e}")
    t = tiles(x)
    v = transform_in(t)
    m = products(v)
    timed = {"tiles": (jax.jit(tiles), x), "input transform": (jax.jit(transform_in), t),
             "64 products": (jax.jit(products), v),
             "output transform": (jax.jit(transform_out), m),
             "Winograd, whole": (winograd, x), "XLA's convolution": (xla, x)}
    for _ in range(args.rounds):
        print(" | ".join(f"{name} {cpu_ms(f, a, args.repeats):.2f} ms" for name, (f, a) in timed.items()), flush=True)


if __name__ == "__main__":
    main()
