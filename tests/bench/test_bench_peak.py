"""The bench's matmul peak covers every product shape of the benchmarked networks."""

import math

from bioprop_cli.bench import measure_matmul_peak, network_shapes, peak_shapes
from bioprop_cli.models.arch import dense


def test_network_shapes_are_the_products_of_a_training_step():
    # 784-256-10, batch 128: forward x W, weight gradient x^T delta, error path delta W^T
    assert network_shapes(dense((784, 256, 10)), 128) == {
        (128, 784, 256), (784, 128, 256), (128, 256, 784),
        (128, 256, 10), (256, 128, 10), (128, 10, 256),
    }


def test_the_peak_is_measured_on_large_squares_and_the_networks_shapes():
    network = network_shapes(dense((20, 8, 10)), 4)
    shapes = peak_shapes(network)
    assert {(2048, 2048, 2048), (4096, 4096, 4096)} <= set(shapes) and network <= set(shapes)


def test_each_shape_gets_a_finite_positive_rate():
    peak = measure_matmul_peak([(4, 20, 8), (8, 4, 8)], repeats=1)
    assert set(peak) == {"4x20x8", "8x4x8"} and all(math.isfinite(v) and v > 0 for v in peak.values())
