"""The `bioprop` command: one thin Typer module per command."""

import typer

from bioprop_cli.cli import bench, compare, conditions, data, jtranspose, sweep, train

app = typer.Typer(
    name="bioprop",
    help="Experiment runner for biologically plausible learning rules (bp, fa, dfa, usf, frsf, brsf, kp, wm, ep) in JAX.",
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
app.add_typer(data.app, name="data")


def main() -> None:
    app()
