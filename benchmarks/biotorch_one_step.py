"""bioprop's LeNet (configs/experiments/lenet_mnist.yaml) against biotorch's own LeNetMNIST and layers, step by step:
the same initial weights (bioprop's init, loaded into biotorch), the same feedback weights (fa: biotorch's B loaded
into bioprop), the same batch, the config's SGD (momentum, weight decay, lr); after each of `--steps` training steps
the largest difference between the two sides' weights, relative to the largest weight of the layer (float32: ~1e-6).
usf's feedback is each side's own (sign(W) times the Xavier std of the layer's fans): the comparison covers the
fans of conv3, a dense layer in bioprop.

    BIOPROP_DATA_DIR=... python benchmarks/biotorch_one_step.py --rules bp,fa,usf --steps 3 \
        --torch-python /work/venvs/protocol/bin/python

The biotorch side (`--side biotorch`, run by this script in that venv: benchmarks/biotorch_mnist.py says how to make
it) reads the weights and the batch from an .npz and writes its weights after each step to another. biotorch's
network is the released one (ReLU after fc1) unless the config has model.lenet.linear_fc1 true; its input is the
28x28 image zero-padded to 32x32, which is bioprop's padding 2 in conv1 (biotorch interpolates the digit to 32x32
instead: a difference of data, not of training).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "configs" / "experiments" / "lenet_mnist.yaml"
MODES = {"bp": "backpropagation", "fa": "fa", "usf": "usf"}
NAMES = ("conv1", "conv2", "conv3", "fc1", "fc2")


# ----------------------------------------------------------------------------------------------
# Layouts: bioprop's conv kernels are HWIO, its dense weights (n_in, n_out), conv3 a dense 400 -> 120 reading the
# 5x5x16 map flattened channel-last; torch's are OIHW and (out, in).


def to_torch(name: str, w: np.ndarray) -> np.ndarray:
    if name == "conv3":
        return w.reshape(5, 5, 16, 120).transpose(3, 2, 0, 1)
    return w.transpose(3, 2, 0, 1) if w.ndim == 4 else w.T


def from_torch(name: str, w: np.ndarray) -> np.ndarray:
    if name == "conv3":
        return w.transpose(2, 3, 1, 0).reshape(400, 120)
    return w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T


# ----------------------------------------------------------------------------------------------
# biotorch's side (torch venv)


def biotorch_side(inp: Path, out: Path) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    from biotorch_mnist import biotorch_lenet_mnist
    from biotorch.module.biomodule import BioModule

    data = np.load(inp)
    meta = json.loads(str(data["meta"]))
    network = biotorch_lenet_mnist()
    if meta["linear_fc1"]:
        network.relu4 = torch.nn.Identity()
    config = {"type": meta["mode"], "options": {"constrain_weights": False, "gradient_clip": False, "init": "xavier"}}
    model = BioModule(network, mode=meta["mode"], copy_weights=False, layer_config=config, output_dim=10)
    layers = [getattr(model.module, name) for name in NAMES]
    with torch.no_grad():
        for name, layer in zip(NAMES, layers):
            layer.weight.copy_(torch.from_numpy(data[f"{name}.w"]).reshape(layer.weight.shape))
            layer.bias.copy_(torch.from_numpy(data[f"{name}.b"]))
            if f"{name}.B" in data:
                layer.weight_backward.copy_(torch.from_numpy(data[f"{name}.B"]).reshape(layer.weight.shape))
    optimizer = torch.optim.SGD(model.parameters(), lr=meta["lr"], momentum=meta["momentum"],
                                weight_decay=meta["weight_decay"])
    x = torch.nn.functional.pad(torch.from_numpy(data["x"]).reshape(-1, 1, 28, 28), (2, 2, 2, 2))
    y = torch.from_numpy(data["y"])
    loss_function = torch.nn.CrossEntropyLoss()
    saved = {}
    for step in range(meta["steps"]):
        loss = loss_function(model(x), y)
        model.zero_grad()
        loss.backward()
        optimizer.step()
        for name, layer in zip(NAMES, layers):
            saved[f"{step}.{name}.w"] = layer.weight.detach().numpy().copy()
            saved[f"{step}.{name}.b"] = layer.bias.detach().numpy().copy()
    np.savez(out, **saved)


# ----------------------------------------------------------------------------------------------
# bioprop's side


def bioprop_side(rule: str, steps: int, torch_python: str, batch: int) -> dict:
    import jax
    import optax

    from bioprop_cli.config import load_config
    from bioprop_cli.models.layers import init_params, transport
    from bioprop_cli.network import architecture
    from bioprop_cli.optim import make_optimizer
    from bioprop_cli.rules import make_rule

    config = load_config(CONFIG, [("rule", rule)])
    arch = architecture(config)
    params = init_params(jax.random.PRNGKey(0), arch, config.model.init.scheme, config.model.init.scale)
    kx, ky = jax.random.split(jax.random.PRNGKey(1))
    x = np.asarray(jax.random.normal(kx, (batch, 784)), np.float32)
    labels = np.asarray(jax.random.randint(ky, (batch,), 0, 10))
    y = jax.nn.one_hot(labels, 10)
    rule_impl = make_rule(config, arch)
    state = rule_impl.init(jax.random.PRNGKey(5), params)
    o = config.optimizer
    meta = {"mode": MODES[rule], "linear_fc1": config.model.lenet.linear_fc1, "lr": o.lr, "momentum": o.momentum,
            "weight_decay": o.weight_decay, "steps": steps}
    arrays = {"x": x, "y": labels.astype(np.int64), "meta": json.dumps(meta)}
    for name, p in zip(NAMES, params):
        arrays[f"{name}.w"] = to_torch(name, np.asarray(p["w"]))
        arrays[f"{name}.b"] = np.asarray(p["b"])
    if rule == "fa":  # biotorch draws its own B; bioprop's state is replaced by the same B, in transport's layout
        rng = np.random.default_rng(7)
        state = list(state)
        for l, (name, layer, p) in enumerate(zip(NAMES, arch.layers, params)):
            if l == 0:
                continue  # no error is sent below the first layer
            b = (rng.uniform(-1, 1, p["w"].shape) * np.abs(np.asarray(p["w"])).max()).astype(np.float32)
            arrays[f"{name}.B"] = to_torch(name, b)
            state[l] = transport(layer.op, jax.numpy.asarray(b))
    optimizer = make_optimizer(o, steps_per_epoch=100, epochs=1)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, state):
        est = rule_impl.estimate(params, state, x, y, jax.random.PRNGKey(2))
        updates, opt_state = optimizer.update(est.grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, est.state

    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(inp, **arrays)
        subprocess.run([torch_python, str(Path(__file__).resolve()), "--side", "biotorch", "--inp", str(inp),
                        "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
        theirs = dict(np.load(out))
    worst = []
    for s in range(steps):
        params, opt_state, state = step(params, opt_state, state)
        diffs = {}
        for name, p in zip(NAMES, params):
            w = from_torch(name, theirs[f"{s}.{name}.w"])
            diffs[name] = float(np.abs(np.asarray(p["w"]) - w).max() / np.abs(w).max())
            diffs[name + ".b"] = float(np.abs(np.asarray(p["b"]) - theirs[f"{s}.{name}.b"]).max()
                                       / max(np.abs(theirs[f"{s}.{name}.b"]).max(), 1e-12))
        worst.append(max(diffs.values()))
    return {"rule": rule, "linear_fc1": meta["linear_fc1"], "lr": o.lr, "steps": steps,
            "max_relative_difference_per_step": worst, "last_step": diffs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", default="bp,fa,usf")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--torch-python", default="/work/venvs/protocol/bin/python")
    parser.add_argument("--side", choices=["biotorch"], help=argparse.SUPPRESS)
    parser.add_argument("--inp", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        biotorch_side(args.inp, args.out)
        return
    for rule in args.rules.split(","):
        print(json.dumps(bioprop_side(rule, args.steps, args.torch_python, args.batch)), flush=True)


if __name__ == "__main__":
    main()
