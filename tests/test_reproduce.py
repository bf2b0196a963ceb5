"""scripts/reproduce.py (what `make reproduce` and `make reproduce-mini` run): the sweep it launches, its refusal
when data is missing, and one tiny end-to-end pass that yields a table and figures."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attentive_gcnn.checkpoint import load_checkpoint
from attentive_gcnn.errors import UserError
from attentive_gcnn.publish import check_sums, is_published, publish_run
from tests.data_fixtures import write_rotmnist_npz
from tests.test_tta import tiny_mini

REPO = Path(__file__).resolve().parents[1]
TABLE1 = sorted(p.stem for p in (REPO / "configs/experiment/table1").glob("*.yaml"))


def load_script():
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "scripts/reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def reproduce(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts/reproduce.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )


def test_every_table_has_its_experiments():
    assert sorted(p.stem for p in (REPO / "configs/experiment/mini").glob("*.yaml")) == TABLE1
    assert {"p4cnn", "a_p4cnn", "fa_p4cnn", "z2cnn", "a_ch_p4cnn", "a_sp_p4cnn", "romhog_p4cnn"} <= set(TABLE1)
    assert len(list((REPO / "configs/experiment/table2").glob("*.yaml"))) == 16  # 8 models x CIFAR-10 and 10+
    assert len(list((REPO / "configs/experiment/table3").glob("*.yaml"))) == 5


def test_dry_run_lists_one_resumable_run_per_cell_protocol_and_seed(tmp_path):
    write_rotmnist_npz(tmp_path / "data", n_train=4, n_valid=2, n_test=4)
    result = reproduce(
        "--table",
        "rotmnist",
        "--seeds",
        "clean=3",
        "original=2",
        "--dry-run",
        "--out",
        str(tmp_path / "runs"),
        "--results",
        str(tmp_path / "results"),
        f"paths.data_dir={tmp_path / 'data'}",
    )
    assert result.returncode == 0, result.stderr
    runs = [line for line in result.stdout.splitlines() if "attentive_gcnn.train" in line]
    trained = [line for line in runs if "resume=auto" in line]
    assert len(trained) == len(TABLE1) * 5
    first = f"experiment=table1/{TABLE1[0]} protocol=clean seed=0"
    assert first in trained[0] and f"hydra.run.dir={tmp_path / 'runs' / f'table1/{TABLE1[0]}/clean/seed0'}" in runs[0]
    # seed 0 of every cell and protocol first; original has 2 seeds only
    assert all("seed=0" in line for line in trained[: 2 * len(TABLE1)])
    assert not any("protocol=original seed=2" in line for line in trained)
    tta = [line for line in runs if "eval_tta=" in line]
    assert len(tta) == 2 * 5 * 3  # z2cnn and p4cnn, every seed and protocol, K = 4, 8, 16
    assert all("eval_only=true" in line and "best.ckpt" in line for line in tta)
    assert "make_tables.py" in result.stdout and not (tmp_path / "runs").exists()
    assert not (tmp_path / "results").exists()


def test_launcher_sweeps_and_one_job_per_gpu(tmp_path, capsys):
    """--launcher: one Hydra sweep through hydra/launcher=... per protocol and seed (and TTA), each run in the
    pool's directory; --gpus: one job per GPU."""
    write_rotmnist_npz(tmp_path / "data", n_train=4, n_valid=2, n_test=4)
    common = ["--table", "rotmnist", "--dry-run", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "r")]
    common += [f"paths.data_dir={tmp_path / 'data'}"]
    result = reproduce(*common, "--seeds", "clean=2", "original=1", "--launcher", "slurm")
    assert result.returncode == 0, result.stderr
    sweeps = [line for line in result.stdout.splitlines() if "attentive_gcnn.train -m hydra/launcher=slurm" in line]
    trained = [line for line in sweeps if "resume=auto" in line]
    assert len(trained) == 3 and len(sweeps) == 3 + 3 * 3  # (clean 0, 1, original 0) x (training, TTA 4, 8, 16)
    assert f"experiment={','.join(f'table1/{m}' for m in TABLE1)}" in trained[0]
    assert f"hydra.sweep.subdir={tmp_path / 'runs'}/${{name}}/clean/seed0 " in trained[0]
    module = load_script()
    with pytest.raises(SystemExit):
        module.parse_args(["--table", "mini", "--gpus", "0,1,1"])
    assert "distinct GPU ids" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # refused before any training, not at the figures stage
        module.parse_args(["--table", "mini", "--figure-limit", "0"])
    assert "--figure-limit must be positive" in capsys.readouterr().err
    pool = module.Pool(module.Places(tmp_path / "pool", None, None), 1, False, ["0", "3"])
    show = [sys.executable, "-c", "import os, time; print(os.environ['CUDA_VISIBLE_DEVICES']); time.sleep(0.5)"]
    jobs = [module.Job("table1/p4cnn", "clean", seed) for seed in range(3)]
    for job in jobs:
        pool.submit(job, show)
    pool.join()
    logs = [(tmp_path / "pool/logs" / f"table1.p4cnn.clean.seed{j.seed}.log").read_text().split() for j in jobs]
    assert pool.size == 2 and not pool.failed
    assert sorted(logs[0] + logs[1]) == ["0", "3"] and logs[2][0] in ("0", "3")  # two at once, one GPU each


