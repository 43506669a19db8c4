"""The console entry point. Importing the CLI imports JAX (seconds); a Ctrl-C in that time exits
130, like a Ctrl-C anywhere later, instead of printing the interrupted import's traceback."""

import signal
import sys


def main() -> None:
    try:
        from bioprop_cli.cli import main as run
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
    run()
