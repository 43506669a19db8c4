"""What the commands share: consoles, user-error handling, the run flags (declared once here), config from flags."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from bioprop_cli.config import Config, keys_overlap, load_config, parse_override
from bioprop_cli.errors import UserError, is_disk_full
from bioprop_cli.rules import check_config, rules_help
from bioprop_cli.runs import check_results_folder

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
def refuse_second_config(files: Optional[List[Path]]) -> Optional[List[Path]]:
    """--config twice is refused (a usage error naming both); the files are not merged."""
    if files and len(files) > 1:
        raise typer.BadParameter(f"given {len(files)} times ({', '.join(map(str, files))}); give one file "
                                 "and change single keys with --set KEY=VALUE")
    return files


def config_file(files: Optional[List[Path]]) -> Optional[Path]:
    """The one --config file (refuse_second_config has refused a second), or None."""
    return files[0] if files else None


# A list, so that a second --config is seen (click keeps only the last value of a single-valued option):
# each command takes its one file with config_file().
ConfigFile = Annotated[Optional[List[Path]], typer.Option(
    "--config", "-c", metavar="FILE", callback=refuse_second_config, help="YAML config file (keys as in configs/default.yaml); once.")]
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
    "activation": "model.activation",  # jtranspose's
}


RUN_FLAGS: dict[str, Any] = {
    "rule": Rule, "depth": Depth, "width": Width, "epochs": Epochs, "lr": LearningRate, "batch_size": BatchSize,
    "seed": Seed, "experiment": Experiment, "results_dir": ResultsDir, "data_dir": DataDir,
}


def run_flags(*names: str) -> Callable:
    """A command's run flags (RUN_FLAGS, declared once), added to its options after `config`: the
    command takes them as one keyword argument, `flags` ({name: value, None where not given})."""
    unknown = [n for n in names if n not in RUN_FLAGS]
    if unknown:
        raise ValueError(f"no run flag {unknown[0]!r}; known: {', '.join(RUN_FLAGS)}")

    def decorate(command: Callable) -> Callable:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "flags"]
        added = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=RUN_FLAGS[n])
                 for n in names]
        at = next((i + 1 for i, p in enumerate(own) if p.name == "config"), len(own))

        @functools.wraps(command)
        def with_flags(*args, **kwargs):
            return command(*args, flags={n: kwargs.pop(n, None) for n in names}, **kwargs)

        with_flags.__signature__ = inspect.Signature(own[:at] + added + own[at:])
        return with_flags

    return decorate


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
    config = load_config(config_path, overrides + named)
    check_config(config)
    check_results_folder(config)
    refuse_unused_model_keys(config, [(k, f"--{n.replace('_', '-')}") for n, k in FLAG_KEYS.items()
                                      if flags.get(n) is not None]
                             + [(k, f"--set {text}") for text, (k, _) in zip(sets, overrides)])
    return config


# Config keys that only an MLP reads: given for a conv net, they would be silently ignored.
MLP_ONLY_KEYS = ("model.depth", "model.width")


def refuse_unused_model_keys(config: Config, given: list[tuple[str, str]]) -> None:
    """A flag or --set (`given`: (config key, how it was given)) of a key this config's network does not read
    is a UserError: --depth and --width are for model.arch mlp, model.cnn.* for model.arch cnn."""
    arch = config.model.arch
    inside = lambda key, section: key == section or key.startswith(section + ".")
    for key, source in given:
        if arch != "mlp" and any(inside(key, k) for k in MLP_ONLY_KEYS):
            raise UserError(f"{source}: model.arch {arch} has no {key} (it is for model.arch mlp); drop it")
        if arch != "cnn" and inside(key, "model.cnn"):
            raise UserError(f"{source}: {key} is read by model.arch cnn only (this network is model.arch {arch}); drop it")


def refuse_given(ctx: typer.Context, names: list[str], why: str) -> None:
    """A flag the user gave (not its default) that this invocation would not use is a UserError naming it."""
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            raise UserError(f"--{name.replace('_', '-')}: {why}")


def refuse_other_rule(sets: list[str], rule: str, command: str) -> None:
    """A command that studies one rule (sweep beta: ep) refuses --set rule=ANOTHER instead of ignoring it."""
    for text in sets:
        key, value = parse_override(text)
        if key == "rule" and value != rule:
            raise UserError(f"--set {text}: {command} studies rule {rule} only; drop it")


def run_config_file(run: Path) -> Path:
    """--run's config.yaml, checked alone first: a damaged one is a UserError naming the file and the key
    (not only the key, as it would be once merged with the command's flags)."""
    if not run.is_dir():
        raise UserError(f"--run {run}: not a folder")
    path = run / "config.yaml"
    if not path.is_file():
        raise UserError(f"--run {run}: no config.yaml (not a run folder)")
    try:
        load_config(path)
    except UserError as e:
        message = str(e)
        raise UserError(message if str(path) in message else f"{path}: {message}") from None
    return path


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
