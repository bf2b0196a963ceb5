#!/usr/bin/env python
"""Collect finished runs into one Markdown and one CSV table per paper table, beside the paper's numbers.

    python scripts/make_tables.py --runs outputs/reproduce
    python scripts/make_tables.py --runs results/runs --out results/tables --readme README.md   # make tables

Every ``summary.json`` under ``--runs`` with status complete and mode train is one run. So is every complete
test-time-augmentation evaluation (mode eval, ``tta`` K >= 2), as a run of the cell ``<experiment>+tta<K>``
(e.g. ``mini/z2cnn+tta4``; see ``attentive_gcnn.results.tta_name``); other evaluations are ignored. Runs are
grouped by (experiment name, protocol); each group gives one row: n seeds, mean ± sample std (ddof 1) of the test
error at the selected epoch and at the last epoch (empty for TTA rows), parameters, mean wall time, the machines
(device, CPU threads, host) and the short git commits of its runs, joined on the experiment name with the paper's
number (``results/paper.csv``). One ``TABLE.md`` and ``TABLE.csv`` per table (the prefix of the name: table1,
table2, table3, mini; ``mini/<model>`` shows the paper's ``table1/<model>`` only as a not-comparable column).
Rows follow paper.csv, then other experiments by name; a TTA row follows the rows of its experiment. The Markdown
ends with the wall time summed over the runs of each protocol (training and TTA apart).

``TABLE_comparison.md`` and ``TABLE_comparison.csv`` compare pairs of rows of one table, per protocol, for the
test error at the selected and at the last epoch: each attentive model against P4CNN and against its
parameter-matched plain P4CNN, Z2CNN against P4CNN (the pairs of ``COMPARISONS``), and each TTA row against its
experiment. Each pair gives the n and mean of both sides, the difference of means (model - baseline, percentage
points), its 95 % Welch confidence interval and a verdict: ``lower`` or ``higher`` when the interval excludes 0,
``no difference within noise`` otherwise, ``n<2`` when a side has a single run (no interval). A table without
any such pair gets no comparison files.

``--readme README.md`` also refreshes the README's copies of the tables: every block between the lines
``<!-- begin: results/tables/X.md -->`` and ``<!-- end: results/tables/X.md -->`` gets the rows (and notes) of the
table file just written; other text is left alone.

The output depends only on the inputs (sorted, no timestamps), and the paths written into it are relative to the
repository when inside it, so rebuilding gives the same bytes. The table files are derived data: each rebuild
replaces them (each file atomically), and only after every input, the README included, was read and checked, so
an error leaves the previous tables and README as they were.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from attentive_gcnn.errors import UserError
from attentive_gcnn.outputs import check_folder
from attentive_gcnn.results import (
    ResultsError,
    Run,
    find_runs,
    group_runs,
    mean_std,
    protocol_rank,
    read_csv,
    split_tta,
    tta_name,
    warn,
    welch_interval,
)
from attentive_gcnn.training.runlog import write_atomic

ROOT = Path(__file__).resolve().parents[1]
TABLE_ORDER = ("table1", "table2", "table3", "mini")
PAPER_COLUMNS = ("table", "experiment", "model", "dataset", "paper_name", "paper_error", "paper_std", "params", "note")
NOT_COMPARABLE = {"mini": "table1"}  # table -> the paper table its rows are shown beside, for orientation only
INHERITED = ("model", "dataset", "paper_name", "epochs")  # what a TTA row takes from its training run if missing
METRICS = {"test_error": "selected epoch", "last_test_error": "last epoch"}  # compared, with their labels
LEVEL = 0.95  # of the Welch confidence intervals

# The pairs each comparison table holds, as (model, baseline, relation), named without the table prefix: every
# attentive model against P4CNN and against the plain P4CNN whose width matches its parameter count, and Z2CNN
# against P4CNN. Each TTA row is compared with its experiment besides (see comparison_pairs).
TABLE1_PAIRS = (
    ("z2cnn", "p4cnn", "vs P4CNN"),
    ("fa_p4cnn", "p4cnn", "vs P4CNN"),
    ("fa_p4cnn", "p4cnn_w11", "parameter-matched"),
    ("romhog_p4cnn", "p4cnn", "vs P4CNN"),
    ("romhog_p4cnn", "p4cnn_w11", "parameter-matched"),
    ("a_ch_p4cnn", "p4cnn", "vs P4CNN"),
    ("a_ch_p4cnn", "p4cnn_w15", "parameter-matched"),
    ("a_sp_p4cnn", "p4cnn", "vs P4CNN"),
    ("a_sp_p4cnn", "p4cnn_w15", "parameter-matched"),
    ("a_p4cnn", "p4cnn", "vs P4CNN"),
    ("a_p4cnn", "p4cnn_w19", "parameter-matched"),
)
COMPARISONS: dict[str, tuple[tuple[str, str, str], ...]] = {"table1": TABLE1_PAIRS, "mini": TABLE1_PAIRS}


@dataclass(frozen=True)
class Table:
    """One output table: its name, the paper table it joins with, and whether that comparison is meaningful."""

    name: str

    @property
    def comparable(self) -> bool:
        return self.name not in NOT_COMPARABLE

    @property
    def paper_prefix(self) -> str:
        return "paper" if self.comparable else "paper_rotmnist_not_comparable"

    def paper_key(self, experiment: str) -> str:
        """The paper.csv experiment a row joins with: itself, or ``table1/<model>`` for ``mini/<model>``."""
        if self.comparable:
            return experiment
        return f"{NOT_COMPARABLE[self.name]}/{experiment.split('/', 1)[1]}"

    def columns(self) -> list[str]:
        p = self.paper_prefix
        diff = ["diff_mean_minus_paper"] if self.comparable else []
        return [
            "experiment", "protocol", "model", "dataset", "paper_name", "n", "seeds", "epochs",
            "test_error_mean", "test_error_std", "last_test_error_mean", "last_test_error_std",
            f"{p}_error", f"{p}_std", *diff, "params", "wall_time_s_mean", "devices", "machine", "commit", "note",
        ]  # fmt: skip


# ----------------------------------------------------------------------------------------------- inputs
def read_paper(path: Path) -> dict[str, dict]:
    """paper.csv keyed by experiment, in file order (each row gains ``order``, its position)."""
    rows = read_csv(path)
    missing = [c for c in PAPER_COLUMNS if rows and c not in rows[0]]
    if missing:
        raise ResultsError(f"{path} lacks the column(s) {', '.join(missing)}")
    paper: dict[str, dict] = {}
    for i, row in enumerate(rows):
        if row["experiment"] in paper:
            raise ResultsError(f"{path} lists {row['experiment']} twice")
        paper[row["experiment"]] = {**row, "order": i}
    return paper


# --------------------------------------------------------------------------------------------- formatting
def num(x: float | None, digits: int = 6) -> str:
    """A number for the CSV: rounded to ``digits`` decimals, trailing zeros dropped; empty for None."""
    if x is None:
        return ""
    text = f"{x:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def pm(mean: float | None, std: float | None, digits: int = 3) -> str:
    """``mean ± std`` for Markdown (``mean`` alone without a std; empty without a mean)."""
    if mean is None:
        return ""
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def signed(x: float, digits: int = 3) -> str:
    """``x`` with its sign for Markdown, ``+0.000`` for anything that rounds to zero (no ``-0.000``)."""
    text = f"{x:+.{digits}f}"
    return f"{0:+.{digits}f}" if float(text) == 0 else text


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def as_float(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


def cell(text: str) -> str:
    """Text for a Markdown table cell (``|`` escaped)."""
    return text.replace("|", "\\|")


def device_name(summary: dict) -> str:
    return str((summary.get("environment") or {}).get("device_name") or "unknown")


def machine(summary: dict) -> str:
    """Where a run ran, concisely: ``cpu (x86_64), 1 thread, host vm``, ``NVIDIA H100 80GB HBM3, 16 threads``."""
    env = summary.get("environment") or {}
    name = device_name(summary)
    if str(env.get("device", "")).startswith("cpu") and name.lower() != "cpu":
        name = f"cpu ({name})"
    threads = env.get("cpu_threads")
    parts = [name] + ([f"{threads} thread{'' if threads == 1 else 's'}"] if threads else [])
    return ", ".join(parts + ([f"host {env['host']}"] if env.get("host") else []))


def commit(summary: dict) -> str:
    """The short git SHA a run was made at (``+dirty`` kept), ``unknown`` without one."""
    sha = str(summary.get("git_sha") or "")
    if not sha:
        return "unknown"
    return sha.removesuffix("+dirty")[:7] + ("+dirty" if sha.endswith("+dirty") else "")


# ------------------------------------------------------------------------------------------------- rows
def summarize(table: Table, name: str, protocol: str, runs: list[Run], paper: dict[str, dict]) -> dict:
    """One table row (typed values) for the runs of one (experiment, protocol).

    A TTA row (``<experiment>+tta<K>``) has no paper number and no last-epoch error; it is ordered with its
    experiment, and its summaries are expected to carry what :data:`INHERITED` lists (see :func:`build_rows`).
    """
    s = [r.summary for r in runs]
    base, k = split_tta(name)
    ref = paper.get(table.paper_key(name), {})
    base_ref = paper.get(table.paper_key(base), {})
    err_mean, err_std = mean_std([x["test_error"] for x in s])
    lasts = [x.get("last_test_error") for x in s]
    last_mean, last_std = mean_std(lasts) if None not in lasts else (None, None)
    epochs = sorted({x.get("epochs") for x in s}, key=lambda e: (e is None, e))
    if len(epochs) > 1:
        warn(f"{name} ({protocol}): runs differ in the number of epochs: {', '.join(map(str, epochs))}")
    walls = [x["wall_time_s"] for x in s if x.get("wall_time_s") is not None]
    paper_error, paper_std = as_float(ref.get("paper_error")), as_float(ref.get("paper_std"))
    paper_name = base_ref.get("paper_name") or s[0].get("paper_name") or ""
    return {
        "experiment": name,
        "base": base,
        "tta": k,
        "protocol": protocol,
        "model": s[0].get("model", ""),
        "dataset": s[0].get("dataset", ""),
        "paper_name": paper_name if k is None else f"{paper_name} + TTA{k}",
        "n": len(runs),
        "seeds": ",".join(str(r.seed) for r in runs),
        "epochs": "/".join(map(str, epochs)),
        "test_error_mean": err_mean,
        "test_error_std": err_std,
        "last_test_error_mean": last_mean,
        "last_test_error_std": last_std,
        "paper_error": paper_error,
        "paper_std": paper_std,
        "diff": err_mean - paper_error if paper_error is not None and table.comparable else None,
        "params": mean_std([x["params"] for x in s])[0] if all("params" in x for x in s) else None,
        "wall_time_s_mean": mean_std(walls)[0] if walls else None,
        "devices": "; ".join(sorted({device_name(x) for x in s})),
        "machine": "; ".join(sorted({machine(x) for x in s})),
        "commit": ", ".join(sorted({commit(x) for x in s})),
        "note": ref.get("note", "") if table.comparable else "",
        "order": base_ref.get("order", len(paper)),
    }


def with_training_identity(groups: dict[tuple[str, str], list[Run]]) -> dict[tuple[str, str], list[Run]]:
    """The groups, each TTA run's summary completed by what :data:`INHERITED` lists from its training run.

    The training run is the one of the same experiment, protocol and seed, when found; the keys the evaluation's
    own summary has are kept.
    """
    trained = {run.key: run.summary for runs in groups.values() for run in runs if run.tta is None}

    def completed(run: Run) -> Run:
        if run.tta is None:
            return run
        source = trained.get((run.base, run.protocol, run.seed), {})
        return replace(run, summary={**{k: source[k] for k in INHERITED if k in source}, **run.summary})

    return {key: [completed(run) for run in runs] for key, runs in groups.items()}


def build_rows(table: Table, groups: dict[tuple[str, str], list[Run]], paper: dict[str, dict]) -> list[dict]:
    """The rows of one table in paper.csv order, then other experiments by name; protocols clean, original.

    The TTA rows of an experiment follow its rows, by increasing K.
    """
    rows = [summarize(table, name, protocol, runs, paper) for (name, protocol), runs in groups.items()]
    return sorted(rows, key=lambda r: (r["order"], r["base"], r["tta"] or 0, protocol_rank(r["protocol"])))


def csv_text(table: Table, rows: list[dict]) -> str:
    """The CSV: the columns of :meth:`Table.columns`, numbers rounded by :func:`num`."""
    p = table.paper_prefix
    numbers = ("test_error_mean", "test_error_std", "last_test_error_mean", "last_test_error_std", "params")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=table.columns(), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(
            {**r, **{k: num(r[k]) for k in numbers}}
            | {f"{p}_error": num(r["paper_error"]), f"{p}_std": num(r["paper_std"])}
            | {"diff_mean_minus_paper": num(r["diff"]), "wall_time_s_mean": num(r["wall_time_s_mean"], 1)}
        )
    return buf.getvalue()


def markdown_text(table: Table, rows: list[dict], runs: list[Run], context: dict, missing: list[str]) -> str:
    """The Markdown table with a header naming its inputs and the command that regenerates it."""
    devices = sorted({device_name(r.summary) for r in runs})
    shas = sorted({str(r.summary.get("git_sha") or "unknown") for r in runs})
    paper_head = "paper % (rot-MNIST, not comparable)" if not table.comparable else "paper %"
    head = ["experiment", "paper name", "protocol", "n", "epochs", "test error %", "last-epoch test error %"]
    head += [paper_head] + (["mean − paper"] if table.comparable else []) + ["params", "wall time (mean)"]
    head += ["machine", "commit"]
    lines = [
        f"# {table.name}: results of this project",
        "",
        f"Built from `{context['runs']}`: {len(runs)} run(s) in this table, {context['total']} in all.  ",
        f"Devices: {', '.join(f'`{d}`' for d in devices)}. Git SHAs: {', '.join(f'`{s}`' for s in shas)}.  ",
        f"Regenerate with `{context['command']}`.",
        "",
        "Test error (%) at the epoch selected on the protocol's selection split (clean: valid; original: as the",
        "authors' code, test for rot-MNIST and CIFAR-10, valid for PCam), and at the last epoch; mean ± sample std",
        f"(ddof 1) over n seeds. Paper numbers from `{context['paper']}`.",
    ]
    if any(r["tta"] for r in rows):
        lines += [
            "A `+tta<K>` row evaluates the checkpoints of its experiment's runs (same seeds) with the logits averaged",
            "over K rotations of each test image (K = 4: the multiples of 90°; 8, 16: evenly spaced angles, the",
            "others interpolated); it has no last-epoch error and no paper number.",
        ]
    if not table.comparable:
        lines.append("These runs use other data than the paper; its rot-MNIST numbers are shown for orientation only.")
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 5) + "---|" * 2]
    for r in rows:
        diff = [signed(r["diff"]) if r["diff"] is not None else ""] if table.comparable else []
        cells = [f"`{r['experiment']}`", r["paper_name"], r["protocol"], str(r["n"]), r["epochs"]]
        cells += [
            pm(r["test_error_mean"], r["test_error_std"]),
            pm(r["last_test_error_mean"], r["last_test_error_std"]),
        ]
        cells += [pm(r["paper_error"], r["paper_std"], 2 if r["paper_std"] is None else 3), *diff]
        cells += [f"{r['params']:,.0f}" if r["params"] is not None else "", duration(r["wall_time_s_mean"])]
        cells += [r["machine"], r["commit"]]
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    notes = {r["experiment"]: r["note"] for r in rows if r["note"]}
    if notes:
        lines += ["", f"Notes (from `{context['paper']}`):", ""] + [f"- `{e}`: {n}" for e, n in notes.items()]
    if missing:
        lines += ["", "No runs here for: " + ", ".join(f"`{e}`" for e in missing) + "."]
    lines += ["", f"Wall time summed over the runs: {compute_totals(runs)}."]
    return "\n".join(lines) + "\n"


def compute_totals(runs: list[Run]) -> str:
    """Per protocol, the summed ``wall_time_s`` of the training runs and of the TTA evaluations (what it took to
    make the table, one run after another)."""
    parts = []
    for protocol in sorted({r.protocol for r in runs}):
        mine = [r for r in runs if r.protocol == protocol]
        part = []
        for what, training in (("training run", True), ("TTA evaluation", False)):
            chosen = [r for r in mine if (r.tta is None) == training]
            if chosen:
                total = sum(r.summary.get("wall_time_s") or 0.0 for r in chosen)
                part.append(f"{duration(total)} for {len(chosen)} {what}{'s' if len(chosen) > 1 else ''}")
        parts.append(f"`{protocol}` " + " and ".join(part))
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------- comparisons
def comparison_pairs(table: str, groups: dict[tuple[str, str], list[Run]]) -> list[tuple[str, str, str]]:
    """(model, baseline, relation) experiment pairs of a table: :data:`COMPARISONS`, then TTA rows vs their base."""
    pairs = [(f"{table}/{m}", f"{table}/{b}", relation) for m, b, relation in COMPARISONS.get(table, ())]
    tta = sorted({(run.base, run.tta) for runs in groups.values() for run in runs if run.tta is not None})
    return pairs + [(tta_name(base, k), base, f"TTA{k} vs none") for base, k in tta]


def compare(table: str, groups: dict[tuple[str, str], list[Run]]) -> list[dict]:
    """The comparison rows: per metric, protocol and pair with runs on both sides, the Welch interval.

    A side lacking the metric in any of its runs (a TTA row's last-epoch error) leaves the pair out for that metric.
    """
    protocols = sorted({protocol for _, protocol in groups}, key=protocol_rank)
    rows = []
    for metric in METRICS:
        for protocol in protocols:
            for model, baseline, relation in comparison_pairs(table, groups):
                a = [r.summary.get(metric) for r in groups.get((model, protocol), [])]
                b = [r.summary.get(metric) for r in groups.get((baseline, protocol), [])]
                if not a or not b or None in a or None in b:
                    continue
                w = welch_interval(a, b, LEVEL)
                (model_mean, model_std), (baseline_mean, baseline_std) = mean_std(a), mean_std(b)
                rows.append(
                    {
                        "metric": metric,
                        "protocol": protocol,
                        "model": model,
                        "baseline": baseline,
                        "relation": relation,
                        "n_model": len(a),
                        "n_baseline": len(b),
                        "model_mean": model_mean,
                        "model_std": model_std,
                        "baseline_mean": baseline_mean,
                        "baseline_std": baseline_std,
                        "diff": w.diff,
                        "low": w.low,
                        "high": w.high,
                        "df": w.df,
                        "verdict": w.verdict,
                    }
                )
    return rows


COMPARISON_COLUMNS = (
    "metric", "protocol", "model", "baseline", "relation", "n_model", "n_baseline", "model_mean", "model_std",
    "baseline_mean", "baseline_std", "diff_model_minus_baseline", "ci95_low", "ci95_high", "welch_df", "verdict",
)  # fmt: skip


def comparison_csv(rows: list[dict]) -> str:
    """The comparison CSV: :data:`COMPARISON_COLUMNS`, errors in percent, numbers rounded by :func:`num`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COMPARISON_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        numbers = {k: num(r[k]) for k in ("model_mean", "model_std", "baseline_mean", "baseline_std")}
        extra = {"diff_model_minus_baseline": num(r["diff"]), "ci95_low": num(r["low"]), "ci95_high": num(r["high"])}
        writer.writerow({**r, **numbers, **extra, "welch_df": num(r["df"], 3)})
    return buf.getvalue()


def comparison_markdown(table: str, rows: list[dict], context: dict) -> str:
    """The comparison in Markdown: one table per metric, rows by protocol, then in the order of the pairs."""
    lines = [
        f"# {table}: differences between models",
        "",
        f"Built from `{context['runs']}`. Regenerate with `{context['command']}`.",
        "",
        "Test error (%): mean over the seeds of each side, the difference of means (model − baseline, percentage",
        f"points) and its {LEVEL:.0%} Welch confidence interval (unequal variances, Welch–Satterthwaite degrees of",
        "freedom). Verdict: `lower` or `higher` (the model's error) when the interval excludes 0, `no difference",
        "within noise` when it contains 0, `n<2` when a side has a single run (no interval). A TTA row is compared",
        "with its experiment's runs as an independent sample, although they share checkpoints.",
    ]
    head = ["model", "baseline", "relation", "protocol", "n", "model %", "baseline %", "difference (pp)"]
    head += [f"{LEVEL:.0%} CI (pp)", "Welch df", "verdict"]
    for metric, label in METRICS.items():
        chosen = [r for r in rows if r["metric"] == metric]
        if not chosen:
            continue
        lines += ["", f"## Test error at the {label}", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * 4 + "---:|" * (len(head) - 5) + "---|"]
        for r in chosen:
            ci = f"[{signed(r['low'])}, {signed(r['high'])}]" if r["low"] is not None else ""
            cells = [f"`{r['model']}`", f"`{r['baseline']}`", r["relation"], r["protocol"]]
            cells += [f"{r['n_model']} / {r['n_baseline']}", pm(r["model_mean"], r["model_std"])]
            cells += [pm(r["baseline_mean"], r["baseline_std"]), signed(r["diff"]), ci]
            cells += [f"{r['df']:.1f}" if r["df"] is not None else "", r["verdict"]]
            lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- main
def tables_of(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs per table, tables in the paper's order, then others by name."""
    tables: dict[str, list[Run]] = {}
    for run in runs:
        tables.setdefault(run.table, []).append(run)
    rank = {t: i for i, t in enumerate(TABLE_ORDER)}
    return {t: tables[t] for t in sorted(tables, key=lambda t: (rank.get(t, len(rank)), t))}


def missing_rows(table: Table, paper: dict[str, dict], rows: list[dict]) -> list[str]:
    """The paper's experiments of this table that have no runs (for ``mini``: no ``mini/<model>`` runs)."""
    have = {table.paper_key(r["experiment"]) for r in rows}
    wanted = [e for e, row in paper.items() if row["table"] == (NOT_COMPARABLE.get(table.name, table.name))]
    if table.comparable:
        return [e for e in wanted if e not in have]
    return [f"{table.name}/{e.split('/', 1)[1]}" for e in wanted if e not in have]


def render_tables(runs: list[Run], paper: dict[str, dict], out: Path, context: dict) -> dict[Path, str]:
    """The text of every table file, keyed by its path under ``out`` (nothing is written)."""
    files: dict[Path, str] = {}
    for name, table_runs in tables_of(runs).items():
        table = Table(name)
        groups = with_training_identity(group_runs(table_runs))
        rows = build_rows(table, groups, paper)
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        md = markdown_text(table, rows, table_runs, context, missing_rows(table, paper, rows))
        files[out / f"{stem}.md"] = md
        files[out / f"{stem}.csv"] = csv_text(table, rows)
        comparison = compare(name, groups)
        if comparison:
            files[out / f"{stem}_comparison.md"] = comparison_markdown(name, comparison, context)
            files[out / f"{stem}_comparison.csv"] = comparison_csv(comparison)
    return files


BLOCK = re.compile(r"(<!-- begin: (?P<file>\S+) -->\n)(?P<body>.*?)(<!-- end: (?P=file) -->)", re.DOTALL)


def table_body(text: str, section: str = "") -> str:
    """The part of a table's Markdown shown in the README: from the table's first row to the end, or with
    ``section`` (a heading's anchor, e.g. ``test-error-at-the-selected-epoch``) that section's rows only."""
    lines = text.splitlines(keepends=True)
    if section:
        start = next((i + 1 for i, line in enumerate(lines) if line.startswith("#") and anchor(line) == section), None)
        if start is None:
            return ""
        end = next((i for i in range(start, len(lines)) if lines[i].startswith("#")), len(lines))
        lines = lines[start:end]
        while lines and not lines[-1].strip():
            lines.pop()
    first = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    return "".join(lines[first:])


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading line: lower case, spaces to hyphens, punctuation dropped."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def refreshed_readme(readme: Path, files: dict[Path, str]) -> tuple[str, str]:
    """The README's text and the same with its blocks ``<!-- begin: results/tables/X.md -->`` ...
    ``<!-- end: ... -->`` (or ``X.md#section``: that section only) refilled from the tables ``files`` (other blocks
    are left alone)."""
    texts = {shown(path): text for path, text in files.items() if path.suffix == ".md"}
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"--readme {readme}: cannot read it ({e})") from None

    def fill(match: re.Match) -> str:
        file, _, section = match["file"].partition("#")
        if file not in texts:
            return match.group(0)
        body = table_body(texts[file], section)
        if not body:
            raise ResultsError(f"{readme}: {file} has no section #{section}")
        return match.group(1) + body + match.group(4)

    return text, BLOCK.sub(fill, text)


def shown(path: Path) -> str:
    """A path as written into the tables: relative to the repository when inside it (no machine-specific prefix)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, type=Path, help="directory searched recursively for summary.json")
    parser.add_argument("--out", type=Path, default=ROOT / "results/tables", help="output directory")
    parser.add_argument("--paper", type=Path, default=ROOT / "results/paper.csv", help="the paper's numbers")
    parser.add_argument(
        "--readme", type=Path, help="also refresh this file's '<!-- begin: results/tables/X.md -->' blocks"
    )
    return parser.parse_args(argv)


def command(args: argparse.Namespace) -> str:
    """The command that regenerates the tables, run from the repository root, with the paths as :func:`shown`."""
    words = ["python", "scripts/make_tables.py", "--runs", shown(args.runs), "--out", shown(args.out)]
    if args.paper.resolve() != (ROOT / "results/paper.csv").resolve():
        words += ["--paper", shown(args.paper)]
    return shlex.join(words)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runs = find_runs(args.runs, tta=True)
        if not runs:
            raise ResultsError(
                f"no complete training runs (summary.json with status complete, mode train) under {args.runs}"
            )
        paper = read_paper(args.paper)
        context = {"runs": shown(args.runs), "paper": shown(args.paper), "total": len(runs), "command": command(args)}
        check_folder(args.out, f"--out {args.out}")
        files = render_tables(runs, paper, args.out, context)
        old, new = refreshed_readme(args.readme, files) if args.readme else ("", "")  # checked before any write
        args.out.mkdir(parents=True, exist_ok=True)
        for path, text in files.items():
            write_atomic(path, text)
            print(path)
        if new != old:
            write_atomic(args.readme, new)
            print(f"{args.readme}: tables refreshed")
    except (ResultsError, UserError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
