"""Cost of the models: a training step, an eval forward and the peak memory (``docs/performance.md``).

``scripts/bench.py`` is the command line; this module holds the measurement. Every model is measured in a fresh
worker process (``python -m attentive_gcnn.bench --worker NAME ...``), so that the CPU peak resident memory, and a
CUDA out-of-memory, belong to that model alone. Besides the model configs there is one pseudo-model,
``plain_p4cnn``: P4CNN's layer sequence as ordinary ``nn.Conv2d`` layers with the expanded channel counts
(``C * |H|``), no filter transform: the floor of the filter-transform G-conv.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attentive_gcnn import allocator

REPO = Path(__file__).resolve().parents[2]
PLAIN = "plain_p4cnn"
RESULT_TAG = "BENCH_RESULT "
ERROR_TAG = "BENCH_ERROR "
HEADER = "name train_ms eval_ms peak_mb params"
OPTIMIZER = "Adam(lr=1e-3)"

REFERENCE_ATTENTION = "a_p4cnn@attention_impl=reference"  # the straightforward full attention, as a variant
# (numerator, denominator, measure, target): the ratios with a target (docs/performance.md#targets); "<=" in every case.
RATIO_TARGETS: list[tuple[str, str, str, float]] = [
    ("fa_p4cnn", "p4cnn", "train_ms", 1.3),
    ("a_p4cnn", "p4cnn", "train_ms", 3.0),
    ("a_p4cnn", REFERENCE_ATTENTION, "peak_mb", 0.25),
    ("p4cnn", PLAIN, "train_ms", 1.15),
]
MEASURES = {"train_ms": "train time", "eval_ms": "eval time", "peak_mb": "peak memory"}
# (model, measure, target in MiB, the batch size the target is stated for)
ABSOLUTE_TARGETS: list[tuple[str, str, float, int]] = [("a_p4_allcnnc", "peak_mb", 2048.0, 16)]
# the rot-MNIST ratios; `make bench` adds a_p4_allcnnc
DEFAULT_MODELS = [PLAIN, "p4cnn", "fa_p4cnn", "a_p4cnn", REFERENCE_ATTENTION]


class PlainP4CNN(nn.Module):
    """P4CNN's layers as plain convolutions with the expanded shapes: ``[B, 1, 28, 28]`` -> ``[B, 10]``.

    c1 ``1 -> C*|H|`` (3x3), c2..c6 ``C*|H| -> C*|H|`` (3x3), c7 ``C*|H| -> 10*|H|`` (4x4), no biases; BatchNorm2d
    (eps 2e-5) + ReLU after c1..c6, max-pool 2 after c2, dropout after the others; the logits are the max over the
    ``|H|`` slices of c7's output, as in :class:`attentive_gcnn.models.RotMNISTNet`. No filter transform and no
    group structure: it costs what the dense convolutions of P4CNN cost, and nothing else.
    """

    input_shape = (1, 28, 28)
    num_classes = 10

    def __init__(self, channels: int = 10, group_order: int = 4, dropout: float = 0.3) -> None:
        super().__init__()
        width = channels * group_order
        self.group_order = group_order
        self.c1 = nn.Conv2d(1, width, 3, bias=False)
        for i in range(2, 7):
            setattr(self, f"c{i}", nn.Conv2d(width, width, 3, bias=False))
        self.c7 = nn.Conv2d(width, self.num_classes * group_order, 4, bias=False)
        for i in range(1, 7):
            setattr(self, f"bn{i}", nn.BatchNorm2d(width, eps=2e-5))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(1, 7):
            x = torch.relu(getattr(self, f"bn{i}")(getattr(self, f"c{i}")(x)))
            x = F.max_pool2d(x, 2) if i == 2 else self.dropout(x)
        y = self.c7(x)  # [B, 10 * |H|, 1, 1]
        return y.view(y.shape[0], self.num_classes, self.group_order).amax(dim=2)


def bench_model_names() -> list[str]:
    """Every name the bench accepts: the model configs and the pseudo-model ``plain_p4cnn``."""
    from attentive_gcnn.models import model_names

    return [*model_names(), PLAIN]


def build_bench_model(name: str, **overrides) -> tuple[nn.Module, list[str]]:
    """The model NAME (a config, or ``plain_p4cnn``) and the overrides it ignored (only ``plain_p4cnn`` ignores any:
    it takes ``channels``, ``group_order`` and ``dropout``; attention arguments mean nothing to it)."""
    if name == PLAIN:
        accepted = {"channels", "group_order", "dropout"}
        ignored = sorted(set(overrides) - accepted)
        return PlainP4CNN(**{k: v for k, v in overrides.items() if k in accepted}), ignored
    from attentive_gcnn.models import build

    return build(name, **overrides), []


def split_variant(token: str) -> tuple[str, dict]:
    """``NAME`` or ``NAME@KEY=VALUE[,KEY=VALUE...]`` (a model under other build() arguments, measured under that
    label) -> (model name, overrides)."""
    name, at, spec = token.partition("@")
    overrides = {}
    for item in spec.split(",") if at else []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"model {token!r}: expected NAME@KEY=VALUE[,KEY=VALUE...]")
        overrides[key] = parse_value(value)
    return name, overrides


def parse_value(text: str):
    """A ``--model-arg`` value: int, float, bool (true/false), None (none/null), else the string itself."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_model_args(items: list[str], names: list[str]) -> dict[str, dict]:
    """``KEY=VALUE`` (every model) or ``NAME:KEY=VALUE`` (model NAME only) -> ``{name: {key: value}}``."""
    per_model: dict[str, dict] = {n: {} for n in names}
    for item in items:
        target, sep, assignment = item.partition(":") if ":" in item.split("=", 1)[0] else ("", "", item)
        key, eq, value = assignment.partition("=")
        if not eq or not key:
            raise ValueError(f"--model-arg {item!r}: expected KEY=VALUE or NAME:KEY=VALUE")
        if sep and target not in per_model:
            raise ValueError(f"--model-arg {item!r}: {target!r} is not one of the models being measured")
        for name in [target] if sep else names:
            per_model[name][key] = parse_value(value)
    return per_model


