#!/usr/bin/env python
"""Collect finished runs into one Markdown and one CSV table per paper table, beside the paper's numbers.

    python scripts/make_tables.py --runs outputs/reproduce
    python scripts/make_tables.py --runs outputs/reproduce --out results/tables --paper results/paper.csv

Every ``summary.json`` under ``--runs`` with status complete and mode train is one run. Runs are grouped by
(experiment name, protocol); each group gives one row: n seeds, mean ± sample std (ddof 1) of the test error at
the selected epoch and at the last epoch, parameters, mean wall time, joined on the experiment name with the
paper's number (``results/paper.csv``). One ``TABLE.md`` and ``TABLE.csv`` per table (the prefix of the name:
table1, table2, table3, mini; ``mini/<model>`` shows the paper's ``table1/<model>`` only as a not-comparable
column). Rows follow paper.csv, then other experiments by name. The output depends only on the inputs.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from attentive_gcnn.results import (
    ResultsError,
    Run,
    find_runs,
    group_runs,
    mean_std,
    protocol_rank,
    read_csv,
    warn,
)

ROOT = Path(__file__).resolve().parents[1]
TABLE_ORDER = ("table1", "table2", "table3", "mini")
PAPER_COLUMNS = ("table", "experiment", "model", "dataset", "paper_name", "paper_error", "paper_std", "params", "note")
NOT_COMPARABLE = {"mini": "table1"}  # table -> the paper table its rows are shown beside, for orientation only


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
            f"{p}_error", f"{p}_std", *diff, "params", "wall_time_s_mean", "devices", "note",
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


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def as_float(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


# ------------------------------------------------------------------------------------------------- rows
def summarize(table: Table, name: str, protocol: str, runs: list[Run], paper: dict[str, dict]) -> dict:
    """One table row (typed values) for the runs of one (experiment, protocol)."""
    s = [r.summary for r in runs]
    ref = paper.get(table.paper_key(name), {})
    err_mean, err_std = mean_std([x["test_error"] for x in s])
    last_mean, last_std = mean_std([x["last_test_error"] for x in s])
    epochs = sorted({x.get("epochs") for x in s}, key=lambda e: (e is None, e))
    if len(epochs) > 1:
        warn(f"{name} ({protocol}): runs differ in the number of epochs: {', '.join(map(str, epochs))}")
    walls = [x["wall_time_s"] for x in s if x.get("wall_time_s") is not None]
    paper_error, paper_std = as_float(ref.get("paper_error")), as_float(ref.get("paper_std"))
    return {
        "experiment": name,
        "protocol": protocol,
        "model": s[0].get("model", ""),
        "dataset": s[0].get("dataset", ""),
        "paper_name": ref.get("paper_name") or s[0].get("paper_name") or "",
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
        "note": ref.get("note", "") if table.comparable else "",
        "order": ref.get("order", len(paper)),
    }


def device_name(summary: dict) -> str:
    return str((summary.get("environment") or {}).get("device_name") or "unknown")


def build_rows(table: Table, groups: dict[tuple[str, str], list[Run]], paper: dict[str, dict]) -> list[dict]:
    """The rows of one table in paper.csv order, then other experiments by name; protocols clean, original."""
    rows = [summarize(table, name, protocol, runs, paper) for (name, protocol), runs in groups.items()]
    return sorted(rows, key=lambda r: (r["order"], r["experiment"], protocol_rank(r["protocol"])))


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
    if not table.comparable:
        lines.append("These runs use other data than the paper; its rot-MNIST numbers are shown for orientation only.")
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for r in rows:
        diff = [f"{r['diff']:+.3f}" if r["diff"] is not None else ""] if table.comparable else []
        cells = [f"`{r['experiment']}`", r["paper_name"], r["protocol"], str(r["n"]), r["epochs"]]
        cells += [
            pm(r["test_error_mean"], r["test_error_std"]),
            pm(r["last_test_error_mean"], r["last_test_error_std"]),
        ]
        cells += [pm(r["paper_error"], r["paper_std"], 2 if r["paper_std"] is None else 3), *diff]
        cells += [f"{r['params']:,.0f}" if r["params"] is not None else "", duration(r["wall_time_s_mean"])]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    notes = {r["experiment"]: r["note"] for r in rows if r["note"]}
    if notes:
        lines += ["", f"Notes (from `{context['paper']}`):", ""] + [f"- `{e}`: {n}" for e, n in notes.items()]
    if missing:
        lines += ["", "No runs here for: " + ", ".join(f"`{e}`" for e in missing) + "."]
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


def write_tables(runs: list[Run], paper: dict[str, dict], out: Path, context: dict) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table_runs in tables_of(runs).items():
        table = Table(name)
        rows = build_rows(table, group_runs(table_runs), paper)
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        md = markdown_text(table, rows, table_runs, context, missing_rows(table, paper, rows))
        for path, text in ((out / f"{stem}.md", md), (out / f"{stem}.csv", csv_text(table, rows))):
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        runs = find_runs(args.runs)
        if not runs:
            raise ResultsError(
                f"no complete training runs (summary.json with status complete, mode train) under {args.runs}"
            )
        paper = read_paper(args.paper)
        context = {
            "runs": args.runs,
            "paper": shown(args.paper),
            "total": len(runs),
            "command": shlex.join(["python", "scripts/make_tables.py", *argv]),
        }
        for path in write_tables(runs, paper, args.out, context):
            print(path)
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
