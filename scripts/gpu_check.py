#!/usr/bin/env python
"""The prepared GPU check (docs/gpu.md): a few minutes on one CUDA device, one Markdown report.

    python scripts/gpu_check.py                               # CUDA: the full check, report in results/gpu/
    python scripts/gpu_check.py --device cpu                  # a small dry run of the same stages, report in a temp dir
    python scripts/gpu_check.py --device cpu --results DIR    # ... into DIR
    python scripts/gpu_check.py --stages pytest train         # some stages only

The stages, each command under a timeout and all of them under one time budget (``--budget``):

- ``preflight``: the package and its dependencies import in a fresh process (and CUDA is there, on ``cuda``);
- ``pytest``: ``pytest -m gpu`` without the torch.compile tests (tests/test_gpu.py: the batched full attention
  and alpha-F against the reference in float64, every model's float32 and float16-autocast training step);
- ``train``: one epoch of p4cnn, fa_p4cnn and a_p4cnn on rotmnist_mini through ``python -m attentive_gcnn.train``;
- ``bench``: ``scripts/bench.py`` on the device, with a timeout per model;
- ``compile``: the torch.compile tests of ``pytest -m gpu`` (graph breaks, a compiled training step), last because
  compiling is the slowest and least predictable part.

The dry run (``--device cpu``) runs the same stages smaller: the tests collect and skip, p4cnn and a_p4cnn train on a
tiny slice of rotmnist_mini (the entrypoint has no option that limits the steps of an epoch), the benchmark
measures p4cnn and fa_p4cnn once at batch 8. ``--stages fail`` is a stage that always fails (to test the reporting).

The report, ``<device-slug>_<YYYY-MM-DD>.md`` (never over an existing one: ``_2``, ``_3``, ... are added), is
rewritten after every command, so a check cut short still leaves one; beside it ``..._bench.md`` (the benchmark's own
report) and ``....log`` (every command's output). With ``$OUT`` set (``--out``) the three files are copied there
too. A failed stage is reported and the next one runs; the exit status is 1 if any stage failed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MINI_NPZ = REPO / "src" / "attentive_gcnn" / "data" / "embedded" / "rotmnist_mini.npz"
STAGES = ("preflight", "pytest", "train", "bench", "compile")
COMPILE_TESTS = "compile"  # the pytest -k expression that selects the torch.compile tests
TAIL_LINES = 40  # lines of a command's output quoted in the report
MIN_SLICE_S = 5.0  # a command is not started with less of the budget left


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one device's check runs: the budget, the timeouts (seconds per command) and the sizes."""

    budget_s: float
    timeouts: dict[str, float]
    bench_args: tuple[str, ...]
    train_models: tuple[str, ...]
    tiny_data: bool  # train on a small slice of rotmnist_mini (the dry run)


CUDA_BENCH_MODELS = (  # the models of `make bench`, the alpha-F reference too, a_p4_allcnnc at the full batch
    "plain_p4cnn",
    "p4cnn",
    "fa_p4cnn",
    "fa_p4cnn@attention_impl=reference",
    "a_p4cnn",
    "a_p4cnn@attention_impl=reference",
    "a_p4_allcnnc",
)
SETTINGS = {
    "cuda": Settings(
        budget_s=540,
        timeouts={"preflight": 60, "pytest": 180, "train": 75, "bench": 240, "compile": 240, "fail": 30},
        bench_args=(*CUDA_BENCH_MODELS, "--batch-size", "128", "--baseline", "p4cnn", "--timeout", "90"),
        train_models=("p4cnn", "fa_p4cnn", "a_p4cnn"),
        tiny_data=False,
    ),
    "cpu": Settings(
        budget_s=240,
        timeouts={"preflight": 60, "pytest": 90, "train": 60, "bench": 90, "compile": 90, "fail": 30},
        bench_args=("p4cnn", "fa_p4cnn", "--batch-size", "8", "--warmup", "1", "--repeats", "1", "--threads", "1"),
        train_models=("p4cnn", "a_p4cnn"),
        tiny_data=True,
    ),
}
TINY_SIZES = {"train": 64, "valid": 32, "test": 64}  # images per split of the dry run's rotmnist_mini slice


