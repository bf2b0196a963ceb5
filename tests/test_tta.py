"""Rotation test-time augmentation: RotationTTA (exact p4 invariance for K = 4, the K angles of rotate_batch) and
``eval_tta=K`` of eval_only, end to end on a subset of the embedded rotmnist_mini."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attentive_gcnn.checkpoint import model_payload, save_checkpoint
from attentive_gcnn.data import make_source
from attentive_gcnn.data.rotmnist import MINI_FILE, MINI_SPLITS
from attentive_gcnn.errors import ConfigError
from attentive_gcnn.models import build
from attentive_gcnn.rotations import RotationTTA, rotate_batch, tta_angles
from attentive_gcnn.train import check_options, evaluate
from tests.conftest import BROKEN, rel_err
from tests.test_train import cli, compose_cfg, summary

NORM = {"mean": [0.13], "std": [0.3]}


def rot(t, k=1):
    return torch.rot90(t, k, dims=(-2, -1))


def planar_net(dtype=torch.float64) -> nn.Module:
    """A small conv net on [B, 1, 9, 9] whose logits are not rotation invariant (the flatten keeps positions)."""
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 9 * 9, 5))
    return net.to(dtype).eval()


class Recorder(nn.Module):
    """Passes its input to ``model`` and keeps a copy of it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, x):
        self.inputs.append(x.clone())
        return self.model(x)


# ------------------------------------------------------------------------------------------------- the module
def test_four_rotations_make_a_planar_net_exactly_invariant():
    net, x = planar_net(), torch.randn(3, 1, 9, 9, dtype=torch.float64)
    tta = RotationTTA(net, 4, NORM).eval()
    y = tta(x)
    assert y.shape == (3, 5) and y.dtype == torch.float64
    for k in (1, 2, 3):
        assert rel_err(tta(rot(x, k)), y) < 1e-12, k
        assert rel_err(net(rot(x, k)), net(x)) > BROKEN, k  # negative control: the net alone is not invariant
    # the mean of the logits over the four rotated copies
    manual = sum(net(rot(x, k)) for k in range(4)) / 4
    assert rel_err(y, manual) < 1e-12


@pytest.mark.parametrize("name", ["p4cnn", "fa_p4cnn"])
def test_four_rotations_leave_a_p4_invariant_model_unchanged(name):
    model = build(name).double().eval()
    x = torch.randn(2, *model.input_shape, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(RotationTTA(model, 4, NORM)(x), model(x)) < 1e-10


def test_eight_rotations_feed_the_model_the_eight_rotate_batch_angles():
    assert tta_angles(8) == [0, 45, 90, 135, 180, 225, 270, 315]
    assert {90.0, 180.0, 270.0} <= set(tta_angles(16)) and len(tta_angles(16)) == 16
    assert tta_angles(3) == [0, 120, 240]
    net = planar_net(torch.float32)
    recorder = Recorder(net)
    x = torch.randn(2, 1, 9, 9)
    with torch.no_grad():
        y = RotationTTA(recorder, 8, NORM)(x)
        angles = range(0, 360, 45)
        expected = [rotate_batch(x, a, NORM) for a in angles]
        manual = sum(net(r) for r in expected) / 8
    assert len(recorder.inputs) == 8
    for a, seen, want in zip(angles, recorder.inputs, expected, strict=True):
        assert torch.equal(seen, want), a
    assert torch.equal(recorder.inputs[2], rot(x)) and torch.equal(recorder.inputs[6], rot(x, 3))  # exact rot90
    assert not torch.allclose(recorder.inputs[1], x, atol=0.1)  # 45 degrees is rotated (bilinearly)
    assert torch.allclose(y, manual, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        assert not torch.allclose(y, RotationTTA(net, 4, NORM)(x), atol=1e-4)


def test_bad_arguments_of_the_module():
    for k in (0, -1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="positive integer"):
            RotationTTA(planar_net(), k, NORM)
    with pytest.raises(ValueError, match="square"):
        RotationTTA(planar_net(), 4, NORM)(torch.randn(1, 1, 9, 8, dtype=torch.float64))
    tta = RotationTTA(build("z2cnn"), 4, NORM)
    assert (tta.k, tuple(tta.input_shape), tta.num_classes) == (4, (1, 28, 28), 10)


# -------------------------------------------------------------------------------------------------- eval_tta
def tiny_mini(tmp_path, n_test: int = 12) -> list[str]:
    """Overrides that point rotmnist_mini at the first images of each split of its embedded file."""
    keys = [f"{split}_{v}" for split in MINI_SPLITS for v in ("x", "y")]
    with np.load(MINI_FILE) as f:
        arrays = {key: f[key][: n_test if key.startswith("test") else 8] for key in keys}
    path = tmp_path / "mini_subset.npz"
    np.savez(path, **arrays)
    return ["dataset=rotmnist_mini", f"dataset.source.path={path}", "dataset.source.sha256=null"]


def test_eval_only_with_tta_through_the_entrypoint(tmp_path):
    data = tiny_mini(tmp_path)
    torch.manual_seed(0)
    model = build("z2cnn").eval()
    ckpt = save_checkpoint(tmp_path / "z2cnn.ckpt", model_payload("z2cnn", model))
    common = ["eval_only=true", "experiment=mini/z2cnn", "seed=3", f"ckpt_path={ckpt}", *data]
    result = cli(*common, "eval_tta=4", f"hydra.run.dir={tmp_path / 'tta'}")
    assert result.returncode == 0, result.stderr
    assert "averaged over 4 rotations" in result.stdout and "12 test images" in result.stdout
    s = summary(tmp_path / "tta")
    assert (s["mode"], s["model"], s["name"], s["seed"], s["tta"], s["test_size"]) == (
        "eval",
        "z2cnn",
        "mini/z2cnn",
        3,
        4,
        12,
    )
    # the numbers are those of the averaged logits
    splits = make_source(compose_cfg(*common).dataset.source).splits("clean")
    x, y = splits.test.__getitems__(list(range(12)))
    with torch.no_grad():
        logits = RotationTTA(model, 4, splits.normalization)(x)
    assert s["test_loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert s["test_accuracy"] == int((logits.argmax(1) == y).sum()) / 12
    # without TTA (in-process): tta 0, and the name and seed of the run are still recorded
    plain = evaluate(compose_cfg(*common), tmp_path / "plain")
    assert (plain["name"], plain["seed"], plain["tta"]) == ("mini/z2cnn", 3, 0)
    with torch.no_grad():
        assert plain["test_loss"] == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["eval_tta=1"], "eval_tta=1 must be 0"),
        (["eval_tta=-4"], "eval_tta=-4 must be 0"),
        (["eval_tta=2.5"], "eval_tta=2.5 must be 0"),
        (["eval_tta=true"], "eval_tta=True must be 0"),
        (["eval_tta=four"], "eval_tta=four must be 0"),
    ],
)
def test_bad_eval_tta_values(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_options(compose_cfg("eval_only=true", "ckpt_path=x.ckpt", *overrides))


def test_eval_tta_needs_eval_only(tmp_path):
    with pytest.raises(ConfigError, match="only used with eval_only=true"):
        check_options(compose_cfg("eval_tta=4"))
    (tmp_path / "x.ckpt").touch()  # the options check only that it exists
    for k in (0, 2, 4, 8, 16):
        check_options(compose_cfg("eval_only=true", f"ckpt_path={tmp_path / 'x.ckpt'}", f"eval_tta={k}"))
    check_options(compose_cfg("eval_tta=0"))
