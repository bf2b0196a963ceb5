"""scripts/count_params.py, scripts/import_authors_checkpoint.py and the checkpoint format."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from attentive_gcnn.checkpoint import load_checkpoint, load_model, model_payload, save_checkpoint
from attentive_gcnn.models import build, model_config, model_names
from tests.conftest import authors_release_dir, needs_authors_release, rel_err

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_count_params_lists_every_model_with_its_count(capsys):
    assert script("count_params").main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(lines) == sorted(f"{n} {model_config(n).params}" for n in model_names())
    assert "fa_p4m_allcnnc 1249192" in lines and "p4cnn 24610" in lines


def test_count_params_markdown_and_errors(capsys):
    assert script("count_params").main(["--markdown", "p4cnn", "a_p4cnn"]) == 0
    out = capsys.readouterr().out
    assert "| `a_p4cnn` | alpha-P4CNN | rotmnist | p4 | full | 73,130 | 73,130 | ✓ |" in out
    with pytest.raises(SystemExit):
        script("count_params").main(["nonsense"])


def test_checkpoint_round_trip_and_refusals(tmp_path):
    model = build("fa_p4cnn").eval()
    path = save_checkpoint(tmp_path / "m.ckpt", model_payload("fa_p4cnn", model))
    again = load_model(path).eval()
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(model(x), again(x))
    with pytest.raises(FileExistsError):
        save_checkpoint(path, model_payload("fa_p4cnn", model))
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.ckpt")
    torch.save({"a": 1}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a checkpoint of this project"):
        load_checkpoint(tmp_path / "other.ckpt")


@needs_authors_release
def test_import_script_writes_a_checkpoint_that_reproduces_the_logits(tmp_path, capsys):
    release = authors_release_dir()
    out = tmp_path / "att_p4cnn.ckpt"
    importer = script("import_authors_checkpoint")
    assert importer.main([str(release / "rotmnist_att_p4cnn.pth"), "--model", "a_p4cnn", "--out", str(out)]) == 0
    ref = np.load(release / "reference_outputs.npz")
    model = load_model(out).double().eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(ref["rotmnist_inputs"]))
    assert rel_err(logits, torch.from_numpy(ref["rotmnist_att_p4cnn_logits"])) < 1e-10
    assert load_checkpoint(out)["source"].endswith("rotmnist_att_p4cnn.pth")
    # an existing output is not replaced; a wrong model fails with exit 2 and writes nothing
    with pytest.raises(SystemExit):
        importer.main([str(release / "rotmnist_att_p4cnn.pth"), "--model", "a_p4cnn", "--out", str(out)])
    bad = tmp_path / "bad.ckpt"
    assert importer.main([str(release / "rotmnist_p4cnn.pth"), "--model", "fa_p4cnn", "--out", str(bad)]) == 2
    assert not bad.exists()
    assert "missing" in capsys.readouterr().err


def test_docs_model_table_is_the_scripts_output(capsys):
    readme = (SCRIPTS.parent / "docs/method.md").read_text()
    table = readme.split("<!-- model-table:start")[1].split("-->", 1)[1].split("<!-- model-table:end -->")[0]
    assert script("count_params").main(["--markdown"]) == 0
    assert table.strip() == capsys.readouterr().out.strip()
