"""Ctrl-C (SIGINT), one discipline for every command.

The console entry point (launch.py) installs the handler before anything imports JAX. From then on
the first Ctrl-C only sets a flag: the code reads it at safe points (between epochs, between a
study's measurements, between a sweep's groups), records `interrupted` where there is a record, and
the command exits 130. A handler that raised would raise wherever the main thread happens to be: in
a finaliser or weakref callback Python drops the exception ("Exception ignored in ..."), so the run
goes on and exits 0; raised while XLA compiles or runs on its own threads, the interpreter unwinds
and shuts down under them (the studies' exit 139). The second Ctrl-C is for a user who will not wait:
exit 130 at once (os._exit after flushing the standard streams), nothing recorded, no traceback.

A download is different: it must stop at once wherever it is (a read from a stalled mirror included), so
inside `stopped_at_once()` Ctrl-C raises and SIGTERM or SIGHUP exit, and the partial file is removed.

In-process use (a notebook, the tests) gets the same flag from `sigint_flag()`, whose second Ctrl-C
raises KeyboardInterrupt instead of ending the interpreter. Where SIGINT is ignored (a background
job of a script), it stays ignored; outside the main thread no handler can be set and the flag
stays off.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

EXIT_CODE = 128 + signal.SIGINT  # what a shell reports for a process ended by Ctrl-C


class Interrupted(KeyboardInterrupt):
    """Raised by `check` at a safe point once Ctrl-C was pressed. A KeyboardInterrupt, so code that
    records `interrupted` on a KeyboardInterrupt does so for this one too."""


class SigintFlag:
    """A SIGINT handler that counts; the second Ctrl-C ends the process (`exit_on_second`) or raises."""

    def __init__(self, exit_on_second: bool):
        self.count = 0
        self.exit_on_second = exit_on_second

    def __call__(self, signum, frame):
        self.count += 1
        if self.count > 1:
            if self.exit_on_second:
                exit_now()
            raise KeyboardInterrupt

    def is_set(self) -> bool:
        return self.count > 0


def exit_now() -> None:
    """Exit 130 without unwinding: no traceback, no finalisers, no waiting for XLA's threads."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a reentrant flush (the signal landed inside a write) or a closed stream
            pass
    os._exit(EXIT_CODE)


def install() -> None:
    """The process's handler, for the console entry point: first thing, before JAX is imported.
    Python runs a signal handler only when the main thread next executes Python code, which waits
    for a compilation or a compiled epoch to return (tens of seconds, measured); so the second
    Ctrl-C is also watched from a thread woken by the C-level handler (signal.set_wakeup_fd)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return
    signal.signal(signal.SIGINT, SigintFlag(exit_on_second=True))
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    threading.Thread(target=_exit_on_second_sigint, args=(read_end,), name="bioprop-sigint", daemon=True).start()


def _exit_on_second_sigint(read_end: int) -> None:
    """Reads the signal numbers the C-level handler writes; the second SIGINT ends the process."""
    seen = 0
    while True:
        seen += os.read(read_end, 64).count(signal.SIGINT)
        if seen > 1:
            exit_now()


def interrupted() -> bool:
    """Whether Ctrl-C was pressed since the handler in force was installed."""
    handler = signal.getsignal(signal.SIGINT)
    return isinstance(handler, SigintFlag) and handler.is_set()


def exit_code(code: int | str | None) -> int | str | None:
    """The command's exit code once it is over: 130 if Ctrl-C was pressed. SIGINT gets its default
    action first, so a Ctrl-C in the last moments (after this read, while the interpreter shuts down)
    ends the process by the signal itself, which a shell reports as 130: never a lost Ctrl-C, exit 0."""
    handler = signal.getsignal(signal.SIGINT)
    if not isinstance(handler, SigintFlag):
        return code
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    return EXIT_CODE if handler.is_set() else code


def check() -> None:
    """A safe point: raise Interrupted if Ctrl-C was pressed."""
    if interrupted():
        raise Interrupted


@contextlib.contextmanager
def sigint_flag():
    """Inside the block Ctrl-C (SIGINT) only sets a flag, read with the yielded function. Nested blocks,
    and blocks inside a process whose entry point called `install`, share the outermost flag. The
    previous handler comes back when the outermost block ends. Where SIGINT is ignored, or outside
    the main thread, the flag stays off."""
    current = signal.getsignal(signal.SIGINT)
    if isinstance(current, SigintFlag):
        yield current.is_set
        return
    if threading.current_thread() is not threading.main_thread() or current is signal.SIG_IGN:
        yield lambda: False
        return
    flag = SigintFlag(exit_on_second=False)
    signal.signal(signal.SIGINT, flag)
    try:
        yield flag.is_set
    finally:
        signal.signal(signal.SIGINT, current)


@contextlib.contextmanager
def stopped_at_once():
    """Inside the block Ctrl-C raises KeyboardInterrupt, and SIGTERM or SIGHUP (`kill`, a job's time limit, a
    closed terminal) SystemExit(128 + the signal), wherever the main thread is, a read from a stalled mirror
    included, whatever handler the command runs under (one that only sets a flag for safe points would let a
    download run on; a second Ctrl-C that ends the process at once, or the default SIGTERM, would leave its .part
    file): the download stops and atomic_file removes its .part file. The handlers in force come back after.
    A signal that is ignored stays ignored; outside the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stop = StopOnce()
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None and signal.getsignal(signum) not in (signal.SIG_IGN, None):
            previous[signum] = signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class StopOnce:
    """A handler whose first signal raises and whose later ones (an impatient second Ctrl-C, the SIGHUP of a
    terminal closed after it) are dropped, so that none cuts the removal of the .part file short."""

    def __init__(self):
        self.stopping = False

    def __call__(self, signum: int, frame) -> None:
        if self.stopping:
            return
        self.stopping = True
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)  # the exit code a shell reports for a process the signal ended