# ------------------------------------------------------------------------------------------------ running commands
@dataclasses.dataclass
class Outcome:
    """One command's result: exit status, time, whether it timed out or was skipped, the end of its output."""

    label: str
    argv: list[str]
    timeout_s: float
    rc: int | None = None
    seconds: float = 0.0
    timed_out: bool = False
    skipped: str = ""  # why it did not run
    tail: list[str] = dataclasses.field(default_factory=list)
    problem: str = ""  # a failure the exit status does not show (set by the stage's check)

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not (self.timed_out or self.skipped or self.problem)

    def verdict(self) -> str:
        if self.skipped:
            return f"FAIL (not run: {self.skipped})"
        if self.timed_out:
            return f"FAIL (timed out after {self.timeout_s:g} s)"
        if self.rc != 0:
            return f"FAIL (exit status {self.rc})"
        return f"FAIL ({self.problem})" if self.problem else "PASS"


def run_command(argv: list[str], timeout_s: float, log, env: dict | None = None, label: str = "") -> Outcome:
    """Run ``argv`` in the repository, its output (stdout and stderr) appended to ``log``; kill its whole process
    group after ``timeout_s``."""
    outcome = Outcome(label or shlex.join(argv), list(argv), timeout_s)
    log.write(f"\n$ {shlex.join(argv)}\n")
    log.flush()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # its own process group: a timeout ends its workers too
    )

    def pump() -> None:
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip("\n"))
        log.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        outcome.rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        outcome.timed_out = True
        with contextlib.suppress(ProcessLookupError):  # the group has already gone
            os.killpg(proc.pid, signal.SIGKILL)
        outcome.rc = proc.wait()
    reader.join(timeout=10)
    outcome.seconds = time.monotonic() - start
    outcome.tail = list(tail)
    log.write(
        f"# exit status {outcome.rc} after {outcome.seconds:.1f} s{' (timed out)' if outcome.timed_out else ''}\n"
    )
    log.flush()
    return outcome


