"""Mirrors of a run's record (``logger=...``): the run directory's files are the record, a mirror only copies them.

``configs/logger/csv.yaml`` (the default) names :class:`NoMirror`, ``configs/logger/wandb.yaml``
:class:`WandbMirror`. The run calls ``start`` once (it returns the id that a resumed run passes back), ``log`` once
per epoch and ``finish`` in a ``finally``, so that a failed run still closes its mirror.
"""

from __future__ import annotations

from pathlib import Path

from attentive_gcnn.errors import UserError

INIT_TIMEOUT_S = 30  # how long an online wandb run may take to start before the run stops with an error


class NoMirror:
    """The default: nothing beyond the run directory's own files."""

    def __init__(self, **_):
        pass

    def start(self, run_dir: Path, config: dict, run_id: str | None) -> str | None:
        return None

    def log(self, epoch: int, metrics: dict) -> None:
        pass

    def finish(self, summary: dict | None, failed: bool) -> None:
        pass


class WandbMirror(NoMirror):
    """Mirror per-epoch metrics and the summary to Weights & Biases (``mode``: offline by default)."""

    def __init__(
        self,
        project: str,
        entity: str | None = None,
        mode: str = "offline",
        group: str | None = None,
        job_type: str | None = None,
        tags: list[str] | None = None,
    ):
        self.kwargs = dict(project=project, entity=entity, mode=mode, group=group, job_type=job_type, tags=tags)
        self.run = None

    def start(self, run_dir: Path, config: dict, run_id: str | None) -> str:
        import wandb

        settings = wandb.Settings(
            console="off", silent=True, x_disable_stats=True, disable_git=True, init_timeout=INIT_TIMEOUT_S
        )
        name = f"{self.kwargs['group']}/seed{config.get('seed')}"
        try:
            self.run = wandb.init(
                dir=str(run_dir), config=config, name=name, id=run_id, resume="allow", settings=settings, **self.kwargs
            )
        except wandb.errors.Error as e:
            raise UserError(
                f"logger=wandb could not start ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "check the network and `wandb login`, or use logger.mode=offline and `wandb sync` the run later"
            ) from None
        return self.run.id

    def log(self, epoch: int, metrics: dict) -> None:
        self.run.log({"epoch": epoch, **metrics}, step=epoch)

    def finish(self, summary: dict | None, failed: bool) -> None:
        if self.run is None:
            return
        if summary:
            self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        self.run.finish(exit_code=1 if failed else 0)
        self.run = None
