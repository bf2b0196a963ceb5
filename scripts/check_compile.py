#!/usr/bin/env python
"""Trace every model (or the named ones) with ``torch._dynamo.explain`` in training mode and report its graphs and
graph breaks; exits 1 if any model breaks its graph (docs/performance.md#the-gpu-path).

    python scripts/check_compile.py                       # all 24 models, batch 2, on the CPU (about 2 minutes)
    python scripts/check_compile.py a_p4cnn fa_p4cnn --markdown results/compile_graphs.md

Under ``torch.compile`` the models run their GPU path (``attention_impl=auto`` picks the batched full attention
and the op-by-op alpha-F attention), so what is traced here is what a GPU compiles. CIFAR-10 models are traced at
16 x 16 (their layers are the same at that size).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from attentive_gcnn.benchmark.report import machine_description
from attentive_gcnn.models import build, model_names


def explain(name: str, batch_size: int = 2) -> tuple[int, int, list[str], float]:
    """(graphs, graph breaks, break reasons, seconds) of model ``name`` traced in training mode."""
    torch._dynamo.reset()
    start = time.perf_counter()
    model = build(name).train()
    channels, side, _ = model.input_shape
    side = 16 if side == 32 else side
    x = torch.randn(batch_size, channels, side, side)
    result = torch._dynamo.explain(model)(x)
    reasons = [str(b.reason).splitlines()[0] for b in result.break_reasons]
    return result.graph_count, result.graph_break_count, reasons, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="model config names (default: all)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write a Markdown report here")
    args = parser.parse_args(argv)
    names = args.models or model_names()
    unknown = sorted(set(names) - set(model_names()))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}")
    rows = []
    for name in names:
        graphs, breaks, reasons, seconds = explain(name)
        rows.append((name, graphs, breaks, reasons))
        print(f"{name} graphs {graphs} breaks {breaks} ({seconds:.1f} s)" + "".join(f"\n  {r}" for r in reasons))
    broken = [name for name, _, breaks, _ in rows if breaks]
    print(f"models with graph breaks: {', '.join(broken) or 'none'}")
    if args.markdown is not None:
        command = " ".join(["python", "scripts/check_compile.py", *(argv if argv is not None else sys.argv[1:])])
        lines = ["# Graphs and graph breaks under torch.compile (torch._dynamo.explain, training mode)", ""]
        lines += machine_description("cpu", torch.get_num_threads(), command, kernels=False)
        lines += ["", "| model | graphs | graph breaks | reasons |", "|---|---:|---:|---|"]
        lines += [f"| `{n}` | {g} | {b} | {'; '.join(r)} |" for n, g, b, r in rows]
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(lines) + "\n")
        print(f"wrote {args.markdown}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
