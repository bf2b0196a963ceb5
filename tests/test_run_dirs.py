"""Run directories: one run per directory at a time, nothing written by a refused command, no dead end after an
early crash, no stale temporaries, and a consistent state after an interrupted extension."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from attentive_gcnn.checkpoint import load_checkpoint, save_checkpoint
from attentive_gcnn.errors import ConfigError, DiskFullError, NonFiniteLossError, UserError
from attentive_gcnn.train import check_options, train
from attentive_gcnn.training.loop import Trainer
from attentive_gcnn.training.rundir import RunDirClaim
from attentive_gcnn.training.runlog import write_json
from attentive_gcnn.training.signals import RunInterrupted, critical, stop_on_signals
from tests.test_train import REPO, assert_clean_error, cli, compose_cfg, rows, tiny_rotmnist


def snapshot(run_dir) -> dict:
    """Every file of a run directory and its bytes (the lock file aside)."""
    return {
        p.relative_to(run_dir): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".lock"
    }


def train_killed_in_epoch(monkeypatch, cfg, run_dir, epoch: int = 3) -> None:
    """Train ``cfg`` into ``run_dir`` with a KeyboardInterrupt at the start of training epoch ``epoch``."""
    original = Trainer.train_epoch

    def killed(self, loader, e):
        if e == epoch:
            raise KeyboardInterrupt
        return original(self, loader, e)

    monkeypatch.setattr(Trainer, "train_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir)
    monkeypatch.setattr(Trainer, "train_epoch", original)


def test_a_directory_in_use_is_refused_and_left_untouched(tmp_path):
    run_dir = tmp_path / "run"
    with RunDirClaim(run_dir):  # another run holds it
        result = cli("training.epochs=1", f"hydra.run.dir={run_dir}", "progress=false")
        assert_clean_error(result, "in use by another run")
        assert snapshot(run_dir) == {}  # not even Hydra's record or a log
        with pytest.raises(ConfigError, match="in use by another run"):
            train(compose_cfg(*tiny_rotmnist(tmp_path), "training.epochs=1"), run_dir)
    assert snapshot(run_dir) == {}


def test_a_refused_command_does_not_rewrite_the_run_it_refuses(tmp_path):
    base = [*tiny_rotmnist(tmp_path), "training.epochs=1", "progress=false"]
    run_dir = tmp_path / "run"
    first = cli(*base, f"hydra.run.dir={run_dir}")
    assert first.returncode == 0, first.stderr
    assert (run_dir / ".hydra" / "overrides.yaml").exists() and (run_dir / "train.log").exists()
    before = snapshot(run_dir)
    for extra in (["seed=3"], ["resume=true", "seed=3"], ["eval_only=true", f"ckpt_path={run_dir / 'best.ckpt'}"]):
        result = cli(*base, *extra, f"hydra.run.dir={run_dir}")
        assert_clean_error(result)
        assert snapshot(run_dir) == before, extra


def test_a_run_killed_before_its_first_checkpoint_is_started_over(tmp_path, monkeypatch):
    base = [*tiny_rotmnist(tmp_path), "training.epochs=1"]
    original = Trainer.train_epoch

    def killed(self, loader, epoch):
        raise KeyboardInterrupt

    for how in ([], ["resume=true"], ["resume=auto"]):
        run_dir = tmp_path / f"run{len(how)}{how[0][-4:] if how else ''}"
        monkeypatch.setattr(Trainer, "train_epoch", killed)
        with pytest.raises(KeyboardInterrupt):
            train(compose_cfg(*base), run_dir)
        assert not (run_dir / "last.ckpt").exists() and (run_dir / "train.log").exists()
        monkeypatch.setattr(Trainer, "train_epoch", original)
        done = train(compose_cfg(*base, *how), run_dir)  # a plain rerun, resume=true or auto: no dead end
        assert done["epochs"] == 1
        assert [r["split"] for r in rows(run_dir)] == ["train", "valid", "test_last", "test_best"]


def test_resume_of_a_directory_without_a_run_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="holds no run to continue"):
        train(compose_cfg(*tiny_rotmnist(tmp_path), "resume=true"), tmp_path / "typo")


def test_temporaries_of_a_killed_write_are_removed(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stale = run_dir / ".last.ckpt.k3j2.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(compose_cfg(*tiny_rotmnist(tmp_path), "training.epochs=1"), run_dir)
    assert not stale.exists() and not list(run_dir.glob(".*.tmp"))


def test_an_interrupted_extension_leaves_a_consistent_directory(tmp_path, monkeypatch):
    base = tiny_rotmnist(tmp_path)
    run_dir = tmp_path / "run"
    first = train(compose_cfg(*base, "training.epochs=1"), run_dir)
    train_killed_in_epoch(monkeypatch, compose_cfg(*base, "training.epochs=3", "resume=true"), run_dir)
    assert not (run_dir / "summary.json").exists()  # no finished-looking summary beside an epoch-2 checkpoint
    assert (run_dir / "summary_epochs1.json").exists() and load_checkpoint(run_dir / "last.ckpt")["epoch"] == 2
    assert first["epochs"] == 1
    with pytest.raises(ConfigError, match="has trained 2 epochs"):
        train(compose_cfg(*base, "training.epochs=1", "resume=true"), run_dir)
    done = train(compose_cfg(*base, "training.epochs=3", "resume=true"), run_dir)
    assert done["epochs"] == 3


def test_sigterm_stops_after_the_epoch_files_and_prints_how_to_continue(tmp_path):
    run_dir = tmp_path / "run"
    args = [*tiny_rotmnist(tmp_path), "training.epochs=30", "progress=false", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "attentive_gcnn.train", *args], stderr=subprocess.PIPE, text=True, cwd=REPO, env=env
    )
    deadline = time.monotonic() + 300
    while not (run_dir / "last.ckpt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "interrupted by SIGTERM" in err and "continue it with:" in err, err
    command = err.split("continue it with: ", 1)[1].splitlines()[0]
    assert "resume=true" in command and f"hydra.run.dir={run_dir}" in command
    epoch = load_checkpoint(run_dir / "last.ckpt")["epoch"]
    assert len(rows(run_dir)) == 2 * epoch and not list(run_dir.glob(".*.tmp"))  # files end at a whole epoch


def test_a_signal_inside_a_critical_section_waits_for_its_end():
    done = []
    with stop_on_signals(), pytest.raises(RunInterrupted, match="SIGTERM"), critical():
        os.kill(os.getpid(), signal.SIGTERM)
        done.append("the write finished")
    assert done == ["the write finished"]


def test_a_sweep_runs_every_job_and_lists_the_failed_ones(tmp_path):
    sweep = tmp_path / "sweep"
    result = cli(
        "-m", *tiny_rotmnist(tmp_path), "training.epochs=1", "training.lr=-1,0.001", "progress=false",
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "1 job(s) of the sweep failed" in result.stderr and "job 0 (" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert (sweep / "1" / "summary.json").exists() and not (sweep / "0" / "summary.json").exists()


def test_a_non_finite_validation_loss_is_never_selected(tmp_path, monkeypatch):
    original = Trainer.evaluate
    calls = []

    def nan_at_epoch_2(self, loader, desc="eval"):
        calls.append(desc)
        loss, acc = original(self, loader, desc)
        return (float("nan"), 0.99) if len(calls) == 2 else (loss, acc)

    monkeypatch.setattr(Trainer, "evaluate", nan_at_epoch_2)
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="valid loss is nan at epoch 2"):
        train(compose_cfg(*tiny_rotmnist(tmp_path), "training.epochs=3"), run_dir)
    assert load_checkpoint(run_dir / "best.ckpt")["epoch"] == 1 and load_checkpoint(run_dir / "last.ckpt")["epoch"] == 1


def test_json_is_strict(tmp_path):
    path = write_json(tmp_path / "s.json", {"loss": float("nan"), "xs": [1.0, float("inf")], "ok": 2.5})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c)) == {
        "loss": None, "xs": [1.0, None], "ok": 2.5
    }  # fmt: skip


def test_a_damaged_checkpoint_is_refused_never_used(tmp_path):
    path = save_checkpoint(tmp_path / "x.ckpt", {"model": "p4cnn", "state_dict": {"w": torch.full((4096,), 1.2345)}})
    data = bytearray(path.read_bytes())
    at = data.find(torch.full((4,), 1.2345).numpy().tobytes())  # inside the tensor's bytes: torch.load cannot tell
    data[at + 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        load_checkpoint(path)


def test_damaged_run_files_are_clear_errors_or_rebuilt(tmp_path, monkeypatch):
    base = tiny_rotmnist(tmp_path)
    run_dir = tmp_path / "run"
    train_killed_in_epoch(monkeypatch, compose_cfg(*base, "training.epochs=3"), run_dir)
    (run_dir / "metrics.csv").write_text("epoch,split,loss\nnot a number,train,x\n")  # garbage: rebuilt from last.ckpt
    good = (run_dir / "last.ckpt").read_bytes()
    (run_dir / "last.ckpt").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ConfigError, match="last.ckpt"):
        train(compose_cfg(*base, "training.epochs=3", "resume=true"), run_dir)
    (run_dir / "last.ckpt").write_bytes(good)
    done = train(compose_cfg(*base, "training.epochs=3", "resume=true"), run_dir)
    assert done["epochs"] == 3 and [r["epoch"] for r in rows(run_dir)][:6] == ["1", "1", "2", "2", "3", "3"]
    (run_dir / "summary.json").write_text("{not json")
    with pytest.raises(ConfigError, match="summary.json is damaged"):
        train(compose_cfg(*base, "training.epochs=3", "resume=true"), run_dir)


def test_a_full_disk_is_named(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4160 vs 4054")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(DiskFullError, match="no space left"):
        save_checkpoint(tmp_path / "x.ckpt", {"model": "p4cnn", "state_dict": {}})
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_unreachable_wandb_is_a_clear_error(tmp_path, monkeypatch):
    import wandb

    def unreachable(**kwargs):
        raise wandb.errors.CommError("Network error (ConnectTimeout), entering retry loop.")

    monkeypatch.setattr(wandb, "init", unreachable)
    cfg = compose_cfg(*tiny_rotmnist(tmp_path), "training.epochs=1", "logger=wandb", "logger.mode=online")
    with pytest.raises(UserError, match="logger.mode=offline"):
        train(cfg, tmp_path / "run")
    assert train(compose_cfg(*tiny_rotmnist(tmp_path), "training.epochs=1"), tmp_path / "run")["epochs"] == 1


def test_a_name_may_not_leave_the_output_directory():
    with pytest.raises(ConfigError, match="name="):
        check_options(compose_cfg("name=../../elsewhere"))
