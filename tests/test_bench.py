"""scripts/bench.py and attentive_gcnn.benchmark: output format, the plain_p4cnn floor, the report and the refusals.

No timing is asserted: only that the numbers are there, positive, and put together as documented.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attentive_gcnn.benchmark import cli, selection, targets, worker
from attentive_gcnn.models import PlainP4CNN, build, count_parameters

REPO = Path(__file__).resolve().parents[1]
TINY = ["--batch-size", "4", "--warmup", "1", "--repeats", "1"]


def run_script(*args, timeout=120):
    cmd = [sys.executable, str(REPO / "scripts" / "bench.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout)


def test_plain_p4cnn_has_p4cnn_expanded_shapes():
    model, ignored = selection.build_bench_model("plain_p4cnn", attention_impl="lean")
    assert isinstance(model, PlainP4CNN) and ignored == ["attention_impl"]
    convs = [model.get_submodule(f"c{i}") for i in range(1, 8)]
    assert [tuple(c.weight.shape) for c in convs] == [(40, 1, 3, 3)] + [(40, 40, 3, 3)] * 5 + [(40, 40, 4, 4)]
    assert all(c.bias is None and isinstance(c, torch.nn.Conv2d) for c in convs)
    assert all(isinstance(model.get_submodule(f"bn{i}"), torch.nn.BatchNorm2d) for i in range(1, 7))
    # P4CNN's expanded conv2d weights [Co*|H|, Ci*|H_in|, k, k] hold |H| = 4 times its group weights
    p4_weights = sum(build("p4cnn").get_submodule(f"c{i}").weight.numel() for i in range(1, 8))
    assert sum(c.weight.numel() for c in convs) == 4 * p4_weights
    assert model(torch.randn(3, *model.input_shape)).shape == (3, model.num_classes)


def test_model_arg_and_batch_size_parsing():
    assert [selection.parse_value(v) for v in ["3", "0.5", "True", "none", "lean"]] == [3, 0.5, True, None, "lean"]
    per = selection.parse_model_args(["attention_impl=lean", "a_p4cnn:ratio=4"], ["p4cnn", "a_p4cnn"])
    assert per == {"p4cnn": {"attention_impl": "lean"}, "a_p4cnn": {"attention_impl": "lean", "ratio": 4}}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        selection.parse_model_args(["nonsense"], ["p4cnn"])
    with pytest.raises(ValueError, match="not one of the models"):
        selection.parse_model_args(["z2cnn:ratio=4"], ["p4cnn"])
    assert selection.parse_batch_sizes(["a_p4_allcnnc=16"], ["p4cnn", "a_p4_allcnnc"], 128) == {
        "p4cnn": 128,
        "a_p4_allcnnc": 16,
    }
    with pytest.raises(ValueError):
        selection.parse_batch_sizes(["p4cnn=x"], ["p4cnn"], 128)
    variant = "a_p4cnn@attention_impl=reference,ratio=4"
    assert selection.split_variant(variant) == ("a_p4cnn", {"attention_impl": "reference", "ratio": 4})
    assert selection.split_variant("p4cnn") == ("p4cnn", {})
    assert selection.parse_batch_sizes([f"{variant}=8"], [variant], 128) == {variant: 8}
    with pytest.raises(ValueError, match="NAME@KEY=VALUE"):
        selection.split_variant("a_p4cnn@reference")


def test_a_variant_is_measured_under_its_label_with_its_arguments():
    run = worker.run_worker("z2cnn@dropout=0.5", 2, "cpu", 1, 0, 1, {"no_such_argument": 1})
    assert run.name == "z2cnn@dropout=0.5" and run.overrides == {"dropout": 0.5, "no_such_argument": 1}
    assert run.result is None and "no_such_argument" in run.reason  # the arguments reached build()


@pytest.mark.slow  # measures models end to end: `make test-full`
def test_script_measures_models_and_writes_the_report(tmp_path, capsys):
    report = tmp_path / "bench.md"
    proc = run_script("p4cnn", "plain_p4cnn", *TINY, "--device", "cpu", "--markdown", str(report))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "name train_ms eval_ms peak_mb params"
    rows = {line.split()[0]: line.split() for line in lines[1:3]}
    assert set(rows) == {"p4cnn", "plain_p4cnn"} and all(len(r) == 5 for r in rows.values())
    for row in rows.values():
        assert all(float(v) > 0 for v in row[1:4])
    assert int(rows["p4cnn"][4]) == count_parameters(build("p4cnn"))
    assert int(rows["plain_p4cnn"][4]) == count_parameters(selection.build_bench_model("plain_p4cnn")[0])
    assert any(line.startswith("p4cnn / plain_p4cnn train time: ") and "target <= 1.15" in line for line in lines)
    assert "Adam(lr=1e-3)" in proc.stdout

    text = report.read_text()
    for part in ["- command: `python scripts/bench.py p4cnn plain_p4cnn", "- git: `", "- CPU: ", "torch threads: 2"]:
        assert part in text
    assert f"torch {torch.__version__}" in text and "- device: cpu" in text
    assert "| `p4cnn` | 4 |" in text and "| p4cnn / plain_p4cnn train time |" in text
    allocator = "- memory allocator (as in training, `attentive_gcnn.accel.allocator`): glibc malloc keeping freed"
    assert allocator in text

    # an existing report is not replaced without --force (checked before anything is measured)
    with pytest.raises(SystemExit) as e:
        cli.main(["p4cnn", *TINY, "--markdown", str(report)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error:" in err and "--force" in err
    assert report.read_text() == text


COMPILED = []


def fake_run(name, batch_size, device, threads, warmup, repeats, overrides, timeout=None, compile=False):
    COMPILED.append(compile)
    ms = {"p4cnn": 100.0, "fa_p4cnn": 120.0, "a_p4cnn": 500.0, "a_p4_allcnnc": 10.0, targets.REFERENCE_ATTENTION: 600.0}
    if name == "broken":
        return worker.Run(name, batch_size, reason="RuntimeError: out of memory")
    peak = {"a_p4_allcnnc": 3000.0, targets.REFERENCE_ATTENTION: 400.0}.get(name, 50.0)
    result = dict(train_ms=ms[name], eval_ms=ms[name] / 2, peak_mb=peak)
    result |= dict(params=1, threads=threads, ignored_args=[], name=name, batch_size=batch_size)
    return worker.Run(name, batch_size, result=result, overrides=overrides)


def test_ratios_force_and_failures(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "run_worker", fake_run)
    monkeypatch.setattr(cli, "bench_model_names", lambda: ["p4cnn", "fa_p4cnn", "a_p4cnn", "a_p4_allcnnc", "broken"])
    report = tmp_path / "bench.md"
    report.write_text("old")
    argv = ["p4cnn", "fa_p4cnn", "broken", "a_p4cnn", targets.REFERENCE_ATTENTION, "a_p4_allcnnc"]
    argv += ["--batch-size-for", "a_p4_allcnnc=16", "--compile"]
    argv += ["--baseline", "p4cnn", "--device", "cpu", "--markdown", str(report), "--force"]
    COMPILED.clear()
    assert cli.main(argv) == 1  # one model failed: the others are still measured and reported
    assert COMPILED == [True] * 6
    out = capsys.readouterr().out
    assert "a_p4cnn / a_p4cnn@attention_impl=reference peak memory: 0.12 (target <= 0.25) PASS" in out
    assert "# every model under torch.compile" in out
    assert "broken failed: RuntimeError: out of memory" in out
    assert "fa_p4cnn / p4cnn train time: 1.20 (target <= 1.3) PASS" in out
    assert "a_p4cnn / p4cnn train time: 5.00 (target <= 3) FAIL" in out
    assert "a_p4_allcnnc peak memory (MiB): 3000.0 (target <= 2048) FAIL" in out
    assert "fa_p4cnn / p4cnn: train 1.20, eval 1.20, peak 1.00" in out
    assert "a_p4_allcnnc=16" in out
    text = report.read_text()
    assert "| `broken` | 128 | failed: RuntimeError: out of memory |" in text
    assert "- torch.compile: every model" in text
    assert "| a_p4_allcnnc peak memory (MiB) | 3000.0 | <= 2048 | FAIL |" in text


def test_worker_failure_is_reported():
    run = worker.run_worker("p4cnn", 2, "cpu", 1, 0, 1, {"no_such_argument": 1})
    assert run.result is None and "no_such_argument" in run.reason


def test_unknown_model_and_bad_options_are_usage_errors(capsys):
    bad = (["nonsense"], ["p4cnn", "--baseline", "z2cnn"], ["p4cnn", "--model-arg", "oops"], ["nonsense@a=1"])
    for argv in (*bad, ["p4cnn@oops"], ["p4cnn", "--compile", "--warmup", "0"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: unknown model(s) nonsense" in err and "not among the models" in err and "KEY=VALUE" in err
    assert "nonsense@a=1" in err and "NAME@KEY=VALUE" in err and "--compile needs at least one warm-up" in err


def test_rounds_interleave_the_models_and_report_medians(tmp_path, monkeypatch, capsys):
    calls = []

    def varying_run(name, batch_size, device, threads, warmup, repeats, overrides, timeout=None, compile=False):
        calls.append(name)
        k = calls.count(name)  # the round
        train = {"p4cnn": [100.0, 160.0, 110.0], "fa_p4cnn": [130.0, 125.0, 200.0]}[name][k - 1]
        result = dict(train_ms=train, eval_ms=train / 2, peak_mb=10.0 * k, params=1, threads=threads)
        result |= dict(ignored_args=[], name=name, batch_size=batch_size)
        return worker.Run(name, batch_size, result=result, overrides=overrides)

    monkeypatch.setattr(cli, "run_worker", varying_run)
    monkeypatch.setattr(cli, "bench_model_names", lambda: ["p4cnn", "fa_p4cnn"])
    report = tmp_path / "bench.md"
    argv = ["p4cnn", "fa_p4cnn", "--rounds", "3", "--baseline", "p4cnn", "--device", "cpu", "--markdown", str(report)]
    assert cli.main(argv) == 0
    assert calls == ["p4cnn", "fa_p4cnn"] * 3  # round by round, not model by model
    out = capsys.readouterr().out
    assert "# round 2/3: p4cnn 160.0 80.0 20.0 1" in out
    assert "p4cnn 110.0 55.0 20.0 1" in out.split("# medians over 3 rounds:")[1]  # medians of each column
    assert "fa_p4cnn / p4cnn train time: 1.18 (target <= 1.3) PASS" in out  # 130 / 110
    assert "median over 3 interleaved rounds" in out
    text = report.read_text()
    assert "| `fa_p4cnn` | 128 | 130.0 | 65.0 | 20.0 | 1 | 125.0–200.0 |" in text
    assert "interleaved" in text


def test_rounds_must_be_positive(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["p4cnn", "--rounds", "0"])
    assert e.value.code == 2 and "--rounds" in capsys.readouterr().err
