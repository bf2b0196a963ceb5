#!/usr/bin/env python
"""Rerun the paper's tables: every experiment of a table, N seeds, both protocols, then the results tables and figures.

    python scripts/reproduce.py --table rotmnist|cifar10|pcam|all|mini [--seeds 3 | --seeds clean=5 original=3]
        [--protocols clean original] [--epochs N] [--jobs J] [--only GLOB ...] [--out DIR]
        [--stages train tta tables figures] [--python PATH] [--gpus 0,1,...] [--launcher slurm|local] [--dry-run]
        [OVERRIDE ...]

Stages, in order (``--stages`` picks some):

1. ``train``: one ``python -m attentive_gcnn.train experiment=<table>/<model> protocol=P seed=k resume=auto`` per
   table cell, protocol and seed (seed 0 of every cell first), in ``OUT/<experiment>/<protocol>/seed<k>/``. A
   finished run is skipped and a killed one continues, so the command can simply be run again after an
   interruption. ``--jobs J`` runs J of them at a time, each with 1/J of the CPU threads (on a 2-core CPU two
   single-threaded runs do about 15 % more work than one two-threaded run); each job's output then goes to
   ``OUT/logs/``. A lock file per run keeps two invocations from running the same one. ``--python`` runs the
   jobs with another interpreter, e.g. the venv of a second checkout kept at a fixed commit while you work on
   this one (every run records the commit of the code that ran it). ``--gpus 0,1,...`` runs one job per listed
   GPU at a time (``CUDA_VISIBLE_DEVICES`` set to its GPU), so an 8-GPU machine runs 8 at once.
   ``--launcher slurm`` (or ``local``) hands the runs to Hydra's submitit launcher instead
   (``configs/hydra/launcher/``): the runs of one protocol and seed form one Slurm job array, all arrays are
   submitted at once, and the script waits for them, then publishes what finished (a job stopped by its time limit
   is requeued and continues; see the README's "Running on a cluster").
2. ``tta``: the rotation test-time-augmented evaluation (``eval_tta=K``, K = 4, 8, 16) of the selected weights of
   every finished Z2CNN and P4CNN run of the rot-MNIST-like tables, in ``.../seed<k>/tta<K>/``.
3. ``tables``: ``make_tables.py`` over the runs.
4. ``figures``: learning curves, one figure per protocol (one panel per model: training and selection accuracy,
   mean and min-max band over seeds; ``--authors-history DIR`` draws the authors' released logs beside them),
   accuracy against input rotation (Z2CNN also with 4-rotation TTA), attention maps.

A full pass (no ``--epochs``) publishes each run as soon as it finishes: its small files go to
``results/runs/<experiment>/<protocol>/seed<k>/`` and the selected weights of each model's seed-0 ``clean`` run to
``results/checkpoints/<table>/<model>.ckpt`` (see :mod:`attentive_gcnn.publish`). A published run counts as done
(it is not trained again, even without its run directory), and the tables and figures are built from
``results/`` (``--results DIR``: under DIR instead). A quick pass (``--epochs N``) publishes nothing unless
``--results`` is given; its runs, tables and figures all go under ``outputs/reproduce_epochs<N>/``. The script
refuses to start when a dataset a table needs is missing.
"""

from __future__ import annotations

import argparse
import fcntl
import fnmatch
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "configs" / "experiment"
TABLES = {"rotmnist": ["table1"], "cifar10": ["table2"], "pcam": ["table3"], "mini": ["mini"]}
TABLES["all"] = TABLES["rotmnist"] + TABLES["cifar10"] + TABLES["pcam"]
PROTOCOLS = ("clean", "original")
STAGES = ("train", "tta", "tables", "figures")
# The checkpoints the figures of the rot-MNIST-like tables are drawn from (seed 0, protocol clean).
ROTATION_MODELS = ("z2cnn", "p4cnn", "fa_p4cnn", "a_p4cnn")
ROTATION_DATASETS = {"table1": "rotmnist", "mini": "rotmnist_mini"}
ATTENTION_MODELS = ("fa_p4cnn", "a_p4cnn")
CURVES_YLIM = ("80", "100")  # accuracy (%) range of the learning-curve panels
# The post-hoc invariance baseline: these models' runs evaluated with rotation test-time augmentation.
TTA_MODELS = {"table1": ("z2cnn", "p4cnn"), "mini": ("z2cnn", "p4cnn")}
TTA_ROTATIONS = (4, 8, 16)
PUBLISHED_SEED, PUBLISHED_PROTOCOL = 0, "clean"  # the run whose weights become the table's pretrained model


