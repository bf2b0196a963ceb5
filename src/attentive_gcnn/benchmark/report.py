"""What the benchmark prints and writes: one line per model, and the Markdown report (machine, commit, command,
how it was measured, the table, the ratios and targets)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from attentive_gcnn.benchmark.timing import OPTIMIZER
from attentive_gcnn.benchmark.worker import Run
from attentive_gcnn.training.provenance import git_revision

HEADER = "name train_ms eval_ms peak_mb params"


def format_line(run: Run) -> str:
    """``NAME train_ms eval_ms peak_mb params``, or ``NAME failed: reason``."""
    if run.result is None:
        return f"{run.name} failed: {run.reason}"
    r = run.result
    return f"{run.name} {r['train_ms']:.1f} {r['eval_ms']:.1f} {r['peak_mb']:.1f} {r['params']}"


def git_line() -> str:
    """The commit of the checkout for the report: ``SHA``, ``SHA (+dirty)`` or ``unknown (not a git checkout)``."""
    revision = git_revision()
    if revision is None:
        return "unknown (not a git checkout)"
    sha, dirty = revision
    return sha + (" (+dirty)" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_description(device: str, threads: int, command: str, kernels: bool = True) -> list[str]:
    """Markdown bullet lines: the machine, the software and the exact command (on a CPU with ``kernels``, whether
    the native kernels are built: loading them builds them if needed)."""
    lines = [
        f"- command: `{command}`",
        f"- git: `{git_line()}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- CPU: {_cpu_model()}, {os.cpu_count()} cores; torch threads: {threads}",
        f"- python {platform.python_version()}, torch {torch.__version__}, {platform.platform()}",
    ]
    if device == "cuda":
        lines.append(f"- device: cuda, {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})")
    elif device == "meta":
        lines.append("- device: meta (shapes only: nothing is computed, so the machine does not matter)")
    elif not kernels:
        lines.append(f"- device: {device}")
    else:
        from attentive_gcnn.accel.native import SOURCES, cpu_kernels

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
        f"- memory allocator (as in training, `attentive_gcnn.accel.allocator`): {_allocators(runs)}",
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
