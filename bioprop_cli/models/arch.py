"""Architectures: which layers a network has and the shape of each, from the config (their one home).

A network is a stack of weight layers l = 0 .. L-1. Each is a dense or a convolutional layer
producing a pre-activation a_l, followed (except the last, whose a_l are the logits) by the
activation f and then, for a convolutional layer, by an optional pooling:
    h_{l+1} = pool_l(f(a_l)),
or h_{l+1} = pool_l(a_l) for a hidden layer without activation (`Layer.activation` False: the 84-unit layer
of an earlier revision of biotorch's LeNetMNIST, model.lenet.linear_fc1).
A dense layer reads its input flattened (channel-last order), so a conv stack flows into dense
layers without an explicit flatten layer. The input x arrives flat, (batch, H*W*C), and the first
conv layer reads it as (batch, H, W, C), the dataset's image shape (its registry entry, bioprop_cli/datasets/).

- `mlp`: depth hidden dense layers of `width` units (today's network, model.depth / model.width).
- `lenet`: LeNet-5 as biotorch trains it on MNIST (conv 6@5x5 pad 2, max pool 2; conv 16@5x5,
  max pool 2; dense 120, 84, 10); model.depth and model.width do not apply; model.lenet.linear_fc1
  leaves out the activation after the 84-unit layer, as an earlier revision of biotorch's did.
- `cnn`: conv layers as model.cnn lists them, then dense hidden layers of model.cnn.dense units, then
  the output layer; model.depth and model.width do not apply.
- `resnet` (models/resnet.py), `vgg` (models/vgg.py): networks written as functions on the library's feedback
  layers (models/graph.py: residual adds, BatchNorm), not layer stacks; their keys are model.resnet, model.vgg.
The registry ARCHITECTURES (below) names them all.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Callable, Literal, Mapping, NamedTuple

from bioprop_cli.models import graph, resnet, vgg
from bioprop_cli.models.graph import Network

PoolKind = Literal["max", "avg", "none"]


class Dense(NamedTuple):
    n_in: int
    n_out: int
    # a dense layer that stands for a k x k convolution over a k x k map (LeNet's conv3): k^2, so that its fans
    # are the convolution's, (k^2 C_in, k^2 C_out) = (n_in, k^2 n_out), as torch's xavier_uniform_ reads them
    kernel_area: int = 1

    @property
    def in_shape(self) -> tuple[int]:
        return (self.n_in,)

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.n_in, self.n_out)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.n_out,)

    @property
    def fans(self) -> tuple[int, int]:
        return self.n_in, self.kernel_area * self.n_out


class Conv(NamedTuple):
    in_shape: tuple[int, int, int]  # (H, W, C_in) of the layer's input
    channels: int  # C_out
    kernel: int  # square kernel side k
    stride: int
    padding: int  # zeros added on each side of H and W

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """HWIO: (k, k, C_in, C_out), the layout of jax.lax.conv_general_dilated's 'HWIO'."""
        return (self.kernel, self.kernel, self.in_shape[2], self.channels)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """(H', W', C_out) of the pre-activation: floor((H + 2p - k) / s) + 1."""
        h, w, _ = self.in_shape
        side = lambda n: (n + 2 * self.padding - self.kernel) // self.stride + 1
        return (side(h), side(w), self.channels)

    @property
    def fans(self) -> tuple[int, int]:
        """(k^2 C_in, k^2 C_out): the variance-scaling fans of a convolution kernel."""
        area = self.kernel * self.kernel
        return area * self.in_shape[2], area * self.channels


class Pool(NamedTuple):
    kind: Literal["max", "avg"]
    window: int
    stride: int

    def out_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """VALID pooling: floor((H - window) / stride) + 1 per side."""
        side = lambda n: (n - self.window) // self.stride + 1
        return (side(shape[0]), side(shape[1]), shape[2])