def parse_batch_sizes(items: list[str], names: list[str], default: int) -> dict[str, int]:
    """``NAME=B`` items -> the batch size of every model (``default`` where none is given)."""
    sizes = dict.fromkeys(names, default)
    for item in items:
        name, eq, value = item.rpartition("=")  # a variant's label holds "=" itself
        if not eq or name not in sizes:
            raise ValueError(f"--batch-size-for {item!r}: expected NAME=B with NAME one of the models being measured")
        try:
            sizes[name] = int(value)
        except ValueError:
            raise ValueError(f"--batch-size-for {item!r}: {value!r} is not an integer") from None
        if sizes[name] < 1:
            raise ValueError(f"--batch-size-for {item!r}: the batch size must be positive")
    return sizes


# ----------------------------------------------------------------------------------------------------- measuring


def _rss_mib() -> float:
    """The current resident set size of this process, in MiB (Linux /proc; 0 where unreadable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _max_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _timed(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls, in milliseconds."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(
    name: str,
    batch_size: int,
    device: str = "cpu",
    warmup: int = 2,
    repeats: int = 5,
    compile: bool = False,
    **overrides,
) -> dict:
    """Train-step and eval-forward times (median ms), peak memory (MiB) and parameter count of one model.

    The training step is forward, cross-entropy, backward and an Adam(lr=1e-3) step on random inputs of the
    model's input shape and random labels. ``compile``: the model runs under ``torch.compile`` (the compilation
    happens in the warm-up steps, which therefore must be at least 1).
    Peak memory: on CUDA ``max_memory_allocated`` over the warm-up and timed steps (model, optimizer state and
    inputs included); on CPU the growth of the peak resident set size (``ru_maxrss``) over the RSS measured just
    before the first forward, which is only meaningful in a fresh process (the worker).
    """
    from attentive_gcnn.models import count_parameters

    dev = torch.device(device)
    torch.manual_seed(0)
    model, ignored = build_bench_model(name, **overrides)
    model = model.to(dev)
    x = torch.randn(batch_size, *model.input_shape, device=dev)
    y = torch.randint(0, model.num_classes, (batch_size,), device=dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    run = torch.compile(model) if compile else model

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(run(x), y).backward()
        optimizer.step()

    def eval_forward() -> None:
        with torch.no_grad():
            run(x)

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    rss_before = _rss_mib()
    model.train()
    train_ms = _timed(train_step, dev, warmup, repeats)
    model.eval()
    eval_ms = _timed(eval_forward, dev, warmup, repeats)
    peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else _max_rss_mib() - rss_before
    return dict(
        name=name,
        batch_size=batch_size,
        train_ms=train_ms,
        eval_ms=eval_ms,
        peak_mb=peak_mb,
        params=count_parameters(model),
        threads=torch.get_num_threads(),
        ignored_args=ignored,
        allocator=allocator.describe(),
    )


def _worker(argv: list[str]) -> int:
    """``--worker NAME``: measure one model and print ``BENCH_RESULT {json}`` (or ``BENCH_ERROR {json}``)."""
    parser = argparse.ArgumentParser(prog="attentive_gcnn.bench --worker")
    parser.add_argument("--worker", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--overrides", default="{}", help="JSON object of build() overrides")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args(argv)
    allocator.keep_freed_memory()  # as in training
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        overrides = json.loads(args.overrides)
        result = measure(
            args.worker, args.batch_size, args.device, args.warmup, args.repeats, args.compile, **overrides
        )
    except Exception as e:  # reported to the parent, which goes on with the next model
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}".rstrip(": ")
        print(ERROR_TAG + json.dumps({"reason": reason}), flush=True)
        return 1
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


@dataclass
class Run:
    """What one worker returned: a result dict, or the reason it failed. ``name`` is the label (a model name,
    or ``NAME@KEY=VALUE...`` for a variant)."""

    name: str
    batch_size: int
    result: dict | None = None
    reason: str = ""
    overrides: dict = field(default_factory=dict)


def run_worker(
    name: str,
    batch_size: int,
    device: str,
    threads: int,
    warmup: int,
    repeats: int,
    overrides: dict,
    timeout: float | None = None,
    compile: bool = False,
) -> Run:
    """Measure NAME (a model or a ``NAME@KEY=VALUE`` variant) in a fresh ``python -m attentive_gcnn.bench
    --worker`` process; ``overrides`` add to (and win over) the variant's arguments."""
    model, variant = split_variant(name)
    overrides = variant | overrides
    cmd = [sys.executable, "-m", "attentive_gcnn.bench", "--worker", model, "--batch-size", str(batch_size)]
    cmd += ["--device", device, "--threads", str(threads), "--warmup", str(warmup), "--repeats", str(repeats)]
    cmd += ["--overrides", json.dumps(overrides)] + (["--compile"] if compile else [])
    run = Run(name, batch_size, overrides=overrides)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        run.reason = f"timed out after {timeout:g} s"
        return run
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            run.result = json.loads(line[len(RESULT_TAG) :])
        elif line.startswith(ERROR_TAG):
            run.reason = json.loads(line[len(ERROR_TAG) :])["reason"]
    if run.result is None and not run.reason:
        if proc.returncode < 0:
            run.reason = f"killed by signal {-proc.returncode}" + (" (out of memory?)" if proc.returncode == -9 else "")
        else:
            tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            run.reason = f"exit status {proc.returncode}" + (f": {tail[-1].strip()}" if tail else "")
    return run


