"""The console entry point. The Ctrl-C handler (bioprop_cli/interrupt.py) is installed before the CLI's
modules import JAX (seconds), so a Ctrl-C at any moment, start-up included, ends the command with
exit code 130: never swallowed, never a traceback, never a crash."""

import sys

from bioprop_cli import interrupt


def main() -> None:
    interrupt.install()
    try:
        from bioprop_cli.cli import main as run

        interrupt.check()  # a Ctrl-C while importing: before the command starts any work
        run()
        code = 0
    except KeyboardInterrupt:  # Interrupted from a safe point, or a handler of a caller's own
        code = interrupt.EXIT_CODE
    except SystemExit as e:
        code = e.code
    sys.exit(interrupt.exit_code(code))  # 130 after a Ctrl-C, even if the command ran to its end