def test_seeds_jobs_and_tta_plan():
    rp = load_script()
    assert rp.parse_seeds(["2"], ["clean", "original"]) == {"clean": 2, "original": 2}
    assert rp.parse_seeds(["original=3", "clean=5"], ["clean", "original"]) == {"original": 3, "clean": 5}
    assert rp.parse_seeds(["original=3", "clean=5"], ["clean"]) == {"clean": 5}
    for bad in (["clean=0"], ["dirty=2"], ["x"], ["clean=2", "3"], ["original=2"]):
        with pytest.raises(ValueError):
            rp.parse_seeds(bad, ["clean"])
    jobs = rp.training_jobs(["mini/a", "mini/z2cnn"], {"clean": 2, "original": 1})
    assert [(j.experiment, j.protocol, j.seed) for j in jobs] == [
        ("mini/a", "clean", 0),
        ("mini/z2cnn", "clean", 0),
        ("mini/a", "original", 0),
        ("mini/z2cnn", "original", 0),
        ("mini/a", "clean", 1),
        ("mini/z2cnn", "clean", 1),
    ]
    tta = rp.tta_jobs(jobs)
    assert {j.experiment for j in tta} == {"mini/z2cnn"} and len(tta) == 3 * 3
    assert str(tta[0].path) == "mini/z2cnn/clean/seed0/tta4" and tta[0].trained == jobs[1]


