"""Winograd's minimal filtering (bioprop_cli/models/winograd.py) against direct convolutions, and the ties of the max
pooling that follows it (conv_energy.tied_fields, conv_energy.winograd_up_and_down) against jax.vjp of the layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bioprop_cli.models import conv_energy, winograd
from bioprop_cli.models.arch import Conv, Layer, Pool
from bioprop_cli.precision import float64


@pytest.mark.parametrize("kernel", range(2, 8))
def test_toom_cook_computes_the_one_dimensional_correlation(kernel):
    m = winograd.output_tile(kernel)
    at, g, bt = winograd.toom_cook(m, kernel)
    rng = np.random.default_rng(kernel)
    d, w = rng.normal(size=m + kernel - 1), rng.normal(size=kernel)
    direct = [d[i:i + kernel] @ w for i in range(m)]
    np.testing.assert_allclose(at @ ((g @ w) * (bt @ d)), direct, rtol=1e-12, atol=1e-12)


def test_the_output_tile_keeps_eight_points_and_leaves_out_other_kernels():
    assert [winograd.output_tile(k) for k in range(1, 9)] == [None, 4, 4, 4, 4, 3, 2, None]


def _direct(x, w, padding):
    return jax.lax.conv_general_dilated(x, w, (1, 1), [(padding, padding)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("shape, kernel, padding, c_out", [
    ((12, 12, 32), 5, 0, 64),  # Laborieux et al.'s MNIST net's second layer
    ((13, 11, 2), 5, 1, 3),  # odd sides: the last tiles run past the output and are cut
    ((9, 10, 2), 3, 1, 2),
    ((8, 8, 2), 4, 0, 3),  # an even kernel
    ((7, 9, 1), 2, 0, 2),
    ((15, 12, 2), 7, 2, 3),  # F(2 x 2, 7 x 7)
    ((10, 11, 1), 6, 0, 2),  # F(3 x 3, 6 x 6)
])
def test_the_convolution_and_its_transpose_are_the_direct_ones(shape, kernel, padding, c_out):
    """In float64 both to rounding: the forward against lax's convolution, the transposed against its jax.vjp."""
    with float64():
        kx, kw, kg = jax.random.split(jax.random.PRNGKey(kernel), 3)
        x = jax.random.normal(kx, (2,) + shape)
        w = jax.random.normal(kw, (kernel, kernel, shape[2], c_out))
        g = jax.random.normal(kg, jax.eval_shape(lambda: _direct(x, w, padding)).shape)

        @jax.jit
        def fast(x, w, g):  # each side one program, its arrays as arguments (docs/testing.md)
            u = winograd.kernel_transform(w)
            return winograd.correlate(x, u, kernel, padding), winograd.correlate_transpose(g, u, kernel, shape, padding)

        @jax.jit
        def direct(x, w, g):
            y, pull = jax.vjp(lambda z: _direct(z, w, padding), x)
            return y, pull(g)[0]

        for mine, expected in zip(fast(x, w, g), direct(x, w, g), strict=True):
            assert mine.shape == expected.shape
            np.testing.assert_allclose(mine, expected, rtol=1e-11, atol=1e-11 * float(jnp.abs(expected).max()))


def test_float32_rounding_of_laborieux_layer_stays_within_a_few_parts_per_million():
    """The price of fewer multiplications (docs/speed.md): on their second layer's shapes, hard-sigmoid states,
    torch's default initialisation, float32 Winograd lies within 1e-5 of the largest output of the float64
    direct convolution (a direct float32 convolution: about 6e-7)."""
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.uniform(kx, (20, 12, 12, 32))
    x = jnp.where(x < 0.3, 0.0, x)
    bound = 1 / np.sqrt(5 * 5 * 32)
    w = jax.random.uniform(kw, (5, 5, 32, 64), minval=-bound, maxval=bound)
    g = jax.random.uniform(kg, (20, 8, 8, 64))

    @jax.jit
    def fast(x, w, g):
        u = winograd.kernel_transform(w)
        return winograd.correlate(x, u, 5), winograd.correlate_transpose(g, u, 5, (12, 12, 32))

    with float64():
        x64, w64, g64 = (jnp.asarray(np.asarray(a), jnp.float64) for a in (x, w, g))
        y, pull = jax.vjp(lambda z: _direct(z, w64, 0), x64)
        exact = (np.asarray(y), np.asarray(pull(g64)[0]))
    for mine, expected in zip(fast(x, w, g), exact, strict=True):
        assert np.abs(np.asarray(mine) - expected).max() < 1e-5 * np.abs(expected).max()


