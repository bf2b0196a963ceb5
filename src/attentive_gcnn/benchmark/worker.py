"""One model measured in a fresh process: the worker's command line (``python -m attentive_gcnn.benchmark.worker
--worker NAME ...``), the parent's side (:func:`run_worker`), and the rounds of one model combined.

The worker prints one line, ``BENCH_RESULT {json}`` or ``BENCH_ERROR {json}``; whatever else happens to it (a
crash, a kill, a timeout) the parent turns into the reason the model failed, and goes on with the next one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass, field

import torch

from attentive_gcnn.accel import allocator
from attentive_gcnn.benchmark.selection import split_variant
from attentive_gcnn.benchmark.timing import measure
from attentive_gcnn.config_dir import REPO_DIR

WORKER = "attentive_gcnn.benchmark.worker"  # run as python -m WORKER
RESULT_TAG = "BENCH_RESULT "
ERROR_TAG = "BENCH_ERROR "


def main(argv: list[str] | None = None) -> int:
    """``--worker NAME``: measure one model and print ``BENCH_RESULT {json}`` (or ``BENCH_ERROR {json}``)."""
    parser = argparse.ArgumentParser(prog=WORKER)
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
    """Measure NAME (a model or a ``NAME@KEY=VALUE`` variant) in a fresh worker process (:func:`main`);
    ``overrides`` add to (and win over) the variant's arguments."""
    model, variant = split_variant(name)
    overrides = variant | overrides
    cmd = [sys.executable, "-m", WORKER, "--worker", model, "--batch-size", str(batch_size)]
    cmd += ["--device", device, "--threads", str(threads), "--warmup", str(warmup), "--repeats", str(repeats)]
    cmd += ["--overrides", json.dumps(overrides)] + (["--compile"] if compile else [])
    run = Run(name, batch_size, overrides=overrides)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO_DIR)
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


if __name__ == "__main__":
    sys.exit(main())
