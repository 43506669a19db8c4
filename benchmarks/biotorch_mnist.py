"""biotorch's own LeNetMNIST trained by biotorch's own layers (jsalbert/biotorch, PyPI biotorch 0.0.16) on MNIST
in the protocol of configs/experiments/lenet_mnist.yaml, for a side-by-side check of bioprop's LeNet numbers (issue
26: does lr 0.1 kill bp at epoch 1 in biotorch too?). Nothing of biotorch is copied: its modules are imported.

Needs a venv with torch, Pillow and biotorch (no torchvision: biotorch.models' __init__ imports it, so the one file
biotorch/models/le_net.py is loaded by path; the 32x32 resize is PIL's bilinear resize, which is what torchvision's
Resize does to the PIL images biotorch's MNIST dataset yields):

    /work/venvs/torch/bin/python -m venv /work/venvs/protocol
    echo /work/venvs/torch/lib/python3.11/site-packages > /work/venvs/protocol/lib/python3.11/site-packages/torch.pth
    /work/venvs/protocol/bin/pip install pillow pyyaml; /work/venvs/protocol/bin/pip install --no-deps biotorch==0.0.16
    BIOPROP_DATA_DIR=/work/shared/datasets/mnist /work/venvs/protocol/bin/python benchmarks/biotorch_mnist.py \
        --mode backpropagation --lr 0.1 --seeds 0,1,2 --epochs 1

As biotorch's benchmark.py runs it (biotorch/benchmark/run.py, training/functions.py, datasets/dataset.py):
Resize(32) -> ToTensor -> Normalize((0.1307,), (0.3081,)); BioModule(LeNetMNIST(), mode, layer_config with init
"xavier") (Xavier-uniform W and B, zero biases); torch.optim.SGD(model.parameters(), lr, momentum, weight_decay);
nn.CrossEntropyLoss (mean); a shuffled DataLoader with drop_last=True; model.zero_grad(), loss.backward(),
optimizer.step(); MultiStepLR stepped after each epoch (`--milestones`, by default the boundaries and the decay rate
of lenet_mnist.yaml's optimizer.schedule). One JSON line per seed: test accuracy after each epoch and the mean
training loss of each epoch.
`--linear-fc1` replaces relu4 (after fc1) by the identity: the LeNetMNIST of biotorch's development history
(stored commit 12b8a2c, the network bioprop's `model.lenet.linear_fc1: true` was written from); the released one
(0.0.16, GitHub main) has it. `--train-size 55000` keeps the first 55,000 training images (bioprop's split) instead of biotorch's 60,000.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from biotorch.module.biomodule import BioModule
from torch_reference import find, read_idx  # benchmarks/ is on sys.path when run as a script

MEAN, STD = 0.1307, 0.3081  # biotorch/datasets/mnist.py
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "experiments" / "lenet_mnist.yaml"
SCHEDULE = yaml.safe_load(CONFIG.read_text())["optimizer"]["schedule"]  # boundaries, decay_rate


def biotorch_lenet_mnist() -> torch.nn.Module:
    """biotorch.models.le_net.LeNetMNIST, loaded from its file (the package __init__ needs torchvision)."""
    package = Path(importlib.util.find_spec("biotorch").submodule_search_locations[0])
    spec = importlib.util.spec_from_file_location("biotorch_le_net", package / "models" / "le_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LeNetMNIST()


def resized(images: np.ndarray, size: int) -> torch.Tensor:
    """torchvision's Resize((size, size)) on PIL images (PIL bilinear), ToTensor, Normalize(MEAN, STD)."""
    out = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])
    return torch.from_numpy((out.astype(np.float32) / 255.0 - MEAN) / STD)[:, None].contiguous()


def load(folder: Path, split: str, size: int, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(find(folder, f"{prefix}-images-idx3-ubyte"))[:limit]
    labels = read_idx(find(folder, f"{prefix}-labels-idx1-ubyte"))[:limit]
    return resized(images, size), torch.from_numpy(labels.astype(np.int64))


def accuracy(model, images, labels, batch=1000) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum((model(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum().item()
                      for i in range(0, len(labels), batch))
    model.train()
    return correct / len(labels)


def run(args, seed: int, train, test) -> dict:
    torch.manual_seed(seed)
    layer_config = {"type": args.mode, "options": {"constrain_weights": False, "gradient_clip": False,
                                                   "init": "xavier"}}
    network = biotorch_lenet_mnist()
    if args.linear_fc1:  # the LeNetMNIST of biotorch's development history (commit 12b8a2c): no relu after fc1
        network.relu4 = torch.nn.Identity()
    model = BioModule(network, mode=args.mode, copy_weights=False, layer_config=layer_config,
                      output_dim=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=args.milestones, gamma=SCHEDULE["decay_rate"])
    loss_function = torch.nn.CrossEntropyLoss()
    (x, y), (tx, ty) = train, test
    steps = len(y) // args.batch  # drop_last=True
    accuracies, losses = [], []
    start = time.perf_counter()
    for _ in range(args.epochs):
        order = torch.randperm(len(y))
        total = 0.0
        for i in range(steps):
            idx = order[i * args.batch: (i + 1) * args.batch]
            inputs, targets = x[idx], y[idx]
            outputs = model(inputs, targets, loss_function) if args.mode == "dfa" else model(inputs)
            loss = loss_function(torch.squeeze(outputs), targets)
            model.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        schedule.step()
        losses.append(total / steps)
        accuracies.append(accuracy(model, tx, ty))
    return {"side": "biotorch", "mode": args.mode, "seed": seed, "lr": args.lr, "momentum": args.momentum,
            "weight_decay": args.weight_decay, "batch": args.batch, "train_size": len(y), "epochs": args.epochs,
            "linear_fc1": args.linear_fc1, "milestones": args.milestones, "test_accuracy": accuracies,
            "train_loss": losses,
            "wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="backpropagation",
                        choices=["backpropagation", "fa", "dfa", "usf", "brsf", "frsf"])
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--milestones", type=lambda v: [int(e) for e in v.split(",")], default=SCHEDULE["boundaries"],
                        help="epochs after which the rate falls by the config's decay rate (MultiStepLR)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--train-size", type=int, default=60_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--linear-fc1", action="store_true", help="relu4 (after fc1) replaced by the identity")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(os.environ.get("BIOPROP_DATA_DIR", "."))
    train, test = load(folder, "train", 32, args.train_size), load(folder, "test", 32, None)
    for seed in (int(s) for s in args.seeds.split(",")):
        print(json.dumps(run(args, seed, train, test)), flush=True)


if __name__ == "__main__":
    main()
