"""scripts/reproduce.py (what `make reproduce` and `make reproduce-mini` run): the sweep it launches, its refusal
when data is missing, and one tiny end-to-end pass that yields a table and figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.data_fixtures import write_rotmnist_npz

REPO = Path(__file__).resolve().parents[1]
TABLE1 = sorted(p.stem for p in (REPO / "configs/experiment/table1").glob("*.yaml"))


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


def test_dry_run_launches_one_resumable_sweep_per_table(tmp_path):
    write_rotmnist_npz(tmp_path / "data", n_train=4, n_valid=2, n_test=4)
    result = reproduce(
        "--table",
        "rotmnist",
        "--seeds",
        "3",
        "--dry-run",
        "--out",
        str(tmp_path / "runs"),
        f"paths.data_dir={tmp_path / 'data'}",
    )
    assert result.returncode == 0, result.stderr
    sweep = next(line for line in result.stdout.splitlines() if "attentive_gcnn.train -m" in line)
    assert "seed=0,1,2" in sweep and "protocol=clean,original" in sweep and "resume=auto" in sweep
    assert f"experiment={','.join(f'table1/{n}' for n in TABLE1)}" in sweep
    assert "hydra.sweep.subdir=${name}/${protocol}/seed${seed}" in sweep
    assert "make_tables.py" in result.stdout and not (tmp_path / "runs").exists()


def test_refuses_to_start_when_a_dataset_is_missing(tmp_path):
    result = reproduce("--table", "rotmnist", "--out", str(tmp_path / "runs"), f"paths.data_dir={tmp_path / 'none'}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "error: table1/" in result.stderr and "mnist_rotation_new" in result.stderr
    assert "download_data.py rotmnist" in result.stderr and not (tmp_path / "runs").exists()
    nothing = reproduce("--table", "mini", "--only", "mini/nope", "--dry-run")
    assert nothing.returncode != 0 and "no experiment" in nothing.stderr


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
    again = reproduce(*args)  # a finished run is skipped, and the table comes out the same
    assert again.returncode == 0 and "already complete" in again.stderr + again.stdout
    assert (out / "tables/mini.md").read_text() == table
