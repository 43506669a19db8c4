"""The `bioprop` command: one thin Typer module per command."""

import importlib
import sys

import typer
from typer.core import TyperGroup

from bioprop_cli.cli import bench, compare, conditions, data, jtranspose, reproduce, sweep, train
from bioprop_cli.cli.common import console, print_error
from bioprop_cli.rules import rules_help

# click's exceptions: click's own module, or the copy that recent typer versions vendor (typer._click)
_click_errors = importlib.import_module(typer.BadParameter.__module__)
_NO_ARGS_IS_HELP = getattr(_click_errors, "NoArgsIsHelpError", ())  # click >= 8.2


class OneLineErrors(TyperGroup):
    """Click's usage errors (a bad flag value, an unknown flag, a missing argument) as one line on stderr
    naming the command, exit code 2, instead of typer's boxed panel. Everything else (--help, the exit
    codes of the commands) is click's own; a Ctrl-C goes on to launch.py (exit code 130)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as e:
            console.print(e.ctx.get_help(), highlight=False)
            code = e.exit_code
        except _click_errors.ClickException as e:
            ctx = getattr(e, "ctx", None)
            print_error(f"{ctx.command_path}: {e.format_message()}" if ctx is not None else e.format_message())
            code = e.exit_code
        except typer.Abort as e:
            if isinstance(e.__cause__, KeyboardInterrupt):  # click's word for Ctrl-C: launch exits 130
                raise e.__cause__ from None
            print_error("aborted")
            code = 1
        code = code if isinstance(code, int) else 0
        if not standalone_mode:
            return code
        sys.exit(code)


app = typer.Typer(
    name="bioprop",
    cls=OneLineErrors,
    help=f"Experiment runner for biologically plausible learning rules ({rules_help()}) in JAX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("train")(train.train)
app.command("bench")(bench.bench)
app.add_typer(sweep.app, name="sweep")
app.command("compare")(compare.compare)
app.command("jtranspose")(jtranspose.jtranspose)
app.command("conditions")(conditions.conditions)
app.command("reproduce")(reproduce.reproduce)
app.add_typer(data.app, name="data")


def main() -> None:
    app()
