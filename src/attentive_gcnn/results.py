"""Finished runs and the reference tables in ``results/``: discovery, reading and small statistics.

A run is a directory holding ``summary.json`` (``status: complete``, ``mode: train``) and ``metrics.csv``; its
experiment name, protocol and seed are read from the summary, never from the directory layout. Unfinished runs
(``metrics.csv`` without a summary) can be included on request, identified by their ``.hydra/config.yaml``.

Test-time-augmentation (TTA) evaluations can be included on request too: a summary with ``mode: eval`` and an
integer ``tta`` K >= 2 (logits averaged over K rotations of the input) becomes a run of its own table cell,
named ``<experiment>+tta<K>`` (e.g. ``mini/z2cnn+tta4``), with the protocol and seed of the training run whose
checkpoint it evaluated. Evaluations without ``tta`` (or with 0 or 1) are never runs.

The statistics: mean and sample std over seeds, and the Welch confidence interval of a difference of means, with
its Student-t quantile computed here in pure Python (regularized incomplete beta function by a continued fraction,
inverted by bisection), so that no statistics library is needed.
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

from attentive_gcnn.values import is_int, is_number

SUMMARY, METRICS, HYDRA_CONFIG = "summary.json", "metrics.csv", ".hydra/config.yaml"
PROTOCOL_ORDER = ("clean", "original")
TTA_MARK = "+tta"  # a TTA evaluation's table cell is <experiment>+tta<K>, e.g. mini/z2cnn+tta4
FINAL_SPLITS = ("test_last", "test_best")  # the one-off rows written after training
# summary.json values the tables and figures compute with: a run where one is not a number (or null) is skipped
NUMERIC_FIELDS = ("epochs", "best_epoch", "test_error", "last_test_error", "test_accuracy", "params", "wall_time_s")
LARGE_DF = 1e5  # student_t_quantile: above this, a series around the normal quantile instead of bisection


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

    @property
    def base(self) -> str:
        """The training experiment: ``mini/z2cnn`` for ``mini/z2cnn+tta4``, the name itself otherwise."""
        return split_tta(self.name)[0]

    @property
    def tta(self) -> int | None:
        """K of a TTA evaluation (``mini/z2cnn+tta4`` -> 4); None for a training run."""
        return split_tta(self.name)[1]


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def table_of(name: str) -> str:
    """The table an experiment belongs to: the prefix of ``table1/p4cnn``; ``other`` for a name without one."""
    return name.split("/", 1)[0] if "/" in name else "other"


def tta_name(name: str, k: int) -> str:
    """The table cell of a K-rotation TTA evaluation of experiment ``name``: ``mini/z2cnn`` -> ``mini/z2cnn+tta4``."""
    return f"{name}{TTA_MARK}{k}"


def split_tta(name: str) -> tuple[str, int | None]:
    """Inverse of :func:`tta_name`: (experiment, K), or (name, None) for a name without a ``+tta<K>`` suffix."""
    base, mark, k = name.rpartition(TTA_MARK)
    return (base, int(k)) if mark and base and k.isdigit() else (name, None)


# ------------------------------------------------------------------------------------------------ discovery
def find_runs(root: str | Path, incomplete: bool = False, tta: bool = False) -> list[Run]:
    """Every complete training run under ``root`` (searched recursively), sorted by (name, protocol, seed).

    ``incomplete=True`` adds directories with a ``metrics.csv`` but no complete summary. ``tta=True`` adds the
    complete TTA evaluations as runs named ``<experiment>+tta<K>`` (see :func:`tta_name`); they have no
    ``metrics.csv``, so callers that read curves leave them out (the default). Raises :class:`ResultsError` if
    ``root`` is not a directory or one (name, protocol, seed) occurs twice.
    """
    root = Path(root)
    if not root.is_dir():
        raise ResultsError(f"runs directory {root} does not exist")
    runs = [run for path in sorted(root.rglob(SUMMARY)) if (run := _complete_run(path, tta)) is not None]
    if incomplete:
        done = {run.dir for run in runs}
        found = (_unfinished_run(p.parent) for p in sorted(root.rglob(METRICS)) if p.parent not in done)
        runs += [run for run in found if run is not None]
    check_unique(runs)
    return sorted(runs, key=lambda r: (r.name, protocol_rank(r.protocol), r.seed))


def _complete_run(path: Path, tta: bool = False) -> Run | None:
    """The run a ``summary.json`` describes: a complete training run, or (``tta=True``) a complete TTA evaluation."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        warn(f"skipping unreadable {path} ({e})")
        return None
    if not isinstance(summary, dict) or summary.get("status") != "complete":
        return None
    k = _tta_of(path, summary) if tta and summary.get("mode") == "eval" else None
    if summary.get("mode") != "train" and k is None:
        return None
    missing = [key for key in ("name", "protocol", "seed") if summary.get(key) is None]
    if missing:
        warn(f"skipping {path}: no {', '.join(missing)}")
        return None
    if not is_int(summary["seed"]):
        warn(f"skipping {path}: seed must be an integer, not {summary['seed']!r}")
        return None
    bad = [key for key in NUMERIC_FIELDS if summary.get(key) is not None and not is_number(summary[key])]
    if bad:
        warn(f"skipping {path}: {', '.join(f'{key}={summary[key]!r}' for key in bad)} must be numbers")
        return None
    name = str(summary["name"]) if k is None else tta_name(str(summary["name"]), k)
    return Run(path.parent, name, str(summary["protocol"]), int(summary["seed"]), summary)


