"""The options of ``scripts/bench.py`` (its docstring is the help), and the run of a benchmark: every model in a
fresh worker, round by round, then the lines, the ratios and targets, and optionally the Markdown report."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import torch

from attentive_gcnn.accel import allocator
from attentive_gcnn.benchmark import counts, worker
from attentive_gcnn.benchmark.report import HEADER, format_line, markdown_report
from attentive_gcnn.benchmark.selection import (
    PLAIN,
    bench_model_names,
    parse_batch_sizes,
    parse_model_args,
    split_variant,
)
from attentive_gcnn.benchmark.targets import DEFAULT_MODELS, REFERENCE_ATTENTION, ratio_lines
from attentive_gcnn.benchmark.timing import OPTIMIZER
from attentive_gcnn.benchmark.worker import Run, combine_rounds, run_worker


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
    parser.add_argument(
        "--count",
        nargs="*",
        type=int,
        default=None,
        metavar="B",
        help="instead of timing: count kernel launches, host syncs and peak memory of a training step on the meta "
        f"device at these batch sizes (default {' '.join(map(str, counts.DEFAULT_COUNT_BATCHES))}; default models "
        f"{' '.join(counts.DEFAULT_COUNT_MODELS)})",
    )
    parser.add_argument("--markdown", type=Path, default=None, metavar="PATH", help="also write a Markdown report")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --markdown file")
    return parser


def main(argv: list[str] | None = None, prog: str = "scripts/bench.py", description: str | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--worker" in argv:
        return worker.main(argv)
    parser = build_parser(Path(prog).name, description)
    args = parser.parse_args(argv)
    names = args.models or (counts.DEFAULT_COUNT_MODELS if args.count is not None else DEFAULT_MODELS)
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
    if args.count is not None:
        if any(b < 1 for b in args.count):
            parser.error("--count: batch sizes must be positive")
        return _count(names, args.count or counts.DEFAULT_COUNT_BATCHES, overrides, args.markdown, prog, argv)
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


def _count(names, batches, overrides, markdown, prog, argv) -> int:
    """``--count``: every model at every batch size, on the meta device; exits 1 if a target fails."""
    print("name batch launches syncs peak_gib", flush=True)
    done = []
    for name in names:
        for batch in batches:
            done.append(counts.count(name, batch, overrides[name]))
            print(counts.format_count(done[-1]), flush=True)
    rows = counts.target_rows(done)
    print()
    for what, value, target, verdict in rows:
        print(f"{what}: {value} (target {target}) {verdict}")
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(counts.markdown(done, rows, shlex.join(["python", prog, *argv])))
        print(f"wrote {markdown}")
    return 0 if all(verdict == "PASS" for *_, verdict in rows) else 1
