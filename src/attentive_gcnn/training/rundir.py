"""The run directory: the files a run keeps there, and the checks made before anything is written into it."""

from __future__ import annotations

from pathlib import Path

from attentive_gcnn.errors import ConfigError

LAST, BEST, SUMMARY, METRICS = "last.ckpt", "best.ckpt", "summary.json", "metrics.csv"


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


def prepare_run_dir(run_dir: Path, resume: bool, restart_ok: bool = False) -> None:
    """The run directory must be writable, and must not hold another run unless it is being resumed (or, with
    ``restart_ok``, it holds the leftovers of a run killed before its first checkpoint)."""
    ensure_writable(run_dir)
    holds_run = any((run_dir / name).exists() for name in (LAST, METRICS, SUMMARY))
    if holds_run and not resume and not restart_ok:
        raise ConfigError(
            f"{run_dir} already holds a run; pass resume=true to continue it, or choose another hydra.run.dir"
        )
    if resume and not (run_dir / LAST).exists():
        raise ConfigError(f"resume=true but {run_dir / LAST} does not exist; set hydra.run.dir to the run to resume")
