"""Stopping a run on SIGINT (Ctrl-C) or SIGTERM (what Slurm and most schedulers send before killing a job), and,
in a submitit job (``hydra/launcher=slurm``), on submitit's time-limit/preemption signal (SIGUSR2 unless
``SUBMITIT_PREEMPT_SIGNAL`` names another).

Inside :func:`stop_on_signals` these signals raise :class:`RunInterrupted` where the run is, except inside a
:func:`critical` section (a checkpoint or log being written), whose end raises it instead: the files of a stopped
run always end at a completed epoch, and the entrypoint prints how to continue it. For submitit's signal the
exception carries submitit's own handler (``requeue``), which the entrypoint calls once the run has stopped: it
resubmits the job, which continues the run from its ``last.ckpt``.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_critical = 0  # depth of the critical sections being run
_pending: int | None = None  # a signal received inside one
_requeue: dict[int, Callable] = {}  # signal -> submitit's handler, while inside stop_on_signals


class RunInterrupted(Exception):
    """The run was stopped by a signal (``signum``); its run directory ends at its last completed epoch.
    ``requeue``: submitit's handler for that signal (call it with ``(signum, None)`` to resubmit the job), or None."""

    def __init__(self, signum: int):
        self.signum = signum
        self.requeue = _requeue.get(signum)
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def preemption_signal() -> signal.Signals | None:
    """submitit's time-limit/preemption signal in a submitit job, else None."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


def requeued() -> bool:
    """Whether this Slurm job was requeued (after a time limit or a preemption): it continues its run."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0
    except ValueError:
        return False


def _handle(signum: int, frame) -> None:
    global _pending
    if _critical:
        _pending = signum
    else:
        raise RunInterrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and submitit's signal raise :class:`RunInterrupted` while inside (main thread only;
    elsewhere a no-op)."""
    signals = (*SIGNALS, *filter(None, [preemption_signal()]))
    try:
        previous = {s: signal.signal(s, _handle) for s in signals}
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    if (usr := preemption_signal()) is not None and callable(previous.get(usr)):
        _requeue[usr] = previous[usr]
    try:
        yield
    finally:
        _requeue.clear()
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
