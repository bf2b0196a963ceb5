"""The one training entrypoint: ``python -m attentive_gcnn.train [dataset=...] [model=...] [key=value ...]``.

Hydra composes ``configs/train.yaml`` (groups ``paths``, ``dataset``, ``training``, ``model``, ``logger``,
``experiment``), the model picks its training recipe, and :func:`run` fits it under the chosen protocol. Each run
directory receives ``metrics.csv``, ``summary.json``, ``last.ckpt`` (every epoch), ``best.ckpt`` and ``train.log``.
Anything the user must fix is reported as one ``error:`` line and exit status 2, before training starts
wherever it can be known then. This module holds the entrypoint, the option checks and the run's orchestration;
what it shares with the other modules (device, checks, seeds, loops, run files, summary) is in
:mod:`attentive_gcnn.training`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from attentive_gcnn.accel.allocator import keep_freed_memory
from attentive_gcnn.checkpoint import load_checkpoint, load_model_checkpoint, save_checkpoint
from attentive_gcnn.config_dir import CONFIG_DIR
from attentive_gcnn.data import make_loader, make_source
from attentive_gcnn.errors import ConfigError, NonFiniteLossError, UserError
from attentive_gcnn.hydra_checks import record_failed_job
from attentive_gcnn.models.kit import count_parameters
from attentive_gcnn.models.registry import build_from_config
from attentive_gcnn.rotations import RotationTTA
from attentive_gcnn.training import distributed
from attentive_gcnn.training.checks import check_fits
from attentive_gcnn.training.device import compiled, pick_device
from attentive_gcnn.training.distributed import SINGLE, Ranks, data_parallel, share
from attentive_gcnn.training.loop import CHECK_EVERY, Trainer, build_optimizer
from attentive_gcnn.training.mirrors import NoMirror
from attentive_gcnn.training.options import check_options
from attentive_gcnn.training.rundir import BEST, LAST, LOG, METRICS, SUMMARY, RunDirClaim, prepare_run_dir
from attentive_gcnn.training.runlog import MetricsCSV
from attentive_gcnn.training.seeding import epoch_seed, seed_everything
from attentive_gcnn.training.signals import RunInterrupted, critical, requeued, stop_on_signals
from attentive_gcnn.training.summary import error_percent, run_summary, write_summary

log = logging.getLogger("attentive_gcnn.train")


# ----------------------------------------------------------------------------------------------- set-up checks
def show_progress(setting) -> bool:
    """``progress``: auto (a bar only on a terminal), true or false."""
    return sys.stderr.isatty() if setting == "auto" else bool(setting)


# --------------------------------------------------------------------------------------------------- the run
def resolved(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


RESUME_KEYS = ("model", "dataset", "protocol", "seed", "amp")


def check_resumable(saved: dict, now: dict) -> None:
    """A resumed run must be the same run: model, dataset, protocol, seed and recipe (the epoch count may grow)."""
    differ = [k for k in RESUME_KEYS if saved.get(k) != now.get(k)]
    old_t = {k: v for k, v in saved.get("training", {}).items() if k != "epochs"}
    new_t = {k: v for k, v in now.get("training", {}).items() if k != "epochs"}
    differ += [f"training.{k}" for k in sorted(set(old_t) | set(new_t)) if old_t.get(k) != new_t.get(k)]
    if differ:
        raise ConfigError(f"resume=true with different settings than the saved run: {', '.join(differ)}")


class Run:
    """One training run: builds everything from the config, then :meth:`fit` and :meth:`report`.

    With several processes (``ranks``) each builds the same run; only rank 0 writes files and mirrors metrics.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, ranks: Ranks = SINGLE):
        self.cfg, self.run_dir, self.ranks = cfg, run_dir, ranks
        self.config = resolved(cfg)
        self.device = distributed.start(ranks, pick_device(cfg.device))
        torch.backends.cudnn.benchmark = not cfg.deterministic
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.seed)
        self.model = build_from_config(cfg.model.net)
        self.source = make_source(cfg.dataset.source)
        check_fits(self.model, cfg.model.name, self.source, cfg.dataset)
        self.splits = self.source.splits(cfg.protocol)
        check_slices(len(self.splits.train), cfg.training.batch_size, ranks.world)
        self.model.to(self.device)
        self.optimizer = build_optimizer(instantiate(cfg.training.optimizer), self.model.parameters(), self.device)
        self.scheduler = instantiate(cfg.training.scheduler)(self.optimizer) if cfg.training.scheduler else None
        progress = show_progress(cfg.progress) and ranks.main
        module = compiled(self.model, cfg.get("compile", False), self.device)  # evaluates; trains in one process
        if ranks.parallel:  # several processes train through DDP; evaluation runs the plain module on each slice
            train_module = compiled(data_parallel(self.model, self.device), cfg.get("compile", False), self.device)
        else:
            train_module = module
        check_every = CHECK_EVERY if self.device.type == "cuda" else None  # a per-step check is free on a CPU
        self.trainer = Trainer(
            train_module,
            self.optimizer,
            self.device,
            amp=cfg.amp,
            progress=progress,
            check_every=check_every,
            world=ranks.world,
            eval_model=module,
        )
        self.mirror = instantiate(cfg.logger) if ranks.main else NoMirror()
        self.metrics = MetricsCSV(run_dir / METRICS, write=ranks.main)
        self.epoch, self.elapsed, self.run_id = 0, 0.0, None
        self.best = {"epoch": 0, "accuracy": -1.0, "state_dict": None}

    # state --------------------------------------------------------------------------------------------------
    def _payload(self, **extra) -> dict:
        return {"model": self.cfg.model.name, "net": self.config["model"]["net"], **extra}

    def save_last(self) -> None:
        if not self.ranks.main:
            return
        state = {
            "epoch": self.epoch,
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.trainer.scaler.state_dict(),
            "best": self.best,
            "elapsed_s": self.elapsed,
            "metrics": self.metrics.rows,  # the rows up to this epoch: a resume restores them from here
            "run_id": self.run_id,
            "config": self.config,
        }
        save_checkpoint(self.run_dir / LAST, self._payload(**state), overwrite=True)

    def restore(self) -> None:
        ckpt = read_last(self.run_dir)
        check_resumable(ckpt.get("config", {}), self.config)
        self.model.load_state_dict(ckpt["state_dict"])
        self.trainer.load_optimizer_state(ckpt["optimizer"])  # with this run's kernels (fused on CUDA)
        if self.scheduler and ckpt["scheduler"]:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.trainer.load_scaler_state(ckpt.get("scaler"))  # {} from a disabled scaler (a CPU run) is skipped
        self.epoch, self.best, self.elapsed = ckpt["epoch"], ckpt["best"], ckpt["elapsed_s"]
        self.run_id = ckpt.get("run_id")
        if "metrics" in ckpt:  # a deleted or damaged metrics.csv is rebuilt from the checkpoint
            self.metrics.rows = [dict(r) for r in ckpt["metrics"]]
        self.metrics.truncate(self.epoch)
        log.info(f"resuming {self.run_dir} after epoch {self.epoch}")

    # loops --------------------------------------------------------------------------------------------------
    def loader(self, dataset, shuffle: bool, seed: int = 0):
        size = self.cfg.training.batch_size if shuffle else self.cfg.training.eval_batch_size
        ranks = self.ranks
        return make_loader(dataset, size, shuffle, seed, self.cfg.num_workers, rank=ranks.rank, world=ranks.world)

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def fit(self) -> None:
        cfg, splits = self.cfg, self.splits
        select_loader = self.loader(splits.select, shuffle=False)
        for epoch in range(self.epoch + 1, cfg.training.epochs + 1):
            seed = epoch_seed(cfg.seed, epoch)
            seed_everything(seed + self.ranks.rank)  # dropout: other masks on other ranks; the data order is `seed`'s
            t0, lr = time.perf_counter(), self.lr()
            train_loss, train_acc = self.trainer.train_epoch(self.loader(splits.train, True, seed), epoch)
            t1 = time.perf_counter()
            sel_loss, sel_acc = self.trainer.evaluate(select_loader, desc=splits.select_name)
            t2 = time.perf_counter()
            check_finite(sel_loss, splits.select_name, f"epoch {epoch}")  # never a selected epoch
            if self.scheduler is not None:
                monitor = {"select_accuracy": sel_acc, "select_loss": sel_loss}
                key = cfg.training.scheduler_monitor
                self.scheduler.step(monitor[key]) if key else self.scheduler.step()
            self.epoch, self.elapsed = epoch, self.elapsed + (t2 - t0)
            with critical():  # a stopping signal waits until the epoch's files are written
                if sel_acc > self.best["accuracy"]:  # strict: ties keep the earlier epoch, as the authors' code
                    state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
                    self.best = {"epoch": epoch, "accuracy": sel_acc, "state_dict": state}
                    if self.ranks.main:
                        payload = self._payload(state_dict=state, epoch=epoch)
                        save_checkpoint(self.run_dir / BEST, payload, overwrite=True)
                self.metrics.append(
                    dict(epoch=epoch, split="train", loss=train_loss, accuracy=train_acc, lr=lr, time_s=t1 - t0),
                    dict(epoch=epoch, split=splits.select_name, loss=sel_loss, accuracy=sel_acc, lr=lr, time_s=t2 - t1),
                )
                self.save_last()
            self.mirror.log(
                epoch,
                {
                    "train/loss": train_loss,
                    "train/accuracy": train_acc,
                    "lr": lr,
                    f"{splits.select_name}/loss": sel_loss,
                    f"{splits.select_name}/accuracy": sel_acc,
                },
            )
            log.info(
                f"epoch {epoch:>3}/{cfg.training.epochs}  train loss {train_loss:.4f} acc {100 * train_acc:6.2f}%  "
                f"{splits.select_name} loss {sel_loss:.4f} acc {100 * sel_acc:6.2f}%  lr {lr:.3g}  "
                f"{t2 - t0:.1f}s"
            )

    def report(self) -> dict:
        """Test the last and the best epoch's weights once; write the final rows and ``summary.json``."""
        cfg, splits = self.cfg, self.splits
        test_loader = self.loader(splits.test, shuffle=False)
        t0 = time.perf_counter()
        last_loss, last_acc = self.trainer.evaluate(test_loader, desc="test (last)")
        t1 = time.perf_counter()
        if self.best["epoch"] == self.epoch:  # the last epoch is the best one: same weights, same numbers
            test_loss, test_acc = last_loss, last_acc
        else:
            self.model.load_state_dict(self.best["state_dict"])
            test_loss, test_acc = self.trainer.evaluate(test_loader, desc="test (best)")
        t2 = time.perf_counter()
        check_finite(last_loss, "test", f"the last epoch ({self.epoch})")
        check_finite(test_loss, "test", f"the selected epoch ({self.best['epoch']})")
        self.elapsed += t2 - t0
        lr = self.lr()
        self.metrics.rows = [r for r in self.metrics.rows if r["split"] not in ("test_last", "test_best")]
        self.metrics.append(
            dict(epoch=self.epoch, split="test_last", loss=last_loss, accuracy=last_acc, lr=lr, time_s=t1 - t0),
            dict(epoch=self.best["epoch"], split="test_best", loss=test_loss, accuracy=test_acc, lr=lr, time_s=t2 - t1),
        )
        about = {
            "name": cfg.name,
            "model": cfg.model.name,
            "paper_name": cfg.model.get("paper_name"),
            "dataset": cfg.dataset.name,
            "protocol": cfg.protocol,
            "seed": cfg.seed,
            "epochs": self.epoch,
            "best_epoch": self.best["epoch"],
            "select_split": splits.select_name,
            "best_select_accuracy": self.best["accuracy"],
        }
        details = {
            "last_test_accuracy": last_acc,
            "last_test_error": error_percent(last_acc),
            "params": count_parameters(self.model),
            "train_size": len(splits.train),
            "select_size": len(splits.select),
            "test_size": len(splits.test),
            "world_size": self.ranks.world,
        }
        summary = run_summary(
            "train", about, test_loss, test_acc, details, splits.normalization, self.elapsed, self.device, self.config
        )
        if self.ranks.main:
            with critical():
                write_summary(self.run_dir, summary)
        return summary


