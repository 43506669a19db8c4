"""Their side of benchmarks/laborieux_cnn.py: Laborieux et al.'s P_CNN trained by their own code, timed per batch.

Runs under a python that has torch (and numpy), never bioprop. Their model_utils.py (github
Laborieux-Axel/Equilibrium-Propagation, commit 93660ed) is imported unmodified from `--their-dir`; the plotting and
dataset modules it imports (matplotlib, torchvision, their data_utils) are replaced by empty stand-ins in sys.modules
when they are not installed, since nothing this script calls uses them. Setup: benchmarks/laborieux_cnn.py's
docstring.

The network and optimizer are built as their main.py builds them for check/train_mnist_cnn.sh (--model CNN --task
MNIST --channels 32 64 --kernels 5 5 --pools mm --strides 1 1 --fc 10 --act hard_sigmoid --optim adam --lrs 5e-5
1e-5 8e-6 --betas 0.0 0.4 --mbs 100; main.py's defaults --paddings 0 0, --loss mse, --alg EP, no --softmax,
--random-sign, --thirdphase or --scale). Per batch it makes the calls of their `train` for EP: init_neurons, the
free phase (T1 steps at beta_1 = 0), copy, the nudged phase (T2 steps at beta_2 = 0.4, continuing from the free
state; one-sided, no random sign), copy, compute_syn_grads, optimizer.step; without their running-accuracy
bookkeeping and end-of-epoch evaluation. Inputs as their MNIST transform makes them: ToTensor (pixel / 255) and
Normalize(mean 0, std 1), the identity. Batches are consecutive training images in file order (theirs are
shuffled by their DataLoader): one untimed warm-up batch (the first 100 images), then `--batches` timed batches,
the first batches x 100 images.

    BIOPROP_DATA_DIR=/work/shared/datasets/mnist taskset -c 0 /work/venvs/laborieux/bin/python \\
        benchmarks/laborieux_their_cnn.py --their-dir /work/venvs/laborieux/their --threads 1 --batches 2

The last stdout line is one JSON object (benchmarks/laborieux_cnn.py reads it); "loss" is the cost their train
reports for BPTT, 0.5 * MSE summed over the outputs and averaged over the batch, at the free phase's fixed point
of the last timed batch.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import sys
import time
import types

import numpy as np
import torch

BATCH = 100
CHANNELS, KERNELS, STRIDES, PADDINGS, FC = [1, 32, 64], [5, 5], [1, 1], [0, 0], [10]
POOLS, LRS, BETAS = "mm", [5e-5, 1e-5, 8e-6], (0.0, 0.4)


def stub_missing_modules() -> None:
    """Empty stand-ins for the modules their model_utils.py imports only for plotting and data loading."""
    if importlib.util.find_spec("matplotlib") is None:
        matplotlib = types.ModuleType("matplotlib")
        matplotlib.use = lambda *args, **kwargs: None
        matplotlib.pyplot = types.ModuleType("matplotlib.pyplot")
        sys.modules["matplotlib"] = matplotlib
        sys.modules["matplotlib.pyplot"] = matplotlib.pyplot
    for name in ("torchvision", "data_utils"):
        if importlib.util.find_spec(name) is None:
            sys.modules[name] = types.ModuleType(name)


def read_idx(data_dir: str, name: str) -> np.ndarray:
    """An IDX file (`name` or `name`.gz) as a numpy array of its stored shape."""
    path = os.path.join(data_dir, name)
    opener = open if os.path.exists(path) else gzip.open
    with opener(path if os.path.exists(path) else path + ".gz", "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise SystemExit(f"{name}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--their-dir", required=True, help="a directory holding their model_utils.py")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--batches", type=int, default=5, help="timed batches of 100")
    parser.add_argument("--T1", type=int, default=200, help="free-phase steps")
    parser.add_argument("--T2", type=int, default=10, help="nudged-phase steps")
    parser.add_argument("--data-dir", default=os.environ.get("BIOPROP_DATA_DIR"),
                        help="MNIST IDX files (default $BIOPROP_DATA_DIR)")
    parser.add_argument("--seed", type=int, default=0, help="torch.manual_seed before the model is built")
    args = parser.parse_args()
    if args.batches < 1:
        raise SystemExit("--batches must be at least 1")
    if not args.data_dir:
        raise SystemExit("no MNIST directory: pass --data-dir or set BIOPROP_DATA_DIR")
    if not os.path.exists(os.path.join(args.their_dir, "model_utils.py")):
        raise SystemExit(f"{args.their_dir}: no model_utils.py")

    torch.set_num_threads(args.threads)
    sys.path.insert(0, os.path.abspath(args.their_dir))
    stub_missing_modules()
    import model_utils as their

    needed = args.batches * BATCH
    images = read_idx(args.data_dir, "train-images-idx3-ubyte")[:needed]
    labels = read_idx(args.data_dir, "train-labels-idx1-ubyte")[:needed]
    x_all = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)  # ToTensor; Normalize(0, 1)
    y_all = torch.from_numpy(labels.astype(np.int64))

    # main.py: --seed, make_pools, P_CNN(28, [1] + channels, ...), MSELoss(reduction='none'), Adam per layer.
    torch.manual_seed(args.seed)
    device = torch.device("cpu")
    model = their.P_CNN(28, CHANNELS, KERNELS, STRIDES, FC, their.make_pools(POOLS), PADDINGS,
                        activation=their.hard_sigmoid, softmax=False)
    model.to(device)
    criterion = torch.nn.MSELoss(reduction="none").to(device)
    assert len(LRS) == len(model.synapses)
    optimizer = torch.optim.Adam([{"params": model.synapses[i].parameters(), "lr": LRS[i]}
                                  for i in range(len(model.synapses))])
    model.train()
    beta_1, beta_2 = BETAS

    def batch(k: int):
        """Their train's EP calls on batch k; returns the free phase's output layer."""
        x, y = x_all[k * BATCH:(k + 1) * BATCH].to(device), y_all[k * BATCH:(k + 1) * BATCH].to(device)
        neurons = model.init_neurons(x.size(0), device)
        neurons = model(x, y, neurons, args.T1, beta=beta_1, criterion=criterion)
        neurons_1 = their.copy(neurons)
        neurons = model(x, y, neurons, args.T2, beta=beta_2, criterion=criterion)
        neurons_2 = their.copy(neurons)
        model.compute_syn_grads(x, y, neurons_1, neurons_2, (beta_1, beta_2), criterion)
        optimizer.step()
        return neurons_1[-1].detach(), y

    batch(0)  # warm-up, untimed
    wall, cpu = time.perf_counter(), time.process_time()
    for k in range(args.batches):
        out, y = batch(k)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    one_hot = torch.nn.functional.one_hot(y, num_classes=FC[-1]).float()
    loss = (0.5 * criterion(out, one_hot).sum(dim=1).mean()).item()

    examples = args.batches * BATCH
    print(json.dumps({"side": "laborieux", "torch": torch.__version__, "batches": args.batches, "batch": BATCH,
                      "T1": args.T1, "T2": args.T2, "wall_s": wall, "cpu_s": cpu,
                      "examples_per_s": examples / wall, "examples_per_cpu_s": examples / cpu,
                      "cpu_s_per_batch": cpu / args.batches, "loss": loss}))


if __name__ == "__main__":
    main()
