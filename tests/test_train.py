"""The train entrypoint: config composition, short runs on every dataset format, resume, sweeps, eval_only,
logging and the clear errors of bad input. Runs use tiny files in the real on-disk formats (tests/data_fixtures)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from attentive_gcnn.checkpoint import load_checkpoint
from attentive_gcnn.config_dir import CONFIG_DIR
from attentive_gcnn.data import make_source
from attentive_gcnn.errors import ConfigError, NonFiniteLossError, UserError
from attentive_gcnn.models import build, build_from_config, model_config, model_names
from attentive_gcnn.train import check_options, check_resumable, evaluate, train
from attentive_gcnn.training import device as device_module
from attentive_gcnn.training.device import compiled, pick_device
from attentive_gcnn.training.loop import Trainer
from tests.conftest import authors_release_dir, needs_authors_release
from tests.data_fixtures import write_cifar10, write_mnist_raw, write_pcam, write_rotmnist_npz

REPO = Path(__file__).resolve().parents[1]
DATASET_NAMES = sorted(p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml"))
TRAINING_NAMES = sorted(p.stem for p in (CONFIG_DIR / "training").glob("*.yaml"))
FAMILY_DATASET = {"rotmnist": "rotmnist_mini", "cifar10": "cifar10", "pcam": "pcam"}


def compose_cfg(*overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def sizes(written) -> list[str]:
    """Command-line overrides that point a dataset config at tiny written files."""
    out = []
    for key, value in written.overrides.items():
        text = "{" + ",".join(f"{k}:{v}" for k, v in value.items()) + "}" if isinstance(value, dict) else value
        out.append(f"dataset.source.{key}={text}")
    return out


def tiny_rotmnist(tmp_path, n_train=64, n_valid=32, n_test=48) -> list[str]:
    written = write_rotmnist_npz(tmp_path / "data", n_train=n_train, n_valid=n_valid, n_test=n_test)
    return ["dataset=rotmnist", f"paths.data_dir={tmp_path / 'data'}", *sizes(written), "training.batch_size=16"]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "attentive_gcnn.train", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=env,
        timeout=600,
    )


def rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def assert_clean_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """A non-zero exit, a short ``error:`` message containing ``needles``, and no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert "error:" in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


# ------------------------------------------------------------------------------------------------ composition
@pytest.mark.parametrize("name", model_names())
def test_every_model_config_composes_and_instantiates(name):
    family = model_config(name).dataset
    cfg = compose_cfg(f"model={name}", f"dataset={FAMILY_DATASET[family]}")
    model = build_from_config(cfg.model.net)
    optimizer = instantiate(cfg.training.optimizer)(model.parameters())
    if cfg.training.scheduler:
        instantiate(cfg.training.scheduler)(optimizer)
    assert cfg.name == f"{name}_{FAMILY_DATASET[family]}"
    check_options(cfg)


def test_model_configs_pick_their_training_recipes():
    recipe = {
        n: compose_cfg(f"model={n}").training
        for n in ("z2cnn", "p4cnn", "a_p4cnn", "p4_allcnnc", "resnet44", "fa_p4m_densenet")
    }
    assert (recipe["z2cnn"].epochs, recipe["p4cnn"].epochs, recipe["a_p4cnn"].epochs) == (300, 100, 100)
    assert recipe["p4cnn"].optimizer._target_ == "torch.optim.Adam" and recipe["p4cnn"].weight_decay == 1e-4
    allcnn, res, pcam = recipe["p4_allcnnc"], recipe["resnet44"], recipe["fa_p4m_densenet"]
    assert (allcnn.epochs, allcnn.lr, allcnn.weight_decay, list(allcnn.scheduler.milestones)) == (
        350,
        0.05,
        1e-3,
        [200, 250, 300],
    )
    assert (res.epochs, res.lr, res.weight_decay, list(res.scheduler.milestones)) == (300, 0.05, 0.0, [50, 100, 150])
    assert (pcam.batch_size, pcam.scheduler.patience, pcam.scheduler.factor, pcam.scheduler_monitor) == (
        64,
        20,
        0.5,
        "select_accuracy",
    )
    # the command line wins over the model's recipe
    assert compose_cfg("model=z2cnn", "training=pcam").training.batch_size == 64
    assert compose_cfg("model=z2cnn", "training.epochs=7").training.epochs == 7


