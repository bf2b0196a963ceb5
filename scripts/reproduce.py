#!/usr/bin/env python
"""Rerun the paper's tables: every experiment of a table, N seeds, both protocols, then the results tables and figures.

    python scripts/reproduce.py --table rotmnist|cifar10|pcam|all|mini [--seeds 3] [--protocols clean original]
                                [--epochs N] [--only GLOB ...] [--out DIR] [--dry-run] [OVERRIDE ...]

Each table is one Hydra multirun of ``python -m attentive_gcnn.train`` over ``configs/experiment/<table>/*`` x seeds
x protocols, with ``resume=auto``: a finished run is skipped and a killed one continues, so the command can simply
be run again after an interruption. Runs go to ``OUT/<experiment>/<protocol>/seed<k>/``. It refuses to start
when a dataset a table needs is missing. Afterwards ``make_tables.py`` writes ``results/tables/`` and the curves
go to ``results/figures/``; with ``--epochs`` (a quick pass) runs, tables and figures all go under
``outputs/reproduce_epochs<N>/`` instead, so that they never mix with full runs.
"""

from __future__ import annotations

import argparse
import fnmatch
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "configs" / "experiment"
TABLES = {"rotmnist": ["table1"], "cifar10": ["table2"], "pcam": ["table3"], "mini": ["mini"]}
TABLES["all"] = TABLES["rotmnist"] + TABLES["cifar10"] + TABLES["pcam"]
# The checkpoints the figures of the rot-MNIST-like tables are drawn from (seed 0, protocol clean).
ROTATION_MODELS = ("z2cnn", "p4cnn", "fa_p4cnn", "a_p4cnn")
ROTATION_DATASETS = {"table1": "rotmnist", "mini": "rotmnist_mini"}
ATTENTION_MODEL = "fa_p4cnn"


def experiments(table: str, only: list[str]) -> list[str]:
    """The experiment names of a table folder (``table1/p4cnn``, ...), filtered by the ``only`` globs."""
    names = sorted(f"{table}/{p.stem}" for p in (EXPERIMENTS / table).glob("*.yaml"))
    return [n for n in names if not only or any(fnmatch.fnmatch(n, pattern) for pattern in only)]


def check_data(names: list[str], overrides: list[str]) -> None:
    """Compose each experiment and open its dataset source: a DataError says what is missing and how to get it."""
    from hydra import compose, initialize_config_dir

    from attentive_gcnn.data import DataError, make_source
    from attentive_gcnn.models.registry import CONFIG_DIR

    checked = {}
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        for name in names:
            cfg = compose("train", overrides=[f"experiment={name}", *overrides])
            key = (cfg.dataset.name, str(cfg.paths.data_dir))
            if key in checked:
                continue
            try:
                make_source(cfg.dataset.source)
            except DataError as e:
                raise SystemExit(f"error: {name} needs dataset {cfg.dataset.name}: {e}") from None
            checked[key] = True


def train_command(
    names: list[str], seeds: int, protocols: list[str], out: Path, epochs: int | None, overrides: list[str]
) -> list[str]:
    """One multirun over seeds x experiments x protocols (seeds outermost: all cells get seed 0 first)."""
    cmd = [
        sys.executable,
        "-m",
        "attentive_gcnn.train",
        "-m",
        f"seed={','.join(map(str, range(seeds)))}",
        f"experiment={','.join(names)}",
        f"protocol={','.join(protocols)}",
        "resume=auto",
        f"hydra.sweep.dir={out}",
        "hydra.sweep.subdir=${name}/${protocol}/seed${seed}",
    ]
    return cmd + ([f"training.epochs={epochs}"] if epochs else []) + overrides


def figure_commands(table: str, out: Path, figures: Path, overrides: list[str], limit: int) -> list[list[str]]:
    """Curves of every table; for rot-MNIST-like tables also accuracy vs rotation angle and attention maps."""
    py, scripts = sys.executable, REPO / "scripts"
    curves = ["--runs", str(out), "--select", f"{table}/*", "--protocol", "clean"]
    cmds = [[py, str(scripts / "plot_curves.py"), *curves, "--out", str(figures / f"{table}_curves.png"), "--force"]]
    if table not in ROTATION_DATASETS:
        return cmds
    data_dir = [o.split("=", 1)[1] for o in overrides if o.startswith("paths.data_dir=")]
    data = ["--dataset", ROTATION_DATASETS[table], *(["--data-dir", data_dir[-1]] if data_dir else [])]
    best = {m: out / table / m / "clean" / "seed0" / "best.ckpt" for m in ROTATION_MODELS}
    ckpts = [str(path) for path in best.values() if path.is_file()]
    if ckpts:
        rotations = ["--limit", str(limit), "--out", str(figures / f"{table}_rotations"), "--force"]
        cmds.append([py, str(scripts / "eval_rotations.py"), *ckpts, *data, *rotations])
    if best[ATTENTION_MODEL].is_file():
        png = figures / f"{table}_attention_{ATTENTION_MODEL}.png"
        cmds.append(
            [
                py,
                str(scripts / "visualize_attention.py"),
                str(best[ATTENTION_MODEL]),
                *data,
                "--out",
                str(png),
                "--force",
            ]
        )
    return cmds


def run(cmd: list[str], dry_run: bool) -> None:
    print("$ " + " ".join(cmd), flush=True)
    if not dry_run and subprocess.run(cmd, cwd=REPO).returncode != 0:
        raise SystemExit(f"error: command failed: {' '.join(cmd)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", choices=sorted(TABLES), default="all")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds: 0 .. N-1 (default 3)")
    parser.add_argument("--protocols", nargs="+", choices=("clean", "original"), default=["clean", "original"])
    parser.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs (a quick pass)")
    parser.add_argument("--only", nargs="+", default=[], metavar="GLOB", help="only these experiments")
    parser.add_argument("--out", type=Path, default=None, help="runs directory (default outputs/reproduce)")
    parser.add_argument("--figure-limit", type=int, default=500, help="test images per angle in the rotation plot")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run, e.g. paths.data_dir=/data")
    args = parser.parse_args(argv)
    if args.seeds < 1 or (args.epochs is not None and args.epochs < 1):
        parser.error("--seeds and --epochs must be positive")
    quick = args.epochs is not None
    out = (args.out or REPO / "outputs" / (f"reproduce_epochs{args.epochs}" if quick else "reproduce")).resolve()
    results = out if quick else REPO / "results"
    tables = {t: experiments(t, args.only) for t in TABLES[args.table]}
    tables = {t: names for t, names in tables.items() if names}
    if not tables:
        raise SystemExit(f"error: no experiment of --table {args.table} matches --only {' '.join(args.only)}")
    check_data([n for names in tables.values() for n in names], args.overrides)
    for names in tables.values():
        run(train_command(names, args.seeds, args.protocols, out, args.epochs, args.overrides), args.dry_run)
    run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_tables.py"),
            "--runs",
            str(out),
            "--out",
            str(results / "tables"),
        ],
        args.dry_run,
    )
    for table in tables:
        for cmd in figure_commands(table, out, results / "figures", args.overrides, args.figure_limit):
            run(cmd, args.dry_run)
    print(f"runs: {out}\ntables: {results / 'tables'}\nfigures: {results / 'figures'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
