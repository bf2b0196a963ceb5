"""Finished runs and the reference tables in ``results/``: discovery, reading and small statistics.

A run is a directory holding ``summary.json`` (``status: complete``, ``mode: train``) and ``metrics.csv``; its
experiment name, protocol and seed are read from the summary, never from the directory layout. Unfinished runs
(``metrics.csv`` without a summary) can be included on request, identified by their ``.hydra/config.yaml``.
Used by ``scripts/make_tables.py`` and ``scripts/plot_curves.py``.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import math
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

SUMMARY, METRICS, HYDRA_CONFIG = "summary.json", "metrics.csv", ".hydra/config.yaml"
PROTOCOL_ORDER = ("clean", "original")
FINAL_SPLITS = ("test_last", "test_best")  # the one-off rows written after training


class ResultsError(Exception):
    """A problem with the inputs that the user must fix; the scripts print it as one ``error:`` line."""


@dataclass(frozen=True)
class Run:
    """One training run: where it is, which table cell (``name``, ``protocol``) and ``seed`` it belongs to."""

    dir: Path
    name: str
    protocol: str
    seed: int
    summary: dict = field(default_factory=dict, compare=False, repr=False)  # empty for an unfinished run

    @property
    def complete(self) -> bool:
        return bool(self.summary)

    @property
    def key(self) -> tuple[str, str, int]:
        return self.name, self.protocol, self.seed

    @property
    def table(self) -> str:
        return table_of(self.name)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def table_of(name: str) -> str:
    """The table an experiment belongs to: the prefix of ``table1/p4cnn``; ``other`` for a name without one."""
    return name.split("/", 1)[0] if "/" in name else "other"


# ------------------------------------------------------------------------------------------------ discovery
def find_runs(root: str | Path, incomplete: bool = False) -> list[Run]:
    """Every complete training run under ``root`` (searched recursively), sorted by (name, protocol, seed).

    ``incomplete=True`` adds directories with a ``metrics.csv`` but no complete summary. Raises
    :class:`ResultsError` if ``root`` is not a directory or one (name, protocol, seed) occurs twice.
    """
    root = Path(root)
    if not root.is_dir():
        raise ResultsError(f"runs directory {root} does not exist")
    runs = [run for path in sorted(root.rglob(SUMMARY)) if (run := _complete_run(path)) is not None]
    if incomplete:
        done = {run.dir for run in runs}
        found = (_unfinished_run(p.parent) for p in sorted(root.rglob(METRICS)) if p.parent not in done)
        runs += [run for run in found if run is not None]
    check_unique(runs)
    return sorted(runs, key=lambda r: (r.name, protocol_rank(r.protocol), r.seed))


def _complete_run(path: Path) -> Run | None:
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        warn(f"skipping unreadable {path} ({e})")
        return None
    if not isinstance(summary, dict) or summary.get("status") != "complete" or summary.get("mode") != "train":
        return None
    missing = [k for k in ("name", "protocol", "seed") if summary.get(k) is None]
    if missing:
        warn(f"skipping {path}: no {', '.join(missing)}")
        return None
    return Run(path.parent, str(summary["name"]), str(summary["protocol"]), int(summary["seed"]), summary)


def _unfinished_run(run_dir: Path) -> Run | None:
    """An unfinished run, identified by the Hydra config saved next to its ``metrics.csv``."""
    from omegaconf import OmegaConf

    path = run_dir / HYDRA_CONFIG
    try:
        cfg = OmegaConf.load(path)
        return Run(run_dir, str(cfg.name), str(cfg.protocol), int(cfg.seed))
    except Exception as e:  # missing file, unresolvable interpolation, missing key: all mean "cannot identify"
        warn(f"skipping unfinished run {run_dir}: cannot read name/protocol/seed from {path} ({e})")
        return None


def check_unique(runs: Iterable[Run]) -> None:
    """Raise :class:`ResultsError` listing the paths of every (name, protocol, seed) found more than once."""
    seen: dict[tuple, list[Path]] = {}
    for run in runs:
        seen.setdefault(run.key, []).append(run.dir)
    dups = {key: dirs for key, dirs in seen.items() if len(dirs) > 1}
    if dups:
        lines = [f"{n} protocol={p} seed={s}: {', '.join(map(str, dirs))}" for (n, p, s), dirs in sorted(dups.items())]
        raise ResultsError("duplicate runs (same name, protocol and seed):\n  " + "\n  ".join(lines))


def protocol_rank(protocol: str) -> tuple[int, str]:
    """Sort key: clean, original, then any other protocol alphabetically."""
    return (PROTOCOL_ORDER.index(protocol) if protocol in PROTOCOL_ORDER else len(PROTOCOL_ORDER), protocol)


def select_runs(runs: Iterable[Run], patterns: Iterable[str], protocol: str | None = None) -> list[Run]:
    """The runs whose experiment name matches any glob pattern (and whose protocol is ``protocol``, if given)."""
    patterns = list(patterns)
    return [
        r
        for r in runs
        if any(fnmatch.fnmatchcase(r.name, p) for p in patterns) and (protocol is None or r.protocol == protocol)
    ]


def group_runs(runs: Iterable[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs grouped by (experiment name, protocol), groups sorted by name then protocol, seeds increasing."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in sorted(runs, key=lambda r: (r.name, protocol_rank(r.protocol), r.seed)):
        groups.setdefault((run.name, run.protocol), []).append(run)
    return groups


# -------------------------------------------------------------------------------------------------- reading
def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header, as dicts of strings; :class:`ResultsError` if it cannot be read."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except OSError as e:
        raise ResultsError(f"cannot read {path} ({e.strerror})") from None


def read_metrics(run: Run) -> list[dict]:
    """``metrics.csv`` of a run with typed values (epoch int, split str, the rest float; NaN where empty)."""
    return [{key: _typed(key, value) for key, value in row.items()} for row in read_csv(run.dir / METRICS)]


def _typed(key: str, value: str | None):
    if key == "epoch":
        return int(value)
    if key == "split":
        return value
    return float(value) if value not in ("", None) else math.nan


def select_split(run: Run, rows: list[dict]) -> str | None:
    """The split the run selected its epoch on (``valid`` or ``test``): from the summary, else from the rows."""
    if run.summary.get("select_split"):
        return run.summary["select_split"]
    return next((r["split"] for r in rows if r["split"] != "train" and r["split"] not in FINAL_SPLITS), None)


def series(rows: list[dict], split: str, metric: str) -> dict[int, float]:
    """Per-epoch values of ``metric`` (``accuracy``, ``loss``) on ``split``, keyed by epoch."""
    return {r["epoch"]: r[metric] for r in rows if r["split"] == split}


# ------------------------------------------------------------------------------------------------ statistics
def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1; None for a single value)."""
    if not values:
        raise ValueError("mean_std of no values")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None
