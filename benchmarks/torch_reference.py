"""The PyTorch reference for bioprop's CPU throughput: biotorch's LeNet-5 on MNIST (and the benchmark MLP)
trained in bp, fa or usf mode, timed over whole training steps with warm-up and evaluation excluded.

Run with the torch venv's python (torch is not a dependency of bioprop; docs/speed.md has the recipe):

    BIOPROP_DATA_DIR=/work/shared/datasets/mnist /work/venvs/torch/bin/python benchmarks/torch_reference.py \
        --net lenet --rule fa --threads 1 --steps 859

Prints one JSON line: examples/s by wall time and by CPU time (time.process_time) of the timed steps.

The protocol is bioprop's (configs/experiments/lenet_mnist.yaml; bioprop_cli/bench.py for the MLP):
- lenet: biotorch's LeNetMNIST (jsalbert/biotorch, biotorch/models/le_net.py) with its 32x32 resize as a zero
  padding of 2 in the first convolution (bioprop's `lenet`); conv3 a 5x5 convolution of the 5x5 map (bioprop: the
  same product as a dense layer); ReLU after the three convolutions and fc1, as released LeNetMNIST (relu4) and
  bioprop's lenet (`--linear-fc1`: none after fc1, model.lenet.linear_fc1 true); max pooling 2; cross-entropy; SGD momentum
  0.9, weight decay 1e-3 (torch.optim.SGD), batch 64; the learning rate `--lr` (torch_vs_bioprop.py passes the
  rule's rate from lenet_mnist.yaml; without it 0.1, fa 0.001). conv3's Xavier fans are the 5x5 convolution's,
  (400, 3000), as bioprop's lenet's conv3 since issue 26 (before, bioprop drew it with the dense (400, 120)).
- mlp: 784-256x5-10, tanh, plain SGD lr 0.01, batch 128 (bioprop bench's network).
- bp: torch's own autograd (biotorch's backpropagation layers are plain nn.Conv2d / nn.Linear); fa and usf:
  the layer's backward as a torch.autograd.Function that sends the error through a feedback weight B
  (biotorch/autograd/fa/{conv,linear}.py): the input gradient with B, the weight gradient exact. fa's B is
  fixed, drawn like W (xavier uniform); no input gradient where none is needed (the first layer), as biotorch's
  needs_input_grad; usf's is sign(W) times the Xavier std sqrt(2 / (fan_in + fan_out)),
  recomputed from W at every forward pass (biotorch/layers/fa_constructor, "usf" with scaling_factor).
- The training split is MNIST's first 55,000 images (bioprop holds out the last 5,000), normalised with its
  own mean and std, held in memory as one float32 tensor; each step indexes a shuffled batch out of it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

TRAIN_SIZE = 55_000  # bioprop's default data.validation_size 5000 held out of MNIST's 60,000


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array of its declared shape."""
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).exists():
            return folder / name
    raise SystemExit(f"{stem}(.gz) not found in {folder} (set BIOPROP_DATA_DIR to MNIST's folder)")


def mnist_training_split() -> tuple[torch.Tensor, torch.Tensor]:
    folder = Path(os.environ.get("BIOPROP_DATA_DIR", "."))
    images = read_idx(find(folder, "train-images-idx3-ubyte"))[:TRAIN_SIZE].astype(np.float32) / 255.0
    labels = read_idx(find(folder, "train-labels-idx1-ubyte"))[:TRAIN_SIZE].astype(np.int64)
    images = (images - images.mean()) / images.std()
    return torch.from_numpy(images[:, None]).contiguous(), torch.from_numpy(labels)


# ----------------------------------------------------------------------------------------------
# Layers whose backward sends the error through a feedback weight (fa, usf).


class FeedbackConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, fb, padding):
        ctx.save_for_backward(x, fb)
        ctx.padding, ctx.w_shape = padding, w.shape
        return F.conv2d(x, w, b, padding=padding)

    @staticmethod
    def backward(ctx, g):
        x, fb = ctx.saved_tensors
        dx = torch.nn.grad.conv2d_input(x.shape, fb, g, padding=ctx.padding) if ctx.needs_input_grad[0] else None
        dw = torch.nn.grad.conv2d_weight(x, ctx.w_shape, g, padding=ctx.padding)
        return dx, dw, g.sum((0, 2, 3)), None, None


class FeedbackLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, fb):
        ctx.save_for_backward(x, fb)
        return F.linear(x, w, b)

    @staticmethod
    def backward(ctx, g):
        x, fb = ctx.saved_tensors
        return g @ fb if ctx.needs_input_grad[0] else None, g.t() @ x, g.sum(0), None