@pytest.mark.parametrize("dataset", DATASET_NAMES)
@pytest.mark.parametrize("logger", ["csv", "wandb"])
def test_every_dataset_and_logger_config_composes(dataset, logger):
    cfg = compose_cfg(f"dataset={dataset}", f"logger={logger}")
    assert cfg.dataset.name == dataset and cfg.dataset.family in FAMILY_DATASET
    assert cfg.dataset.source._target_.startswith("attentive_gcnn.data.")
    instantiate(cfg.logger)


@pytest.mark.parametrize("recipe", TRAINING_NAMES)
def test_every_training_recipe_instantiates(recipe):
    cfg = compose_cfg(f"training={recipe}")
    optimizer = instantiate(cfg.training.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    if cfg.training.scheduler:
        instantiate(cfg.training.scheduler)(optimizer)


# ---------------------------------------------------------------------------------------------- short runs
@pytest.mark.slow  # one epoch on the whole embedded data: `make test-full`
def test_make_train_default_job_on_the_embedded_data(tmp_path):
    """What `make train` runs (one epoch here): prints the test error and where the logs are."""
    run_dir = tmp_path / "run"
    result = cli("training.epochs=1", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    assert "test error:" in result.stdout and f"logs: {run_dir}" in result.stdout
    assert {"metrics.csv", "summary.json", "last.ckpt", "best.ckpt", "train.log"} <= {p.name for p in run_dir.iterdir()}
    s = summary(run_dir)
    assert (s["status"], s["model"], s["dataset"], s["protocol"], s["params"]) == (
        "complete",
        "p4cnn",
        "rotmnist_mini",
        "clean",
        24610,
    )
    assert (s["train_size"], s["select_size"], s["test_size"]) == (1613, 323, 8064)
    assert s["config"]["seed"] == 0 and "training.epochs=1" in s["command"]
    assert s["wall_time_s"] > 0 and s["peak_memory_mb"] > 0 and s["environment"]["torch"] == torch.__version__
    assert [r["split"] for r in rows(run_dir)] == ["train", "valid", "test_last", "test_best"]


DATA_FORMATS = {
    "rotmnist_npz": lambda d: ("rotmnist", "p4cnn", write_rotmnist_npz(d, n_train=24, n_valid=8, n_test=16)),
    "rotmnist_from_mnist": lambda d: (
        "rotmnist_from_mnist",
        "z2cnn",
        write_mnist_raw(d, n_train=30, n_test=10, gz=True),
    ),
    "cifar10": lambda d: ("cifar10", "allcnnc", write_cifar10(d, n_per_batch=4, n_test=6)),
    "cifar10_aug": lambda d: ("cifar10_aug", "allcnnc", write_cifar10(d, n_per_batch=4, n_test=6)),
    "pcam": lambda d: ("pcam", "densenet", write_pcam(d, n_train=8, n_valid=4, n_test=4)),
}


@pytest.mark.parametrize("fmt", sorted(DATA_FORMATS))
def test_one_short_run_on_each_dataset_format(tmp_path, fmt):
    dataset, model, written = DATA_FORMATS[fmt](tmp_path / "data")
    cfg = compose_cfg(
        f"dataset={dataset}",
        f"model={model}",
        f"paths.data_dir={tmp_path / 'data'}",
        *sizes(written),
        "training.epochs=2",
        "training.batch_size=8",
        "training.eval_batch_size=8",
    )
    s = train(cfg, tmp_path / "run")
    assert s["status"] == "complete" and s["epochs"] == 2 and 0 <= s["test_accuracy"] <= 1
    assert s["test_size"] == written.sizes["test"]
    assert [r["split"] for r in rows(tmp_path / "run")] == ["train", "valid"] * 2 + ["test_last", "test_best"]


def test_the_amat_format_trains_too(tmp_path):
    from tests.data_fixtures import write_amat

    written = write_amat(tmp_path / "data", n_train_valid=20, n_test=8, n_valid=4)
    cfg = compose_cfg(
        "dataset=rotmnist",
        "dataset.source.layout=amat",
        f"paths.data_dir={tmp_path / 'data'}",
        *sizes(written),
        "training.epochs=1",
        "training.batch_size=8",
    )
    assert train(cfg, tmp_path / "run")["test_size"] == 8


def test_protocols_fit_and_select_on_the_right_splits(tmp_path):
    base = tiny_rotmnist(tmp_path)
    clean = train(compose_cfg(*base, "training.epochs=1"), tmp_path / "clean")
    original = train(compose_cfg(*base, "training.epochs=1", "protocol=original"), tmp_path / "original")
    assert (clean["train_size"], clean["select_split"], clean["select_size"]) == (64, "valid", 32)
    assert (original["train_size"], original["select_split"], original["select_size"]) == (96, "test", 48)
    assert [r["split"] for r in rows(tmp_path / "original")][:2] == ["train", "test"]


def test_best_epoch_is_selected_strictly_and_last_epoch_test_is_logged(tmp_path):
    s = train(compose_cfg(*tiny_rotmnist(tmp_path), "training.epochs=4"), tmp_path / "run")
    select = [float(r["accuracy"]) for r in rows(tmp_path / "run") if r["split"] == "valid"]
    assert s["best_epoch"] == select.index(max(select)) + 1  # the first epoch reaching the maximum
    assert s["best_select_accuracy"] == pytest.approx(max(select), abs=1e-6)
    best = load_checkpoint(tmp_path / "run" / "best.ckpt")
    assert best["epoch"] == s["best_epoch"] and best["model"] == "p4cnn"
    assert "last_test_accuracy" in s and load_checkpoint(tmp_path / "run" / "last.ckpt")["epoch"] == 4


def test_mixed_precision_runs_on_cpu(tmp_path):
    s = train(compose_cfg(*tiny_rotmnist(tmp_path), "training.epochs=1", "amp=true"), tmp_path / "run")
    assert s["config"]["amp"] is True and s["status"] == "complete"


def test_wandb_mirror_offline_needs_no_account(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose_cfg(*tiny_rotmnist(tmp_path), "training.epochs=1", "logger=wandb", "name=unit")
    train(cfg, tmp_path / "run")
    offline = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and any(offline[0].rglob("*.wandb"))


# ---------------------------------------------------------------------------------------------------- resume
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    base = [*tiny_rotmnist(tmp_path), "training.epochs=3"]
    whole = train(compose_cfg(*base), tmp_path / "whole")

    original = Trainer.train_epoch

    def killed_in_epoch_2(self, loader, epoch):
        if epoch == 2:
            raise KeyboardInterrupt  # the process dies in the middle of epoch 2
        return original(self, loader, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(compose_cfg(*base), tmp_path / "killed")
    assert not (tmp_path / "killed" / "summary.json").exists()
    assert load_checkpoint(tmp_path / "killed" / "last.ckpt")["epoch"] == 1
    monkeypatch.setattr(Trainer, "train_epoch", original)

    resumed = train(compose_cfg(*base, "resume=true"), tmp_path / "killed")
    drop = lambda rs: [{k: v for k, v in r.items() if k != "time_s"} for r in rs]  # noqa: E731
    assert drop(rows(tmp_path / "killed")) == drop(rows(tmp_path / "whole"))  # same numbers, no duplicated rows
    for key in ("test_accuracy", "test_loss", "last_test_accuracy", "best_epoch", "epochs"):
        assert resumed[key] == whole[key], key
    a = load_checkpoint(tmp_path / "whole" / "last.ckpt")["state_dict"]
    b = load_checkpoint(tmp_path / "killed" / "last.ckpt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_of_a_complete_run_does_nothing_and_more_epochs_continue_it(tmp_path):
    base = tiny_rotmnist(tmp_path)
    first = train(compose_cfg(*base, "training.epochs=1"), tmp_path / "run")
    again = train(compose_cfg(*base, "training.epochs=1", "resume=true"), tmp_path / "run")
    assert again == first
    longer = train(compose_cfg(*base, "training.epochs=2", "resume=true"), tmp_path / "run")
    assert longer["epochs"] == 2
    assert [r["split"] for r in rows(tmp_path / "run")] == ["train", "valid"] * 2 + ["test_last", "test_best"]


def test_resume_auto_starts_a_fresh_run_and_skips_a_complete_one(tmp_path):
    base = [*tiny_rotmnist(tmp_path), "training.epochs=1", "resume=auto"]
    first = train(compose_cfg(*base), tmp_path / "run")
    assert train(compose_cfg(*base), tmp_path / "run") == first
    (tmp_path / "leftover").mkdir()  # killed before its first checkpoint: only a metrics.csv
    (tmp_path / "leftover" / "metrics.csv").write_text("epoch,split,loss,accuracy,lr,time_s\n1,train,1,0.5,0.001,1\n")
    train(compose_cfg(*base), tmp_path / "leftover")
    assert [r["split"] for r in rows(tmp_path / "leftover")] == ["train", "valid", "test_last", "test_best"]


def test_resume_refuses_different_settings(tmp_path):
    base = tiny_rotmnist(tmp_path)
    train(compose_cfg(*base, "training.epochs=1"), tmp_path / "run")
    with pytest.raises(ConfigError, match="seed"):
        train(compose_cfg(*base, "training.epochs=2", "resume=true", "seed=1"), tmp_path / "run")
    with pytest.raises(ConfigError, match="training.lr"):
        train(compose_cfg(*base, "training.epochs=2", "resume=true", "training.lr=0.1"), tmp_path / "run")


# ------------------------------------------------------------------------------------ sweeps and eval_only
@pytest.mark.slow  # `make test-full` (keeps `make test` within its time budget)
def test_two_job_seed_sweep(tmp_path):
    args = tiny_rotmnist(tmp_path)
    result = cli("-m", "seed=0,1", *args, "training.epochs=1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 0, result.stderr
    runs = sorted((tmp_path / "sweep").glob("*/summary.json"))
    assert [json.loads(p.read_text())["seed"] for p in runs] == [0, 1]
    first, second = (json.loads(p.read_text()) for p in runs)
    assert first["name"] == second["name"] == "p4cnn_rotmnist"  # grouped under one experiment name
    assert result.stdout.count("test error:") == 2


def test_eval_only_reproduces_the_test_accuracy_of_the_best_checkpoint(tmp_path):
    base = tiny_rotmnist(tmp_path)
    s = train(compose_cfg(*base, "training.epochs=2"), tmp_path / "run")
    result = cli(
        *base, "eval_only=true", f"ckpt_path={tmp_path / 'run' / 'best.ckpt'}", f"hydra.run.dir={tmp_path / 'eval'}"
    )
    assert result.returncode == 0, result.stderr
    e = summary(tmp_path / "eval")
    assert (e["mode"], e["model"], e["test_size"]) == ("eval", "p4cnn", 48)
    assert e["test_accuracy"] == pytest.approx(s["test_accuracy"], abs=1e-9)
    assert "test error:" in result.stdout
    again = compose_cfg(*base, "eval_only=true", f"ckpt_path={tmp_path / 'run' / 'best.ckpt'}")
    with pytest.raises(ConfigError, match="already holds a run"):  # its summary.json is not overwritten
        evaluate(again, tmp_path / "eval")


@needs_authors_release
def test_authors_p4cnn_scores_about_98_percent_on_the_embedded_test_split(tmp_path):
    """The embedded data follows MNIST-rot's conventions (orientation, scale): the authors' released P4CNN,
    imported and evaluated with eval_only, classifies its test split at about 98 %."""
    src = authors_release_dir() / "rotmnist_p4cnn.pth"
    ckpt = tmp_path / "authors_p4cnn.ckpt"
    imported = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts/import_authors_checkpoint.py"),
            str(src),
            "--model",
            "p4cnn",
            "--out",
            str(ckpt),
        ],
        capture_output=True,
        text=True,
    )
    assert imported.returncode == 0, imported.stderr
    result = cli("eval_only=true", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert result.returncode == 0, result.stderr
    accuracy = summary(tmp_path / "eval")["test_accuracy"]
    assert 0.97 < accuracy < 0.99, accuracy


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_dataset_directory_names_the_files_and_how_to_get_them(tmp_path):
    result = cli("dataset=rotmnist", f"paths.data_dir={tmp_path / 'nothing'}", f"hydra.run.dir={tmp_path / 'r'}")
    assert_clean_error(result, "mnist_rotation_new", "download_data.py")
    assert not (tmp_path / "r" / "metrics.csv").exists() and not (tmp_path / "r" / "summary.json").exists()


def test_partly_missing_dataset_names_the_missing_file(tmp_path):
    written = write_pcam(tmp_path / "data", n_train=4, n_valid=2, n_test=2)
    (written.root / "camelyonpatch_level_2_split_valid_y.h5").unlink()
    cfg = compose_cfg("dataset=pcam", "model=densenet", f"paths.data_dir={tmp_path / 'data'}", *sizes(written))
    with pytest.raises(UserError, match="camelyonpatch_level_2_split_valid_y.h5"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_corrupt_data_file_is_a_clear_error(tmp_path):
    written = write_cifar10(tmp_path / "data", n_per_batch=4, n_test=6)
    path = written.root / "data_batch_3"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    cfg = compose_cfg("dataset=cifar10", "model=allcnnc", f"paths.data_dir={tmp_path / 'data'}", *sizes(written))
    with pytest.raises(UserError, match="data_batch_3"):
        train(cfg, tmp_path / "run")


def test_model_that_does_not_fit_the_dataset(tmp_path):
    result = cli("model=p4_allcnnc", f"hydra.run.dir={tmp_path / 'r'}")  # a CIFAR model on rotmnist_mini
    assert_clean_error(result, "p4_allcnnc takes 3x32x32", "1x28x28", "p4cnn")
    assert not (tmp_path / "r" / "metrics.csv").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["protocol=best"], "protocol=best"),
        (["eval_only=true"], "needs ckpt_path"),
        (["ckpt_path=x.ckpt"], "only read with eval_only"),
        (["eval_only=true", "ckpt_path=x.ckpt", "resume=true"], "exclude each other"),
        (["resume=maybe"], "resume=maybe"),
        (["training.epochs=0"], "training.epochs=0"),
        (["training.batch_size=-4"], "training.batch_size=-4"),
        (["training.lr=0"], "training.lr=0"),
        (["num_workers=-1"], "num_workers=-1"),
        (["compile=maybe"], "compile=maybe"),
        (["seed=abc"], "seed=abc must be an integer"),
        (["seed=-1"], "seed=-1 must be an integer"),
        (["seed=1.5"], "seed=1.5 must be an integer"),
        (["seed=12345678901234567890"], "seed=12345678901234567890 must be an integer"),
        (["training.epochs=true"], "training.epochs=True must be a positive integer"),
        (["training.weight_decay=-1"], "training.weight_decay=-1 must be a non-negative"),
        (["eval_only=true", "ckpt_path=x.ckpt", "eval_tta=true"], "eval_tta=True must be 0"),
    ],
)
def test_incompatible_options_are_caught_before_training(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_options(compose_cfg(*overrides))


def test_a_resume_with_mixed_precision_switched_is_refused():
    saved = {"model": "p4cnn", "dataset": "d", "protocol": "clean", "seed": 0, "amp": False, "training": {}}
    check_resumable(saved, dict(saved))
    with pytest.raises(ConfigError, match="different settings than the saved run: amp"):
        check_resumable(saved, {**saved, "amp": True})


@pytest.mark.parametrize("name", ["mps", "meta", "xla:0"])
def test_only_cpu_and_cuda_devices_are_accepted(name):
    with pytest.raises(ConfigError, match=f"device={name}: only cpu and cuda"):
        pick_device(name)


def test_compile_is_opt_in_and_needs_a_compiler_on_cpu(monkeypatch):
    model = build("p4cnn")
    assert compiled(model, False, torch.device("cpu")) is model
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(device_module.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        compiled(model, True, torch.device("cpu"))


@pytest.mark.slow
def test_compiled_training_and_evaluation(tmp_path):
    """compile=true trains, saves checkpoints of the model itself, and evaluates as the eager model does (compiling
    takes about a minute on 2 cores: `make test-full`)."""
    base = [*tiny_rotmnist(tmp_path), "training.epochs=1", "model=z2cnn"]
    fast = train(compose_cfg(*base, "compile=true"), tmp_path / "compiled")
    ckpt = f"ckpt_path={tmp_path / 'compiled' / 'best.ckpt'}"
    for mode in ("false", "true"):
        e = evaluate(compose_cfg(*base, "eval_only=true", ckpt, f"compile={mode}"), tmp_path / f"eval_{mode}")
        assert e["test_accuracy"] == pytest.approx(fast["test_accuracy"], abs=1.5 / 48)  # at most a tie apart
        assert e["test_loss"] == pytest.approx(fast["test_loss"], rel=1e-4)


def test_bad_options_on_the_command_line_exit_cleanly(tmp_path):
    result = cli(
        "protocol=best",
        "device=cuda:7" if not torch.cuda.is_available() else "device=cpu",
        f"hydra.run.dir={tmp_path / 'r'}",
    )
    assert_clean_error(result, "protocol=best")
    unknown = cli("model=p5cnn", f"hydra.run.dir={tmp_path / 'r'}")  # Hydra's own message lists the options
    assert unknown.returncode != 0 and "p4cnn" in unknown.stderr and "Traceback" not in unknown.stderr


def test_unwritable_output_directory(tmp_path):
    (tmp_path / "a_file").write_text("")
    result = cli(f"hydra.run.dir={tmp_path / 'a_file' / 'run'}")
    assert_clean_error(result, "cannot write", "hydra.run.dir")
    sweep = cli("-m", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'a_file' / 'sweep'}")
    assert_clean_error(sweep, "cannot write", "hydra.sweep.dir")


def test_an_existing_run_is_never_overwritten(tmp_path):
    base = tiny_rotmnist(tmp_path)
    train(compose_cfg(*base, "training.epochs=1"), tmp_path / "run")
    before = (tmp_path / "run" / "metrics.csv").read_text()
    with pytest.raises(ConfigError, match="already holds a run"):
        train(compose_cfg(*base, "training.epochs=1", "seed=3"), tmp_path / "run")
    with pytest.raises(ConfigError, match="holds no run to continue"):
        train(compose_cfg(*base, "resume=true"), tmp_path / "fresh")
    assert (tmp_path / "run" / "metrics.csv").read_text() == before


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    base = tiny_rotmnist(tmp_path)
    cfg = compose_cfg(*base, "training.epochs=3", "training.lr=1e30")  # the weights overflow after one step
    with pytest.raises(NonFiniteLossError, match=r"at epoch 1, step \d+.*no epoch completed"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "run" / "last.ckpt").exists()

    result = cli(*base, "training.epochs=3", "training.lr=1e30", f"hydra.run.dir={tmp_path / 'cli'}")
    assert_clean_error(result, "loss is", "step")


def test_eval_only_of_a_missing_or_foreign_checkpoint(tmp_path):
    missing = cli("eval_only=true", f"ckpt_path={tmp_path / 'none.ckpt'}", f"hydra.run.dir={tmp_path / 'a'}")
    assert_clean_error(missing, f"checkpoint {tmp_path / 'none.ckpt'} does not exist")
    assert not (tmp_path / "a").exists()  # refused before Hydra makes the run directory
    torch.save({"weights": 1}, tmp_path / "foreign.ckpt")
    foreign = cli("eval_only=true", f"ckpt_path={tmp_path / 'foreign.ckpt'}", f"hydra.run.dir={tmp_path / 'b'}")
    assert_clean_error(foreign, "not a checkpoint of this project")


def test_every_dataset_source_reports_its_shape(tmp_path):
    for make in DATA_FORMATS.values():
        dataset, model, written = make(tmp_path / "data")
        cfg = compose_cfg(
            f"dataset={dataset}", f"model={model}", f"paths.data_dir={tmp_path / 'data'}", *sizes(written)
        )
        source = make_source(cfg.dataset.source)
        net = build_from_config(cfg.model.net)
        assert (tuple(source.input_shape), source.num_classes) == (tuple(net.input_shape), net.num_classes)


def test_experiment_configs_set_model_dataset_and_recipe_and_the_command_line_wins():
    cfg = compose_cfg("experiment=smoke")
    assert (cfg.name, cfg.model.name, cfg.dataset.name, cfg.training.epochs) == ("smoke", "p4cnn", "rotmnist_mini", 2)
    assert compose_cfg("experiment=smoke", "model=fa_p4cnn").model.name == "fa_p4cnn"
    assert compose_cfg("experiment=smoke", "training.epochs=5", "seed=3").training.epochs == 5
    for path in (CONFIG_DIR / "experiment").glob("*.yaml"):
        compose_cfg(f"experiment={path.stem}")
