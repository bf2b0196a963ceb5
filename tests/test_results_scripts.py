"""results/paper.csv, results/reference/*.csv, scripts/make_tables.py and scripts/plot_curves.py on synthetic runs."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from attentive_gcnn.models import model_config, model_names
from attentive_gcnn.results import (
    ResultsError,
    find_runs,
    regularized_beta,
    split_tta,
    student_t_cdf,
    student_t_quantile,
    tta_name,
    welch_interval,
)
from tests.conftest import authors_release_dir

ROOT = Path(__file__).resolve().parents[1]
PAPER, RELEASED = ROOT / "results/paper.csv", ROOT / "results/reference/released_runs.csv"
COHEN = ROOT / "results/reference/cohen_welling_2016.csv"
TABLE1 = ["z2cnn", "p4cnn", "a_p4cnn", "fa_p4cnn", "a_ch_p4cnn", "a_sp_p4cnn", "romhog_p4cnn"]
TABLE1 += ["p4cnn_w11", "p4cnn_w15", "p4cnn_w19"]
TABLE2 = ["allcnnc", "p4_allcnnc", "fa_p4_allcnnc", "p4m_allcnnc", "fa_p4m_allcnnc", "resnet44", "p4m_resnet44"]
TABLE2 += ["fa_p4m_resnet44"]
TABLE3 = ["densenet", "p4_densenet", "fa_p4_densenet", "p4m_densenet", "fa_p4m_densenet"]


def script(name: str):
    """Import ``scripts/NAME.py`` as a module (registered in sys.modules, as dataclasses need)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------- synthetic runs