def test_refuses_to_start_when_a_dataset_is_missing(tmp_path):
    result = reproduce("--table", "rotmnist", "--out", str(tmp_path / "runs"), f"paths.data_dir={tmp_path / 'none'}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "error: table1/" in result.stderr and "mnist_rotation_new" in result.stderr
    assert "download_data.py rotmnist" in result.stderr and not (tmp_path / "runs").exists()
    nothing = reproduce("--table", "mini", "--only", "mini/nope", "--dry-run")
    assert nothing.returncode != 0 and "no experiment" in nothing.stderr


@pytest.mark.slow  # the longest test (a whole mini pass with its figures): `make test-full`
def test_a_tiny_mini_reproduction_yields_a_table_and_figures(tmp_path):
    out = tmp_path / "runs"
    args = [
        "--table",
        "mini",
        "--only",
        "mini/fa_p4cnn",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--protocols",
        "clean",
        "--figure-limit",
        "32",
        "--out",
        str(out),
    ]
    result = reproduce(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--limit 32" in result.stdout  # the rotation plot evaluates only --figure-limit images per angle
    assert (out / "mini/fa_p4cnn/clean/seed0/summary.json").is_file()
    table = (out / "tables/mini.md").read_text()
    assert "mini/fa_p4cnn" in table
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"mini_curves.png", "mini_rotations.png", "mini_rotations.csv", "mini_attention_fa_p4cnn.png"} <= figures
    assert not (out / "runs").exists() and not (out / "checkpoints").exists()  # a quick pass publishes nothing
    again = reproduce(*args)  # a finished run is skipped, and the table comes out the same
    assert again.returncode == 0 and "already complete" in again.stderr + again.stdout
    assert (out / "tables/mini.md").read_text() == table


@pytest.mark.slow  # `make test-full` (keeps `make test` within its time budget)
def test_finished_runs_are_published_and_count_as_done(tmp_path):
    out, results = tmp_path / "runs", tmp_path / "results"
    args = ["--table", "mini", "--only", "mini/z2cnn", "--seeds", "1", "--epochs", "1", "--protocols", "clean"]
    args += ["--jobs", "2", "--stages", "train", "tta", "tables", "--out", str(out), "--results", str(results)]
    args += tiny_mini(tmp_path)
    result = reproduce(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    published = results / "runs/mini/z2cnn/clean/seed0"
    files = ["config.yaml", "metrics.csv", "overrides.yaml", "summary.json", "tta16", "tta4", "tta8"]
    assert sorted(p.name for p in published.iterdir()) == files
    tta = json.loads((published / "tta8/summary.json").read_text())
    assert (tta["mode"], tta["tta"], tta["name"], tta["seed"]) == ("eval", 8, "mini/z2cnn", 0)
    assert (out / "logs/mini.z2cnn.clean.seed0.log").is_file()  # --jobs 2: each job's output in a log
    ckpt = results / "checkpoints/mini/z2cnn.ckpt"
    sums = (results / "checkpoints/mini/SHA256SUMS").read_text()
    assert sums.endswith("  z2cnn.ckpt\n") and not check_sums(ckpt.parent)
    summary = json.loads((published / "summary.json").read_text())
    stored = load_checkpoint(ckpt)
    assert stored["run"]["test_error"] == summary["test_error"] and stored["run"]["seed"] == 0
    assert set(stored) == {"format", "model", "net", "state_dict", "epoch", "run"}  # weights only
    table = (results / "tables/mini.md").read_text()
    assert "mini/z2cnn+tta16" in table and (results / "tables/mini_comparison.md").is_file()
    shutil.rmtree(out)  # published runs are done even without their run directory
    again = reproduce(*args)
    assert again.returncode == 0 and "already complete" in again.stdout, again.stdout + again.stderr
    assert not out.joinpath("mini").exists() and (results / "tables/mini.md").read_text() == table


def test_publishing_never_overwrites_another_run(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra/config.yaml").write_text("seed: 0\n")
    (run / "metrics.csv").write_text("epoch,split\n")
    with pytest.raises(UserError, match="no complete run"):
        publish_run(run, tmp_path / "pub")
    (run / "summary.json").write_text(json.dumps({"status": "complete", "test_error": 5.0}))
    assert publish_run(run, tmp_path / "pub") and not publish_run(run, tmp_path / "pub")
    assert (tmp_path / "pub/config.yaml").read_text() == "seed: 0\n"
    (run / "summary.json").write_text(json.dumps({"status": "complete", "test_error": 4.0}))
    with pytest.raises(UserError, match="refusing to overwrite"):
        publish_run(run, tmp_path / "pub")
    assert json.loads((tmp_path / "pub/summary.json").read_text())["test_error"] == 5.0
    (tmp_path / "pub/summary.json").write_text("{}")  # an incomplete summary does not count as published
    assert not is_published(tmp_path / "pub")


def test_tta_waits_for_the_training_run_to_finish(tmp_path):
    out = tmp_path / "runs"
    unfinished = out / "mini/z2cnn/clean/seed0"
    unfinished.mkdir(parents=True)
    (unfinished / "best.ckpt").write_bytes(b"an epoch's weights, the run still going")
    args = ["--table", "mini", "--only", "mini/z2cnn", "--seeds", "1", "--protocols", "clean", "--stages", "tta"]
    result = reproduce(*args, "--out", str(out), "--results", str(tmp_path / "results"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipping mini/z2cnn clean seed 0 tta 4: no finished training run" in result.stdout
    assert sorted(p.name for p in unfinished.iterdir()) == ["best.ckpt"] and not (tmp_path / "results/runs").exists()


def test_figures_draw_one_curves_figure_per_protocol_with_the_authors_logs(tmp_path, capsys):
    rp = load_script()
    places, logs = rp.Places(tmp_path / "out", None, None), tmp_path / "authors"
    cmds = rp.figure_commands("table2", places, tmp_path / "fig", [], 10, ["clean", "original"], logs)
    assert [c[1] for c in cmds] == [str(rp.REPO / "scripts/plot_curves.py")] * 2  # table2: no rotation figures

    def value(cmd, flag):
        return cmd[cmd.index(flag) + 1]

    assert [value(c, "--protocol") for c in cmds] == ["clean", "original"]
    assert [value(c, "--out") for c in cmds] == [str(tmp_path / f"fig/table2_curves{s}.png") for s in ("", "_original")]
    assert all(value(c, "--authors-history") == str(logs) for c in cmds)
    (clean,) = rp.figure_commands("table2", places, tmp_path / "fig", [], 10)  # by default: clean, no logs
    assert value(clean, "--protocol") == "clean" and "--authors-history" not in clean
    with pytest.raises(SystemExit):  # refused before any training, not at the figures stage
        rp.parse_args(["--table", "mini", "--authors-history", str(logs)])
    assert "not a directory" in capsys.readouterr().err


def test_figures_use_published_or_finished_weights_only(tmp_path):
    rp = load_script()
    places = rp.Places(tmp_path / "out", tmp_path / "results/runs", tmp_path / "results/checkpoints")
    running = tmp_path / "out/mini/a_p4cnn/clean/seed0"
    running.mkdir(parents=True)
    (running / "best.ckpt").write_bytes(b"weights of an unfinished run")
    assert [
        c for c in rp.figure_commands("mini", places, tmp_path / "fig", [], 10) if "eval_rotations.py" in c[1]
    ] == []
    (running / "summary.json").write_text('{"status": "complete"}')
    published = tmp_path / "results/checkpoints/mini/z2cnn.ckpt"
    published.parent.mkdir(parents=True)
    published.write_bytes(b"published weights")
    cmds = rp.figure_commands("mini", places, tmp_path / "fig", [], 10)
    rotations = next(c for c in cmds if "eval_rotations.py" in c[1])
    assert str(published) in rotations and str(running / "best.ckpt") in rotations and "--tta" in rotations
    assert any("visualize_attention.py" in c[1] and str(running / "best.ckpt") in c for c in cmds)
    assert "--grid" in cmds[0]
