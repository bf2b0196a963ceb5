#!/usr/bin/env python
"""Plot learning curves: per experiment, the mean over seeds per epoch with a band, from the runs' metrics.csv.

    python scripts/plot_curves.py --runs outputs/reproduce --select 'table1/*p4cnn' --protocol original
    python scripts/plot_curves.py --runs outputs/reproduce --select table1/p4cnn table1/a_p4cnn --split test \\
        --authors-history ../shared/authors_release --out results/figures/table1_p4cnn.png

Experiments are chosen by glob patterns on the experiment name (``name`` in summary.json). The split defaults
to each run's selection split (valid for protocol clean, test for original on rot-MNIST and CIFAR-10). The
authors' released numbers (``results/reference/released_runs.csv``) of the plotted experiments are drawn as
dashed horizontal lines (accuracy only: the best "val" accuracy, or the test accuracy when the test split is
plotted); ``--authors-history DIR`` overlays their released per-epoch logs (``*_history.npy``).

``--grid`` draws one small panel per experiment instead (``--cols`` per row, 5 by default; the y axis shared),
titled by its model and number of seeds, each with the training curve and the curve of the evaluated split (by
default the selection split), both as the mean over seeds with a band, and one legend for all panels:

    python scripts/plot_curves.py --runs results/runs --select 'mini/*' --grid --ylim 90 100 \
        --authors-history ../shared/authors_release --out results/figures/mini_curves_grid.png

The authors' logs are their seed-0 runs on the real MNIST-rot (and CIFAR-10+, PCam). For the ``mini/<model>``
experiments (the embedded small dataset) the log of ``table1/<model>`` is drawn, labelled as other data.
TTA evaluations (``tta<K>/summary.json``) have no per-epoch rows and are never plotted.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from attentive_gcnn.errors import UserError
from attentive_gcnn.outputs import check_output
from attentive_gcnn.outputs import save_figure as save_png
from attentive_gcnn.results import (
    ResultsError,
    Run,
    find_runs,
    group_runs,
    read_csv,
    read_metrics,
    select_runs,
    select_split,
    series,
    warn,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = ROOT / "results/reference/released_runs.csv"
REFERENCE_COLUMNS = ("experiment", "metric", "value", "run", "seed", "protocol")  # what reference_lines reads
# experiment -> (the authors' released history file, its seed); see authors_release/README.md
HISTORY = {
    "table1/z2cnn": ("rotmnist_z2cnn_history.npy", 0),
    "table1/p4cnn": ("rotmnist_p4cnn_history.npy", 0),
    "table1/a_p4cnn": ("rotmnist_att_p4cnn_history.npy", 0),
    "table1/fa_p4cnn": ("rotmnist_f_att_p4cnn_history.npy", 0),
    "table2/fa_p4m_allcnnc_cifar10_aug": ("cifar10_f_att_p4m_allcnnc_history.npy", 0),
    "table3/p4m_densenet": ("pcam_p4m_densenet_history.npy", 1),
}
HISTORY_ROW = {("accuracy", False): 0, ("loss", False): 1, ("accuracy", True): 2, ("loss", True): 3}  # (, train?)
# prefix -> (prefix, data): mini/<model> (the embedded small dataset) borrows the log of table1/<model>, other data
OTHER_DATA = {"mini/": ("table1/", "real MNIST-rot")}
BANDS = {"minmax": "min–max over seeds", "std": "±1 sample std over seeds"}


@dataclass(frozen=True)
class Curve:
    """One experiment's curve: per epoch, the mean over seeds and the band's lower and upper edges."""

    name: str
    split: str
    n: int
    epochs: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


def scale(metric: str) -> float:
    """Accuracies are plotted in percent."""
    return 100.0 if metric == "accuracy" else 1.0


def make_curve(name: str, runs: list[Run], split: str, metric: str, band: str) -> Curve | None:
    """Mean and band over the seeds that have a value at each epoch; None if no run has the split."""
    per_seed, splits = [], set()
    for run in runs:
        rows = read_metrics(run)
        chosen = select_split(run, rows) if split == "select" else split
        values = series(rows, chosen, metric)
        if values:
            per_seed.append(values)
            splits.add(chosen)
    if not per_seed:
        warn(f"{name}: no '{split}' rows in metrics.csv; not plotted")
        return None
    epochs = np.array(sorted(set().union(*per_seed)))
    stacked = [np.array([s[e] for s in per_seed if e in s]) * scale(metric) for e in epochs]
    mean = np.array([v.mean() for v in stacked])
    if band == "minmax":
        low, high = np.array([v.min() for v in stacked]), np.array([v.max() for v in stacked])
    else:
        std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in stacked])
        low, high = mean - std, mean + std
    return Curve(name, "/".join(sorted(splits)), len(per_seed), epochs, mean, low, high)


def reference_lines(path: Path | None, curve: Curve, metric: str, short: bool = False) -> list[tuple[float, str]]:
    """The authors' released numbers for this experiment as (value, label): accuracy on a non-train split only.

    ``short`` leaves the run's name out of the label (one legend shared by the panels of ``--grid``).
    """
    if path is None or metric != "accuracy" or curve.split == "train":
        return []
    wanted = "test_accuracy" if curve.split == "test" else "best_val_accuracy"
    rows = [r for r in read_csv(path) if r["experiment"] == curve.name and r["metric"] == wanted]
    what = "test accuracy" if wanted == "test_accuracy" else "best 'val' accuracy"
    lines = []
    for r in rows:
        try:
            value = float(r["value"]) * 100
        except (TypeError, ValueError):
            raise ResultsError(f"{path}: {curve.name} {wanted} is not a number ({r['value']!r})") from None
        lines.append(
            (value, f"authors' {what}, {'' if short else r['run'] + ' '}seed {r['seed']} ({r['protocol']} protocol)")
        )
    return lines


def history_source(name: str) -> tuple[str, int, str] | None:
    """The authors' released log for experiment ``name`` as (file, seed, label); None if they released none.

    The experiments of ``HISTORY`` get their own run's log. A ``mini/<model>`` experiment gets the log of
    ``table1/<model>``, trained on the real MNIST-rot, and a label that says so.
    """
    if name in HISTORY:
        file, seed = HISTORY[name]
        return file, seed, f"authors' released log (seed {seed})"
    for prefix, (theirs, data) in OTHER_DATA.items():
        if name.startswith(prefix) and (other := theirs + name.removeprefix(prefix)) in HISTORY:
            file, seed = HISTORY[other]
            return file, seed, f"authors' log, {data} (other data), seed {seed}"
    return None


def authors_log(directory: Path | None, name: str, metric: str, train: bool) -> tuple[np.ndarray, str, str] | None:
    """The authors' released per-epoch values of ``metric`` on their training split (``train``) or their 'val'
    split for experiment ``name``, with a label and the split's name; None without ``directory`` or a log.

    Their 'val' split is the test set on rot-MNIST and CIFAR-10 (the original protocol), a validation set on PCam.
    """
    source = None if directory is None else history_source(name)
    if source is None:
        return None
    file, _, label = source
    if not (directory / file).is_file():
        warn(f"{directory / file} not found; no authors' log for {name}")
        return None
    try:
        history = np.asarray(np.load(directory / file), dtype=np.float64)
        values = history[HISTORY_ROW[metric, train]]
    except (OSError, ValueError, TypeError, IndexError) as e:
        raise ResultsError(f"{directory / file} is not one of the authors' history arrays ({e})") from None
    split = "train" if train else "valid" if file.startswith("pcam") else "test"
    return values * scale(metric), label, split


def authors_history(directory: Path | None, curve: Curve, metric: str) -> tuple[np.ndarray, str] | None:
    """The authors' released per-epoch values for this curve's experiment, metric and split, with a label."""
    log = authors_log(directory, curve.name, metric, curve.split == "train")
    return None if log is None else log[:2]


def plot(curves: list[Curve], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, curve in enumerate(curves):
        color = colors[i % len(colors)]
        ax.plot(curve.epochs, curve.mean, color=color, lw=1.6, label=f"{curve.name} (n={curve.n})")
        if curve.n > 1:
            ax.fill_between(curve.epochs, curve.low, curve.high, color=color, alpha=0.2, lw=0)
        for value, label in reference_lines(args.reference, curve, args.metric):
            ax.axhline(value, color=color, ls="--", lw=1.0, label=f"{curve.name}: {label}")
        history = authors_history(args.authors_history, curve, args.metric)
        if history is not None:
            values, label = history
            ax.plot(
                np.arange(1, len(values) + 1), values, color=color, lw=0.7, alpha=0.8, label=f"{curve.name}: {label}"
            )
    splits = "/".join(sorted({c.split for c in curves}))
    ax.set_title(
        f"{args.metric} on {splits} ({args.protocol} protocol); line: mean over seeds, band: {BANDS[args.band]}",
        fontsize=10,
    )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy (%)" if args.metric == "accuracy" else "loss")
    if args.ylim:
        ax.set_ylim(*args.ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_png(fig, args.out)


@dataclass(frozen=True)
class Panel:
    """One experiment's panel of ``--grid``: its title and curves (training split first, then the evaluated one)."""

    name: str
    title: str
    curves: list[Curve]