def check_slices(n: int, batch_size: int, world: int) -> None:
    """Every training batch must give each of ``world`` processes at least one image."""
    smallest = min(batch_size, n % batch_size or batch_size, n)
    if world > 1 and smallest < world:
        raise ConfigError(
            f"a training batch of {smallest} image(s) ({n} images in batches of {batch_size}) cannot be split over "
            f"{world} processes; use fewer processes or another training.batch_size"
        )


def check_finite(loss: float, split: str, when: str) -> None:
    """A NaN or infinite evaluation loss is an error (the weights give non-finite outputs), never a result."""
    if not math.isfinite(loss):
        raise NonFiniteLossError(f"the {split} loss is {loss} at {when}: the weights give non-finite outputs")


@contextlib.contextmanager
def accepted_run(cfg: DictConfig, run_dir: Path, resume) -> Iterator[bool]:
    """Claim ``run_dir`` and accept the run there (:mod:`attentive_gcnn.training.rundir`); only then record the
    command (``.hydra/``, as Hydra would) and log to ``train.log``. Yields whether the run continues from its
    ``last.ckpt``. A refused run writes nothing into the directory; an error of an accepted run is logged there."""
    with RunDirClaim(run_dir):
        resume = prepare_run_dir(run_dir, resume)
        if resume:
            check_resumable(saved_config(run_dir), resolved(cfg))
        record_invocation(cfg, run_dir)
        handler = logging.FileHandler(run_dir / LOG, encoding="utf-8")
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
        logging.getLogger().addHandler(handler)
        try:
            yield resume
        except UserError as e:
            log.error(f"error: {e}")
            e.logged = True
            raise
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()