def write_run(
    root, name, protocol, seed, error, last_error=None, epochs=3, params=24610, where=None, mode="train", **extra
):
    """A run directory as train.py leaves it: summary.json and metrics.csv (accuracy rising by 1 pp per epoch).

    ``extra`` replaces or adds summary keys (``git_sha``, ``environment``, ...).
    """
    run_dir = root / (where or f"{name}/{protocol}/seed{seed}")
    run_dir.mkdir(parents=True)
    select = "valid" if protocol == "clean" else "test"
    last_error = error if last_error is None else last_error
    summary = {
        "status": "complete",
        "mode": mode,
        "name": name,
        "model": name.split("/")[-1],
        "paper_name": "synthetic",
        "dataset": "rotmnist",
        "protocol": protocol,
        "seed": seed,
        "epochs": epochs,
        "best_epoch": epochs,
        "select_split": select,
        "test_error": error,
        "last_test_error": last_error,
        "params": params,
        "wall_time_s": 60.0 * (seed + 1),
        "git_sha": "abc123",
        "environment": {"device_name": "Test GPU"},
        **extra,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    lines = ["epoch,split,loss,accuracy,lr,time_s"]
    for e in range(1, epochs + 1):
        acc = 0.9 + 0.01 * e + 0.001 * seed
        lines += [f"{e},train,{1 / e},{acc},0.001,1.0", f"{e},{select},{1.5 / e},{acc - 0.005},0.001,0.5"]
    lines += [f"{epochs},test_last,0.1,{1 - last_error / 100},0.001,0.5", f"{epochs},test_best,0.1,0.9,0.001,0.5"]
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    return run_dir


def write_eval(root, name, protocol, seed, error, tta=4, where=None, **extra):
    """An evaluation's summary.json as train.py writes it for ``mode=eval`` (TTA over ``tta`` rotations; None:
    an ordinary evaluation), nested in the training run's directory like the published ones; no metrics.csv.
    """
    run_dir = root / (where or f"{name}/{protocol}/seed{seed}/{'eval' if tta is None else f'tta{tta}'}")
    run_dir.mkdir(parents=True)
    summary = {
        "status": "complete",
        "mode": "eval",
        "name": name,
        "protocol": protocol,
        "seed": seed,
        **({} if tta is None else {"tta": tta}),
        "test_error": error,
        "test_accuracy": 100 - error,
        "test_loss": 0.1,
        "params": 24610,
        "git_sha": "abc123",
        "environment": {"device_name": "Test GPU"},
        "checkpoint": f"{name}/{protocol}/seed{seed}/checkpoints/best.pt",
        **extra,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture
def runs_dir(tmp_path):
    root = tmp_path / "runs"
    for seed, (err, last) in enumerate([(2.0, 2.1), (2.5, 2.2), (3.0, 2.3)]):
        write_run(root, "table1/p4cnn", "clean", seed, err, last)
    for seed, err in enumerate([1.0, 2.0, 3.0]):
        write_run(root, "table1/a_p4cnn", "clean", seed, err, params=73130)
    write_run(root, "table1/p4cnn", "original", 0, 2.25)
    write_run(root, "table1/zz_extra", "clean", 0, 5.0, params=1000)
    write_run(root, "mini/p4cnn", "clean", 0, 40.0)
    write_run(root, "table1/p4cnn", "clean", 7, 9.0, mode="eval", where="evals/x")  # not a training run
    return root


def make_tables(argv, capsys):
    rc = script("make_tables").main(argv)
    return rc, capsys.readouterr()


def by_key(rows):
    return {(r["experiment"], r["protocol"]): r for r in rows}


# ------------------------------------------------------------------------------------------- make_tables
def test_make_tables_statistics_join_and_order(runs_dir, tmp_path, capsys):
    out = tmp_path / "tables"
    rc, io = make_tables(["--runs", str(runs_dir), "--out", str(out)], capsys)
    assert rc == 0, io.err
    names = ["mini.csv", "mini.md", "table1.csv", "table1.md", "table1_comparison.csv", "table1_comparison.md"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # mini has no pair with runs on both sides
    rows = read_rows(out / "table1.csv")
    keys = [(r["experiment"], r["protocol"]) for r in rows]
    assert keys == [  # paper.csv order, clean before original, then experiments not in the paper by name
        ("table1/p4cnn", "clean"),
        ("table1/p4cnn", "original"),
        ("table1/a_p4cnn", "clean"),
        ("table1/zz_extra", "clean"),
    ]
    got = by_key(rows)
    p4 = got["table1/p4cnn", "clean"]
    assert (p4["n"], p4["seeds"], p4["epochs"]) == ("3", "0,1,2", "3")
    assert (p4["test_error_mean"], p4["test_error_std"]) == ("2.5", "0.5")
    assert (p4["last_test_error_mean"], p4["last_test_error_std"]) == ("2.2", "0.1")
    assert (p4["paper_error"], p4["paper_std"], p4["diff_mean_minus_paper"]) == ("2.048", "0.045", "0.452")
    assert (p4["params"], p4["wall_time_s_mean"], p4["devices"]) == ("24610", "120", "Test GPU")
    assert (p4["machine"], p4["commit"]) == ("Test GPU", "abc123")
    a = got["table1/a_p4cnn", "clean"]
    assert (a["test_error_mean"], a["test_error_std"], a["diff_mean_minus_paper"]) == ("2", "1", "0.304")
    single = got["table1/p4cnn", "original"]
    assert (single["n"], single["test_error_mean"], single["test_error_std"]) == ("1", "2.25", "")
    extra = got["table1/zz_extra", "clean"]
    assert (extra["paper_error"], extra["diff_mean_minus_paper"], extra["paper_name"]) == ("", "", "synthetic")

    md = (out / "table1.md").read_text()
    assert f"Built from `{runs_dir}`: 8 run(s) in this table, 9 in all." in md
    assert "`Test GPU`" in md and "`abc123`" in md and "python scripts/make_tables.py --runs" in md
    assert "| `table1/p4cnn` | P4CNN | clean | 3 | 3 | 2.500 ± 0.500 | 2.200 ± 0.100 | 2.048 ± 0.045 | +0.452 |" in md
    assert "`table1/z2cnn`" in md.split("No runs here for:")[1]  # paper rows without runs are listed
    assert "summed over the runs: `clean` 13.0 min for 7 training runs; `original` 60 s for 1 training run." in md


def test_make_tables_mini_is_labelled_not_comparable(runs_dir, tmp_path, capsys):
    out = tmp_path / "tables"
    assert make_tables(["--runs", str(runs_dir), "--out", str(out)], capsys)[0] == 0
    (row,) = read_rows(out / "mini.csv")
    assert row["paper_rotmnist_not_comparable_error"] == "2.048" and "diff_mean_minus_paper" not in row
    assert "paper % (rot-MNIST, not comparable)" in (out / "mini.md").read_text()


def test_make_tables_refreshes_the_readme_blocks_only(runs_dir, tmp_path, capsys):
    out, readme = tmp_path / "tables", tmp_path / "README.md"
    shown = script("make_tables").shown
    block = f"<!-- begin: {shown(out / 'table1.md')} -->\nold rows\n<!-- end: {shown(out / 'table1.md')} -->\n"
    other = "<!-- begin: results/tables/none.md -->\nkept\n<!-- end: results/tables/none.md -->\n"
    readme.write_text("# Title\n\n" + block + "\ntext between\n\n" + other)
    assert make_tables(["--runs", str(runs_dir), "--out", str(out), "--readme", str(readme)], capsys)[0] == 0
    text = readme.read_text()
    body = (out / "table1.md").read_text()
    rows = body[body.index("| experiment") :]
    assert f"<!-- begin: {shown(out / 'table1.md')} -->\n{rows}<!-- end: " in text
    assert "old rows" not in text and text.startswith("# Title\n\n") and "text between" in text
    assert other in text  # a block whose table was not written is left alone
    assert make_tables(["--runs", str(runs_dir), "--out", str(out), "--readme", str(readme)], capsys)[0] == 0
    assert readme.read_text() == text
    section = f"{shown(out / 'table1_comparison.md')}#test-error-at-the-last-epoch"
    readme.write_text(f"<!-- begin: {section} -->\n<!-- end: {section} -->\n")
    assert make_tables(["--runs", str(runs_dir), "--out", str(out), "--readme", str(readme)], capsys)[0] == 0
    body = readme.read_text().splitlines()[1:-1]
    assert body[0].startswith("| model | baseline") and all(line.startswith("|") for line in body)
    comparison = (out / "table1_comparison.md").read_text()
    assert "\n".join(body) in comparison[comparison.index("## Test error at the last epoch") :]
    readme.write_text("<!-- begin: x.md#nope -->\n<!-- end: x.md#nope -->\n".replace("x.md", shown(out / "table1.md")))
    rc, io = make_tables(["--runs", str(runs_dir), "--out", str(out), "--readme", str(readme)], capsys)
    assert rc == 2 and "no section #nope" in io.err


def test_make_tables_is_idempotent(runs_dir, tmp_path, capsys):
    for seed in range(3):
        write_eval(runs_dir, "table1/p4cnn", "clean", seed, 1.5 + seed / 10)
    out = tmp_path / "tables"
    argv = ["--runs", str(runs_dir), "--out", str(out)]
    assert make_tables(argv, capsys)[0] == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"table1_comparison.md", "table1_comparison.csv"} <= set(first)
    assert b"table1/p4cnn+tta4" in first["table1.csv"] and b"table1/p4cnn+tta4" in first["table1_comparison.csv"]
    assert make_tables(argv, capsys)[0] == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_make_tables_writes_repository_relative_paths(tmp_path, monkeypatch, capsys):
    """Given absolute or relative paths, the tables name ``--runs`` etc. relative to the repository: same bytes."""
    monkeypatch.setattr(script("make_tables"), "ROOT", tmp_path)
    (tmp_path / "results").mkdir()
    shutil.copy(PAPER, tmp_path / "results/paper.csv")
    write_run(tmp_path / "results/runs", "mini/p4cnn", "clean", 0, 40.0)
    write_run(tmp_path / "results/runs", "mini/a_p4cnn", "clean", 0, 30.0)
    argv = ["--runs", str(tmp_path / "results/runs"), "--out", str(tmp_path / "results/tables")]
    assert make_tables(argv, capsys)[0] == 0
    first = {p.name: p.read_text() for p in (tmp_path / "results/tables").iterdir()}
    assert set(first) == {"mini.md", "mini.csv", "mini_comparison.md", "mini_comparison.csv"}
    for name in ("mini.md", "mini_comparison.md"):
        assert str(tmp_path) not in first[name]
        assert "Built from `results/runs`" in first[name]
        assert "`python scripts/make_tables.py --runs results/runs --out results/tables`" in first[name]
    monkeypatch.chdir(tmp_path)
    assert make_tables(["--runs", "results/runs", "--out", "results/tables"], capsys)[0] == 0
    assert {p.name: p.read_text() for p in (tmp_path / "results/tables").iterdir()} == first


@pytest.fixture
def mini_runs(tmp_path):
    """Mini runs with hand-checkable differences, TTA evaluations of z2cnn and evaluations the tables ignore."""
    root = tmp_path / "runs"
    cpu = {"device": "cpu", "device_name": "x86_64", "cpu_threads": 1, "host": "vm", "platform": "Linux-x"}
    for seed in range(3):
        write_run(root, "mini/z2cnn", "clean", seed, 5.0 + seed, dataset="rotmnist_mini", environment=cpu)
        write_run(root, "mini/p4cnn", "clean", seed, 2.0 + seed / 10, last_error=3.0)
        write_run(root, "mini/a_p4cnn", "clean", seed, 1.0 + seed / 10, last_error=2.0 + seed / 10)
        write_eval(root, "mini/z2cnn", "clean", seed, 3.0 + seed, git_sha=f"{seed}bcdef0123456789+dirty")
    for seed in range(2):
        write_run(root, "mini/p4cnn_w19", "clean", seed, 1.0 + seed / 5, last_error=2.0 + seed / 5)
    write_run(root, "mini/a_p4cnn", "original", 0, 1.0)
    write_run(root, "mini/p4cnn_w19", "original", 0, 1.5)
    write_eval(root, "mini/z2cnn", "clean", 0, 3.5, tta=16, wall_time_s=30.0)
    write_eval(root, "mini/z2cnn", "clean", 1, 0.5, tta=None)  # an ordinary evaluation
    write_eval(root, "mini/z2cnn", "clean", 2, 0.5, tta=1)  # one rotation: no augmentation
    return root


def test_find_runs_returns_tta_evaluations_on_request(mini_runs):
    assert all(r.tta is None for r in find_runs(mini_runs))  # plot_curves reads metrics.csv: no evaluations
    tta = [r for r in find_runs(mini_runs, tta=True) if r.tta is not None]
    assert [(r.name, r.seed) for r in tta] == [("mini/z2cnn+tta16", 0)] + [("mini/z2cnn+tta4", s) for s in range(3)]
    assert {(r.base, r.protocol) for r in tta} == {("mini/z2cnn", "clean")} and tta[1].dir.name == "tta4"
    assert tta_name("mini/z2cnn", 4) == "mini/z2cnn+tta4" and split_tta("mini/z2cnn+tta16") == ("mini/z2cnn", 16)
    assert split_tta("mini/z2cnn") == ("mini/z2cnn", None) and split_tta("mini/odd+ttax") == ("mini/odd+ttax", None)
    write_eval(mini_runs, "mini/z2cnn", "clean", 0, 3.0, where="copy/tta4")
    with pytest.raises(ResultsError, match=r"mini/z2cnn\+tta4 protocol=clean seed=0"):
        find_runs(mini_runs, tta=True)


def test_make_tables_places_tta_rows_after_their_experiment(mini_runs, tmp_path, capsys):
    out = tmp_path / "tables"
    rc, io = make_tables(["--runs", str(mini_runs), "--out", str(out)], capsys)
    assert rc == 0, io.err
    rows = read_rows(out / "mini.csv")
    assert [(r["experiment"], r["protocol"]) for r in rows] == [
        ("mini/z2cnn", "clean"),
        ("mini/z2cnn+tta4", "clean"),
        ("mini/z2cnn+tta16", "clean"),
        ("mini/p4cnn", "clean"),
        ("mini/a_p4cnn", "clean"),
        ("mini/a_p4cnn", "original"),
        ("mini/p4cnn_w19", "clean"),
        ("mini/p4cnn_w19", "original"),
    ]
    z2, tta = by_key(rows)["mini/z2cnn", "clean"], by_key(rows)["mini/z2cnn+tta4", "clean"]
    assert (z2["machine"], z2["commit"]) == ("cpu (x86_64), 1 thread, host vm", "abc123")
    assert (tta["n"], tta["seeds"], tta["test_error_mean"], tta["test_error_std"]) == ("3", "0,1,2", "4", "1")
    assert (tta["last_test_error_mean"], tta["last_test_error_std"], tta["paper_rotmnist_not_comparable_error"]) == (
        "",
        "",
        "",
    )
    assert (tta["model"], tta["dataset"], tta["epochs"], tta["paper_name"]) == (
        "z2cnn",
        "rotmnist_mini",
        "3",
        "Z2CNN + TTA4",
    )
    assert (tta["machine"], tta["commit"]) == ("Test GPU", "0bcdef0+dirty, 1bcdef0+dirty, 2bcdef0+dirty")
    md = (out / "mini.md").read_text()
    assert "| `mini/z2cnn+tta4` | Z2CNN + TTA4 | clean | 3 | 3 | 4.000 ± 1.000 |  |" in md
    assert md.index("`mini/z2cnn`") < md.index("`mini/z2cnn+tta4`") < md.index("`mini/z2cnn+tta16`")
    assert "| Test GPU | 0bcdef0+dirty, 1bcdef0+dirty, 2bcdef0+dirty |" in md and "A `+tta<K>` row" in md
    totals = "`clean` 21.0 min for 11 training runs and 30 s for 4 TTA evaluations; `original` 2.0 min for 2 training"
    assert totals in md


def test_make_tables_compares_pairs_with_welch_intervals(mini_runs, tmp_path, capsys):
    out = tmp_path / "tables"
    assert make_tables(["--runs", str(mini_runs), "--out", str(out)], capsys)[0] == 0
    rows = read_rows(out / "mini_comparison.csv")
    got = {(r["metric"], r["protocol"], r["model"], r["baseline"]): r for r in rows}
    assert list(got)[:5] == [  # metric, protocol, then the order of the pairs; TTA pairs last
        ("test_error", "clean", "mini/z2cnn", "mini/p4cnn"),
        ("test_error", "clean", "mini/a_p4cnn", "mini/p4cnn"),
        ("test_error", "clean", "mini/a_p4cnn", "mini/p4cnn_w19"),
        ("test_error", "clean", "mini/z2cnn+tta4", "mini/z2cnn"),
        ("test_error", "clean", "mini/z2cnn+tta16", "mini/z2cnn"),
    ]
    assert len(got) == len(rows) == 10  # no fa_p4cnn etc. (no runs); no last-epoch error for TTA rows

    def check(key, *expected):
        r = got[key]
        values = (r["n_model"], r["n_baseline"], r["model_mean"], r["baseline_mean"], r["diff_model_minus_baseline"])
        assert values + (r["ci95_low"], r["ci95_high"], r["welch_df"], r["verdict"]) == expected, key

    # [1.0, 1.1, 1.2] vs [2.0, 2.1, 2.2]: diff -1, se = sqrt(0.01/3 + 0.01/3), df = 4, t = 2.776445
    check(("test_error", "clean", "mini/a_p4cnn", "mini/p4cnn"), *expected_row(3, 3, 1.1, 2.1, -1, 0.01, 0.01, "lower"))
    check(("test_error", "clean", "mini/z2cnn", "mini/p4cnn"), *expected_row(3, 3, 6, 2.1, 3.9, 1, 0.01, "higher"))
    check(("test_error", "clean", "mini/a_p4cnn", "mini/p4cnn_w19"), *expected_row(3, 2, 1.1, 1.1, 0, 0.01, 0.02))
    # the TTA rows against their experiment: [3, 4, 5] vs [5, 6, 7], df = 4: [-4.266958, 0.266958] contains 0
    check(("test_error", "clean", "mini/z2cnn+tta4", "mini/z2cnn"), *expected_row(3, 3, 4, 6, -2, 1, 1))
    check(("test_error", "clean", "mini/z2cnn+tta16", "mini/z2cnn"), "1", "3", "3.5", "6", "-2.5", "", "", "", "n<2")
    check(("test_error", "original", "mini/a_p4cnn", "mini/p4cnn_w19"), "1", "1", "1", "1.5", "-0.5", "", "", "", "n<2")
    # the last epoch: a_p4cnn [2.0, 2.1, 2.2] vs a constant 3.0 (df = n_model - 1)
    check(
        ("last_test_error", "clean", "mini/a_p4cnn", "mini/p4cnn"), *expected_row(3, 3, 2.1, 3, -0.9, 0.01, 0, "lower")
    )
    assert not any(k[0] == "last_test_error" and "+tta" in k[2] for k in got)

    md = (out / "mini_comparison.md").read_text()
    assert "## Test error at the selected epoch" in md and "## Test error at the last epoch" in md
    line = (
        "| `mini/z2cnn+tta4` | `mini/z2cnn` | TTA4 vs none | clean | 3 / 3 | 4.000 ± 1.000 | 6.000 ± 1.000 | -2.000 |"
    )
    assert line + " [-4.267, +0.267] | 4.0 | no difference within noise |" in md
    assert "| `mini/a_p4cnn` | `mini/p4cnn_w19` | parameter-matched | original | 1 / 1 |" in md


def expected_row(n_a, n_b, mean_a, mean_b, diff, var_a, var_b, verdict=None):
    """The comparison CSV's values for two samples with these sizes, means and sample variances (Welch by hand)."""
    va, vb = var_a / n_a, var_b / n_b
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    half = student_t_quantile(0.975, df) * math.sqrt(va + vb)
    fmt = script("make_tables").num
    verdict = verdict or "no difference within noise"
    return (str(n_a), str(n_b), *map(fmt, (mean_a, mean_b, diff, diff - half, diff + half)), fmt(df, 3), verdict)


# ------------------------------------------------------------------------------------------- statistics
@pytest.mark.parametrize(
    ("df", "expected"), [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423), (1e6, 1.95996)]
)
def test_student_t_quantile_known_values(df, expected):
    assert student_t_quantile(0.975, df) == pytest.approx(expected, abs=5e-5)
    assert student_t_quantile(0.025, df) == -student_t_quantile(0.975, df)


def test_student_t_quantile_fractional_large_and_round_trip():
    between = student_t_quantile(0.975, 3.5)
    assert student_t_quantile(0.975, 4) < between < student_t_quantile(0.975, 3)
    assert student_t_quantile(0.975, 1e9) == pytest.approx(1.959964, abs=1e-6)
    assert student_t_quantile(0.975, math.inf) == pytest.approx(1.959964, abs=1e-6)
    assert student_t_quantile(0.995, 2) == pytest.approx(9.9248, abs=5e-5) and student_t_quantile(0.5, 7) == 0
    for p, df in [(0.6, 1), (0.9, 2.5), (0.975, 7.3), (0.999, 50), (0.01, 3)]:
        assert student_t_cdf(student_t_quantile(p, df), df) == pytest.approx(p, abs=1e-12)
    assert student_t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/pi
    with pytest.raises(ValueError):
        student_t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        student_t_quantile(0.9, 0)


def test_regularized_beta_closed_forms():
    for x in (0.0, 0.1, 0.5, 0.93, 1.0):
        assert regularized_beta(x, 1, 1) == pytest.approx(x, abs=1e-14)
        assert regularized_beta(x, 2.5, 1) == pytest.approx(x**2.5, abs=1e-14)  # I_x(a, 1) = x^a
    assert regularized_beta(0.5, 7.5, 7.5) == pytest.approx(0.5, abs=1e-14)  # symmetry
    assert regularized_beta(0.3, 2, 3) == pytest.approx(1 - regularized_beta(0.7, 3, 2), abs=1e-14)


def test_welch_interval_by_hand_and_negative_control():
    w = welch_interval([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])  # diff -3, se² = 1/3 + 1/3, df = 4
    half = 2.7764451052 * math.sqrt(2 / 3)
    assert (w.diff, w.df) == (-3.0, pytest.approx(4.0)) and w.verdict == "lower"
    assert (w.low, w.high) == (pytest.approx(-3 - half, abs=1e-9), pytest.approx(-3 + half, abs=1e-9))
    assert welch_interval([4.0, 5.0, 6.0], [1.0, 2.0, 3.0]).verdict == "higher"
    uneven = welch_interval([0.0, 2.0], [0.0, 0.0, 3.0, 3.0])  # se² = 2/2 + 3/4, df = 1.75² / (1 + 0.75²/3)
    assert uneven.df == pytest.approx(49 / 19) and uneven.verdict == "no difference within noise"
    same = welch_interval([1.0, 2.0, 4.0], [1.0, 2.0, 4.0])  # negative control: identical samples
    assert same.diff == 0 and same.low < 0 < same.high and same.verdict.startswith("no difference")
    single = welch_interval([1.0], [2.0, 3.0])
    assert (single.diff, single.low, single.high, single.df, single.verdict) == (-1.5, None, None, None, "n<2")


def test_make_tables_warns_about_differing_epochs(tmp_path, capsys):
    write_run(tmp_path / "runs", "table1/fa_p4cnn", "clean", 0, 2.0, epochs=3)
    write_run(tmp_path / "runs", "table1/fa_p4cnn", "clean", 1, 2.0, epochs=5)
    rc, io = make_tables(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "t")], capsys)
    assert rc == 0 and "warning: table1/fa_p4cnn (clean): runs differ in the number of epochs: 3, 5" in io.err
    assert read_rows(tmp_path / "t/table1.csv")[0]["epochs"] == "3/5"


