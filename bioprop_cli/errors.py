"""The one error type a user sees: a one-line message, exit code 2, no traceback."""


class UserError(Exception):
    """Bad input from the user (config, flags, data files). The CLI prints it on one line and exits 2."""

    exit_code = 2