class RefusedOnRankZero(UserError):
    """What the other ranks raise when rank 0 refused the run (rank 0 reports why)."""

    logged = True


@contextlib.contextmanager
def accepted_by_rank_zero(cfg: DictConfig, run_dir: Path, resume, ranks: Ranks) -> Iterator[bool]:
    """:func:`accepted_run` on rank 0, which alone touches the run directory; its outcome (whether the run
    continues, or that it was refused) is shared with the other ranks. One process: :func:`accepted_run`."""
    if not ranks.main:
        outcome = share(None, ranks)
        if isinstance(outcome, str):
            raise RefusedOnRankZero(outcome)
        yield outcome
        return
    told = False
    try:
        with accepted_run(cfg, run_dir, resume) as outcome:
            share(outcome, ranks)
            told = True
            yield outcome
    except UserError as e:
        if not told:
            share(str(e), ranks)
        raise


def record_invocation(cfg: DictConfig, run_dir: Path) -> None:
    """Under Hydra, ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` of this command (Hydra's own
    record, which ``configs/train.yaml`` turns off so that a refused command cannot rewrite another run's)."""
    if not HydraConfig.initialized():
        return
    record = run_dir / ".hydra"
    record.mkdir(exist_ok=True)
    hydra_cfg = HydraConfig.get()
    OmegaConf.save(cfg, record / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), record / "hydra.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, record / "overrides.yaml")


