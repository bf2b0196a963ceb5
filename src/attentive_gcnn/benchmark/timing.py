"""The measurement of one model in this process: median train-step and eval-forward times, peak memory, parameters.

Meaningful for the CPU peak memory only in a fresh process, which is why the command measures every model in a
worker (:mod:`attentive_gcnn.benchmark.worker`).
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from attentive_gcnn.accel import allocator
from attentive_gcnn.benchmark.selection import build_bench_model

OPTIMIZER = "Adam(lr=1e-3)"


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