def child_env(device: str) -> dict:
    """The environment of every command: the checkout's ``src`` first on ``PYTHONPATH`` (the package need not be
    installed), unbuffered output, no wandb traffic; on the CPU one thread per op unless set."""
    env = dict(os.environ)
    paths = [str(REPO / "src"), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("WANDB_MODE", "disabled")
    if device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


# ------------------------------------------------------------------------------------------------------ the stages
@dataclasses.dataclass
class Step:
    """A command of a stage; ``check`` reads what the command left and names a failure its exit status missed."""

    label: str
    argv: list[str]
    timeout_s: float
    check: Callable[[Outcome], str] | None = None


@dataclasses.dataclass
class Stage:
    name: str
    title: str
    steps: list[Step]
    outcomes: list[Outcome] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return len(self.outcomes) == len(self.steps) and all(o.ok for o in self.outcomes)

    @property
    def seconds(self) -> float:
        return sum(o.seconds for o in self.outcomes)

    def verdict(self) -> str:
        if not self.outcomes:
            return "not run yet"
        return "PASS" if self.ok else "FAIL"


@dataclasses.dataclass
class Check:
    """Everything a check knows: its options, its files and its stages."""

    device: str
    settings: Settings
    report: Path
    work: Path  # run directories and the tiny data set (a temporary directory)
    out: Path | None
    commit: str
    command: str
    started: dt.datetime
    machine: dict[str, str]
    stages: list[Stage] = dataclasses.field(default_factory=list)

    @property
    def bench_report(self) -> Path:
        return self.report.with_name(self.report.stem + "_bench.md")

    @property
    def log_path(self) -> Path:
        return self.report.with_suffix(".log")

    def train_dir(self, model: str) -> Path:
        return self.work / "train" / model


def pytest_summary(tail: list[str]) -> str:
    """pytest's closing line (``3 passed, 2 skipped in 4.1s``), or an empty string."""
    words = ("passed", "failed", "skipped", "deselected", "error", "no tests ran")
    for line in reversed(tail):
        text = line.strip().strip("=").strip()
        if any(w in text for w in words) and re.search(r"\bin [0-9.]+s\b", text):
            return text
    return ""


def skips_are_failures(outcome: Outcome) -> str:
    """On CUDA a skipped GPU test means the check did not check it."""
    summary = pytest_summary(outcome.tail)
    found = re.search(r"(\d+) skipped", summary)
    return f"{found.group(1)} test(s) skipped on CUDA" if found else ""


def pytest_step(label: str, keyword: str, device: str, timeout_s: float) -> Step:
    argv = [sys.executable, "-m", "pytest", "-m", "gpu", "-k", keyword, "-q", "-p", "no:cacheprovider"]
    argv += ["--durations=10"]
    return Step(label, argv, timeout_s, skips_are_failures if device == "cuda" else None)


def tiny_rotmnist(work: Path) -> Path:
    """A small slice of the embedded rotmnist_mini (same layout, ``TINY_SIZES`` images per split) for the dry run."""
    import numpy as np

    path = work / "rotmnist_tiny.npz"
    if path.is_file():
        return path
    with np.load(MINI_NPZ) as f:
        arrays = {f"{s}_{v}": f[f"{s}_{v}"][:n] for s, n in TINY_SIZES.items() for v in ("x", "y")}
    work.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def train_argv(check: Check, model: str) -> list[str]:
    """``python -m attentive_gcnn.train`` for one epoch of ``model`` on rotmnist_mini, csv logging only."""
    argv = [sys.executable, "-m", "attentive_gcnn.train", f"experiment=mini/{model}", f"device={check.device}"]
    argv += ["training.epochs=1", "logger=csv", "progress=false", f"hydra.run.dir={check.train_dir(model)}"]
    if check.settings.tiny_data:
        data = tiny_rotmnist(check.work)
        argv += [f"dataset.source.path={data}", "dataset.source.sha256=null"]
        argv += ["training.batch_size=32", "training.eval_batch_size=64"]
    return argv


def summary_of(run_dir: Path) -> dict | None:
    path = run_dir / "summary.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def has_summary(run_dir: Path) -> Callable[[Outcome], str]:
    def check(outcome: Outcome) -> str:
        return "" if summary_of(run_dir) else f"no summary.json in {run_dir}"

    return check


def bench_written(path: Path) -> Callable[[Outcome], str]:
    def check(outcome: Outcome) -> str:
        return "" if path.is_file() else f"no benchmark report at {path}"

    return check


def make_stages(check: Check, names: list[str]) -> list[Stage]:
    """The stages called ``names``, in the order of ``STAGES`` (``fail`` last)."""
    t = check.settings.timeouts
    python = sys.executable
    imports = 'import torch, hydra, omegaconf, attentive_gcnn.train, attentive_gcnn.models as m; m.build("p4cnn")'
    if check.device == "cuda":
        imports += '; assert torch.cuda.is_available(), "no CUDA device"; torch.zeros(1, device="cuda")'
    imports += '; print("torch", torch.__version__, "hydra", hydra.__version__, "omegaconf", omegaconf.__version__)'
    bench = [python, "scripts/bench.py", *check.settings.bench_args, "--device", check.device]
    bench += ["--markdown", str(check.bench_report)]
    build = {
        "preflight": lambda: Stage(
            "preflight", "Preflight", [Step("imports", [python, "-c", imports], t["preflight"])]
        ),
        "pytest": lambda: Stage(
            "pytest",
            "pytest -m gpu",
            [pytest_step("pytest -m gpu (not compile)", f"not {COMPILE_TESTS}", check.device, t["pytest"])],
        ),
        "train": lambda: Stage(
            "train",
            "Training: one epoch on rotmnist_mini",
            [
                Step(model, train_argv(check, model), t["train"], has_summary(check.train_dir(model)))
                for model in check.settings.train_models
            ],
        ),
        "bench": lambda: Stage(
            "bench", "Benchmark", [Step("bench", bench, t["bench"], bench_written(check.bench_report))]
        ),
        "compile": lambda: Stage(
            "compile",
            "torch.compile",
            [pytest_step("pytest -m gpu -k compile", COMPILE_TESTS, check.device, t["compile"])],
        ),
        "fail": lambda: Stage(
            "fail",
            "Injected failure",
            [Step("fail", [python, "-c", "import sys; print('an injected failure'); sys.exit(3)"], t["fail"])],
        ),
    }
    return [build[name]() for name in (*STAGES, "fail") if name in names]


def run_stages(check: Check, deadline: float, env: dict, on_progress: Callable[[], None]) -> None:
    """Run every stage's steps in order, each under min(its timeout, the budget left); report after each step."""
    with check.log_path.open("a") as log:
        for stage in check.stages:
            print(f"[gpu-check] stage {stage.name}", flush=True)
            for step in stage.steps:
                left = deadline - time.monotonic()
                if left < MIN_SLICE_S:
                    outcome = Outcome(step.label, step.argv, step.timeout_s, skipped="the time budget is spent")
                else:
                    timeout = min(step.timeout_s, left)
                    outcome = run_command(step.argv, timeout, log, env, step.label)
                    if outcome.rc == 0 and not outcome.timed_out and step.check is not None:
                        outcome.problem = step.check(outcome)
                stage.outcomes.append(outcome)
                print(f"[gpu-check]   {step.label}: {outcome.verdict()} ({outcome.seconds:.1f} s)", flush=True)
                on_progress()


# ------------------------------------------------------------------------------------------------ the machine
def _first_line(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=REPO)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout.strip().splitlines()[0].strip() if proc.returncode == 0 and proc.stdout.strip() else ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str) -> dict[str, str]:
    """The machine, as the report's first table gives it (this process's Python and torch)."""
    info = {
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "CPU": f"{cpu_model()}, {os.cpu_count()} cores",
    }
    try:
        import torch
    except Exception as e:  # a broken install is reported, not raised
        info["torch"] = f"not importable: {e}"
        return info
    info["torch"] = torch.__version__
    info["CUDA (torch's build)"] = torch.version.cuda or "none"
    if device == "cuda":
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["GPU"] = props.name
            info["GPU memory"] = f"{props.total_memory / 2**30:.1f} GiB"
            info["compute capability"] = f"{props.major}.{props.minor}, {props.multi_processor_count} SMs"
            info["cuDNN"] = str(torch.backends.cudnn.version())
        else:
            info["GPU"] = "none: torch sees no CUDA device"
        query = ["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"]
        info["driver (nvidia-smi)"] = _first_line(query) or "nvidia-smi not available"
    return info