def saved_config(run_dir: Path) -> dict:
    """The resolved config of the run in ``run_dir``: its summary's, else its ``last.ckpt``'s."""
    if (run_dir / SUMMARY).exists():
        return _read_summary(run_dir).get("config", {})
    return read_last(run_dir).get("config", {})


def read_last(run_dir: Path) -> dict:
    """``last.ckpt`` of ``run_dir``; ConfigError where it is damaged."""
    try:
        return load_checkpoint(run_dir / LAST)
    except ValueError as e:
        raise ConfigError(f"{e}; the run cannot continue from it (move it away to start over)") from None


def _read_summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / SUMMARY).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{run_dir / SUMMARY} is damaged ({e}); move it away to continue the run") from None


def train(cfg: DictConfig, run_dir: Path, ranks: Ranks = SINGLE) -> dict:
    """Fit (or resume) the configured run in ``run_dir``; returns the summary.

    ``resume``: false (a fresh run; the directory must not hold one), true (continue from ``last.ckpt``) or auto
    (continue if ``last.ckpt`` exists, otherwise start; what `make reproduce` uses to skip finished runs). A run
    that stopped before its first checkpoint is started over by any of them. Continuing a finished run to more
    epochs keeps its summary as ``summary_epochs<N>.json``. ``ranks``: this process's place where several train
    the run (:mod:`attentive_gcnn.training.distributed`).
    """
    resume = cfg.resume
    if resume is False and requeued():
        log.info("this Slurm job was requeued: it continues its run (resume=auto)")
        resume = "auto"
    with accepted_by_rank_zero(cfg, run_dir, resume, ranks) as resume:
        return _train(cfg, run_dir, resume, ranks)