class Layer(torch.nn.Module):
    """A conv (kernel k) or dense layer with Xavier-uniform weights, zero biases, and in fa/usf mode its
    feedback weight."""

    def __init__(self, rule: str, n_in: int, n_out: int, kernel: int | None = None, padding: int = 0):
        super().__init__()
        shape = (n_out, n_in) if kernel is None else (n_out, n_in, kernel, kernel)
        self.weight = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(shape)))
        self.bias = torch.nn.Parameter(torch.zeros(n_out))
        self.rule, self.kernel, self.padding = rule, kernel, padding
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(self.weight)
        self.sign_scale = math.sqrt(2.0 / (fan_in + fan_out))
        if rule == "fa":
            self.register_buffer("feedback", torch.nn.init.xavier_uniform_(torch.empty(shape)))

    def forward(self, x):
        if self.rule == "bp":
            if self.kernel is None:
                return F.linear(x, self.weight, self.bias)
            return F.conv2d(x, self.weight, self.bias, padding=self.padding)
        with torch.no_grad():
            fb = self.feedback if self.rule == "fa" else torch.sign(self.weight) * self.sign_scale
        if self.kernel is None:
            return FeedbackLinear.apply(x, self.weight, self.bias, fb)
        return FeedbackConv.apply(x, self.weight, self.bias, fb, self.padding)


class LeNet(torch.nn.Module):
    """biotorch's LeNetMNIST on 28x28 images, its 32x32 resize as padding 2 in conv1."""

    def __init__(self, rule: str, linear_fc1: bool = False):
        super().__init__()
        self.linear_fc1 = linear_fc1
        self.conv1 = Layer(rule, 1, 6, 5, padding=2)
        self.conv2 = Layer(rule, 6, 16, 5)
        self.conv3 = Layer(rule, 16, 120, 5)
        self.fc1 = Layer(rule, 120, 84)
        self.fc2 = Layer(rule, 84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x)).flatten(1)
        x = self.fc1(x)
        return self.fc2(x if self.linear_fc1 else F.relu(x))


class MLP(torch.nn.Module):
    def __init__(self, rule: str, sizes=(784, 256, 256, 256, 256, 256, 10)):
        super().__init__()
        self.layers = torch.nn.ModuleList(Layer(rule, a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = torch.tanh(layer(x))
        return self.layers[-1](x)


SETTINGS = {  # net: (batch, optimizer factory by rule and learning rate (None: the net's own))
    "lenet": (64, lambda params, rule, lr: torch.optim.SGD(params, lr=lr or (0.001 if rule == "fa" else 0.1),
                                                            momentum=0.9, weight_decay=1e-3)),
    "mlp": (128, lambda params, rule, lr: torch.optim.SGD(params, lr=lr or 0.01)),
}


def train_steps(model, optimizer, images, labels, order, steps, batch):
    for i in range(steps):
        idx = order[i * batch: (i + 1) * batch]
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", choices=list(SETTINGS), default="lenet")
    parser.add_argument("--rule", choices=["bp", "fa", "usf"], default="bp")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=0, help="timed steps (0: one epoch of the 55,000 images)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed steps first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, help="learning rate (default: the net's, SETTINGS)")
    parser.add_argument("--linear-fc1", action="store_true", help="lenet: no ReLU after fc1")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, labels = mnist_training_split()
    batch, make_optimizer = SETTINGS[args.net]
    model = LeNet(args.rule, args.linear_fc1) if args.net == "lenet" else MLP(args.rule)
    optimizer = make_optimizer(model.parameters(), args.rule, args.lr)
    steps = args.steps or TRAIN_SIZE // batch
    order = torch.randperm(TRAIN_SIZE)
    train_steps(model, optimizer, images, labels, order, args.warmup, batch)
    order = torch.randperm(TRAIN_SIZE).repeat(steps * batch // TRAIN_SIZE + 1)
    wall, cpu = time.perf_counter(), time.process_time()
    loss = train_steps(model, optimizer, images, labels, order, steps, batch)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"side": "torch", "torch": torch.__version__, "net": args.net, "rule": args.rule,
                      "threads": args.threads, "lr": optimizer.param_groups[0]["lr"], "steps": steps, "batch": batch, "wall_s": wall, "cpu_s": cpu,
                      "examples_per_s": steps * batch / wall, "examples_per_cpu_s": steps * batch / cpu,
                      "last_loss": loss.item()}))


if __name__ == "__main__":
    main()
