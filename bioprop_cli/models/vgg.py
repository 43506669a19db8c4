"""`vgg`: a stack of 3x3 (model.vgg.kernel) convolutions, each followed by an optional BatchNorm, the activation
(model.activation) and an optional 2x2 max pooling, then dense hidden layers and the output layer
(Simonyan & Zisserman 2015's pattern at CIFAR size). model.vgg lists one entry per conv layer.

Named instances (configs/models/):
- vgg5_pcx.yaml: pcx's VGG-5 (Pinchetti et al. 2024, "Benchmarking predictive coding networks made simple"):
  128, 256, 512, 512 channels, padding 1, max pooling after each, dense 10.
- vgg7_pcx.yaml: pcx's VGG-7: 128, 128, 256, 256, 512, 512 channels, paddings 1 1 1 0 1 0, max pooling after
  the 1st, 3rd and 5th, dense 10.
- vgg_laborieux.yaml: Laborieux et al. 2021's 4-conv EP net: 128, 256, 512, 512 channels, paddings 1 1 1 0,
  max pooling after each, dense 10.
Convolutions have biases unless a BatchNorm follows them (which shifts); the dense layers have biases.
"""

from __future__ import annotations

import math

from bioprop_cli.models.graph import Network, WeightLayer, batch_norm, conv_out, max_pool, pooled


def build(input_shape: tuple[int, int, int], n_out: int, vgg_config, activation) -> Network:
    c = vgg_config
    norm = c.norm == "batch"
    layers: list[WeightLayer] = []
    shape = tuple(input_shape)
    for i, (channels, padding) in enumerate(zip(c.channels, c.paddings)):
        layers.append(WeightLayer(f"conv{i}", "conv", (c.kernel, c.kernel, shape[2], channels),
                                  conv_out(shape, channels, c.kernel, 1, padding), 1, padding, bias=not norm))
        shape = layers[-1].out_shape
        if c.pools[i] == "max":
            shape = pooled(shape)
    n_convs = len(layers)
    units = math.prod(shape)
    for i, width in enumerate(tuple(c.dense) + (n_out,)):
        layers.append(WeightLayer(f"fc{i}", "dense", (units, width), (width,)))
        units = width
    norms = tuple(c.channels) if norm else ()
    pools = tuple(c.pools)

    def apply(params, stats, feedback, x, train, ops):
        h = x.reshape((x.shape[0],) + tuple(input_shape))
        new_stats = list(stats)
        for i in range(n_convs):
            layer, p = layers[i], params["layers"][i]
            a = ops.conv(h, p["w"], p.get("b"), feedback[i], layer.stride, layer.padding)
            if norm:
                a, new_stats[i] = batch_norm(a, params["norms"][i], stats[i], train)
            h = activation.f(a)
            if pools[i] == "max":
                h = max_pool(h)
        h = h.reshape(h.shape[0], -1)
        for i in range(n_convs, len(layers)):
            p = params["layers"][i]
            h = ops.dense(h, p["w"], p["b"], feedback[i])
            if i < len(layers) - 1:
                h = activation.f(h)
        return h, new_stats

    label = "vgg-" + "-".join(w.describe() + ("-max2" if i < n_convs and pools[i] == "max" else "")
                              for i, w in enumerate(layers)) + ("-bn" if norm else "")
    return Network("vgg", tuple(input_shape), tuple(layers), norms, apply, label)