def device_slug(device: str, machine: dict[str, str]) -> str:
    """``nvidia-h100-80gb-hbm3`` from the GPU's name; ``cpu`` for the dry run."""
    if device == "cpu":
        return "cpu"
    name = machine.get("GPU", "")
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug if slug and not name.startswith("none") else "cuda-unavailable"


def git_commit(given: str | None) -> str:
    """The checkout's commit (``+dirty`` with uncommitted changes), else ``given``, else a note why not."""
    sha = _first_line(["git", "rev-parse", "HEAD"])
    if sha:
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        return sha + (" (+dirty)" if dirty else "")
    return f"{given} (given by --commit)" if given else "unknown (no git checkout here; pass --commit SHA)"


def unique_report(folder: Path, stem: str) -> Path:
    """``folder/stem.md``, or ``stem_2.md``, ``stem_3.md``, ... where taken (here or as a bench report or log)."""
    n = 1
    while True:
        name = stem if n == 1 else f"{stem}_{n}"
        taken = [folder / f"{name}{suffix}" for suffix in (".md", "_bench.md", ".log")]
        if not any(p.exists() for p in taken):
            return folder / f"{name}.md"
        n += 1


# --------------------------------------------------------------------------------------------------- the report
def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    return (
        f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)
    )


def code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`"


def shown(argv: list[str]) -> str:
    """A command line as the report shows it: ``python`` for this interpreter's path."""
    return shlex.join(["python" if a == sys.executable else a for a in argv])


def command_block(outcome: Outcome, quote_output: bool) -> list[str]:
    """One command: its line, its verdict and time, and (when asked, or when it failed) the end of its output."""
    lines = [f"- {code(shown(outcome.argv))}", f"  - {outcome.verdict()}, {outcome.seconds:.1f} s"]
    if (quote_output or not outcome.ok) and outcome.tail:
        lines += ["", "```", *outcome.tail, "```", ""]
    return lines


def stages_table(check: Check) -> list[str]:
    lines = ["| stage | result | time (s) | commands |", "|---|---|---:|---:|"]
    for stage in check.stages:
        lines.append(f"| {stage.name} | {stage.verdict()} | {stage.seconds:.1f} | {len(stage.steps)} |")
    return lines


def pytest_section(stage: Stage) -> list[str]:
    lines = [f"## {stage.title}", ""]
    for outcome in stage.outcomes:
        summary = pytest_summary(outcome.tail) or "no pytest summary line"
        lines += [f"{outcome.label}: **{summary}**", ""]
        lines += command_block(outcome, quote_output=True)
        lines.append("")
    return lines


def train_section(check: Check, stage: Stage) -> list[str]:
    lines = [f"## {stage.title}", ""]
    if check.settings.tiny_data:
        sizes = " / ".join(str(n) for n in TINY_SIZES.values())
        lines += [f"Dry run: a slice of rotmnist_mini ({sizes} images), batch 32.", ""]
    lines += [
        "| model | result | command time (s) | run wall time (s) | test error (%) | last-epoch test error (%) | "
        "params | peak memory (MiB) | device |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for outcome in stage.outcomes:
        s = summary_of(check.train_dir(outcome.label)) or {}
        device = s.get("environment", {}).get("device", "–")
        cells = [s.get("wall_time_s"), s.get("test_error"), s.get("last_test_error"), s.get("params")]
        cells = [fmt(c) for c in cells] + [fmt(s.get("peak_memory_mb"), 1), device]
        lines.append(f"| {outcome.label} | {outcome.verdict()} | {outcome.seconds:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "Commands:", ""]
    for outcome in stage.outcomes:
        lines += command_block(outcome, quote_output=False)
    return [*lines, ""]


def bench_section(check: Check, stage: Stage) -> list[str]:
    lines = [f"## {stage.title}", ""]
    for outcome in stage.outcomes:
        lines += command_block(outcome, quote_output=not check.bench_report.is_file())
    if check.bench_report.is_file():
        lines += [
            "",
            f"The benchmark's own report ({check.bench_report.name}), its headings two levels down. Its targets are "
            "those of docs/performance.md; they inform, and the stage fails only where a model fails to run.",
            "",
        ]
        for line in check.bench_report.read_text().splitlines():
            lines.append("##" + line if line.startswith("#") else line)
    return [*lines, ""]


def generic_section(stage: Stage) -> list[str]:
    lines = [f"## {stage.title}", ""]
    for outcome in stage.outcomes:
        lines += command_block(outcome, quote_output=True)
    return [*lines, ""]


def render(check: Check, finished: bool) -> str:
    failed = [s.name for s in check.stages if s.outcomes and not s.ok]
    if not finished:
        result = "INCOMPLETE (the check was still running or was cut short)"
    else:
        result = f"FAIL (failed: {', '.join(failed)})" if failed else f"PASS ({len(check.stages)} stages)"
    elapsed = (dt.datetime.now(dt.timezone.utc) - check.started).total_seconds()
    lines = [
        f"# GPU check: {check.machine.get('GPU', 'CPU dry run' if check.device == 'cpu' else 'no GPU')}, "
        f"{check.started:%Y-%m-%d}",
        "",
        f"- result: **{result}**",
        f"- command: {code(check.command)}",
        f"- device: {check.device}; started {check.started:%Y-%m-%d %H:%M:%S} UTC; took {elapsed:.0f} s of a "
        f"{check.settings.budget_s:g} s budget",
        f"- git: {code(check.commit)}",
        f"- every command's output: {check.log_path.name}",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in check.machine.items()],
        "",
        "## Stages",
        "",
        *stages_table(check),
        "",
    ]
    for stage in check.stages:
        if not stage.outcomes:
            lines += [f"## {stage.title}", "", "Not run yet.", ""]
        elif stage.name in ("pytest", "compile"):
            lines += pytest_section(stage)
        elif stage.name == "train":
            lines += train_section(check, stage)
        elif stage.name == "bench":
            lines += bench_section(check, stage)
        else:
            lines += generic_section(stage)
    return "\n".join(lines).rstrip() + "\n"


def write_report(check: Check, finished: bool) -> None:
    """Write the report, and copy it with the bench report and the log to ``check.out`` when set."""
    check.report.write_text(render(check, finished))
    if check.out is None:
        return
    check.out.mkdir(parents=True, exist_ok=True)
    for path in (check.report, check.bench_report, check.log_path):
        if path.is_file():
            shutil.copy2(path, check.out / path.name)


# ------------------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu_check.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=sorted(SETTINGS), default="cuda", help="cuda (default) or cpu (dry run)")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="folder of the report (default: results/gpu on cuda, a new temporary folder on cpu)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
        help="also copy the report, bench report and log here (default: $OUT where set)",
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=[*STAGES, "fail"],
        default=list(STAGES),
        help=f"the stages to run, in their fixed order (default: {' '.join(STAGES)}; fail: one that always fails)",
    )
    parser.add_argument("--budget", type=float, default=None, help="seconds for all stages (default 540 cuda, 240 cpu)")
    parser.add_argument("--commit", default=os.environ.get("GPU_CHECK_COMMIT"), help="the commit, where no .git is")
    parser.add_argument("--work", type=Path, default=None, help="run directories (default: a temporary folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = SETTINGS[args.device]
    if args.budget is not None:
        settings = dataclasses.replace(settings, budget_s=args.budget)
    deadline = time.monotonic() + settings.budget_s
    started = dt.datetime.now(dt.timezone.utc)
    machine = machine_info(args.device)
    folder = args.results
    if folder is None:
        folder = REPO / "results" / "gpu" if args.device == "cuda" else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    folder.mkdir(parents=True, exist_ok=True)
    report = unique_report(folder, f"{device_slug(args.device, machine)}_{started:%Y-%m-%d}")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_work_"))
    check = Check(
        device=args.device,
        settings=settings,
        report=report,
        work=work,
        out=args.out,
        commit=git_commit(args.commit),
        command=shlex.join(["python", "scripts/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]),
        started=started,
        machine=machine,
    )
    check.log_path.touch()
    check.stages = make_stages(check, args.stages)
    print(f"[gpu-check] device {args.device}; report {report}", flush=True)
    write_report(check, finished=False)
    run_stages(check, deadline, child_env(args.device), lambda: write_report(check, finished=False))
    write_report(check, finished=True)
    failed = [s.name for s in check.stages if not s.ok]
    print(f"[gpu-check] {'FAIL: ' + ', '.join(failed) if failed else 'PASS'}; report {report}", flush=True)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
