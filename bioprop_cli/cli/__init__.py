"""The `bioprop` command: one thin Typer module per command."""

import typer

from bioprop_cli.cli import bench, train

app = typer.Typer(
    name="bioprop",
    help="Experiment runner for biologically plausible learning rules (fa, dfa, sign-symmetric, bp) in JAX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("train")(train.train)
app.command("bench")(bench.bench)


def main() -> None:
    app()
