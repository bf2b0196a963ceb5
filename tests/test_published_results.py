"""The committed results: the pretrained models in results/checkpoints/mini and the tables built from results/runs.

These tests read the repository's own files: the checksums must hold, the cheap models must reproduce their
recorded test error through ``eval_only`` exactly, every trained p4 model must be invariant to 90-degree
rotations, and the committed tables must be what ``make tables`` builds from the committed runs.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from attentive_gcnn.checkpoint import load_model_checkpoint
from attentive_gcnn.config_dir import CONFIG_DIR
from attentive_gcnn.publish import check_sums, read_sums
from attentive_gcnn.train import evaluate
from attentive_gcnn.viz.common import load_split

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = REPO / "results/checkpoints/mini"
RUNS, TABLES = REPO / "results/runs", REPO / "results/tables"
PUBLISHED = [name for _, name in read_sums(CHECKPOINTS)]
CHEAP = ("z2cnn.ckpt", "p4cnn.ckpt")  # evaluated on the whole test split here; scripts/check_checkpoints.py does all


def test_published_checkpoints_match_their_checksums_and_runs():
    assert PUBLISHED and not check_sums(CHECKPOINTS)
    for name in PUBLISHED:
        ckpt = torch.load(CHECKPOINTS / name, map_location="cpu", weights_only=False)
        assert set(ckpt) == {"format", "model", "net", "state_dict", "epoch", "run"}  # weights only
        run = ckpt["run"]
        assert (run["name"], run["protocol"], run["seed"]) == (f"mini/{Path(name).stem}", "clean", 0)
        published = RUNS / run["name"] / "clean/seed0/summary.json"
        assert published.is_file(), f"{name}: its run is not published"
        assert f'"test_error": {run["test_error"]!r}' in published.read_text()  # the committed number itself


@pytest.mark.parametrize("name", [n for n in CHEAP if n in PUBLISHED])
def test_eval_only_reproduces_the_committed_test_error(name, tmp_path):
    model, ckpt = load_model_checkpoint(CHECKPOINTS / name)
    run = ckpt["run"]
    overrides = [f"experiment={run['name']}", "eval_only=true", f"ckpt_path={CHECKPOINTS / name}"]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "progress=false"])
    summary = evaluate(cfg, tmp_path / "eval")
    assert summary["test_error"] == run["test_error"] and summary["test_size"] == 8064


@pytest.fixture(scope="module")
def test_images() -> torch.Tensor:
    x, _ = load_split("rotmnist_mini", "test", None).dataset.__getitems__(list(range(32)))
    return x.double()


@pytest.mark.parametrize("name", PUBLISHED)
def test_trained_p4_models_are_invariant_to_quarter_turns(name, test_images):
    model, ckpt = load_model_checkpoint(CHECKPOINTS / name)
    model = model.double()
    with torch.inference_mode():
        y = model(test_images)
        errors = [
            float((model(torch.rot90(test_images, k, dims=(-2, -1))) - y).abs().max() / y.abs().max())
            for k in (1, 2, 3)
        ]
    if ckpt["net"].get("group") == "p4":
        assert max(errors) < 1e-10, errors
    else:  # negative control: the planar Z2CNN is not invariant
        assert ckpt["net"].get("group") == "z2" and max(errors) > 1e-2, errors


def load_make_tables():
    spec = importlib.util.spec_from_file_location("make_tables", REPO / "scripts/make_tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_tables"] = module
    spec.loader.exec_module(module)
    return module


def test_committed_tables_are_what_make_tables_builds_from_the_committed_runs(tmp_path):
    make_tables = load_make_tables()
    assert make_tables.main(["--runs", str(RUNS), "--out", str(tmp_path)]) == 0
    built = sorted(p.name for p in tmp_path.iterdir())
    assert built == sorted(p.name for p in TABLES.iterdir() if p.name.startswith("mini"))
    for name in built:
        fresh, committed = (tmp_path / name).read_text(), (TABLES / name).read_text()
        if name.endswith(".md"):  # the header names the output directory; the rows must be the same bytes
            fresh, committed = make_tables.table_body(fresh), make_tables.table_body(committed)
        assert fresh == committed, f"results/tables/{name} is stale: run make tables"
