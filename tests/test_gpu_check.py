"""``scripts/gpu_check.py`` (``make gpu-check``): its CPU dry run writes a report with every section, a failing or
timed-out stage makes the check fail, and an existing report is never overwritten."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"
SECTIONS = (
    "## Machine",
    "## Stages",
    "## Preflight",
    "## pytest -m gpu",
    "## Training",
    "## Benchmark",
    "## torch.compile",
)


def load_script():
    """The script as a module (registered, as its dataclasses need)."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The whole dry run, once: its process and its results folder."""
    folder = tmp_path_factory.mktemp("gpu_check")
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    argv = [sys.executable, str(SCRIPT), "--device", "cpu", "--results", str(folder)]
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env, timeout=300), folder


@pytest.mark.slow  # the whole dry run: about a minute on 2 cores (make test-full)
def test_the_dry_run_passes_and_reports_every_stage(dry_run):
    proc, folder = dry_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (report,) = [p for p in folder.glob("cpu_*.md") if not p.name.endswith("_bench.md")]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [report.name, f"{report.stem}_bench.md", f"{report.stem}.log"]
    )
    text = report.read_text()
    for section in SECTIONS:
        assert section in text, section
    assert "result: **PASS" in text
    for model in ("p4cnn", "a_p4cnn"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {model} | PASS |"))
        assert row.endswith("| cpu |") and "–" not in row, row
    assert "| `fa_p4cnn` |" in text  # the benchmark's own table
    assert "skipped" in text  # pytest's summary: the GPU tests skip here


def test_pytest_summary_and_device_slug():
    gpu_check = load_script()
    tail = ["....", "========= 3 passed, 2 skipped, 10 deselected in 4.12s =========", ""]
    assert gpu_check.pytest_summary(tail) == "3 passed, 2 skipped, 10 deselected in 4.12s"
    assert gpu_check.pytest_summary(["ERROR: usage"]) == ""
    assert gpu_check.device_slug("cuda", {"GPU": "NVIDIA H100 80GB HBM3"}) == "nvidia-h100-80gb-hbm3"
    assert gpu_check.device_slug("cpu", {}) == "cpu"


def test_a_failing_stage_fails_the_check_and_reports_never_overwrite(tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    gpu_check = load_script()
    argv = ["--device", "cpu", "--results", str(tmp_path), "--stages", "fail"]
    assert gpu_check.main(argv) == 1
    assert gpu_check.main([*argv, "--budget", "0"]) == 1  # nothing runs: the budget is spent
    first, second = sorted(tmp_path.glob("cpu_*.md"), key=lambda p: len(p.name))
    assert second.name == first.stem + "_2.md"
    text = first.read_text()
    assert "result: **FAIL (failed: fail)**" in text and "FAIL (exit status 3)" in text
    assert "an injected failure" in text
    assert "not run: the time budget is spent" in second.read_text()


def test_a_command_past_its_timeout_is_killed(tmp_path):
    gpu_check = load_script()
    with (tmp_path / "log").open("w") as log:
        outcome = gpu_check.run_command(
            [sys.executable, "-c", "import time; print('started'); time.sleep(60)"], 1.5, log
        )
    assert outcome.timed_out and not outcome.ok and outcome.seconds < 30
    assert outcome.tail == ["started"] and outcome.verdict().startswith("FAIL (timed out")


def test_copies_go_to_out(tmp_path):
    gpu_check = load_script()
    out = tmp_path / "out"
    argv = ["--device", "cpu", "--results", str(tmp_path / "results"), "--stages", "fail", "--out", str(out)]
    assert gpu_check.main(argv) == 1
    assert sorted(p.suffix for p in out.iterdir()) == [".log", ".md"]