def _train(cfg: DictConfig, run_dir: Path, resume: bool, ranks: Ranks = SINGLE) -> dict:
    done = None
    if ranks.main and resume and (run_dir / SUMMARY).exists():
        done = _read_summary(run_dir)
        if done.get("status") == "complete" and done.get("epochs", 0) >= cfg.training.epochs:
            log.info(f"{run_dir} is already complete; nothing to do")
        else:  # a longer run than the finished one: keep that result beside the run, in progress again
            kept = run_dir / f"summary_epochs{done.get('epochs', 'unknown')}.json"
            os.replace(run_dir / SUMMARY, kept)
            log.info(f"continuing the finished run to {cfg.training.epochs} epochs; its summary is kept as {kept.name}")
            done = None
    done = share(done, ranks)
    if done is not None:
        return done
    run = Run(cfg, run_dir, ranks)
    if resume:
        run.restore()
        if run.epoch > cfg.training.epochs:
            raise ConfigError(
                f"{run_dir} has trained {run.epoch} epochs; training.epochs={cfg.training.epochs} cannot shorten it"
            )
    else:
        run.metrics.truncate(0)  # the rows of a run that stopped before its first checkpoint
    failed = True
    try:
        run.run_id = run.mirror.start(run_dir, run.config, run.run_id)
        log.info(
            f"{cfg.model.name} ({count_parameters(run.model):,} params) on {cfg.dataset.name}, protocol "
            f"{cfg.protocol}: fit on {len(run.splits.train):,}, select on {run.splits.select_name} "
            f"({len(run.splits.select):,}), test {len(run.splits.test):,}; device {run.device}; {run_dir}"
        )
        try:
            run.fit()
        except NonFiniteLossError as e:
            kept = f"{run_dir / LAST} (epoch {run.epoch})" if run.epoch else "none (no epoch completed)"
            raise NonFiniteLossError(f"{e}; training stopped; last good checkpoint: {kept}") from None
        summary = run.report()
        failed = False
        return summary
    finally:
        run.mirror.finish(None if failed else _scalars(summary), failed)


def _scalars(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and k != "command"}


def evaluate(cfg: DictConfig, run_dir: Path, ranks: Ranks = SINGLE) -> dict:
    """``eval_only=true``: test the checkpoint at ``ckpt_path`` on the dataset's test split.

    ``eval_tta=K`` (K >= 2) averages the logits over the test images rotated by ``360 * i / K`` degrees
    (:class:`attentive_gcnn.rotations.RotationTTA`), e.g. ``python -m attentive_gcnn.train eval_only=true
    experiment=mini/z2cnn seed=0 ckpt_path=PATH eval_tta=4``; loss and accuracy are those of the averaged logits.
    ``name`` and ``seed`` are recorded as given, to place the evaluation beside the run the checkpoint came from.
    """
    with accepted_by_rank_zero(cfg, run_dir, False, ranks):
        return _evaluate(cfg, run_dir, ranks)