def test_make_tables_errors(runs_dir, tmp_path, capsys):
    copy = shutil.copytree(runs_dir / "table1/p4cnn/clean/seed1", runs_dir / "again/seed1")
    rc, io = make_tables(["--runs", str(runs_dir), "--out", str(tmp_path / "t")], capsys)
    assert rc == 2 and io.err.startswith("error: duplicate runs")
    assert str(copy) in io.err and str(runs_dir / "table1/p4cnn/clean/seed1") in io.err
    (tmp_path / "empty").mkdir()
    rc, io = make_tables(["--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "t2")], capsys)
    assert rc == 2 and io.err.startswith("error: no complete training runs") and not (tmp_path / "t2").exists()


def edit_summary(run_dir: Path, **changes) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, **changes}))


def test_runs_with_mistyped_summary_values_are_skipped_with_a_warning(tmp_path, capsys):
    root = tmp_path / "runs"
    write_run(root, "table1/p4cnn", "clean", 0, 2.0)
    edit_summary(write_run(root, "table1/p4cnn", "clean", 1, 2.5), seed="abc")
    edit_summary(write_run(root, "table1/p4cnn", "clean", 2, 3.0), test_error="oops", params=True)
    rc, io = make_tables(["--runs", str(root), "--out", str(tmp_path / "t")], capsys)
    assert rc == 0 and "seed must be an integer, not 'abc'" in io.err
    assert "test_error='oops', params=True must be numbers" in io.err
    (row,) = read_rows(tmp_path / "t/table1.csv")
    assert row["n"] == "1" and float(row["test_error_mean"]) == 2.0


