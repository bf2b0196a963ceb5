"""What the implementation is held to (docs/performance.md#targets): ratios of two models' costs and absolute
memory bounds, each with a target that the measured value must not exceed, and the rows that say PASS or FAIL."""

from __future__ import annotations

from attentive_gcnn.benchmark.selection import PLAIN
from attentive_gcnn.benchmark.worker import Run

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