def combine_rounds(runs: list[Run]) -> Run:
    """One model's runs over several rounds as one: the median train time, eval time and peak memory (each over
    the rounds), with the per-round train times under ``train_ms_rounds``; the first failure if any round failed."""
    failed = [run for run in runs if run.result is None]
    if failed:
        return failed[0]
    first = runs[0]
    result = dict(first.result)
    for key in ("train_ms", "eval_ms", "peak_mb"):
        result[key] = statistics.median(run.result[key] for run in runs)
    result["train_ms_rounds"] = [run.result["train_ms"] for run in runs]
    return Run(first.name, first.batch_size, result=result, overrides=first.overrides)


# ----------------------------------------------------------------------------------------------------- reporting


def format_line(run: Run) -> str:
    """``NAME train_ms eval_ms peak_mb params``, or ``NAME failed: reason``."""
    if run.result is None:
        return f"{run.name} failed: {run.reason}"
    r = run.result
    return f"{run.name} {r['train_ms']:.1f} {r['eval_ms']:.1f} {r['peak_mb']:.1f} {r['params']}"


def ratio_lines(runs: list[Run], baselines: list[str]) -> list[tuple[str, str, str, str]]:
    """The target checks (``docs/performance.md#targets``) and the ``--baseline`` ratios.

    Rows of (what, value, target, verdict).
    """
    done = {r.name: r for r in runs if r.result is not None}
    rows = []
    for num, den, key, target in RATIO_TARGETS:
        if num in done and den in done:
            value = done[num].result[key] / done[den].result[key]
            note = ""
            if done[num].batch_size != done[den].batch_size:
                note = f" (batch sizes differ: {done[num].batch_size} vs {done[den].batch_size})"
            verdict = ("PASS" if value <= target else "FAIL") + note
            rows.append((f"{num} / {den} {MEASURES[key]}", f"{value:.2f}", f"<= {target:g}", verdict))
    for name, key, target, batch in ABSOLUTE_TARGETS:
        if name in done:
            value = done[name].result[key]
            verdict = "PASS" if value <= target else "FAIL"
            if done[name].batch_size != batch:
                verdict += f" (measured at batch {done[name].batch_size}; the target is for batch {batch})"
            rows.append((f"{name} peak memory (MiB)", f"{value:.1f}", f"<= {target:g}", verdict))
    for base in baselines:
        if base not in done:
            continue
        b = done[base].result
        for name, run in done.items():
            if name == base:
                continue
            r = run.result
            ratios = ", ".join(
                f"{k.removesuffix('_ms').removesuffix('_mb')} {r[k] / b[k]:.2f}" if b[k] > 0 else f"{k} n/a"
                for k in ("train_ms", "eval_ms", "peak_mb")
            )
            rows.append((f"{name} / {base}", ratios, "", ""))
    return rows