@dataclass(frozen=True)
class Job:
    """One run: the training of (experiment, protocol, seed), or with ``tta`` = K the K-rotation test-time
    augmented evaluation of that training run's selected weights."""

    experiment: str
    protocol: str
    seed: int
    tta: int = 0

    @property
    def path(self) -> Path:
        """Where the run lives, relative to the runs (and the published) directory."""
        path = Path(self.experiment) / self.protocol / f"seed{self.seed}"
        return path / f"tta{self.tta}" if self.tta else path

    @property
    def trained(self) -> Job:
        return Job(self.experiment, self.protocol, self.seed)

    @property
    def table(self) -> str:
        return self.experiment.split("/", 1)[0]

    @property
    def model(self) -> str:
        return self.experiment.split("/", 1)[1]

    def __str__(self) -> str:
        return f"{self.experiment} {self.protocol} seed {self.seed}" + (f" tta {self.tta}" if self.tta else "")

    def command(self, out: Path, epochs: int | None, overrides: list[str], python: str = sys.executable) -> list[str]:
        cmd = [
            python,
            "-m",
            "attentive_gcnn.train",
            f"experiment={self.experiment}",
            f"protocol={self.protocol}",
            f"seed={self.seed}",
            "progress=false",
            f"hydra.run.dir={out / self.path}",
        ]
        if self.tta:
            ckpt = out / self.trained.path / "best.ckpt"
            return cmd + ["eval_only=true", f"ckpt_path={ckpt}", f"eval_tta={self.tta}", *overrides]
        return cmd + ["resume=auto"] + ([f"training.epochs={epochs}"] if epochs else []) + overrides


# --------------------------------------------------------------------------------------------------- planning
def experiments(table: str, only: list[str]) -> list[str]:
    """The experiment names of a table folder (``table1/p4cnn``, ...), filtered by the ``only`` globs."""
    names = sorted(f"{table}/{p.stem}" for p in (EXPERIMENTS / table).glob("*.yaml"))
    return [n for n in names if not only or any(fnmatch.fnmatch(n, pattern) for pattern in only)]


def parse_seeds(values: list[str], protocols: list[str]) -> dict[str, int]:
    """``["3"]`` -> 3 seeds for each of ``protocols``; ``["clean=5", "original=3"]`` -> seeds per protocol, for
    the protocols among ``protocols``."""
    if len(values) == 1 and "=" not in values[0]:
        counts = dict.fromkeys(protocols, values[0])
    else:
        pairs = [v.split("=", 1) for v in values]
        if any(len(p) != 2 or p[0] not in PROTOCOLS for p in pairs):
            raise ValueError(f"--seeds {' '.join(values)}: expected N or PROTOCOL=N ... ({', '.join(PROTOCOLS)})")
        counts = {protocol: n for protocol, n in pairs if protocol in protocols}
        if not counts:
            raise ValueError(f"--seeds {' '.join(values)} names none of --protocols {' '.join(protocols)}")
    try:
        seeds = {protocol: int(n) for protocol, n in counts.items()}
    except ValueError:
        raise ValueError(f"--seeds {' '.join(values)}: the number of seeds must be an integer") from None
    if any(n < 1 for n in seeds.values()):
        raise ValueError("--seeds must be positive")
    return seeds


def training_jobs(names: list[str], seeds: dict[str, int]) -> list[Job]:
    """Seeds outermost (every cell's seed 0 first), then protocols in the usual order, then experiments."""
    order = [p for p in PROTOCOLS if p in seeds]
    return [Job(n, p, s) for s in range(max(seeds.values())) for p in order if s < seeds[p] for n in names]