def _tta_of(path: Path, summary: dict) -> int | None:
    """K of an evaluation summary's ``tta``; None for an ordinary evaluation (no ``tta``, 0 or 1) or a bad value."""
    k = summary.get("tta")
    if k is None or (is_int(k) and k in (0, 1)):
        return None
    if not is_int(k) or k < 0:
        warn(f"skipping {path}: tta must be a non-negative integer, not {k!r}")
        return None
    return k


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
    """``metrics.csv`` of a run with typed values (epoch int, split str, the rest float; NaN where empty).

    Raises :class:`ResultsError` naming the file and the row if a value is not of its column's type.
    """
    path = run.dir / METRICS
    rows = []
    for line, row in enumerate(read_csv(path), start=2):  # line 1 is the header
        try:
            rows.append({key: _typed(key, value) for key, value in row.items()})
        except (TypeError, ValueError):
            raise ResultsError(f"{path}, line {line}: not a metrics row ({dict(row)})") from None
    return rows


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


@dataclass(frozen=True)
class WelchInterval:
    """A difference of means with its confidence interval (None when a side has fewer than two values)."""

    diff: float
    low: float | None
    high: float | None
    df: float | None  # Welch-Satterthwaite degrees of freedom; None without an interval or without spread

    @property
    def verdict(self) -> str:
        """``lower`` or ``higher`` when the interval excludes 0, ``no difference within noise`` otherwise."""
        if self.low is None or self.high is None:
            return "n<2"
        if self.high < 0:
            return "lower"
        if self.low > 0:
            return "higher"
        return "no difference within noise"


def welch_interval(a: list[float], b: list[float], level: float = 0.95) -> WelchInterval:
    """Confidence interval of mean(a) - mean(b) without assuming equal variances (Welch).

    With the sample variances s², the standard error is se = sqrt(s_a²/n_a + s_b²/n_b) and the Welch-Satterthwaite
    degrees of freedom are df = se⁴ / ((s_a²/n_a)²/(n_a-1) + (s_b²/n_b)²/(n_b-1)); the interval is
    diff ± t_{(1+level)/2}(df) · se. With fewer than two values on either side there is no interval (``low``,
    ``high`` and ``df`` are None); with no spread on either side the interval is the difference itself.
    """
    if not a or not b:
        raise ValueError("welch_interval needs at least one value on each side")
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return WelchInterval(diff, None, None, None)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return WelchInterval(diff, diff, diff, None)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = student_t_quantile(0.5 + level / 2, df) * math.sqrt(va + vb)
    return WelchInterval(diff, diff - half, diff + half, df)