def make_panels(groups: dict[tuple[str, str], list[Run]], args: argparse.Namespace) -> list[Panel]:
    """One panel per experiment with a curve on the training split or the evaluated split (``args.split``)."""
    panels = []
    for (name, _), runs in groups.items():
        curves = [c for split in ("train", args.split) if (c := make_curve(name, runs, split, args.metric, args.band))]
        if curves:
            model = runs[0].summary.get("model") or name.rsplit("/", 1)[-1]
            panels.append(Panel(name, str(model), curves))
    shared = Counter(p.title for p in panels)  # two experiments of one model (e.g. CIFAR-10 with and without aug)
    panels = [replace(p, title=p.name.split("/", 1)[-1]) if shared[p.title] > 1 else p for p in panels]
    return [replace(p, title=f"{p.title} (n={max(c.n for c in p.curves)})") for p in panels]


def grid_figure(panels: list[Panel], args: argparse.Namespace):
    """The ``--grid`` figure: ``args.cols`` panels a row, shared y axis, one legend below the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cols = min(args.cols, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.6 * cols + 0.6, 2.2 * rows + 1.2), sharey=True, squeeze=False, layout="constrained"
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ours: dict[str, object] = {}  # legend label -> the first panel's handle
    theirs: dict[str, object] = {}  # the same for the authors' numbers and logs
    for i, (ax, panel) in enumerate(zip(axes.flat, panels, strict=False)):
        for curve in panel.curves:
            train = curve.split == "train"
            color = colors[0 if train else 1]
            (line,) = ax.plot(curve.epochs, curve.mean, color=color, lw=1.3)
            band = ax.fill_between(curve.epochs, curve.low, curve.high, color=color, alpha=0.25, lw=0)
            what = "train" if train else curve.split + (" (selection split)" if args.split == "select" else "")
            ours.setdefault(f"{what}: mean over seeds, band: {BANDS[args.band]}", (band, line))
            for value, label in reference_lines(args.reference, curve, args.metric, short=True):
                theirs.setdefault(label, ax.axhline(value, color="k", ls="--", lw=0.8))
            log = authors_log(args.authors_history, panel.name, args.metric, train)
            if log is not None:
                values, label, split = log
                (other,) = ax.plot(np.arange(1, len(values) + 1), values, color=color, ls=":", lw=1.0)
                theirs.setdefault(f"{label}: {split}", other)
        ax.set_title(panel.title, fontsize=9)
        if i + cols >= len(panels):  # no panel below
            ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    if args.ylim:
        axes.flat[0].set_ylim(*args.ylim)
    fig.supylabel("accuracy (%)" if args.metric == "accuracy" else "loss", fontsize=9)
    fig.suptitle(f"{args.metric}, {args.protocol} protocol: {', '.join(args.select)}", fontsize=10)
    legend = ours | theirs
    ncols = 2 if cols > 2 else 1
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=ncols, fontsize=7)
    return fig


def default_out(args: argparse.Namespace) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", "+".join(args.select)).strip("-") or "curves"
    grid = "_grid" if args.grid else ""
    return ROOT / "results/figures" / f"{slug}_{args.protocol}_{args.split}_{args.metric}{grid}.png"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, type=Path, help="directory searched recursively for runs")
    parser.add_argument("--select", required=True, nargs="+", metavar="PATTERN", help="glob(s) on experiment names")
    parser.add_argument("--protocol", default="clean", help="the protocol of the runs to plot (default: clean)")
    parser.add_argument("--metric", choices=("accuracy", "loss"), default="accuracy")
    parser.add_argument(
        "--split", choices=("select", "valid", "test", "train"), default="select", help="default: the selection split"
    )
    parser.add_argument("--band", choices=tuple(BANDS), default="minmax", help="band over seeds (default: minmax)")
    parser.add_argument("--ylim", nargs=2, type=float, metavar=("LOW", "HIGH"), help="y-axis range, e.g. 95 99")
    parser.add_argument(
        "--grid", action="store_true", help="one panel per experiment: train and the evaluated split, seeds banded"
    )
    parser.add_argument("--cols", type=int, default=5, help="panels per row of --grid (default: 5)")
    parser.add_argument("--out", type=Path, help="PNG to write (default: results/figures/<patterns>_....png)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing PNG")
    parser.add_argument("--reference", type=Path, help=f"released numbers CSV (default: {DEFAULT_REFERENCE})")
    parser.add_argument("--no-reference", action="store_true", help="draw no reference lines")
    parser.add_argument("--authors-history", type=Path, metavar="DIR", help="overlay the authors' *_history.npy")
    parser.add_argument(
        "--include-incomplete", action="store_true", help="also plot unfinished runs (named by .hydra/config.yaml)"
    )
    args = parser.parse_args(argv)
    args.out = args.out or default_out(args)
    return args


def check_inputs(args: argparse.Namespace) -> None:
    """Refuse to overwrite, and reject missing reference inputs, before reading any run."""
    if args.out.suffix.lower() != ".png":
        raise ResultsError(f"--out {args.out} must end in .png")
    check_output(args.out, args.force)
    if args.grid and args.split == "train":
        raise ResultsError("--grid draws the training split next to --split: choose select, valid or test")
    if args.cols < 1:
        raise ResultsError(f"--cols must be positive, not {args.cols}")
    if args.no_reference:
        args.reference = None
    elif args.reference is None:
        args.reference = DEFAULT_REFERENCE if DEFAULT_REFERENCE.is_file() else None
    elif not args.reference.is_file():
        raise ResultsError(f"--reference {args.reference} does not exist")
    if args.reference is not None:
        with args.reference.open(newline="", encoding="utf-8") as f:
            columns = csv.DictReader(f).fieldnames or []
        missing = [c for c in REFERENCE_COLUMNS if c not in columns]
        if missing:
            raise ResultsError(f"--reference {args.reference} lacks the column(s) {', '.join(missing)}")
    if args.ylim and args.ylim[0] >= args.ylim[1]:
        raise ResultsError(f"--ylim LOW HIGH needs LOW < HIGH, not {args.ylim[0]:g} {args.ylim[1]:g}")
    if args.authors_history is not None and not args.authors_history.is_dir():
        raise ResultsError(f"--authors-history {args.authors_history} is not a directory")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_inputs(args)
        runs = find_runs(args.runs, incomplete=args.include_incomplete)  # training runs only: no TTA evaluations
        chosen = select_runs(runs, args.select, args.protocol)
        if not chosen:
            have = sorted({f"{r.name} ({r.protocol})" for r in runs}) or ["none"]
            raise ResultsError(
                f"no runs under {args.runs} match {' '.join(args.select)} with protocol {args.protocol}; "
                f"found: {', '.join(have)}"
            )
        groups = group_runs(chosen)
        if args.grid:
            panels = make_panels(groups, args)
            if not panels:
                raise ResultsError(f"the matching runs have no 'train' or '{args.split}' rows in their metrics.csv")
            save_png(grid_figure(panels, args), args.out)
        else:
            curves = [
                c for (name, _), rs in groups.items() if (c := make_curve(name, rs, args.split, args.metric, args.band))
            ]
            if not curves:
                raise ResultsError(f"the matching runs have no '{args.split}' rows in their metrics.csv")
            plot(curves, args)
    except (ResultsError, UserError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
