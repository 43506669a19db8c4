"""What the commands share: consoles, user-error handling, the run flags (declared once here), config from flags."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from bioprop_cli.config import Config, keys_overlap, load_config, parse_override
from bioprop_cli.errors import UserError, is_disk_full
from bioprop_cli.rules import rules_help

# soft_wrap: rich never breaks or cuts a printed line (a path must stay copyable); the terminal wraps it
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def print_error(message: str) -> None:
    """The one line a user error prints on stderr: 'error: ' and the message, whitespace folded to spaces."""
    err_console.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", highlight=False)


def user_errors_exit_2(command: Callable) -> Callable:
    """Bad input, and a full disk, become one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as e:
            print_error(str(e))
            raise typer.Exit(code=UserError.exit_code) from None
        except OSError as e:  # a full disk under a write that is not bioprop's own (runs.py's say more)
            if not is_disk_full(e):
                raise
            print_error(f"{e.filename or 'a write'}: no space left on the device; free some space and run the command again")
            raise typer.Exit(code=UserError.exit_code) from None

    return wrapper


# The run flags, declared once and used by every command that builds a config. Each is a shortcut
# for the config key FLAG_KEYS names; a command's own defaults come from its base config.
ConfigFile = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file (keys as in configs/default.yaml).")]
Sets = Annotated[List[str], typer.Option("--set", "-s", help="Any config key: --set optimizer.name=sgd (repeatable).")]
Rule = Annotated[Optional[str], typer.Option(help=f"Learning rule: {rules_help()}.")]
Depth = Annotated[Optional[int], typer.Option(help="Number of HIDDEN layers (depth + 1 weight matrices).")]
Width = Annotated[Optional[int], typer.Option(help="Units per hidden layer.")]
Epochs = Annotated[Optional[int], typer.Option(help="Training epochs.")]
LearningRate = Annotated[Optional[float], typer.Option("--lr", help="Learning rate (optimizer.lr).")]
BatchSize = Annotated[Optional[int], typer.Option(help="Minibatch size.")]
Seed = Annotated[Optional[int], typer.Option(help="Seed of initialisation, feedback and data order (a sweep's first seed).")]
Experiment = Annotated[Optional[str], typer.Option(help="Experiment name: results go to RESULTS_DIR/EXPERIMENT/.")]
ResultsDir = Annotated[Optional[str], typer.Option(help="Base folder for results (default: results).")]
DataDir = Annotated[Optional[str], typer.Option(help="Folder with the dataset's files (else $BIOPROP_DATA_DIR, the download cache, a download).")]
RunFolder = Annotated[Optional[Path], typer.Option("--run", help="A run folder: its config.yaml is the setup, its params.npz (if stored) the network.")]
X64 = Annotated[bool, typer.Option("--x64", help="Measure in float64: the same network (drawn in float32), in higher precision.")]


# Flags that are shortcuts for config keys.
FLAG_KEYS = {
    "rule": "rule",
    "depth": "model.depth",
    "width": "model.width",
    "epochs": "train.epochs",
    "lr": "optimizer.lr",
    "batch_size": "train.batch_size",
    "seed": "seed",
    "results_dir": "results_dir",
    "data_dir": "data.data_dir",
    "experiment": "experiment",
}


def config_from_flags(config_path: Optional[Path], sets: list[str], **flags: Any) -> Config:
    """Defaults < --config file < --set key=value < the named flags. A --set of a key inside a
    named flag's key (--depth 1 --set model.depth.x=1), or of the section holding it, is a UserError:
    the flag would hide it."""
    overrides = [parse_override(s) for s in sets]
    named = [(FLAG_KEYS[name], value) for name, value in flags.items() if value is not None]
    for flag_key, _ in named:
        for text, (set_key, _) in zip(sets, overrides):
            if set_key != flag_key and keys_overlap(flag_key, set_key):
                flag = next(n for n, k in FLAG_KEYS.items() if k == flag_key).replace("_", "-")
                raise UserError(f"--{flag} and --set {text} both set {flag_key}; give one of the two")
    return load_config(config_path, overrides + named)


def stored_params(run: Optional[Path]):
    """`--run`'s trained parameters (params.npz, runs.load_params), said on the console; None without
    --run, or where the run stored none (then a note says a fresh network of its config is used)."""
    if run is None:
        return None
    if not (run / "params.npz").is_file():
        console.print(f"[yellow]note:[/] the run {run} stored no parameters; using a fresh network of its config")
        return None
    from bioprop_cli.runs import load_params

    params = load_params(run)
    console.print(f"trained parameters from {run / 'params.npz'}", highlight=False)
    return params
