"""Stopping a run on SIGINT (Ctrl-C) or SIGTERM (what Slurm and most schedulers send before killing a job).

Inside :func:`stop_on_signals` either signal raises :class:`RunInterrupted` where the run is, except inside a
:func:`critical` section (a checkpoint or log being written), whose end raises it instead: the files of a stopped
run always end at a completed epoch, and the entrypoint prints how to continue it.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_critical = 0  # depth of the critical sections being run
_pending: int | None = None  # a signal received inside one


class RunInterrupted(Exception):
    """The run was stopped by a signal (``signum``); its run directory ends at its last completed epoch."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def _handle(signum: int, frame) -> None:
    global _pending
    if _critical:
        _pending = signum
    else:
        raise RunInterrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`RunInterrupted` while inside (main thread only; elsewhere a no-op)."""
    try:
        previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """Defer a stopping signal until the end of the block (a file write that must complete)."""
    global _critical, _pending
    _critical += 1
    try:
        yield
    finally:
        _critical -= 1
        if not _critical and _pending is not None:
            signum, _pending = _pending, None
            raise RunInterrupted(signum)