def student_t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t distribution with ``df`` > 0 degrees of freedom (fractional df too).

    Found by bisection on the upper tail P(T > t) = I_{df/(df+t²)}(df/2, 1/2) / 2 (:func:`regularized_beta`),
    to a relative precision of about 1e-13. Above ``LARGE_DF`` degrees of freedom, where x = df/(df+t²) is too
    close to 1 for that, it uses the Cornish-Fisher expansion around the normal quantile z (Abramowitz and Stegun
    26.7.5, three terms, error O(df⁻⁴)); ``df = math.inf`` gives z itself. For example
    ``student_t_quantile(0.975, 4)`` is 2.7764.
    """
    if not 0 < p < 1:
        raise ValueError(f"p must lie in (0, 1), not {p}")
    if not df > 0:
        raise ValueError(f"df must be positive, not {df}")
    if p < 0.5:
        return -student_t_quantile(1 - p, df)
    if p == 0.5:
        return 0.0
    if df > LARGE_DF:
        z = statistics.NormalDist().inv_cdf(p)
        terms = ((z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96, (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384)
        return z + sum(g / df**i for i, g in enumerate(terms, start=1))
    tail = 1 - p
    lo, hi = 0.0, 1.0
    while _t_upper_tail(hi, df) > tail:  # the tail falls with t: widen until the root is bracketed
        lo, hi = hi, 2 * hi
    while hi - lo > 1e-13 * hi:
        mid = (lo + hi) / 2
        if _t_upper_tail(mid, df) > tail:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t distribution with ``df`` > 0 degrees of freedom (``math.inf``: the normal)."""
    if math.isinf(df):
        return statistics.NormalDist().cdf(t)
    tail = _t_upper_tail(abs(t), df)
    return 1 - tail if t >= 0 else tail


def _t_upper_tail(t: float, df: float) -> float:
    """P(T > t) for t >= 0: half the two-sided tail I_x(df/2, 1/2), x = df/(df+t²); 1 - x passed exactly."""
    denominator = df + t * t
    return 0.5 * regularized_beta(df / denominator, df / 2, 0.5, t * t / denominator)


def regularized_beta(x: float, a: float, b: float, one_minus_x: float | None = None) -> float:
    """The regularized incomplete beta function I_x(a, b) = B(x; a, b) / B(a, b), for 0 <= x <= 1 and a, b > 0.

    Evaluates the continued fraction of I_x(a, b) (modified Lentz), which converges fast for
    x < (a+1)/(a+b+2); above that it uses I_x(a, b) = 1 - I_{1-x}(b, a). ``one_minus_x`` may give 1 - x
    without cancellation when x is close to 1.
    """
    y = 1 - x if one_minus_x is None else one_minus_x
    if not (a > 0 and b > 0):
        raise ValueError(f"a and b must be positive, not {a}, {b}")
    if not 0 <= x <= 1:
        raise ValueError(f"x must lie in [0, 1], not {x}")
    if x == 0 or y == 0:
        return 0.0 if x == 0 else 1.0
    log_front = a * math.log(x) + b * math.log(y) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1 - math.exp(log_front) * _beta_fraction(y, b, a) / b


def _beta_fraction(x: float, a: float, b: float, eps: float = 1e-15, max_terms: int = 100_000) -> float:
    """The continued fraction 1/(1+ d1/(1+ d2/(1+ ...))) of I_x(a, b), by the modified Lentz method.

    Its coefficients are d_{2m+1} = -(a+m)(a+b+m)x / ((a+2m)(a+2m+1)) and d_{2m} = m(b-m)x / ((a+2m-1)(a+2m)).
    """
    tiny = 1e-300

    def guard(v: float) -> float:  # keeps the Lentz ratios off zero
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1 / guard(1 - (a + b) * x / (a + 1))  # the first coefficient d1 (m = 0)
    value = d
    for m in range(1, max_terms):
        for coefficient in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 / guard(1 + coefficient * d)
            c = guard(1 + coefficient / c)
            value *= c * d
        if abs(c * d - 1) < eps:
            return value
    raise ArithmeticError(f"the incomplete beta continued fraction did not converge (x={x}, a={a}, b={b})")
