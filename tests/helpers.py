"""Helpers shared by several test files (no test file imports another): fake data, the CLI's error
checks, a local file server, synthetic run folders, small training runs, small EP problems."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import typer
import yaml

from bioprop_cli.cli.compare import compare
from bioprop_cli.config import load_config
from bioprop_cli.data import Dataset
from bioprop_cli.models.arch import dense
from bioprop_cli.models.layers import init_params
from bioprop_cli.rules import make_rule
from bioprop_cli.runs import RunWriter, read_jsonl
from bioprop_cli.train import train

HELPERS_DIR = Path(__file__).resolve().parent  # for subprocesses that import this module
REPO_ROOT = HELPERS_DIR.parent


# --- data ---


def make_fake_dataset(n_train: int = 600, n_test: int = 100, seed: int = 0) -> Dataset:
    """A tiny MNIST-shaped dataset in memory (random pixels, random labels)."""
    rng = np.random.default_rng(seed)
    return Dataset(
        name="mnist",
        x_train=rng.random((n_train, 784), dtype=np.float32),
        y_train=rng.integers(0, 10, n_train).astype(np.int32),
        x_test=rng.random((n_test, 784), dtype=np.float32),
        y_test=rng.integers(0, 10, n_test).astype(np.int32),
        source="fake dataset (tests)",
    )


def clusters(n_train=1200, n_test=300, dim=20, seed=0):
    """Ten separable Gaussian clusters: every rule should learn them quickly."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(10, dim)).astype(np.float32)

    def draw(n):
        y = rng.integers(0, 10, n).astype(np.int32)
        return (centers[y] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32), y

    (x_train, y_train), (x_test, y_test) = draw(n_train), draw(n_test)
    return SimpleNamespace(name="clusters", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


# --- the CLI: bad input is one line, exit code 2, nothing written ---


def stderr_of(result) -> str:
    """What the command wrote to stderr; falls back to the mixed output where the runner does not separate it."""
    try:
        text = result.stderr
    except (ValueError, AttributeError):  # older click: stderr not captured separately
        text = None
    return text if text else result.output


def assert_user_error(result, *fragments: str) -> str:
    """Exit code 2, one 'error:' line naming `fragments`, no traceback; returns the line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an unhandled exception
    text = stderr_of(result)
    assert "Traceback" not in result.output and "Traceback" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got: {text!r}"
    line = lines[0]
    assert line.startswith("error:"), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def assert_nothing_written(results_dir: Path) -> None:
    assert not results_dir.exists() or list(results_dir.iterdir()) == [], list(results_dir.rglob("*"))


# --- downloads: a local HTTP server ---


class FileServer:
    """Serves `files` (URL path -> bytes) on 127.0.0.1; counts requests; `cut_short` paths announce their full
    length but send only half of it before closing the connection (a server that dies half-way); `trickle` paths
    (path -> seconds) send one byte, then wait that long before the next, until the file ends or the server stops."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.cut_short: set[str] = set()
        self.trickle: dict[str, float] = {}
        self.after_first_byte: Callable[[], object] = lambda: None  # of a trickle
        self.stopping = threading.Event()
        self.requests: list[str] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def handler(self):
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                body = outer.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path.lstrip("/") in outer.trickle:
                    self.send_slowly(body, outer.trickle[self.path.lstrip("/")])
                    return
                self.wfile.write(body[: len(body) // 2] if self.path.lstrip("/") in outer.cut_short else body)

            def send_slowly(self, body: bytes, seconds_per_byte: float):
                for position in range(len(body)):
                    try:
                        self.wfile.write(body[position:position + 1])
                        self.wfile.flush()
                    except OSError:  # the client gave up
                        return
                    if position == 0:
                        outer.after_first_byte()
                    if outer.stopping.wait(seconds_per_byte):
                        return

            def log_message(self, *args):
                pass

        return Handler

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


# --- synthetic run folders for `bioprop compare` ---


SPE = 10  # steps per epoch of the synthetic runs


def compare_app() -> typer.Typer:
    a = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    a.command("compare")(compare)
    a.command("noop", hidden=True)(lambda: None)  # two commands: the compare_app keeps the "compare" name
    return a


def write_run(root: Path, name: str, *, rule: str = "bp", depth: int = 2, seed: int = 0, accs=(0.9, 0.95, 0.97),
              walls=None, final=None, val=None, best_val=None, status: str = "completed", wall_time: float = 30.0,
              examples_per_s: float = 1000.0, update_angles=None, feedback=None, angle_curve=None, lr: float = 0.001,
              experiment: str = "exp", in_epoch: bool = False, batch_size: int = 128, vals=None) -> Path:
    """One run folder. update_angles: {layer: final angle}; feedback: {layer: angle or None} (all epochs);
    angle_curve: mean_update_angle per epoch 0..E (epoch 0 goes to alignment.jsonl's layer "all");
    vals: validation accuracy per epoch (default: accs), which sets best_val_epoch."""
    path = root / name
    path.mkdir(parents=True)
    config = {
        "rule": rule, "experiment": experiment, "seed": seed, "results_dir": str(root / f"res-{seed}"),
        "model": {"depth": depth, "width": 32, "activation": "tanh"},
        "optimizer": {"name": "adam", "lr": lr, "layer_lr": []},
        "data": {"dataset": "mnist", "data_dir": f"/data/{seed}"},
        "train": {"epochs": len(accs), "batch_size": batch_size},
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    walls = walls or [10.0 * (e + 1) for e in range(len(accs))]
    angle_curve = angle_curve or [80.0 - 5 * e for e in range(len(accs) + 1)]
    vals = vals or accs
    metrics = [
        {"epoch": e + 1, "step": (e + 1) * SPE, "test_accuracy": a, "val_accuracy": v, "wall_time_s": w,
         "mean_update_angle": angle_curve[e + 1]}
        for e, (a, v, w) in enumerate(zip(accs, vals, walls))
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    update_angles = update_angles or {l: 10.0 * l for l in range(depth + 1)}
    feedback = feedback or {l: None for l in range(depth + 1)}
    lines = []
    for e in range(len(accs) + 1):
        steps = [e * SPE] + ([e * SPE + 5] if in_epoch and e < len(accs) else [])
        for step in steps:
            at_end = e == len(accs) and step == e * SPE
            for l in range(depth + 1):
                fb = feedback[l]
                lines.append({"epoch": e, "step": step, "layer": l,
                              "update_angle": update_angles[l] if at_end else 99.0,
                              # in-epoch measurements carry a wrong feedback angle: they must be ignored
                              "feedback_angle": None if fb is None else (fb + e if step == e * SPE else 179.0),
                              "update_rel_error": 0.1, "delta_angle": 1.0, "feedback_norm_ratio": 1.0})
            lines.append({"epoch": e, "step": step, "layer": "all", "update_angle": 50.0, "mean_update_angle": angle_curve[e]})
    (path / "alignment.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    summary = {
        "status": status, "rule": rule, "depth": depth, "seed": seed, "steps_per_epoch": SPE,
        "test_accuracy": accs[-1] if final is None else final,
        "val_accuracy": accs[-1] if val is None else val,
        "best_val_accuracy": max(vals) if best_val is None else best_val,
        "best_val_epoch": vals.index(max(vals)) + 1,
        "wall_time_s": wall_time, "examples_per_s": examples_per_s,
    }
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def write_depth_grid(root: Path) -> None:
    """bp 0.98 at depths 1..4; fa 0.975, 0.97, 0.95, 0.90: fa breaks at depth 3 with margin 0.01."""
    for d in range(1, 5):
        write_run(root, f"bp-d{d}", rule="bp", depth=d, final=0.98, accs=(0.9, 0.98))
    for d, acc in zip(range(1, 5), (0.975, 0.97, 0.95, 0.90)):
        write_run(root, f"fa-d{d}", rule="fa", depth=d, final=acc, accs=(0.9, acc),
                  feedback={l: (None if l == 0 else 40.0 + l) for l in range(d + 1)})


# --- small training runs ---


def small_config(**overrides):
    base = {
        "model.width": 16,
        "train.epochs": 3,
        "train.batch_size": 50,
        "data.validation_size": 200,
        "alignment.probe_size": 64,
        "optimizer.lr": 0.01,
        "optimizer.schedule.name": "constant",
    }
    base.update(overrides)
    return load_config(overrides=list(base.items()))


def run(tmp_path, config, dataset=None, on_epoch=lambda r: None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    summary = train(config, dataset or clusters(), RunWriter(tmp_path), on_epoch)
    metrics = read_jsonl(tmp_path / "metrics.jsonl")
    alignment = read_jsonl(tmp_path / "alignment.jsonl") if (tmp_path / "alignment.jsonl").exists() else []
    return summary, metrics, alignment


# --- small EP problems ---


SIZES = (6, 5, 4, 3)  # input, two hidden layers, output


def _problem(dtype=jnp.float32, scale=1.0, seed=0, batch=7):
    params = init_params(jax.random.PRNGKey(seed), dense(SIZES), "glorot_uniform", scale)
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
    params = [{"w": p["w"], "b": p["b"] + 0.1} for p in params]  # nonzero biases: all terms matter
    kx, ky = jax.random.split(jax.random.PRNGKey(seed + 100))
    x = jax.random.uniform(kx, (batch, SIZES[0]), dtype)
    y = jax.nn.one_hot(jax.random.randint(ky, (batch,), 0, SIZES[-1]), SIZES[-1], dtype=dtype)
    return params, x, y


def _flat(grads):
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree_util.tree_leaves(grads)])


def _rel(a, b):
    return float(jnp.linalg.norm(_flat(a) - _flat(b)) / jnp.linalg.norm(_flat(b)))


def _ep_estimate(config, params, x, y, key=jax.random.PRNGKey(0)):
    """The rule's estimate, jitted as one program (op by op, each operation would compile on its own)."""
    rule = make_rule(config, dense(SIZES))
    return jax.jit(lambda p, x, y, k: rule.estimate(p, rule.init(k, p), x, y, k))(params, x, y, key)


CONVERGED = dict(free_steps=5000, nudged_steps=5000, tolerance=1e-13, eps=0.5)


def _flat_weights(grads):
    """Every layer's weights flattened and concatenated in layer order (biases left out), as the whole-network
    measurements (training's and the beta sweep's) flatten them (docs/methods.md)."""
    return jnp.concatenate([jnp.ravel(g["w"]) for g in grads])


# --- conditions ---


CONDITIONS_TINY_DATA = [("data.train_limit", 400), ("data.validation_size", 100), ("data.test_limit", 100)]
# A small EP network where every condition holds: smooth rho, contracting dynamics settled for
# far longer than they need, T2 >> L = 3, symmetric nudging at a small beta.
CONVERGED_EP = [("rule", "ep"), ("model.depth", 2), ("model.width", 4), ("model.activation", "sigmoid"),
                ("ep.estimator", "symmetric"), ("ep.beta", 1e-3), ("ep.free_steps", 150), ("ep.nudged_steps", 150),
                ("ep.reference_tolerance", 1e-10), ("ep.reference_steps", 2000), *CONDITIONS_TINY_DATA]


def conv_problem(arch, dtype=jnp.float64, seed=0, scale=1.5, batch=5):
    """Parameters (biases 0.1 off zero), inputs and one-hot targets for a conv architecture."""
    params = init_params(jax.random.PRNGKey(seed), arch, "glorot_uniform", scale)
    params = [{"w": p["w"].astype(dtype), "b": p["b"].astype(dtype) + 0.1} for p in params]
    kx, ky = jax.random.split(jax.random.PRNGKey(seed + 100))
    x = jax.random.uniform(kx, (batch, arch.sizes[0]), dtype)
    y = jax.nn.one_hot(jax.random.randint(ky, (batch,), 0, 10), 10, dtype=dtype)
    return params, x, y


def ep_train_args(results_dir, *sets):
    """`bioprop train --rule ep` on a tiny MNIST subset, a 16-unit hidden layer, one epoch; `sets` as --set."""
    args = ["train", "--rule", "ep", "--depth", "1", "--width", "16", "--epochs", "1", "--batch-size", "50",
            "--results-dir", str(results_dir), "--no-progress", "--set", "data.train_limit=200",
            "--set", "data.validation_size=50", "--set", "data.test_limit=50", "--set", "ep.free_steps=6",
            "--set", "ep.nudged_steps=3", "--set", "alignment.probe_size=16"]
    for s in sets:
        args += ["--set", s]
    return args