def tta_jobs(trained: list[Job]) -> list[Job]:
    """The test-time-augmented evaluations of the training jobs of the models in :data:`TTA_MODELS`."""
    return [
        Job(j.experiment, j.protocol, j.seed, k)
        for j in trained
        if j.model in TTA_MODELS.get(j.table, ())
        for k in TTA_ROTATIONS
    ]


def check_data(names: list[str], overrides: list[str]) -> None:
    """Compose each experiment and open its dataset source: a DataError says what is missing and how to get it."""
    from hydra import compose, initialize_config_dir

    from attentive_gcnn.config_dir import CONFIG_DIR
    from attentive_gcnn.data import DataError, make_source

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


# --------------------------------------------------------------------------------------------------- running
@dataclass
class Places:
    """Where runs live (``out``), and where finished ones are published (None: not published)."""

    out: Path
    runs: Path | None
    checkpoints: Path | None

    def publish(self, job: Job) -> None:
        """Publish a finished run (and, for the designated seed, its weights), holding ``<results>/.publish.lock``
        so that whoever rebuilds the tables or commits the results under the same lock sees whole publications."""
        if self.runs is None:
            return
        self.runs.parent.mkdir(parents=True, exist_ok=True)
        with (self.runs.parent / ".publish.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._publish(job)

    def _publish(self, job: Job) -> None:
        from attentive_gcnn.publish import publish_checkpoint, publish_run

        if publish_run(self.out / job.path, self.runs / job.path):
            print(f"published {job} -> {self.runs / job.path}", flush=True)
        if self.checkpoints and not job.tta and (job.seed, job.protocol) == (PUBLISHED_SEED, PUBLISHED_PROTOCOL):
            dest = self.checkpoints / job.table / f"{job.model}.ckpt"
            if publish_checkpoint(self.out / job.path, dest):
                print(f"published the weights of {job} -> {dest}", flush=True)

    def done(self, job: Job) -> bool:
        """Published, or (when nothing is published) finished in ``out``."""
        from attentive_gcnn.publish import is_published

        return is_published((self.runs or self.out) / job.path)


class Pool:
    """Runs jobs as child processes, ``size`` at a time, each with ``threads`` CPU threads."""

    def __init__(self, places: Places, size: int, dry_run: bool, gpus: list[str] | None = None):
        self.places, self.dry_run, self.gpus = places, dry_run, gpus
        self.size = len(gpus) if gpus else size
        self.threads = max(1, (os.cpu_count() or 1) // self.size)
        self.running: dict[subprocess.Popen, tuple[Job, object]] = {}
        self.gpu_of: dict[subprocess.Popen, str] = {}  # with --gpus: the GPU each running job holds
        self.failed: list[Job] = []

    def submit(self, job: Job, cmd: list[str]) -> None:
        from attentive_gcnn.publish import read_summary

        if self.places.done(job):
            print(f"{job}: already complete", flush=True)
            return
        if self.dry_run:
            print("$ " + " ".join(cmd), flush=True)
            return
        run_dir = self.places.out / job.path
        if self.places.runs is not None and read_summary(run_dir) is not None:
            self.places.publish(job)  # finished, but not published (e.g. by an interrupted invocation)
            return
        while len(self.running) >= self.size:
            self._reap()
        print("$ " + " ".join(cmd), flush=True)
        lock = self._lock(run_dir)
        if lock is None:
            print(f"skipping {job}: another process is running it", flush=True)
            return
        env = dict(os.environ)
        gpu = None
        if self.gpus:
            gpu = next(g for g in self.gpus if g not in self.gpu_of.values())
            env["CUDA_VISIBLE_DEVICES"] = gpu
        if self.size > 1:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env.setdefault(var, str(self.threads))
            log = self.places.out / "logs" / (str(job.path).replace(os.sep, ".") + ".log")
            log.parent.mkdir(parents=True, exist_ok=True)
            stdout = log.open("a")
            print(f"started {job}{f' on GPU {gpu}' if gpu else ''} (log: {log})", flush=True)
        else:
            stdout = None
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=stdout, stderr=subprocess.STDOUT if stdout else None)
        self.running[proc] = (job, (lock, stdout))
        if gpu is not None:
            self.gpu_of[proc] = gpu

    def _lock(self, run_dir: Path):
        """An exclusive lock on ``<run_dir>.lock``, or None when another process holds it."""
        path = run_dir.with_name(run_dir.name + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        f = path.open("a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        return f

    def _reap(self) -> None:
        """Wait until a child ends; publish its run or record its failure."""
        while True:
            for proc, (job, handles) in list(self.running.items()):
                if proc.poll() is None:
                    continue
                del self.running[proc]
                self.gpu_of.pop(proc, None)
                for handle in handles:
                    if handle is not None:
                        handle.close()
                if proc.returncode == 0:
                    self.places.publish(job)
                else:
                    print(f"error: {job} failed (exit {proc.returncode})", file=sys.stderr, flush=True)
                    self.failed.append(job)
                return
            time.sleep(1)

    def join(self) -> None:
        while self.running:
            self._reap()

    def stop(self) -> None:
        """Terminate the running children (their runs resume from the last checkpoint next time)."""
        for proc in self.running:
            proc.terminate()
        for proc in self.running:
            proc.wait()
        self.running.clear()


# --------------------------------------------------------------------------------------------------- launchers
def sweep_commands(jobs: list[Job], out: Path, epochs: int | None, overrides: list[str], python: str, launcher: str):
    """One Hydra sweep (``-m``) through ``hydra/launcher=<launcher>`` per (protocol, seed, tta) group of ``jobs``,
    over the group's experiments; each run lands in ``out/<experiment>/<protocol>/seed<k>[/tta<K>]`` as with the
    local pool (the sweep's own files, ``multirun.yaml`` and submitit's logs, in ``out/.sweeps/<group>/``)."""
    groups: dict[tuple[str, int, int], list[str]] = {}
    for job in jobs:
        groups.setdefault((job.protocol, job.seed, job.tta), []).append(job.experiment)
    cmds = []
    for (protocol, seed, tta), names in groups.items():
        group = f"{protocol}_seed{seed}" + (f"_tta{tta}" if tta else "")
        run_dir = f"{out}/${{name}}/{protocol}/seed{seed}"
        cmd = [python, "-m", "attentive_gcnn.train", "-m", f"hydra/launcher={launcher}"]
        cmd += [f"experiment={','.join(names)}", f"protocol={protocol}", f"seed={seed}", "progress=false"]
        cmd += [f"hydra.sweep.dir={out / '.sweeps' / group}"]
        if tta:
            cmd += [f"hydra.sweep.subdir={run_dir}/tta{tta}", "eval_only=true", f"ckpt_path={run_dir}/best.ckpt"]
            cmd += [f"eval_tta={tta}"]
        else:
            cmd += [f"hydra.sweep.subdir={run_dir}", "resume=auto", *([f"training.epochs={epochs}"] if epochs else [])]
        cmds.append(cmd + overrides)
    return cmds


def launch_sweeps(jobs: list[Job], places: Places, args) -> list[Job]:
    """Run ``jobs`` (those not done) through ``--launcher``; publish the finished ones; return the failed ones."""
    todo = [job for job in jobs if not places.done(job)]
    if not todo:
        return []
    cmds = sweep_commands(todo, places.out, args.epochs, args.overrides, args.python, args.launcher)
    for cmd in cmds:
        print("$ " + " ".join(cmd), flush=True)
    if args.dry_run:
        return []
    procs = [subprocess.Popen(cmd, cwd=REPO) for cmd in cmds]  # each waits for its job array
    for proc in procs:
        proc.wait()
    from attentive_gcnn.publish import read_summary

    failed = []
    for job in todo:
        if read_summary(places.out / job.path) is None:
            failed.append(job)
        elif places.runs is not None:
            places.publish(job)
    return failed


def run(cmd: list[str], dry_run: bool) -> None:
    print("$ " + " ".join(cmd), flush=True)
    if not dry_run and subprocess.run(cmd, cwd=REPO).returncode != 0:
        raise SystemExit(f"error: command failed: {' '.join(cmd)}")


# --------------------------------------------------------------------------------------------------- figures
def figure_commands(
    table: str,
    places: Places,
    figures: Path,
    overrides: list[str],
    limit: int,
    protocols: Sequence[str] = (PUBLISHED_PROTOCOL,),
    authors_history: Path | None = None,
) -> list[list[str]]:
    """Learning curves of every table, one figure per protocol (``<table>_curves.png`` for clean,
    ``<table>_curves_<protocol>.png`` for another), with the authors' released logs drawn beside them when
    ``authors_history`` is their folder; for rot-MNIST-like tables also accuracy vs rotation angle and attention
    maps, from the published checkpoints where there are (else the finished seed-0 clean runs' selected weights)."""
    from attentive_gcnn.publish import read_summary

    py, scripts = sys.executable, REPO / "scripts"
    runs = places.runs or places.out
    panels = ["--select", f"{table}/*", "--grid", "--ylim", *CURVES_YLIM]
    history = ["--authors-history", str(authors_history)] if authors_history is not None else []
    cmds = []
    for protocol in protocols:
        png = figures / (f"{table}_curves.png" if protocol == "clean" else f"{table}_curves_{protocol}.png")
        curves = ["--runs", str(runs), "--protocol", protocol, *panels, *history, "--out", str(png), "--force"]
        cmds.append([py, str(scripts / "plot_curves.py"), *curves])
    if table not in ROTATION_DATASETS:
        return cmds
    data_dir = [o.split("=", 1)[1] for o in overrides if o.startswith("paths.data_dir=")]
    data = ["--dataset", ROTATION_DATASETS[table], *(["--data-dir", data_dir[-1]] if data_dir else [])]

    def weights(model: str) -> Path | None:
        published = places.checkpoints / table / f"{model}.ckpt" if places.checkpoints else None
        run_dir = places.out / Job(f"{table}/{model}", PUBLISHED_PROTOCOL, PUBLISHED_SEED).path
        trained = run_dir / "best.ckpt" if read_summary(run_dir) is not None else None  # a finished run's only
        return next((p for p in (published, trained) if p is not None and p.is_file()), None)

    ckpts = [str(p) for m in ROTATION_MODELS if (p := weights(m)) is not None]
    if ckpts:
        rotations = ["--limit", str(limit), "--tta", "4", "--out", str(figures / f"{table}_rotations"), "--force"]
        cmds.append([py, str(scripts / "eval_rotations.py"), *ckpts, *data, *rotations])
    for model in ATTENTION_MODELS:
        if (ckpt := weights(model)) is not None:
            png = figures / f"{table}_attention_{model}.png"
            cmds.append([py, str(scripts / "visualize_attention.py"), str(ckpt), *data, "--out", str(png), "--force"])
    return cmds


# ------------------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", choices=sorted(TABLES), default="all")
    parser.add_argument(
        "--seeds", nargs="+", default=["3"], metavar="N", help="N seeds (0 .. N-1) per protocol, or PROTOCOL=N ..."
    )
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs (a quick pass)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, sharing the CPU threads (default 1)")
    parser.add_argument(
        "--python", default=sys.executable, help="the interpreter that runs the jobs, e.g. a fixed checkout's venv"
    )
    parser.add_argument("--gpus", default=None, help="comma-separated GPU ids: one job per GPU at a time (sets --jobs)")
    parser.add_argument(
        "--launcher",
        choices=("slurm", "local"),
        default=None,
        help="run the jobs through hydra/launcher=... (submitit)",
    )
    parser.add_argument("--only", nargs="+", default=[], metavar="GLOB", help="only these experiments")
    parser.add_argument("--out", type=Path, default=None, help="runs directory (default outputs/reproduce)")
    parser.add_argument(
        "--results",
        type=Path,
        help="where runs are published, tables and figures written (default: results/ for a "
        "full pass; a quick pass publishes nothing and writes its tables and figures under its runs directory)",
    )
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="what to do (default all)")
    parser.add_argument("--figure-limit", type=int, default=2000, help="test images per angle in the rotation plot")
    parser.add_argument(
        "--authors-history",
        type=Path,
        metavar="DIR",
        help="the authors' released training logs (*_history.npy), drawn beside the learning curves",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run, e.g. paths.data_dir=/data")
    args = parser.parse_args(argv)
    try:
        args.seeds = parse_seeds(args.seeds, args.protocols)
    except ValueError as e:
        parser.error(str(e))
    if (args.epochs is not None and args.epochs < 1) or args.jobs < 1 or args.figure_limit < 1:
        parser.error("--epochs, --jobs and --figure-limit must be positive")
    if args.authors_history is not None and not args.authors_history.is_dir():
        parser.error(f"--authors-history {args.authors_history}: not a directory")
    if args.gpus is not None:
        args.gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
        if not args.gpus or not all(g.isdigit() for g in args.gpus) or len(set(args.gpus)) != len(args.gpus):
            parser.error("--gpus must list distinct GPU ids, e.g. --gpus 0,1,2,3")
        if args.launcher:
            parser.error("--gpus runs jobs on this machine; with --launcher the launcher's config places them")
    return args


def main(argv: list[str] | None = None) -> int:
    from attentive_gcnn.publish import read_summary

    args = parse_args(argv)
    quick = args.epochs is not None
    out = (args.out or REPO / "outputs" / (f"reproduce_epochs{args.epochs}" if quick else "reproduce")).resolve()
    publish = args.results is not None or not quick
    results = (args.results or REPO / "results").resolve() if publish else out
    places = Places(out, results / "runs" if publish else None, results / "checkpoints" if publish else None)
    tables = {t: experiments(t, args.only) for t in TABLES[args.table]}
    tables = {t: names for t, names in tables.items() if names}
    if not tables:
        raise SystemExit(f"error: no experiment of --table {args.table} matches --only {' '.join(args.only)}")
    if {"train", "tta"} & set(args.stages):
        check_data([n for names in tables.values() for n in names], args.overrides)
    trained = [job for names in tables.values() for job in training_jobs(names, args.seeds)]
    pool = Pool(places, args.jobs, args.dry_run, args.gpus)
    try:
        for stage, jobs in (("train", trained), ("tta", tta_jobs(trained))):
            if stage not in args.stages:
                continue
            if args.launcher:
                if stage == "tta" and not args.dry_run:
                    jobs = [j for j in jobs if read_summary(out / j.trained.path) is not None or places.done(j)]
                pool.failed += launch_sweeps(jobs, places, args)
                continue
            for job in jobs:
                if job.tta and not args.dry_run and read_summary(out / job.trained.path) is None:
                    if not places.done(job):
                        print(f"skipping {job}: no finished training run in {out / job.trained.path}", flush=True)
                    continue
                pool.submit(job, job.command(out, args.epochs, args.overrides, args.python))
            pool.join()
    except KeyboardInterrupt:
        pool.stop()
        raise SystemExit("interrupted: run the same command again to continue") from None
    if pool.failed:
        raise SystemExit(f"error: {len(pool.failed)} run(s) failed: " + "; ".join(map(str, pool.failed)))
    runs = places.runs or out
    if "tables" in args.stages:
        run(
            [
                sys.executable,
                str(REPO / "scripts/make_tables.py"),
                "--runs",
                str(runs),
                "--out",
                str(results / "tables"),
            ],
            args.dry_run,
        )
    if "figures" in args.stages:
        for table in tables:
            figures = figure_commands(
                table,
                places,
                results / "figures",
                args.overrides,
                args.figure_limit,
                args.protocols,
                args.authors_history,
            )
            for cmd in figures:
                run(cmd, args.dry_run)
    print(f"runs: {out}" + (f"\npublished: {places.runs}" if places.runs else ""))
    print(f"tables: {results / 'tables'}\nfigures: {results / 'figures'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