def _with_constant_regions(key, shape, dtype):
    """States as a settled hard-sigmoid layer has them: zero over whole regions (all channels), one over a patch,
    values between elsewhere: the fields of neighbouring outputs are often equal."""
    ka, kb = jax.random.split(key)
    x = jax.random.uniform(ka, shape, dtype)
    x = jnp.where(jax.random.uniform(kb, shape[:3] + (1,)) < 0.6, 0.0, x)
    return x.at[:, :shape[1] // 2].set(0.0).at[0, shape[1] // 2:, shape[2] // 3:].set(1.0)


def _fields_equal_by_hand(x, kernel, padding, window):
    """tied_fields by loops: output q of a window is tied when an earlier output p has the same padded patch."""
    xp = np.pad(np.asarray(x), ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out_h, out_w = xp.shape[1] - kernel + 1, xp.shape[2] - kernel + 1
    rows, cols = out_h // window, out_w // window
    positions = [(i, j) for i in range(window) for j in range(window)]
    tied = np.zeros((x.shape[0], rows, cols, window * window, 1), bool)
    for n in range(x.shape[0]):
        for r in range(rows):
            for c in range(cols):
                field = lambda i, j: xp[n, r * window + i:r * window + i + kernel, c * window + j:c * window + j + kernel]
                for q, (qi, qj) in enumerate(positions):
                    tied[n, r, c, q, 0] = any(np.array_equal(field(pi, pj), field(qi, qj)) for pi, pj in positions[:q])
    return tied


@pytest.mark.parametrize("shape, kernel, padding, window", [((12, 12, 3), 5, 0, 2), ((11, 10, 2), 3, 1, 2),
                                                            ((13, 13, 2), 3, 0, 3)])
def test_tied_fields_finds_the_outputs_with_an_earlier_equal_field(shape, kernel, padding, window):
    x = _with_constant_regions(jax.random.PRNGKey(5), (3,) + shape, jnp.float32)
    op = Conv(shape, 4, kernel, 1, padding)
    found = np.asarray(jax.jit(lambda x: conv_energy.tied_fields(op, window, x))(x))
    expected = _fields_equal_by_hand(x, kernel, padding, window)
    assert expected.sum() > 10  # the regions make ties
    np.testing.assert_array_equal(found, expected)


@pytest.mark.parametrize("shape, kernel, padding, pool", [((12, 12, 8), 5, 0, Pool("max", 2, 2)),
                                                          ((11, 10, 3), 3, 1, Pool("max", 2, 2)),
                                                          ((12, 12, 4), 5, 0, Pool("avg", 2, 2)),
                                                          ((9, 9, 3), 3, 0, None)])
def test_the_winograd_pull_is_the_vjp_of_the_layer_with_ties(shape, kernel, padding, pool):
    """In float64, on states with constant regions (exact ties of the max pooling: Winograd's rounding alone would
    send the pull to another output of the window, 1e-2 away here), the forward drive and the pull are jax.vjp's
    of the direct layer, which takes each window's first maximum."""
    with float64():
        layer = Layer(Conv(shape, 6, kernel, 1, padding), pool)
        assert conv_energy.winograd_applies(layer.op)
        kx, kw, ka = jax.random.split(jax.random.PRNGKey(7), 3)
        h = _with_constant_regions(kx, (4,) + shape, jnp.float64).reshape(4, -1)
        params = {"w": 0.3 * jax.random.normal(kw, layer.op.weight_shape), "b": 0.1 * jnp.arange(6, dtype=float)}
        above = jax.random.uniform(ka, jax.eval_shape(lambda: conv_energy.layer_map(layer, params, h)).shape)

        @jax.jit
        def by_vjp(params, h, above):
            up, pull = jax.vjp(lambda g: conv_energy.layer_map(layer, params, g), h)
            return up, pull(above)[0]

        mine = jax.jit(lambda *a: conv_energy.winograd_up_and_down(layer, *a))(params, h, above)
        for got, expected in zip(mine, by_vjp(params, h, above), strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-11)


def test_training_takes_winograd_and_full_float32_the_direct_convolution():
    """precision.full_float32 (the exact references, the measurements) keeps conv EP's direct convolutions, bit for
    bit; the default precision (training) takes Winograd's, whose float32 rounding differs."""
    from bioprop_cli.models.layers import pool, pre_activation
    from bioprop_cli.precision import full_float32

    layer = Layer(Conv((12, 12, 8), 6, 5, 1, 0), Pool("max", 2, 2))
    kx, kw, ka = jax.random.split(jax.random.PRNGKey(3), 3)
    h = jax.random.uniform(kx, (3, 12 * 12 * 8))
    params = {"w": 0.1 * jax.random.normal(kw, layer.op.weight_shape), "b": jnp.zeros(6)}

    def drive(params, h):
        return conv_energy.up_and_down(layer, params, h, jnp.zeros((3, 4 * 4 * 6)))[0]

    direct = jax.jit(lambda p, h: pool(layer.pool, pre_activation(layer.op, p, h)).reshape(3, -1))(params, h)
    np.testing.assert_array_equal(jax.jit(full_float32(drive))(params, h), direct)
    trained = jax.jit(drive)(params, h)
    assert not np.array_equal(trained, direct)
    np.testing.assert_allclose(trained, direct, atol=1e-5 * float(jnp.abs(direct).max()))


def test_the_conditions_table_measures_without_winograd(monkeypatch):
    """The conditions table is a measurement: its perturbation ladder's nudged phases and its spectral radius keep
    the direct convolutions too (they once ran through Winograd: ep_measurements' compute was not at full float32)."""
    from helpers import make_fake_dataset

    from bioprop_cli.config import load_config
    from bioprop_cli.studies.conditions import run

    traced = []
    original = conv_energy.takes_winograd
    monkeypatch.setattr(conv_energy, "takes_winograd", lambda layer: traced.append(original(layer)) or traced[-1])
    overrides = [("rule", "ep"), ("model.arch", "cnn"), ("model.cnn.channels", [2, 3]), ("model.cnn.kernels", [5, 3]),
                 ("model.cnn.strides", [1, 1]), ("model.cnn.paddings", [0, 1]), ("model.cnn.pools", ["max", "max"]),
                 ("ep.free_steps", 5), ("ep.nudged_steps", 3), ("ep.reference_steps", 5), ("ep.adjoint_steps", 5),
                 ("data.train_limit", 100), ("data.validation_size", 20), ("data.test_limit", 20)]
    run(load_config(overrides=overrides), make_fake_dataset(n_train=100, n_test=20), 4)
    assert traced and not any(traced)


@pytest.mark.parametrize("shape, kernel, padding", [((13, 13, 2), 3, 0), ((11, 10, 3), 5, 2)])
def test_the_references_direct_pull_is_the_vjp_of_the_layer(shape, kernel, padding):
    """At full float32 (the exact references, the measurements) a stride-1 layer keeps the written-out direct pull
    (unpool, then pull_back): against jax.vjp of the layer, as before Winograd took these layers in training."""
    from bioprop_cli.precision import full_float32

    with float64():
        layer = Layer(Conv(shape, 4, kernel, 1, padding), Pool("max", 2, 2))
        kx, kw, ka = jax.random.split(jax.random.PRNGKey(2), 3)
        h = _with_constant_regions(kx, (3,) + shape, jnp.float64).reshape(3, -1)
        params = {"w": 0.3 * jax.random.normal(kw, layer.op.weight_shape), "b": 0.1 * jnp.arange(4, dtype=float)}
        above = jax.random.uniform(ka, jax.eval_shape(lambda: conv_energy.layer_map(layer, params, h)).shape)

        @full_float32
        def written(params, h, above):
            assert not conv_energy.takes_winograd(layer)
            return conv_energy.up_and_down(layer, params, h, above)

        @jax.jit
        def by_vjp(params, h, above):
            up, pull = jax.vjp(lambda g: conv_energy.layer_map(layer, params, g), h)
            return up, pull(above)[0]

        for got, expected in zip(jax.jit(written)(params, h, above), by_vjp(params, h, above), strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
