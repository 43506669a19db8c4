"""`resnet`: the CIFAR ResNets of He et al. 2016 (arXiv:1512.03385, section 4.2) as biotorch builds them
(jsalbert/biotorch, biotorch/models/small_resnet.py, after akamaster/pytorch_resnet_cifar10).

depth = 6n + 2 (20, 32, 44, 56, 110): a 3x3 conv of `width` channels (16 in the paper), BatchNorm, ReLU;
three stages of n basic blocks with width, 2 width and 4 width channels, the first block of stages 2 and 3
halving the image with stride 2; global average pooling; a dense layer to the classes. A basic block is
    out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)),
the convolutions 3x3, padding 1, without bias (BatchNorm shifts); the dense layer has a bias. Where a
block changes the shape, the shortcut is
- A (the paper's choice for CIFAR, biotorch's default): x subsampled by 2 in H and W (x[:, ::2, ::2]) and
  zero-padded with planes // 4 channels on each side: no parameters;
- B: a 1x1 convolution of stride 2 and BatchNorm (a projection).
ResNet-20 with option A has 0.27M parameters (the paper's Table 6; counted by a test).

Every convolution and the dense layer are feedback layers (models/graph.py); BatchNorm, ReLU, the
residual adds and the average pooling pass errors back exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bioprop_cli.models.graph import Network, WeightLayer, batch_norm, conv_out

DEPTHS = "6n + 2 >= 8 (20, 32, 44, 56 in He et al. 2016)"


def valid_depth(depth: int) -> bool:
    return depth >= 8 and (depth - 2) % 6 == 0


def build(input_shape: tuple[int, int, int], n_out: int, depth: int = 20, shortcut: str = "A",
          width: int = 16) -> Network:
    n = (depth - 2) // 6
    layers: list[WeightLayer] = []
    norms: list[int] = []
    plan = []  # ("stem" | "block", indices) in forward order

    def conv(name, shape, channels, kernel, stride, padding):
        layers.append(WeightLayer(name, "conv", (kernel, kernel, shape[2], channels),
                                  conv_out(shape, channels, kernel, stride, padding), stride, padding, bias=False))
        norms.append(channels)
        return len(layers) - 1, layers[-1].out_shape

    stem, shape = conv("conv0", tuple(input_shape), width, 3, 1, 1)
    plan.append(("stem", stem))
    for stage in range(3):
        planes = width * 2 ** stage
        for block in range(n):
            stride = 2 if stage > 0 and block == 0 else 1
            prefix = f"stage{stage + 1}.block{block}"
            c1, mid = conv(f"{prefix}.conv1", shape, planes, 3, stride, 1)
            c2, out = conv(f"{prefix}.conv2", mid, planes, 3, 1, 1)
            changes = stride != 1 or shape[2] != planes
            projection = None
            if changes and shortcut == "B":
                projection, _ = conv(f"{prefix}.shortcut", shape, planes, 1, stride, 0)
            plan.append(("block", (c1, c2, projection, changes, planes)))
            shape = out
    layers.append(WeightLayer("fc", "dense", (shape[2], n_out), (n_out,)))
    plan = tuple(plan)

    def apply(params, stats, feedback, x, train, ops):
        x = x.reshape((x.shape[0],) + tuple(input_shape))
        new_stats = list(stats)

        def conv_bn(i, h):  # weight layer i is followed by BatchNorm i (every conv here is)
            layer, p = layers[i], params["layers"][i]
            a = ops.conv(h, p["w"], None, feedback[i], layer.stride, layer.padding)
            y, new_stats[i] = batch_norm(a, params["norms"][i], stats[i], train)
            return y

        for kind, spec in plan:
            if kind == "stem":
                x = jax.nn.relu(conv_bn(spec, x))
                continue
            c1, c2, projection, changes, planes = spec
            out = conv_bn(c2, jax.nn.relu(conv_bn(c1, x)))
            if projection is not None:
                skip = conv_bn(projection, x)
            elif changes:  # option A: subsample, then zero channels on both sides
                pad = planes // 4
                skip = jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (pad, pad)))
            else:
                skip = x
            x = jax.nn.relu(out + skip)
        pooled = jnp.mean(x, axis=(1, 2))
        fc = params["layers"][-1]
        return ops.dense(pooled, fc["w"], fc["b"], feedback[-1]), new_stats

    return Network(f"resnet{depth}", tuple(input_shape), tuple(layers), tuple(norms), apply,
                   f"resnet{depth}-{shortcut}-w{width}")