def test_a_bad_metrics_row_is_named_by_file_and_line(tmp_path, capsys):
    run_dir = write_run(tmp_path / "runs", "table1/p4cnn", "clean", 0, 2.0)
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    lines[3] = "foo" + lines[3][1:]
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    rc, io = plot(["--runs", str(tmp_path / "runs"), "--select", "*", "--out", str(tmp_path / "c.png")], capsys)
    assert rc == 2 and f"error: {run_dir / 'metrics.csv'}, line 4: not a metrics row" in io.err
    assert not (tmp_path / "c.png").exists()


def test_make_tables_checks_out_and_readme_before_writing(runs_dir, tmp_path, capsys):
    out = tmp_path / "t"
    assert make_tables(["--runs", str(runs_dir), "--out", str(out)], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    write_run(runs_dir, "table1/p4cnn", "clean", 5, 9.0)  # a rebuild would change the tables
    rc, io = make_tables(["--runs", str(runs_dir), "--out", str(out), "--readme", str(tmp_path / "no.md")], capsys)
    assert rc == 2 and io.err.startswith("error: --readme") and "cannot read it" in io.err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing half-written
    (tmp_path / "file").write_text("x")
    rc, io = make_tables(["--runs", str(runs_dir), "--out", str(tmp_path / "file/t")], capsys)
    assert rc == 2 and "is not a directory" in io.err


def test_plot_curves_rejects_a_bad_reference_and_ylim(runs_dir, tmp_path, capsys):
    argv = ["--runs", str(runs_dir), "--select", "table1/p4cnn", "--out", str(tmp_path / "c.png")]
    (tmp_path / "ref.csv").write_text("name,value\nx,1\n")
    rc, io = plot(argv + ["--reference", str(tmp_path / "ref.csv")], capsys)
    assert rc == 2 and "lacks the column(s) experiment, metric" in io.err
    rc, io = plot(argv + ["--ylim", "99", "95"], capsys)
    assert rc == 2 and "needs LOW < HIGH" in io.err
    (tmp_path / "file").write_text("x")
    rc, io = plot([*argv[:-1], str(tmp_path / "file/c.png")], capsys)
    assert rc == 2 and "file is not a directory" in io.err and not (tmp_path / "c.png").exists()
    (tmp_path / "header.csv").write_text(",".join(script("plot_curves").REFERENCE_COLUMNS) + "\n")
    rc, io = plot(argv + ["--reference", str(tmp_path / "header.csv")], capsys)  # no rows: no lines, no error
    assert rc == 0 and (tmp_path / "c.png").exists()


def test_plot_curves_names_an_unreadable_authors_history(runs_dir, tmp_path, capsys):
    history = tmp_path / "release"
    history.mkdir()
    file = script("plot_curves").HISTORY["table1/p4cnn"][0]
    np.save(history / file, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    argv = ["--runs", str(runs_dir), "--select", "table1/p4cnn", "--out", str(tmp_path / "c.png")]
    rc, io = plot(argv + ["--authors-history", str(history)], capsys)
    assert rc == 2 and f"error: {history / file} is not one of the authors' history arrays" in io.err


def test_find_runs_reads_identity_from_the_files(runs_dir):
    runs = find_runs(runs_dir)
    assert len(runs) == 9 and all(r.complete for r in runs)
    assert [r.key for r in runs][:2] == [("mini/p4cnn", "clean", 0), ("table1/a_p4cnn", "clean", 0)]


def test_find_runs_can_include_unfinished_runs(tmp_path):
    run_dir = write_run(tmp_path, "table1/p4cnn", "clean", 3, 2.0)
    (run_dir / "summary.json").unlink()
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra/config.yaml").write_text("name: table1/p4cnn\nseed: 3\nprotocol: clean\n")
    assert find_runs(tmp_path) == []
    (run,) = find_runs(tmp_path, incomplete=True)
    assert run.key == ("table1/p4cnn", "clean", 3) and not run.complete


# ---------------------------------------------------------------------------------------- the CSV files
def expected_experiments() -> list[tuple[str, str, str, str]]:
    """(table, experiment, model, dataset) of every row paper.csv must have, in order."""
    rows = [("table1", f"table1/{m}", m, "rotmnist") for m in TABLE1]
    rows += [("table2", f"table2/{m}_{d}", m, d) for m in TABLE2 for d in ("cifar10", "cifar10_aug")]
    return rows + [("table3", f"table3/{m}", m, "pcam") for m in TABLE3]


def test_paper_csv_has_one_row_per_cell_with_exact_params():
    rows = read_rows(PAPER)
    assert [(r["table"], r["experiment"], r["model"], r["dataset"]) for r in rows] == expected_experiments()
    for r in rows:
        cfg = model_config(r["model"])
        assert int(r["params"]) == cfg.params and r["paper_name"] == cfg.paper_name, r["experiment"]
        assert r["dataset"].startswith(cfg.dataset) and r["source"] and r["note"]
        if r["paper_error"] == "":
            assert r["paper_std"] == ""
    paper = {r["experiment"]: (r["paper_error"], r["paper_std"]) for r in rows}
    assert paper["table1/p4cnn"] == ("2.048", "0.045") and paper["table1/a_p4cnn"] == ("1.696", "0.021")
    assert paper["table1/fa_p4cnn"] == ("1.795", "0.028") and paper["table1/z2cnn"] == ("", "")
    assert (
        paper["table2/fa_p4m_allcnnc_cifar10"] == ("6.93", "") and paper["table2/fa_p4m_allcnnc_cifar10_aug"][0] == ""
    )
    assert paper["table2/p4m_resnet44_cifar10"][0] == "15.72" and paper["table3/fa_p4m_densenet"][0] == "10.88"
    assert all(paper[f"table2/{m}_cifar10_aug"][0] == "" for m in TABLE2)


def test_reference_csvs_parse_and_point_at_paper_rows():
    experiments = {r["experiment"] for r in read_rows(PAPER)}
    released = read_rows(RELEASED)
    assert {r["experiment"] for r in released} <= experiments
    assert {r["run"] for r in released} == {"z2cnn", "p4cnn", "att_p4cnn", "f_att_p4cnn", "f_att_p4m_allcnnc"} | {
        "f_att_p4m_densenet"
    }
    assert all(r["protocol"] == "original" and r["unit"] and r["source"] for r in released)
    values = {(r["run"], r["metric"]): float(r["value"]) for r in released}
    assert values["att_p4cnn", "test_error"] == 1.644 and values["f_att_p4m_densenet", "best_epoch"] == 24
    assert next(r for r in released if r["run"] == "f_att_p4m_densenet")["experiment"] == "table3/p4m_densenet"
    cohen = read_rows(COHEN)
    assert all(float(r["error"]) > 0 for r in cohen)
    assert {r["model"] for r in cohen} - set(model_names()) == {"p4cnn_rotation_pooling"}


@pytest.mark.skipif(authors_release_dir() is None, reason="the authors' release is not available")
def test_released_runs_agree_with_the_authors_histories():
    history = script("plot_curves").HISTORY
    released = read_rows(RELEASED)
    for experiment, (file, seed) in history.items():
        h = np.load(authors_release_dir() / file)
        got = {r["metric"]: float(r["value"]) for r in released if r["experiment"] == experiment}
        assert int(got["epochs"]) == h.shape[1] and int(got["best_epoch"]) == int(h[0].argmax()) + 1, experiment
        assert got["best_val_accuracy"] == pytest.approx(h[0].max(), abs=1e-5)
        assert got["last_epoch_val_accuracy"] == pytest.approx(h[0, -1], abs=1e-5)
        assert got["mean_last10_val_accuracy"] == pytest.approx(h[0, -10:].mean(), abs=1e-4)
        assert {int(r["seed"]) for r in released if r["experiment"] == experiment} == {seed}


# ------------------------------------------------------------------------------------------- plot_curves
def plot(argv, capsys):
    rc = script("plot_curves").main(argv)
    return rc, capsys.readouterr()


def test_plot_curves_writes_a_png_and_refuses_to_overwrite(runs_dir, tmp_path, capsys):
    out = tmp_path / "figs/curves.png"
    argv = ["--runs", str(runs_dir), "--select", "table1/*p4cnn", "--out", str(out)]
    rc, io = plot(argv, capsys)
    assert rc == 0 and io.out.strip() == str(out) and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = out.read_bytes()
    rc, io = plot(argv + ["--metric", "loss", "--band", "std"], capsys)
    assert rc == 2 and "exists; pass --force" in io.err and out.read_bytes() == before
    rc, io = plot(argv + ["--metric", "loss", "--band", "std", "--force"], capsys)
    assert rc == 0 and out.read_bytes() != before


def test_plot_curves_errors_when_nothing_matches(runs_dir, tmp_path, capsys):
    out = tmp_path / "none.png"
    rc, io = plot(["--runs", str(runs_dir), "--select", "table9/*", "--out", str(out)], capsys)
    assert rc == 2 and io.err.startswith("error: no runs") and "table1/p4cnn (clean)" in io.err
    rc, io = plot(["--runs", str(runs_dir), "--select", "mini/*", "--protocol", "original", "--out", str(out)], capsys)
    assert rc == 2 and not out.exists()


@pytest.mark.skipif(authors_release_dir() is None, reason="the authors' release is not available")
def test_plot_curves_overlays_the_authors_history(runs_dir, tmp_path, capsys):
    out = tmp_path / "authors.png"
    argv = [
        "--runs",
        str(runs_dir),
        "--select",
        "table1/p4cnn",
        "--protocol",
        "original",
        "--out",
        str(out),
        "--ylim",
        "90",
        "100",
    ]
    rc, io = plot(argv + ["--authors-history", str(authors_release_dir())], capsys)
    assert rc == 0 and out.is_file(), io.err


@pytest.fixture
def grid_runs(tmp_path):
    """Three mini experiments (z2cnn with a TTA evaluation per seed, p4cnn with one seed) and one original run."""
    root = tmp_path / "runs"
    for seed in range(3):
        write_run(root, "mini/z2cnn", "clean", seed, 5.0, epochs=4)
        write_eval(root, "mini/z2cnn", "clean", seed, 4.0)  # tta4/summary.json: never a curve
        write_run(root, "mini/a_p4cnn", "clean", seed, 2.0, epochs=4)
    write_run(root, "mini/p4cnn", "clean", 0, 3.0, epochs=4)
    write_run(root, "mini/p4cnn", "original", 0, 3.0, epochs=4)
    return root


@pytest.fixture
def grid_figures(monkeypatch):
    """The figures plot_curves saves: titles of the visible panels, y limits of the first, legend labels, grid shape."""
    module, saved = script("plot_curves"), []
    original = module.save_png

    def record(fig, path):
        axes = [ax for ax in fig.axes if ax.get_visible()]
        labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        shape = axes[0].get_subplotspec().get_gridspec().get_geometry()
        saved.append(dict(titles=[ax.get_title() for ax in axes], ylim=axes[0].get_ylim(), labels=labels, shape=shape))
        original(fig, path)

    monkeypatch.setattr(module, "save_png", record)
    return saved


def test_plot_curves_grid_draws_one_panel_per_experiment(grid_runs, grid_figures, tmp_path, capsys):
    out = tmp_path / "figs/grid.png"
    argv = ["--runs", str(grid_runs), "--select", "mini/*", "--grid", "--ylim", "90", "100", "--out", str(out)]
    rc, io = plot(argv, capsys)
    assert rc == 0, io.err
    assert io.out.strip() == str(out) and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = grid_figures
    assert fig["titles"] == ["a_p4cnn (n=3)", "p4cnn (n=1)", "z2cnn (n=3)"]  # no panel for mini/z2cnn+tta4
    assert fig["ylim"] == (90.0, 100.0) and fig["shape"] == (1, 3)
    assert fig["labels"] == [
        "train: mean over seeds, band: min–max over seeds",
        "valid (selection split): mean over seeds, band: min–max over seeds",
    ]
    # the panels' curves: both splits, the selection split read from the summary; one seed: the band collapses
    module = script("plot_curves")
    args = module.parse_args(argv)
    panels = module.make_panels(module.group_runs(module.select_runs(find_runs(grid_runs), ["mini/*"], "clean")), args)
    p4 = next(p for p in panels if p.name == "mini/p4cnn")
    assert [(c.split, c.n) for c in p4.curves] == [("train", 1), ("valid", 1)]
    assert np.array_equal(p4.curves[0].low, p4.curves[0].high) and np.array_equal(p4.curves[0].mean, p4.curves[0].low)
    z2 = next(p for p in panels if p.name == "mini/z2cnn")
    assert z2.curves[0].mean == pytest.approx([91.1, 92.1, 93.1, 94.1])  # 90 + e + 0.1 (the seeds' mean)
    assert z2.curves[1].low == pytest.approx([90.5, 91.5, 92.5, 93.5]) and z2.curves[1].high[0] == pytest.approx(90.7)
    # no overwrite without --force
    before = out.read_bytes()
    rc, io = plot(argv + ["--band", "std"], capsys)
    assert rc == 2 and "exists; pass --force" in io.err and out.read_bytes() == before
    assert plot(argv + ["--band", "std", "--force"], capsys)[0] == 0 and out.read_bytes() != before


def test_plot_curves_grid_single_seed_original_protocol_and_layout(grid_runs, grid_figures, tmp_path, capsys):
    out = tmp_path / "one.png"
    argv = ["--runs", str(grid_runs), "--select", "mini/p4cnn", "--grid", "--protocol", "original", "--out", str(out)]
    rc, io = plot(argv + ["--no-reference"], capsys)
    assert rc == 0 and out.is_file(), io.err
    (fig,) = grid_figures
    assert fig["titles"] == ["p4cnn (n=1)"] and fig["labels"][1].startswith("test (selection split)")
    # ten experiments in two rows of five
    for i in range(10):
        write_run(grid_runs, f"mini/m{i}", "clean", 0, 1.0, epochs=2)
    rc, io = plot(
        ["--runs", str(grid_runs), "--select", "mini/m*", "--grid", "--out", str(tmp_path / "ten.png")], capsys
    )
    assert rc == 0, io.err
    assert grid_figures[-1]["titles"] == [f"m{i} (n=1)" for i in range(10)] and grid_figures[-1]["shape"] == (2, 5)
    rc, io = plot(
        [
            "--runs",
            str(grid_runs),
            "--select",
            "mini/*",
            "--grid",
            "--split",
            "train",
            "--out",
            str(tmp_path / "t.png"),
        ],
        capsys,
    )
    assert rc == 2 and "--grid" in io.err


def test_plot_curves_mini_panels_take_the_authors_log_as_other_data(tmp_path):
    module = script("plot_curves")
    assert module.history_source("table1/p4cnn") == ("rotmnist_p4cnn_history.npy", 0, "authors' released log (seed 0)")
    file, seed, label = module.history_source("mini/fa_p4cnn")
    assert (file, seed) == ("rotmnist_f_att_p4cnn_history.npy", 0) and "real MNIST-rot (other data)" in label
    assert module.history_source("mini/romhog_p4cnn") is None and module.history_source("other/p4cnn") is None
    history = np.stack([np.full(5, 0.97), np.full(5, 0.1), np.full(5, 0.99), np.full(5, 0.05)])
    np.save(tmp_path / "rotmnist_z2cnn_history.npy", history)
    values, label, split = module.authors_log(tmp_path, "mini/z2cnn", "accuracy", train=False)
    assert values == pytest.approx([97.0] * 5) and split == "test" and "other data" in label
    assert module.authors_log(tmp_path, "mini/z2cnn", "loss", train=True)[0] == pytest.approx([0.05] * 5)
    assert module.authors_log(None, "mini/z2cnn", "accuracy", train=True) is None


def test_plot_curves_grid_overlays_the_authors_logs(grid_runs, grid_figures, tmp_path, capsys):
    history = np.stack([np.linspace(0.9, 0.98, 6), np.full(6, 0.1), np.linspace(0.9, 0.99, 6), np.full(6, 0.05)])
    for file in ("rotmnist_z2cnn_history.npy", "rotmnist_p4cnn_history.npy"):
        np.save(tmp_path / file, history)
    out = tmp_path / "authors_grid.png"
    argv = ["--runs", str(grid_runs), "--select", "mini/*", "--grid", "--authors-history", str(tmp_path)]
    rc, io = plot(argv + ["--out", str(out)], capsys)
    assert rc == 0 and out.is_file(), io.err
    labels = grid_figures[-1]["labels"]
    assert "authors' log, real MNIST-rot (other data), seed 0: train" in labels
    assert "authors' log, real MNIST-rot (other data), seed 0: test" in labels
    assert "rotmnist_att_p4cnn_history.npy not found" in io.err  # mini/a_p4cnn: warned, panel without the log


def test_experiment_configs_have_paper_rows():
    """Every ``configs/experiment/table*/`` experiment name is a row of paper.csv (and so joins in the tables)."""
    from omegaconf import OmegaConf

    experiments = {r["experiment"] for r in read_rows(PAPER)}
    names = {OmegaConf.load(p).get("name") for p in sorted((ROOT / "configs/experiment").glob("table*/*.yaml"))}
    assert names <= experiments