class Layer(NamedTuple):
    op: Dense | Conv
    pool: Pool | None = None  # after the activation; conv layers only
    # whether the activation f follows the layer (hidden layers; the output layer's a_l are the logits
    # whatever this says); False: h_{l+1} = pool(a_l), the identity in place of f
    activation: bool = True

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The shape of h_{l+1}, what the next layer reads (after the activation and the pooling)."""
        shape = self.op.out_shape
        return self.pool.out_shape(shape) if self.pool is not None else shape


class Architecture(NamedTuple):
    name: str  # mlp | lenet | cnn
    input_shape: tuple[int, ...]  # (H, W, C) of one example
    layers: tuple[Layer, ...]

    @property
    def is_mlp(self) -> bool:
        return all(isinstance(layer.op, Dense) for layer in self.layers)

    @property
    def sizes(self) -> tuple[int, ...]:
        """The number of units at each layer boundary, flattened: (n_0, n_1, ..., n_L); for the
        MLP, its layer sizes (784, width, ..., 10)."""
        return (math.prod(self.input_shape),) + tuple(math.prod(layer.out_shape) for layer in self.layers)

    @property
    def pre_shapes(self) -> tuple[tuple[int, ...], ...]:
        """The shape of each pre-activation a_l (per example)."""
        return tuple(layer.op.out_shape for layer in self.layers)

    @property
    def n_params(self) -> int:
        """Weights and biases of all layers."""
        return sum(math.prod(layer.op.weight_shape) + layer.op.out_shape[-1] for layer in self.layers)

    def describe(self) -> str:
        """One line, e.g. '784-256-10' for an MLP, 'conv6@5x5p2-max2-conv16@5x5-max2-120-84-10' for LeNet
        ('...-120-84lin-10': the 84-unit layer without activation)."""
        if self.is_mlp:
            return "-".join(str(n) for n in self.sizes)
        parts = []
        for layer in self.layers:
            op = layer.op
            if isinstance(op, Conv):
                parts.append(f"conv{op.channels}@{op.kernel}x{op.kernel}"
                             + (f"s{op.stride}" if op.stride != 1 else "") + (f"p{op.padding}" if op.padding else ""))
            else:
                parts.append(str(op.n_out))
            if not layer.activation and layer is not self.layers[-1]:
                parts[-1] += "lin"
            if layer.pool is not None:
                parts.append(f"{layer.pool.kind}{layer.pool.window}")
        return "-".join(parts)


def mlp(input_shape: tuple[int, ...], depth: int, width: int, n_out: int) -> Architecture:
    sizes = (math.prod(input_shape),) + (width,) * depth + (n_out,)
    return dense(sizes)._replace(input_shape=tuple(input_shape))


def dense(sizes: tuple[int, ...]) -> Architecture:
    """The MLP of the given layer sizes (n_0, n_1, ..., n_L), on flat inputs of n_0 features."""
    return Architecture("mlp", (sizes[0],), tuple(Layer(Dense(a, b)) for a, b in zip(sizes[:-1], sizes[1:])))


def stack(name: str, input_shape: tuple[int, int, int], convs: list[tuple[int, int, int, int, Pool | None]],
          dense: tuple[int, ...], n_out: int) -> Architecture:
    """Conv layers (channels, kernel, stride, padding, pool) in order, then dense hidden layers, then the output."""
    layers, shape = [], tuple(input_shape)
    for channels, kernel, stride, padding, pool in convs:
        layer = Layer(Conv(shape, channels, kernel, stride, padding), pool)
        layers.append(layer)
        shape = layer.out_shape
    n = math.prod(shape)
    for width in tuple(dense) + (n_out,):
        layers.append(Layer(Dense(n, width)))
        n = width
    return Architecture(name, tuple(input_shape), tuple(layers))


def lenet(input_shape: tuple[int, int, int], n_out: int, linear_fc1: bool = False) -> Architecture:
    """LeNet-5 as biotorch's le_net_mnist: conv 6@5x5 (pad 2), max pool 2; conv 16@5x5, max pool 2;
    dense 120, 84, n_out (on 28x28 inputs the flattened conv output is 16 x 5 x 5 = 400).

    biotorch (jsalbert/biotorch, biotorch/models/le_net.py, LeNetMNIST) resizes MNIST to 32x32 and has
    conv 6@5x5 (no padding), max pool 2, conv 16@5x5, max pool 2, conv 120@5x5, fc1 84, fc2 10, ReLU after
    every layer but fc2 (relu4 after fc1 in the released code: PyPI biotorch 0.0.16, GitHub main): this stack.
    linear_fc1 (model.lenet.linear_fc1) leaves the activation after the 84-unit layer out, fc1 feeding fc2
    directly, as an earlier revision of biotorch's file had it (commit 12b8a2c, no relu4; issue 26).
    Its conv 120@5x5 meets a 5x5x16 map: it is a dense layer 400 -> 120 (the same product) with the
    convolution's fans, (5^2 * 16, 5^2 * 120) = (400, 3000) (Dense.kernel_area), which set its Xavier init, fa's B
    and usf's sign scale as in biotorch (issue 26; before, (400, 120): 2.56x biotorch's Xavier std), and
    padding 2 gives the 28x28 image the 32x32 frame (zeros, where biotorch interpolates the digit up to
    32x32). The activation is model.activation: relu for biotorch's."""
    pool = Pool("max", 2, 2)
    net = stack("lenet", input_shape, [(6, 5, 1, 2, pool), (16, 5, 1, 0, pool)], (120, 84), n_out)
    *below, conv3, fc1, fc2 = net.layers
    conv3 = conv3._replace(op=conv3.op._replace(kernel_area=5 * 5))
    return net._replace(layers=(*below, conv3, fc1._replace(activation=not linear_fc1), fc2))


