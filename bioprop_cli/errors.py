"""The one error type a user sees: a one-line message, exit code 2, no traceback."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class UserError(Exception):
    """Bad input from the user (config, flags, data files). The CLI prints it on one line and exits 2."""

    exit_code = 2


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException) -> bool:
    """No space left on the device, or the user's disk quota is used up."""
    return isinstance(error, OSError) and error.errno in NO_SPACE


def free_bytes(path: str | os.PathLike) -> int | None:
    """The bytes free on the file system holding `path` (its nearest existing folder); None if unknown."""
    for place in [Path(path), *Path(path).parents]:
        if place.exists():
            try:
                return shutil.disk_usage(place).free
            except OSError:
                return None
    return None


class DiskFull(UserError):
    """A write that found no space left: one line naming the path and the bytes it needed."""

    def __init__(self, path: str | os.PathLike, needed: int | None = None, what: str = "cannot write",
                 free: int | None = None):
        free = free_bytes(path) if free is None else free
        needs = f"needs {needed:,} bytes" if needed is not None else "needs more space"
        has = f", {free:,} bytes free" if free is not None else ""
        super().__init__(f"{path}: {what}: no space left on the device ({needs}{has}); free some space and run "
                         "the command again")
        self.path, self.needed = Path(path), needed
