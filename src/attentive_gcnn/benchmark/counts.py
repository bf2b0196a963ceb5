"""``scripts/bench.py --count``: kernel launches, host syncs and peak memory of a training step, per model and batch
size, counted on the ``meta`` device (:mod:`attentive_gcnn.benchmark.launches`), with the targets they are held to.
Counts do not depend on the machine's noise, so they run in this process, one model after the other."""

from __future__ import annotations

from dataclasses import dataclass

from attentive_gcnn.benchmark.launches import count_training_step
from attentive_gcnn.benchmark.report import machine_description
from attentive_gcnn.benchmark.selection import build_bench_model, split_variant

# the budget a 24 GB GPU would give the batched attention (half of its free memory), for the memory target
ALLCNNC_24GB = "a_p4_allcnnc@attention_memory_gib=11"
# (numerator, denominator, batch size, target): launch ratios "<= target"
LAUNCH_TARGETS = [("a_p4cnn", "p4cnn", 128, 6.0), ("a_p4_allcnnc", "p4_allcnnc", 128, 20.0)]
# (model, batch, other batch, tolerance): launches independent of the batch size
BATCH_INDEPENDENT = [("a_p4cnn", 128, 512, 0.10)]
# (model, batch, GiB): peak memory of the step on a GPU, "<= target"
MEMORY_TARGETS = [(ALLCNNC_24GB, 128, 22.0)]
DEFAULT_COUNT_MODELS = [
    "p4cnn",
    "fa_p4cnn",
    "a_p4cnn",
    "a_p4cnn@attention_impl=lean",  # the CPU form, for comparison
    "p4_allcnnc",
    "fa_p4_allcnnc",
    "a_p4_allcnnc",
    ALLCNNC_24GB,
]
DEFAULT_COUNT_BATCHES = [128, 512]


@dataclass
class Count:
    name: str
    batch_size: int
    launches: int | None
    syncs: int
    sync_ops: dict
    peak_gib: float | None
    error: str | None


def count(name: str, batch_size: int, overrides: dict) -> Count:
    """The counts of one training step of model ``name`` (a config or ``NAME@KEY=VALUE`` variant)."""
    base, variant = split_variant(name)
    model, _ = build_bench_model(base, **(variant | overrides))
    r = count_training_step(model, batch_size)
    peak = None if r["peak_bytes"] is None else r["peak_bytes"] / 2**30
    return Count(name, batch_size, r["launches"], r["syncs"], r["sync_ops"], peak, r["error"])


def format_count(c: Count) -> str:
    if c.error:
        return f"{c.name} batch {c.batch_size} failed on meta: {c.error}"
    return f"{c.name} {c.batch_size} {c.launches} {c.syncs} {c.peak_gib:.2f}"


def target_rows(counts: list[Count]) -> list[tuple[str, str, str, str]]:
    """(what, value, target, verdict) for every target whose models were counted."""
    at = {(c.name, c.batch_size): c for c in counts if c.error is None}
    rows = []
    for num, den, batch, target in LAUNCH_TARGETS:
        if (num, batch) in at and (den, batch) in at:
            value = at[num, batch].launches / at[den, batch].launches
            verdict = "PASS" if value <= target else "FAIL"
            rows.append((f"{num} / {den} launches, batch {batch}", f"{value:.2f}", f"<= {target:g}", verdict))
    for name, batch, other, tol in BATCH_INDEPENDENT:
        if (name, batch) in at and (name, other) in at:
            value = at[name, other].launches / at[name, batch].launches
            verdict = "PASS" if abs(value - 1) <= tol else "FAIL"
            rows.append((f"{name} launches, batch {other} / {batch}", f"{value:.3f}", f"1 ± {tol:g}", verdict))
    for name, batch, gib in MEMORY_TARGETS:
        if (name, batch) in at:
            value = at[name, batch].peak_gib
            verdict = "PASS" if value <= gib else "FAIL"
            rows.append((f"{name} peak memory, batch {batch} (GiB)", f"{value:.2f}", f"<= {gib:g}", verdict))
    syncing = [f"{c.name}@{c.batch_size}" for c in counts if c.syncs]
    rows.append(
        ("models with a host sync in a step", ", ".join(syncing) or "none", "none", "FAIL" if syncing else "PASS")
    )
    return rows


def markdown(counts: list[Count], rows, command: str) -> str:
    out = ["# Launches, syncs and peak memory of a training step (meta device)", ""]
    out += machine_description("meta", 0, command)
    out += [
        "- training step: forward, cross-entropy, backward, Adam(lr=1e-3, foreach) step; the second step is counted "
        "(the first creates the optimizer state)",
        "- launches: aten ops below autograd that compute on the device (views, allocations and detaches excluded); "
        "syncs: ops that make the host wait for a CUDA device (data-dependent shapes, reading values, host-to-device "
        "copies); peak memory: the most bytes of device tensors alive at once, model and optimizer state included "
        "(`attentive_gcnn.benchmark.launches`)",
        "- the batched full attention plans its chunks with the budget of an 80 GB GPU (40 GiB), except where a "
        "variant sets `attention_memory_gib`",
        "",
        "| model | batch | launches | syncs | peak memory (GiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in counts:
        if c.error:
            out.append(f"| `{c.name}` | {c.batch_size} | failed on meta: {c.error} | | |")
        else:
            out.append(f"| `{c.name}` | {c.batch_size} | {c.launches:,} | {c.syncs} | {c.peak_gib:.2f} |")
    out += ["", "## Targets", "", "| quantity | value | target | verdict |", "|---|---:|---|---|"]
    out += [f"| {what} | {value} | {target} | {verdict} |" for what, value, target, verdict in rows]
    return "\n".join(out) + "\n"
