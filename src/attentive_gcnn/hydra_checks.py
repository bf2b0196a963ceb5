"""The project's Hydra callback. It checks the options and the output directory before Hydra creates it, so that a
bad option or an unwritable ``hydra.run.dir`` (or ``hydra.sweep.dir``) gives one clear line instead of a traceback
and leaves no directory behind; and it ends a sweep whose jobs failed with the list of them and exit status 1 (a
failed job does not stop the sweep: every job runs). Jobs that run in other processes (the submitit launchers)
record their failure in ``<sweep dir>/.failed_jobs/``."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from attentive_gcnn.errors import ConfigError
from attentive_gcnn.training.options import check_options
from attentive_gcnn.training.rundir import ensure_writable
from attentive_gcnn.training.runlog import write_json

FAILED_DIR = ".failed_jobs"


def check_writable(path: str | Path, key: str) -> None:
    """Create ``path`` if needed and write a probe file into it; otherwise print why and exit with status 2
    (Hydra turns exceptions raised in callbacks into warnings, so this exits itself)."""
    try:
        ensure_writable(path, what="output directory", setting=f"{key}=...")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def check_task_options(config: DictConfig) -> None:
    """The entrypoint's option checks (:func:`attentive_gcnn.training.options.check_options`) before Hydra creates
    the run directory: a refused run leaves none. Options that cannot be read before the run starts (an
    interpolation of Hydra's runtime) are left to the entrypoint, which checks them again."""
    try:
        check_options(config)
    except ConfigError as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank checks; the first one reports
            print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception:  # noqa: BLE001 (unreadable here; the entrypoint reports it)
        return


FAILED_JOBS: list[tuple[int, list[str], str]] = []  # (job number, overrides, error) of this process's sweep


def record_failed_job(num: int, overrides: list[str], error: str, sweep_dir: str | Path | None = None) -> None:
    """Note a sweep job that ended with an error (the entrypoint has logged it), for the sweep's end: in this
    process, and in ``sweep_dir/.failed_jobs/<num>.json`` for a sweep launched from another process."""
    FAILED_JOBS.append((num, overrides, error))
    if sweep_dir is not None:
        (Path(sweep_dir) / FAILED_DIR).mkdir(parents=True, exist_ok=True)
        write_json(Path(sweep_dir) / FAILED_DIR / f"{num}.json", {"job": num, "overrides": overrides, "error": error})


def failed_jobs(sweep_dir: str | Path) -> list[tuple[int, list[str], str]]:
    """The failed jobs of this process's sweep and those recorded in ``sweep_dir``, by job number."""
    found = {num: (num, overrides, error) for num, overrides, error in FAILED_JOBS}
    for path in sorted((Path(sweep_dir) / FAILED_DIR).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            found.setdefault(record["job"], (record["job"], record["overrides"], record["error"]))
        except (OSError, ValueError, KeyError):
            found.setdefault(path.stem, (path.stem, [], f"unreadable failure record {path}"))
    return [found[k] for k in sorted(found, key=str)]


class CheckOutputDir(Callback):
    """``hydra.callbacks.check_output_dir``: the writability check on run and multirun start, and the failed jobs
    of a sweep (jobs run in this process, as Hydra's default launcher does) at its end."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        check_task_options(config)
        check_writable(OmegaConf.select(config, "hydra.run.dir"), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = OmegaConf.select(config, "hydra.sweep.dir")
        check_writable(sweep_dir, "hydra.sweep.dir")
        FAILED_JOBS.clear()
        shutil.rmtree(Path(sweep_dir) / FAILED_DIR, ignore_errors=True)  # the records of an earlier sweep there

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        failed = failed_jobs(OmegaConf.select(config, "hydra.sweep.dir"))
        if failed:
            lines = [f"  job {num} ({' '.join(overrides)}): {error}" for num, overrides, error in failed]
            print(f"error: {len(failed)} job(s) of the sweep failed:\n" + "\n".join(lines), file=sys.stderr)
            raise SystemExit(1)
