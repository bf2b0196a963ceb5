"""The project's Hydra callback: it checks the output directory before Hydra creates it, so that an unwritable
``hydra.run.dir`` (or ``hydra.sweep.dir``) gives one clear line instead of a traceback, and ends a sweep whose jobs
failed with the list of them and exit status 1 (a failed job does not stop the sweep: every job runs)."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from attentive_gcnn.errors import ConfigError
from attentive_gcnn.training.rundir import ensure_writable


def check_writable(path: str | Path, key: str) -> None:
    """Create ``path`` if needed and write a probe file into it; otherwise print why and exit with status 2
    (Hydra turns exceptions raised in callbacks into warnings, so this exits itself)."""
    try:
        ensure_writable(path, what="output directory", setting=f"{key}=...")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


FAILED_JOBS: list[tuple[int, list[str], str]] = []  # (job number, overrides, error) of this process's sweep


def record_failed_job(num: int, overrides: list[str], error: str) -> None:
    """Note a sweep job that ended with an error (the entrypoint has logged it), for the sweep's end."""
    FAILED_JOBS.append((num, overrides, error))


class CheckOutputDir(Callback):
    """``hydra.callbacks.check_output_dir``: the writability check on run and multirun start, and the failed jobs
    of a sweep (jobs run in this process, as Hydra's default launcher does) at its end."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        check_writable(OmegaConf.select(config, "hydra.run.dir"), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        check_writable(OmegaConf.select(config, "hydra.sweep.dir"), "hydra.sweep.dir")
        FAILED_JOBS.clear()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if FAILED_JOBS:
            lines = [f"  job {num} ({' '.join(overrides)}): {error}" for num, overrides, error in FAILED_JOBS]
            print(f"error: {len(FAILED_JOBS)} job(s) of the sweep failed:\n" + "\n".join(lines), file=sys.stderr)
            raise SystemExit(1)
