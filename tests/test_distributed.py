"""Data parallelism: rank slices of the one-process batches, and 2-process gloo runs under torchrun compared with
the one-process run of the same global batch (dropout off), killed and resumed, writing one run directory; sweeps
through the submitit launchers, and the requeue of a stopped Slurm job."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir

from attentive_gcnn.checkpoint import load_checkpoint
from attentive_gcnn.config_dir import CONFIG_DIR
from attentive_gcnn.data import ArrayDataset, SeededBatchSampler, flip_crop
from attentive_gcnn.errors import ConfigError
from attentive_gcnn.train import check_slices, train
from attentive_gcnn.training.distributed import SINGLE, Ranks, detect_ranks
from attentive_gcnn.training.signals import RunInterrupted, critical, stop_on_signals
from tests.test_train import REPO, compose_cfg, tiny_rotmnist

EPOCHS = 3


# ------------------------------------------------------------------------------------------ slices (in process)
@pytest.mark.parametrize("world", [2, 3, 5])
def test_rank_slices_partition_every_batch_of_one_process(world):
    def batches(**kw):
        sampler = torch.utils.data.RandomSampler(range(37), generator=torch.Generator().manual_seed(3))
        return SeededBatchSampler(sampler, 8, seed=7, **kw)

    whole = list(batches())
    per_rank = [list(batches(rank=r, world=world)) for r in range(world)]
    assert all(len(b) == len(whole) for b in per_rank)  # every rank takes every step
    for k, batch in enumerate(whole):
        slices = [b[k] for b in per_rank]
        assert sum((list(s) for s in slices), []) == list(batch)  # in order, each row once
        assert {s.seed for s in slices} == {batch.seed} and {s.total for s in slices} == {len(batch)}
        assert [s.offset for s in slices] == [r * len(batch) // world for r in range(world)]
    assert batches().totals() == [len(b) for b in whole] == [8, 8, 8, 8, 5]


def test_a_slice_is_augmented_as_its_rows_of_the_whole_batch():
    x = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    whole = flip_crop(x, torch.Generator().manual_seed(5))
    part = flip_crop(x[3:7], torch.Generator().manual_seed(5), 3, 10)
    assert torch.equal(part, whole[3:7])
    assert not torch.equal(part, flip_crop(x[3:7], torch.Generator().manual_seed(5)))  # control: drawn for 4 rows
    data = ArrayDataset(x.numpy(), torch.arange(10).numpy(), mean=[0.5], std=[0.25], augment=flip_crop)
    sampler = torch.utils.data.SequentialSampler(range(10))
    (full,) = SeededBatchSampler(sampler, 10, seed=1)
    halves = [next(iter(SeededBatchSampler(sampler, 10, seed=1, rank=r, world=2))) for r in range(2)]
    xs, ys = data.__getitems__(full)
    assert torch.equal(torch.cat([data.__getitems__(h)[0] for h in halves]), xs)


def test_every_rank_gets_images_of_every_training_batch():
    check_slices(150, 16, 2)  # last batch of 6
    check_slices(17, 16, 1)  # one process: a last batch of 1 is fine
    with pytest.raises(ConfigError, match="batch of 1 image"):
        check_slices(17, 16, 2)
    with pytest.raises(ConfigError, match="batch of 2 image"):
        check_slices(100, 2, 4)


def test_ranks_from_torchrun_and_srun_variables():
    assert detect_ranks({}) == SINGLE and not SINGLE.parallel
    ranks = detect_ranks({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert ranks == Ranks(3, 4, 1) and ranks.parallel and not ranks.main
    with pytest.raises(ConfigError, match="RANK"):
        detect_ranks({"WORLD_SIZE": "2"})
    srun = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8"}
    assert detect_ranks({**srun, "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}) == Ranks(5, 8, 1)
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        detect_ranks(srun)
    assert detect_ranks({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "4"}) == SINGLE


# ----------------------------------------------------------------------------------------- torchrun (processes)
def launch(nproc: int, *args: str, **popen) -> subprocess.Popen:
    """``torchrun --nproc_per_node=nproc -m attentive_gcnn.train args`` (one plain process for nproc 0)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    runner = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else []
    cmd = [sys.executable, *runner, "-m", "attentive_gcnn.train", *args]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def metrics(run_dir: Path) -> list[dict]:
    """The training and validation rows of ``metrics.csv``, without their times."""
    with (run_dir / "metrics.csv").open(newline="") as f:
        return [
            {k: v for k, v in r.items() if k != "time_s"} for r in csv.DictReader(f) if r["split"] in ("train", "valid")
        ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 3-epoch run (dropout off, default run directories) by one process, and by two processes killed
    with SIGKILL (torchrun and both ranks, each in a session of its own) after their first epoch, then resumed."""
    tmp = tmp_path_factory.mktemp("ddp")
    base = [*tiny_rotmnist(tmp, n_train=150, n_valid=30, n_test=45), f"training.epochs={EPOCHS}"]
    base += ["+model.net.dropout=0", "progress=false", f"paths.output_dir={tmp / 'out'}"]
    one = launch(0, *base, "name=one")
    two = launch(2, *base, "name=two")
    deadline, run_dir = time.monotonic() + 240, None
    while time.monotonic() < deadline and two.poll() is None:
        run_dir = next((tmp / "out" / "two").glob("*/last.ckpt"), Path()).parent
        if (run_dir / "last.ckpt").exists() and load_checkpoint(run_dir / "last.ckpt")["epoch"] >= 1:
            break
        time.sleep(0.05)
    for pid in [two.pid, *children(two.pid)]:
        os.kill(pid, signal.SIGKILL)
    two.communicate(timeout=60)
    assert not (run_dir / "summary.json").exists(), "the run ended before it could be killed"
    killed_after = load_checkpoint(run_dir / "last.ckpt")["epoch"]
    finish(one)
    finish(launch(2, *base, "name=two", f"hydra.run.dir={run_dir}", "resume=true"))
    (one_dir,) = (tmp / "out" / "one").iterdir()
    return one_dir, run_dir, killed_after, base


def test_two_processes_killed_and_resumed_train_the_one_process_run(runs):
    one, two, killed_after, _ = runs
    assert 1 <= killed_after < EPOCHS
    a, b = metrics(one), metrics(two)
    assert [(r["epoch"], r["split"]) for r in a] == [(r["epoch"], r["split"]) for r in b]
    first = float(a[0]["loss"])
    assert a[0]["split"] == "train" and abs(float(b[0]["loss"]) - first) <= 1e-5 * first
    for x, y in zip(a, b, strict=True):
        assert float(y["loss"]) == pytest.approx(float(x["loss"]), rel=2e-3)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert sb["test_error"] == sa["test_error"] and sb["best_epoch"] == sa["best_epoch"]
    assert sb["test_size"] == sa["test_size"] == 45  # every test image counted once
    assert (sa["world_size"], sb["world_size"]) == (1, 2)


def test_only_rank_zero_writes_one_run_directory(runs):
    _, two, killed_after, _ = runs
    assert [p.name for p in two.parent.iterdir()] == [two.name]  # rank 1 removed its own default directory
    names = {p.name for p in two.iterdir()}
    assert {"metrics.csv", "summary.json", "last.ckpt", "best.ckpt", "train.log", ".hydra"} <= names
    assert len([p for p in two.rglob("*") if p.name.startswith("metrics")]) == 1
    log = (two / "train.log").read_text()
    assert [log.count(f"epoch   {e}/{EPOCHS}") for e in range(1, EPOCHS + 1)] == [1] * EPOCHS  # one rank logs
    assert log.count(f"resuming {two} after epoch {killed_after}") == 1


@pytest.mark.slow  # `make test-full` (keeps `make test` within its time budget)
def test_eval_only_is_split_across_ranks_and_counts_every_image_once(runs, tmp_path):
    one, _, _, base = runs
    ckpt = one / "best.ckpt"
    finish(launch(2, *base, "eval_only=true", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}"))
    split, trained = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "eval", one))
    assert (split["world_size"], split["test_size"]) == (2, 45)
    assert split["test_error"] == trained["test_error"]  # the one-process test of the same weights
    assert split["test_loss"] == pytest.approx(trained["test_loss"], rel=1e-6)


# ------------------------------------------------------------------------------------------ launchers, requeue
def test_a_sweep_through_the_submitit_local_launcher_with_two_ranks_per_job(tmp_path):
    """hydra/launcher=local: a 2-job sweep, each job one run of 2 processes (tasks_per_node=2, as on Slurm); the
    failed job (an invalid learning rate) is listed at the end and the sweep exits 1."""
    args = [*tiny_rotmnist(tmp_path, n_train=40, n_valid=16, n_test=20), "training.epochs=1", "progress=false"]
    sweep = tmp_path / "sweep"
    launcher = ["hydra/launcher=local", "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={sweep}"]
    proc = launch(0, "-m", *launcher, *args, "training.lr=0.001,-1")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "1 job(s) of the sweep failed" in out, out[-3000:]
    assert "job 1 (" in out and "training.lr=-1" in out and "must be a positive number" in out
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["config"]["training"]["lr"] == 0.001
    assert summary["world_size"] == 2 and not (sweep / "1" / "summary.json").exists()


def test_the_slurm_launcher_config_composes():
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert (launcher.gpus_per_node, launcher.max_num_timeout, launcher.signal_delay_s) == (4, 5, 120)
    assert hydra.utils.get_class(launcher._target_)  # the plugin is installed


def test_submitits_signal_stops_the_run_and_hands_over_the_requeue(monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        # inside critical() (a checkpoint being written) the signal waits for the block's end
        with pytest.raises(RunInterrupted) as stopped, stop_on_signals(), critical():
            os.kill(os.getpid(), signal.SIGUSR2)
            calls.append("written")
        assert stopped.value.signum == signal.SIGUSR2 and calls == ["written"]
        stopped.value.requeue(stopped.value.signum, None)  # what the entrypoint does: submitit resubmits the job
        assert calls == ["written", signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    with pytest.raises(RunInterrupted) as stopped, stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
    assert stopped.value.requeue is None  # outside submitit: stop, print how to continue


def test_a_requeued_slurm_job_continues_its_run(tmp_path, monkeypatch):
    base = tiny_rotmnist(tmp_path)
    run_dir = tmp_path / "run"
    train(compose_cfg(*base, "training.epochs=1"), run_dir)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(compose_cfg(*base, "training.epochs=2"), run_dir)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert train(compose_cfg(*base, "training.epochs=2"), run_dir)["epochs"] == 2