def _evaluate(cfg: DictConfig, run_dir: Path, ranks: Ranks = SINGLE) -> dict:
    path = Path(cfg.ckpt_path)
    model, ckpt = load_model_checkpoint(path)
    device = distributed.start(ranks, pick_device(cfg.device))
    source = make_source(cfg.dataset.source)
    check_fits(model, ckpt["model"], source, cfg.dataset)
    splits = source.splits(cfg.protocol)
    module = compiled(model.to(device), cfg.get("compile", False), device)
    tta = cfg.get("eval_tta", 0)
    if tta:
        module = RotationTTA(module, tta, splits.normalization)
    trainer = Trainer(
        module,
        None,
        device,
        amp=cfg.amp,
        progress=show_progress(cfg.progress) and ranks.main,
        world=ranks.world,
    )
    t0 = time.perf_counter()
    test = make_loader(
        splits.test, cfg.training.eval_batch_size, False, 0, cfg.num_workers, rank=ranks.rank, world=ranks.world
    )
    loss, acc = trainer.evaluate(test, desc=f"test (TTA {tta})" if tta else "test")
    about = {
        "checkpoint": str(path.resolve()),
        "name": cfg.name,
        "model": ckpt["model"],
        "dataset": cfg.dataset.name,
        "protocol": cfg.protocol,
        "seed": cfg.seed,
        "tta": tta,
    }
    details = {"test_size": len(splits.test), "params": count_parameters(model), "world_size": ranks.world}
    check_finite(loss, "test", f"checkpoint {path}")
    wall_time_s = time.perf_counter() - t0
    summary = run_summary("eval", about, loss, acc, details, splits.normalization, wall_time_s, device, resolved(cfg))
    if ranks.main:
        write_summary(run_dir, summary)
    return summary


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra entrypoint; returns the test error (%) so that sweeps can read it.

    An error the user must fix is one ``error:`` line: exit status 2, or in a sweep (``-m``) the job is recorded
    as failed and the sweep goes on (:mod:`attentive_gcnn.hydra_checks` lists the failed jobs at its end and
    exits 1). SIGINT or SIGTERM stops the run after its current file write and prints how to continue it.
    """
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    keep_freed_memory()  # fewer page faults per step on the CPU (attentive_gcnn.accel.allocator)
    ranks = SINGLE
    with stop_on_signals():
        try:
            ranks = distributed.detect_ranks()
            if not ranks.main:
                logging.getLogger().setLevel(logging.WARNING)  # rank 0 reports the run
            check_options(cfg)
            if ranks.parallel:
                distributed.start(ranks, pick_device(cfg.device))
                run_dir = rank_zero_run_dir(run_dir, ranks)
            summary = evaluate(cfg, run_dir, ranks) if cfg.eval_only else train(cfg, run_dir, ranks)
        except RunInterrupted as e:
            if e.requeue is not None:  # submitit's time limit or preemption: resubmit the job (rank 0 exits here)
                log.warning(f"{e}; requeueing the job, which continues the run from {run_dir / LAST}")
                e.requeue(e.signum, None)
            elif ranks.main:
                log.error(f"error: {e}; {how_to_continue(run_dir, list(hydra_cfg.overrides.task))}")
            raise SystemExit(128 + e.signum) from None
        except UserError as e:
            if ranks.main and not getattr(e, "logged", False):
                log.error(f"error: {e}")
            if hydra_cfg.mode == RunMode.MULTIRUN:
                if ranks.main:
                    record_failed_job(hydra_cfg.job.num, list(hydra_cfg.overrides.task), str(e), hydra_cfg.sweep.dir)
                return None
            raise SystemExit(2) from None
        finally:
            distributed.stop()
    if not ranks.main:
        return None
    what = f"checkpoint {summary.get('checkpoint')}" if cfg.eval_only else f"{summary['model']}"
    if summary.get("tta"):
        what += f" with its logits averaged over {summary['tta']} rotations (eval_tta)"
    n = summary["test_size"]
    print(f"test error: {summary['test_error']:.2f} % ({what} on {summary['dataset']}, {n:,} test images)")
    print(f"logs: {run_dir}")
    return summary["test_error"]


def rank_zero_run_dir(run_dir: Path, ranks: Ranks) -> Path:
    """Rank 0's run directory, on every rank. Another rank's own (Hydra's default names a directory to the
    microsecond, so it may differ), which it created empty, is removed."""
    shared = Path(share(str(run_dir), ranks))
    if shared != run_dir:
        with contextlib.suppress(OSError):
            run_dir.rmdir()
    return shared


def how_to_continue(run_dir: Path, overrides: list[str]) -> str:
    """The command that continues the stopped run in ``run_dir`` (or, before its first checkpoint, restarts it)."""
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("resume", "hydra.run.dir")]
    command = shlex.join(["python", "-m", "attentive_gcnn.train", *keep, "resume=true", f"hydra.run.dir={run_dir}"])
    if (run_dir / LAST).exists():
        return f"its files end at its last completed epoch; continue it with: {command}"
    return f"it stopped before its first checkpoint; start it again with: {command}"


if __name__ == "__main__":
    # Run the entrypoint of the importable module rather than of __main__, so that a launcher that pickles the
    # task function (submitit: hydra/launcher=slurm or local) refers to it by name instead of copying this module.
    from attentive_gcnn import train as entrypoint

    entrypoint.main()