def _git_revision() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=REPO
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return sha.stdout.strip() + (" (+dirty)" if dirty.stdout.strip() else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_description(device: str, threads: int, command: str) -> list[str]:
    """Markdown bullet lines: the machine, the software and the exact command."""
    lines = [
        f"- command: `{command}`",
        f"- git: `{_git_revision()}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- CPU: {_cpu_model()}, {os.cpu_count()} cores; torch threads: {threads}",
        f"- python {platform.python_version()}, torch {torch.__version__}, {platform.platform()}",
    ]
    if device == "cuda":
        lines.append(f"- device: cuda, {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})")
    else:
        from attentive_gcnn.kernels import SOURCES, cpu_kernels

        built = {name: "built" if cpu_kernels(name) is not None else "not available: torch ops" for name in SOURCES}
        lines.append("- device: cpu; fused CPU kernels: " + ", ".join(f"{k} {v}" for k, v in built.items()))
    return lines


def _allocators(runs: list[Run]) -> str:
    """The allocator setting the workers reported (one line; several where they differ)."""
    seen = sorted({run.result.get("allocator", "not reported") for run in runs if run.result is not None})
    return "; ".join(seen) or "no model measured"


def markdown_report(
    runs: list[Run],
    rows,
    device: str,
    threads: int,
    command: str,
    warmup: int,
    repeats: int,
    compiled: bool = False,
    rounds: int = 1,
) -> str:
    peak = (
        "`torch.cuda.max_memory_allocated` over the steps (model, optimizer state and inputs included)"
        if device == "cuda"
        else "growth of the peak resident set size (`ru_maxrss`) over the RSS just before the first forward, "
        "one fresh process per model"
    )
    out = ["# Benchmark: training step, eval forward, peak memory", ""]
    out += machine_description(device, threads, command)
    out += [
        f"- training step: forward, cross-entropy, backward, {OPTIMIZER} step, on random inputs and labels; "
        f"eval: `model.eval()` forward under `torch.no_grad()`; times are the median of {repeats} steps after "
        f"{warmup} warm-up steps"
        + (
            f"; every model measured in {rounds} rounds, interleaved (round k measures every model once, each in a "
            "fresh process), and the table gives the median over the rounds and the range of the train step"
            if rounds > 1
            else ""
        ),
        f"- peak memory: {peak}",
        f"- memory allocator (as in training, `attentive_gcnn.allocator`): {_allocators(runs)}",
        f"- torch.compile: {'every model (compiled during the warm-up steps)' if compiled else 'no (eager)'}",
        "",
        "| model | batch | train step (ms) | eval forward (ms) | peak memory (MiB) | parameters |"
        + (" train step over rounds (ms) |" if rounds > 1 else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if rounds > 1 else ""),
    ]
    for run in runs:
        if run.result is None:
            blank = " | |" if rounds > 1 else " |"
            out.append(f"| `{run.name}` | {run.batch_size} | failed: {run.reason} | | |" + blank)
        else:
            r = run.result
            line = (
                f"| `{run.name}` | {run.batch_size} | {r['train_ms']:.1f} | {r['eval_ms']:.1f} "
                f"| {r['peak_mb']:.1f} | {r['params']:,} |"
            )
            if rounds > 1:
                times = r.get("train_ms_rounds", [r["train_ms"]])
                line += f" {min(times):.1f}–{max(times):.1f} |"
            out.append(line)
    overridden = [run for run in runs if run.overrides]
    if overridden:
        out += ["", "Model arguments: " + "; ".join(f"`{run.name}`: `{run.overrides}`" for run in overridden)]
    if rows:
        out += ["", "## Ratios and targets", "", "| quantity | value | target | verdict |", "|---|---:|---|---|"]
        out += [f"| {what} | {value} | {target} | {verdict} |" for what, value, target, verdict in rows]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------------- the command


def build_parser(prog: str = "bench.py", description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default = " ".join(DEFAULT_MODELS)
    parser.add_argument(
        "models",
        nargs="*",
        help=f"model config names, {PLAIN}, or NAME@KEY=VALUE[,KEY=VALUE...] for a model under other build() "
        f"arguments, e.g. {REFERENCE_ATTENTION} (default: {default})",
    )
    parser.add_argument("--batch-size", type=int, default=128, help="batch size of every model (default 128)")
    parser.add_argument(
        "--batch-size-for", action="append", default=[], metavar="NAME=B", help="per-model batch size (repeatable)"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2 on CPU, torch's on CUDA)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps; the median is reported (default 5)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every model this many times, interleaved (round by round), and report the medians "
        "(default 1): ratios of models measured side by side are then less at the mercy of a busy moment",
    )
    parser.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="[NAME:]KEY=VALUE",
        help="build() override for every model, or for NAME only (repeatable; ints, floats, true/false parsed)",
    )
    parser.add_argument("--baseline", action="append", default=[], metavar="NAME", help="print ratios to NAME")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per model before it counts as failed")
    parser.add_argument(
        "--compile", action="store_true", help="run every model under torch.compile (compiled in the warm-up)"
    )
    parser.add_argument("--markdown", type=Path, default=None, metavar="PATH", help="also write a Markdown report")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --markdown file")
    return parser


def main(argv: list[str] | None = None, prog: str = "scripts/bench.py", description: str | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--worker" in argv:
        return _worker(argv)
    parser = build_parser(Path(prog).name, description)
    args = parser.parse_args(argv)
    names = args.models or DEFAULT_MODELS
    known = bench_model_names()
    try:
        unknown = [n for n in names if split_variant(n)[0] not in known]
    except ValueError as e:
        parser.error(str(e))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    if len(set(names)) != len(names):
        parser.error("a model is named twice")
    missing_base = [b for b in args.baseline if b not in names]
    if missing_base:
        parser.error(f"--baseline {', '.join(missing_base)}: not among the models being measured")
    if args.batch_size < 1 or args.warmup < 0 or args.repeats < 1 or args.rounds < 1:
        parser.error("--batch-size, --repeats and --rounds must be positive, --warmup non-negative")
    if args.compile and args.warmup < 1:
        parser.error("--compile needs at least one warm-up step (the compilation)")
    try:
        overrides = parse_model_args(args.model_arg, names)
        batch_sizes = parse_batch_sizes(args.batch_size_for, names, args.batch_size)
    except ValueError as e:
        parser.error(str(e))
    if args.markdown is not None and args.markdown.exists() and not args.force:
        parser.error(f"{args.markdown} exists; pass --force to overwrite it")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    threads = args.threads if args.threads is not None else (2 if device == "cpu" else 0)

    print(HEADER, flush=True)
    per_name: dict[str, list[Run]] = {name: [] for name in names}
    for k in range(args.rounds):
        for name in names:
            run = run_worker(
                name,
                batch_sizes[name],
                device,
                threads,
                args.warmup,
                args.repeats,
                overrides[name],
                args.timeout,
                args.compile,
            )
            per_name[name].append(run)
            print((f"# round {k + 1}/{args.rounds}: " if args.rounds > 1 else "") + format_line(run), flush=True)
    runs = [combine_rounds(per_name[name]) for name in names]
    if args.rounds > 1:
        print(f"# medians over {args.rounds} rounds:")
        for run in runs:
            print(format_line(run), flush=True)
    rows = ratio_lines(runs, args.baseline)
    if rows:
        print()
    for what, value, target, verdict in rows:
        print(f"{what}: {value}" + (f" (target {target}) {verdict}" if target else ""))
    used_threads = next((r.result["threads"] for r in runs if r.result), threads)
    notes = [f"# device {device}, torch threads {used_threads}, warm-up {args.warmup}, median of {args.repeats}"]
    if args.rounds > 1:
        notes[0] += f", median over {args.rounds} interleaved rounds"
    if args.compile:
        notes.append("# every model under torch.compile")
    notes.append(f"# train step: forward + cross-entropy + backward + {OPTIMIZER} step on random inputs")
    odd = {n: b for n, b in batch_sizes.items() if b != args.batch_size}
    notes.append(
        f"# batch size {args.batch_size}" + (f"; {', '.join(f'{n}={b}' for n, b in odd.items())}" if odd else "")
    )
    for run in runs:
        if run.result and run.result["ignored_args"]:
            notes.append(f"# {run.name} ignored the model args {', '.join(run.result['ignored_args'])}")
    print("\n".join(notes))

    if args.markdown is not None:
        env = [f"{allocator.ENV}={os.environ[allocator.ENV]}"] if allocator.ENV in os.environ else []
        command = shlex.join([*env, "python", prog, *argv])  # with the allocator setting the workers inherit
        text = markdown_report(
            runs, rows, device, used_threads, command, args.warmup, args.repeats, args.compile, args.rounds
        )
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
        print(f"wrote {args.markdown}")
    return 0 if all(run.result is not None for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main(prog="attentive_gcnn.bench"))
