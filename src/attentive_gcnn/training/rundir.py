"""The run directory: the files a run keeps there, and how a run claims it before writing anything into it.

A run claims its directory (:class:`RunDirClaim`) with an exclusive lock on ``.lock`` taken before anything else is
written there and held until the run ends: two processes can never run in one directory, and a refused run (the
directory holds another run, or another process holds it) writes nothing into it. Once the claim is accepted the
run may write; temporary files left by a killed atomic write are removed then.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from attentive_gcnn.errors import ConfigError

LAST, BEST, SUMMARY, METRICS = "last.ckpt", "best.ckpt", "summary.json", "metrics.csv"
LOCK, LOG = ".lock", "train.log"
# what a run writes from its start: a directory holding one of these (and no checkpoint) was left by a run that
# stopped before its first checkpoint
TRACES = (METRICS, LOG, ".hydra")


def ensure_writable(path: str | Path, what: str = "run directory", setting: str = "hydra.run.dir") -> None:
    """Create directory ``path`` if needed and write (then remove) a probe file in it.

    Raises :class:`ConfigError` ("cannot write to the ``what`` ``path`` (reason); set ``setting``") where that
    fails. The run (:func:`prepare_run_dir`) and the Hydra callback that checks the output directory before Hydra
    creates it (:mod:`attentive_gcnn.hydra_checks`) both check this way.
    """
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        probe = Path(path) / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to the {what} {path} ({e.strerror}); set {setting}") from None


def prepare_run_dir(run_dir: Path, resume: bool | str) -> bool:
    """Whether the run in ``run_dir`` continues from its ``last.ckpt`` (else it starts at epoch 1), for ``resume``
    true, false or ``"auto"``; ConfigError where the directory holds something else.

    - A directory with a checkpoint or a result (``last.ckpt``, ``summary.json``) holds a run: only ``resume``
      continues it.
    - A directory with only the traces of a run that stopped before its first checkpoint (``metrics.csv``,
      ``train.log``, ``.hydra``) is started over by any command: there is nothing to continue.
    - ``resume=true`` on a directory with neither is an error (a wrong ``hydra.run.dir``).
    """
    has_ckpt, has_result = (run_dir / LAST).exists(), (run_dir / SUMMARY).exists()
    if has_ckpt or has_result:
        if not resume:
            raise ConfigError(
                f"{run_dir} already holds a run; pass resume=true to continue it, or choose another hydra.run.dir"
            )
        if not has_ckpt:
            raise ConfigError(f"{run_dir} holds a result ({SUMMARY}) but no {LAST} to continue from")
        return True
    if resume is True and not any((run_dir / name).exists() for name in TRACES):
        raise ConfigError(
            f"resume=true but {run_dir} holds no run to continue; set hydra.run.dir to the run's directory"
        )
    return False


class RunDirClaim:
    """The exclusive claim of a run directory: ``with RunDirClaim(run_dir):`` (see the module).

    Entering creates the directory if needed (checking that it is writable), takes an exclusive, non-blocking lock
    on its ``.lock`` file (ConfigError naming the holder's pid where another process holds it), records this
    process's pid there, and removes the temporary files of killed atomic writes (``.*.tmp``). The lock is released
    on exit, or by the operating system when the process dies.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    def __enter__(self) -> RunDirClaim:
        ensure_writable(self.run_dir)
        path = self.run_dir / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"{self.run_dir} is in use by another run (process {holder}); wait for it, or choose another "
                "hydra.run.dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        for tmp in self.run_dir.glob(".*.tmp"):  # no writer can be alive: we hold the lock
            tmp.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None