def cnn(input_shape: tuple[int, int, int], cnn_config, n_out: int) -> Architecture:
    """The configurable conv net of model.cnn (see config.CNNConfig)."""
    c = cnn_config
    convs = [
        (channels, kernel, stride, padding, None if pool == "none" else Pool(pool, c.pool_window, c.pool_stride))
        for channels, kernel, stride, padding, pool in zip(c.channels, c.kernels, c.strides, c.paddings, c.pools)
    ]
    return stack("cnn", input_shape, convs, tuple(c.dense), n_out)


class ArchInfo(NamedTuple):
    name: str
    title: str  # what the network is, for help texts
    # build(model_config, input_shape (H, W, C), n_out) -> Architecture (a layer stack, trained by the rules
    # of bioprop_cli/rules/) or models.graph.Network (built on the library's feedback layers, trained by
    # rules/library.py)
    build: Callable
    keys: str | None = None  # the config section of its own keys (model.<keys>), None: model.depth / width only


def _vgg(model_config, input_shape, n_out):
    from bioprop_cli.models.mlp import ACTIVATIONS

    return vgg.build(input_shape, n_out, model_config.vgg, ACTIVATIONS[model_config.activation])


# The registry of architectures: model.arch's values, the one home of each network's facts. Adding one is
# its module and one line here (and, if it has keys of its own, their section in config.ModelConfig).
ARCHITECTURES: Mapping[str, ArchInfo] = MappingProxyType({a.name: a for a in (
    ArchInfo("mlp", "multilayer perceptron: model.depth hidden layers of model.width units",
             lambda m, shape, n_out: mlp(shape, m.depth, m.width, n_out)),
    ArchInfo("lenet", "LeNet-5 as biotorch trains it", lambda m, shape, n_out: lenet(shape, n_out, m.lenet.linear_fc1)),
    ArchInfo("cnn", "conv layers as model.cnn lists them", lambda m, shape, n_out: cnn(shape, m.cnn, n_out), "cnn"),
    ArchInfo("resnet", "the CIFAR ResNets of He et al. 2016 as biotorch builds them (BatchNorm, shortcut A or B)",
             lambda m, shape, n_out: resnet.build(shape, n_out, m.resnet.depth, m.resnet.shortcut, m.resnet.width),
             "resnet"),
    ArchInfo("vgg", "3x3 conv stack with optional BatchNorm (pcx's VGG-5/7, Laborieux et al.'s 4-conv net)", _vgg,
             "vgg"),
)})


def build(model_config, input_shape: tuple[int, ...], n_out: int) -> Architecture | Network:
    """The architecture model_config.arch names, on inputs of the given (H, W, C) shape."""
    return ARCHITECTURES[model_config.arch].build(model_config, tuple(input_shape), n_out)


def of_config(config) -> Architecture | Network:
    """The config's network (model.arch) on its dataset's examples, one output per class (datasets.facts)."""
    from bioprop_cli.datasets.registry import facts

    shape, n_classes = facts(config.data)
    return build(config.model, shape, n_classes)


def is_library(network) -> bool:
    """Whether the network is built on the library's feedback layers (models.graph.Network)."""
    return isinstance(network, Network)


def label(model_config) -> str:
    """A short name of the network for folder names: d<depth> for the MLP, resnet<depth> for a ResNet, else
    the arch (lenet, cnn, vgg)."""
    if model_config.arch == "mlp":
        return f"d{model_config.depth}"
    return f"resnet{model_config.resnet.depth}" if model_config.arch == "resnet" else model_config.arch


def problem(arch: Architecture | Network) -> str | None:
    """What makes the architecture impossible (a layer or pooling with no output left), else None."""
    if is_library(arch):
        return graph.problem(arch)
    for l, layer in enumerate(arch.layers):
        if min(layer.op.out_shape) < 1 or min(layer.out_shape) < 1:
            return f"layer {l} has no output left on {'x'.join(map(str, arch.input_shape))} inputs"
    return None
