"""scripts/visualize_attention.py, scripts/eval_rotations.py and their library, attentive_gcnn.viz."""

import csv
import hashlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from attentive_gcnn.checkpoint import model_payload, save_checkpoint
from attentive_gcnn.groups import P4, P4M
from attentive_gcnn.models import RotMNISTNet, build, from_authors_checkpoint
from attentive_gcnn.viz import (
    combined_full_attention,
    combined_spatial_attention,
    full_spatial_attention_maps,
    full_spatial_attention_modules,
    load_split,
    orientation_grid,
    orientation_vectors,
    parse_angles,
    rotate_batch,
    rotation_errors,
    spatial_attention_modules,
)
from tests.conftest import authors_release_dir, needs_authors_release, rel_err
from tests.data_fixtures import write_cifar10

ROOT = Path(__file__).resolve().parents[1]


def script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rot(t, k=1):
    return torch.rot90(t, k, dims=(-2, -1))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Random-weight checkpoints of a few rot-MNIST models, by model name."""
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    return {
        name: save_checkpoint(root / f"{name}.ckpt", model_payload(name, build(name)))
        for name in ("fa_p4cnn", "p4cnn", "z2cnn", "a_p4cnn", "a_ch_p4cnn")
    }


# ------------------------------------------------------------------------------------------- combined maps
def test_combined_map_of_p4_model_rotates_and_shifts_orientations():
    model = build("fa_p4cnn").double()
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    m, m_rot = combined_spatial_attention(model, x), combined_spatial_attention(model, rot(x))
    assert m.shape == (3, 1, 4, 28, 28) and m.dtype == torch.float64
    assert m.min() > 0 and m.max() < 1
    # docs/method.md#output-permutation-rules: out'[:, :, j] = rot90(out[:, :, (j - 1) mod 4]), i.e. roll the H axis
    # by +1, then rot90
    assert rel_err(m_rot, rot(torch.roll(m, 1, dims=2))) < 1e-10
    # negative controls: no shift, or the opposite shift
    assert rel_err(m_rot, rot(m)) > 0.1
    assert rel_err(m_rot, rot(torch.roll(m, -1, dims=2))) > 0.1
    error, control = rotation_errors(P4, m, m_rot)
    assert error < 1e-10 and control == pytest.approx(rel_err(m_rot, rot(torch.roll(m, -1, dims=2))))
    # the lifting layer's planar map is one factor, broadcast over H
    lifting = model.c1.spatial_attention.attention_map  # [B, 1, 28, 28] of the last pass: rot90(x)
    without = combined_spatial_attention(model, rot(x), skip_lifting=True)
    assert rel_err(without * lifting.unsqueeze(2), m_rot) < 1e-12
    assert model.training  # the model's mode is restored


def test_combined_map_of_p4m_model_follows_the_d4_permutations():
    model = RotMNISTNet(group="p4m", attention="f", first_spatial_dilation=4).double()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    m = combined_spatial_attention(model, x)
    assert m.shape == (2, 1, 8, 28, 28)
    # docs/method.md#output-permutation-rules: out'[:, :, j] = T(out[:, :, perm[j]])
    rot_perm, flip_perm = [3, 0, 1, 2, 5, 6, 7, 4], [4, 5, 6, 7, 0, 1, 2, 3]
    assert rel_err(combined_spatial_attention(model, rot(x)), rot(m[:, :, rot_perm])) < 1e-10
    flipped = combined_spatial_attention(model, torch.flip(x, dims=(-2,)))
    assert rel_err(flipped, torch.flip(m[:, :, flip_perm], dims=(-2,))) < 1e-10
    assert rel_err(flipped, torch.flip(m, dims=(-2,))) > 0.1
    assert rotation_errors(P4M, m, combined_spatial_attention(model, rot(x)))[0] < 1e-10


@needs_authors_release
def test_released_alpha_f_p4cnn_maps_on_the_reference_digits():
    release = authors_release_dir()
    model = from_authors_checkpoint(release / "rotmnist_f_att_p4cnn.pth", "fa_p4cnn").double()
    inputs = torch.from_numpy(np.load(release / "reference_outputs.npz")["rotmnist_inputs"])
    x, x_rot = inputs[:16], inputs[16:]  # rows 16-31 are rows 0-15 rotated by +90 degrees
    error, control = rotation_errors(P4, combined_spatial_attention(model, x), combined_spatial_attention(model, x_rot))
    assert error < 1e-10 and control > 0.3


def test_models_without_input_attention_maps_are_refused():
    with pytest.raises(ValueError, match="no spatial attention maps"):
        spatial_attention_modules(build("p4cnn"))
    with pytest.raises(ValueError, match="full attention"):
        spatial_attention_modules(build("a_p4cnn"))
    assert len(spatial_attention_modules(build("romhog_p4cnn"))) == 7


# -------------------------------------------------------------------------------------- full attention maps
def roll_both(m, shift):
    """Roll both H axes of a combined full-attention map ``[B, |H|, |H|, X, Y]``."""
    return torch.roll(m, (shift, shift), dims=(1, 2))


@pytest.mark.parametrize("name", ["a_p4cnn", "a_sp_p4cnn"])
def test_full_attention_maps_roll_both_orientation_axes(name):
    torch.manual_seed(0)
    model = build(name).double()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    maps, maps_rot = full_spatial_attention_maps(model, x), full_spatial_attention_maps(model, rot(x))
    assert list(maps) == [f"c{i}" for i in range(1, 8)]
    assert maps["c1"].shape == (2, 10, 4, 1, 1, 26, 26) and maps["c3"].shape == (2, 10, 4, 1, 4, 10, 10)
    # each layer: rot90 in the plane, roll the output (dim 2) and input (dim 4) orientation axes by +1
    for layer in ("c2", "c5"):
        a, a_rot = maps[layer], maps_rot[layer]
        assert rel_err(a_rot, rot(torch.roll(a, (1, 1), dims=(2, 4)))) < 1e-10
        assert rel_err(a_rot, rot(torch.roll(a, 1, dims=2))) > 1e-3  # rolling one axis is wrong
    m, m_rot = combined_full_attention(model, x), combined_full_attention(model, rot(x))
    assert m.shape == (2, 4, 4, 28, 28) and m.dtype == torch.float64 and m.min() > 0 and m.max() < 1
    assert rel_err(m_rot, rot(roll_both(m, 1))) < 1e-10
    for wrong in (rot(roll_both(m, -1)), rot(m), rot(torch.roll(m, 1, dims=1)), rot(torch.roll(m, 1, dims=2))):
        assert rel_err(m_rot, wrong) > 1e-3
    error, control = rotation_errors(P4, m, m_rot, h_dims=(1, 2))
    assert error < 1e-10 and control == pytest.approx(rel_err(m_rot, rot(roll_both(m, -1))))
    # the product over layers; the lifting map is broadcast over the input orientations
    assert rel_err(combined_full_attention(model, x, ["c3"]), orientation_grid(maps["c3"], (28, 28))) < 1e-12
    without = combined_full_attention(model, x, skip_lifting=True)
    assert rel_err(without * orientation_grid(maps["c1"], (28, 28)), m) < 1e-12
    assert model.training  # the model's mode is restored


def test_full_attention_maps_of_lean_and_reference_implementations_agree():
    torch.manual_seed(1)
    lean = build("a_p4cnn").double()
    reference = build("a_p4cnn", attention_impl="reference").double()
    reference.load_state_dict(lean.state_dict())
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    a, b = full_spatial_attention_maps(lean, x), full_spatial_attention_maps(reference, x)
    assert all(rel_err(a[n], b[n]) < 1e-12 for n in a)


def test_full_attention_without_spatial_maps_is_refused():
    with pytest.raises(ValueError, match="full channel attention only"):
        full_spatial_attention_modules(build("a_ch_p4cnn"))
    with pytest.raises(ValueError, match="no spatial attention maps"):
        full_spatial_attention_modules(build("p4cnn"))
    with pytest.raises(ValueError, match="choose from"):
        combined_full_attention(build("a_p4cnn"), torch.randn(1, 1, 28, 28), ["c9"])
    assert len(full_spatial_attention_modules(build("a_sp_p4cnn"))) == 7


def test_orientation_arrows():
    up, left, down, right = (-1, 0), (0, -1), (1, 0), (0, 1)
    assert [tuple(v) for v in orientation_vectors(P4).tolist()] == [up, left, down, right]
    # the mirror half: rotate, then reverse the rows
    assert [tuple(v) for v in orientation_vectors(P4M).tolist()] == [up, left, down, right, down, left, up, right]


# ------------------------------------------------------------------------------------------------ rotations
def test_parse_angles_and_rotate_batch():
    assert parse_angles("0:360:45") == [0, 45, 90, 135, 180, 225, 270, 315]
    assert parse_angles("0:360:90") == [0, 90, 180, 270] and parse_angles("10,-90") == [10, -90]
    for bad in ("0:360", "0:360:0", "90:0:10", "a,b"):
        with pytest.raises(ValueError, match="angles"):
            parse_angles(bad)
    norm = {"mean": [0.13], "std": [0.3]}
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(rotate_batch(x, 90, norm), rot(x)) and torch.equal(rotate_batch(x, -90, norm), rot(x, 3))
    assert torch.equal(rotate_batch(x, 360, norm), x)
    # other angles rotate the stored image (background 0): the corners fill with the normalised 0
    blank = torch.full((1, 1, 28, 28), -0.13 / 0.3)
    assert torch.allclose(rotate_batch(blank, 45, norm), blank, atol=1e-6)
    y = rotate_batch(torch.ones(1, 1, 28, 28), 45, norm)
    assert y[0, 0, 0, 0] == pytest.approx(-0.13 / 0.3) and y[0, 0, 14, 14] == pytest.approx(1.0, abs=1e-5)


# ------------------------------------------------------------------------------------------------- scripts
def test_visualize_attention_writes_the_figure(ckpts, tmp_path, capsys):
    out = tmp_path / "figs" / "att.png"
    viz = script("visualize_attention")
    assert viz.main([str(ckpts["fa_p4cnn"]), "--index", "0", "5", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    errors = [float(e) for e in re.findall(r"relative error ([0-9.e+-]+)", printed)]
    controls = [float(e) for e in re.findall(r"wrong orientation shift: ([0-9.e+-]+)", printed)]
    assert len(errors) == 2 and max(errors) < 1e-5 and min(controls) > 0.1
    assert f"wrote {out}" in printed
    # no overwrite without --force
    before = out.read_bytes()
    assert viz.main([str(ckpts["fa_p4cnn"]), "--index", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--force" in err and err.count("\n") == 1
    assert out.read_bytes() == before
    assert viz.main([str(ckpts["fa_p4cnn"]), "--index", "1", "--out", str(out), "--force", "--skip-lifting"]) == 0
    assert out.read_bytes() != before


def test_visualize_attention_draws_full_attention(ckpts, tmp_path, capsys):
    out = tmp_path / "full.png"
    viz = script("visualize_attention")
    assert viz.main([str(ckpts["a_p4cnn"]), "--index", "0", "5", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    errors = [float(e) for e in re.findall(r"relative error ([0-9.e+-]+)", printed)]
    controls = [float(e) for e in re.findall(r"wrong orientation shift: ([0-9.e+-]+)", printed)]
    assert len(errors) == 2 and max(errors) < 1e-5 and min(controls) > 1e-2
    argv = [str(ckpts["a_p4cnn"]), "--index", "1", "--layers", "c2", "c3", "--out", str(out), "--force"]
    assert viz.main(argv) == 0
    assert max(float(e) for e in re.findall(r"relative error ([0-9.e+-]+)", capsys.readouterr().out)) < 1e-5


def test_visualize_attention_p4m_figure_has_both_halves(tmp_path):
    viz = script("visualize_attention")
    model = RotMNISTNet(group="p4m", attention="f")
    x = torch.randn(1, 1, 28, 28)
    m, m_rot = combined_spatial_attention(model, x), combined_spatial_attention(model, rot(x))
    fig = viz.attention_figure([x[0, 0].numpy(), rot(x)[0, 0].numpy()], m, m_rot, P4M, ["t"], "p4m")
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 6 and sum("m=-1" in t for t in titles) == 2
    viz.save_figure(fig, tmp_path / "p4m.png")
    assert (tmp_path / "p4m.png").is_file()


def test_visualize_attention_p4m_model_on_rgb_images(tmp_path, monkeypatch, capsys):
    written = write_cifar10(tmp_path / "data", n_per_batch=2, n_test=3)
    sizes = "{" + ",".join(f"{k}:{v}" for k, v in written.sizes.items()) + "}"
    overrides = [f"dataset.source.sizes={sizes}", f"dataset.source.val_size={written.extra['val_size']}"]
    viz = script("visualize_attention")
    monkeypatch.setattr(viz, "load_split", lambda *a: load_split(*a, overrides=overrides))
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "m.ckpt", model_payload("fa_p4m_allcnnc", build("fa_p4m_allcnnc")))
    out = tmp_path / "p4m.png"
    argv = [str(ckpt), "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--index", "2", "--out", str(out)]
    assert viz.main(argv) == 0
    errors = [float(e) for e in re.findall(r"relative error ([0-9.e+-]+)", capsys.readouterr().out)]
    assert len(errors) == 1 and errors[0] < 1e-5
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("p4cnn", [], "no spatial attention maps"),
        ("a_ch_p4cnn", [], "full channel attention only"),
        ("a_p4cnn", ["--layers", "c9"], "choose from"),
        ("fa_p4cnn", ["--layers", "c2"], "full-attention models (a_*) only"),
        (None, [], "exist"),
    ],
)
def test_visualize_attention_errors(ckpts, tmp_path, capsys, model, extra, message):
    path = ckpts[model] if model else tmp_path / "missing.ckpt"
    out = tmp_path / "x.png"
    assert script("visualize_attention").main([str(path), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_visualize_attention_cli_reports_a_missing_checkpoint_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "visualize_attention.py"), str(tmp_path / "nope.ckpt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: checkpoint {tmp_path / 'nope.ckpt'} does not exist"]


def test_eval_rotations_writes_csv_and_png(ckpts, tmp_path, capsys):
    out = tmp_path / "figs" / "rot"
    evr = script("eval_rotations")
    args = [str(ckpts["z2cnn"]), str(ckpts["p4cnn"]), "--limit", "64", "--angles", "0:360:45", "--out", str(out)]
    assert evr.main([*args, "--device", "cpu"]) == 0
    with open(f"{out}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["checkpoint", "model", "tta", "angle_deg", "accuracy", "n"]
    assert [(r["model"], r["tta"], r["angle_deg"]) for r in rows] == [
        (m, "1", str(a)) for m in ("z2cnn", "p4cnn") for a in range(0, 360, 45)
    ]
    assert {r["n"] for r in rows} == {"64"} and rows[0]["checkpoint"] == str(ckpts["z2cnn"])
    acc = {(r["model"], int(r["angle_deg"])): float(r["accuracy"]) for r in rows}
    assert all(0 <= a <= 1 for a in acc.values())
    assert acc["p4cnn", 0] == acc["p4cnn", 90] == acc["p4cnn", 180] == acc["p4cnn", 270]  # exact rot90
    assert Path(f"{out}.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out
    assert evr.main(args) == 2  # both outputs exist
    assert "--force" in capsys.readouterr().err


def test_eval_rotations_tta_line_for_planar_checkpoints(ckpts, tmp_path, capsys):
    out = tmp_path / "tta"
    paths = [str(ckpts["z2cnn"]), str(ckpts["p4cnn"])]
    argv = [*paths, "--limit", "64", "--angles", "0:360:45", "--tta", "4", "--device", "cpu", "--out", str(out)]
    assert script("eval_rotations").main(argv) == 0
    printed = capsys.readouterr().out
    assert "--tta 4 augments planar (z2) checkpoints only, not: p4cnn (p4)" in printed
    assert "z2cnn + TTA 4: mean" in printed and "p4cnn + TTA" not in printed
    with open(f"{out}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["checkpoint"], r["model"], r["tta"]) for r in rows[::8]] == [
        (paths[0], "z2cnn", "1"),
        (paths[0], "z2cnn", "4"),  # the augmented z2cnn right after the model itself
        (paths[1], "p4cnn", "1"),  # no TTA rows for the p4 model
    ]
    assert len(rows) == 24 and {r["n"] for r in rows} == {"64"}
    acc = {(r["model"], int(r["tta"]), int(r["angle_deg"])): float(r["accuracy"]) for r in rows}
    assert acc["z2cnn", 4, 0] == acc["z2cnn", 4, 90] == acc["z2cnn", 4, 180] == acc["z2cnn", 4, 270]  # exact rot90
    assert acc["p4cnn", 1, 0] == acc["p4cnn", 1, 90] == acc["p4cnn", 1, 180] == acc["p4cnn", 1, 270]
    assert len({acc["z2cnn", 1, a] for a in (0, 90, 180, 270)}) > 1  # control: the plain Z2 model is not invariant
    assert Path(f"{out}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("k", ["1", "0", "-2"])
def test_eval_rotations_rejects_a_bad_tta(ckpts, tmp_path, capsys, k):
    out = tmp_path / "r"
    assert script("eval_rotations").main([str(ckpts["z2cnn"]), "--tta", k, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --tta must be an integer K >= 2 (the number of rotations averaged over), not {k}\n"
    assert not any(tmp_path.iterdir())


def test_eval_rotations_labels_and_errors(ckpts, tmp_path, capsys):
    evr = script("eval_rotations")
    paths = [Path("runs/a/best.ckpt"), Path("runs/b/best.ckpt"), Path("runs/c/best.ckpt")]
    assert evr.labels_for(paths, ["p4cnn", "p4cnn", "z2cnn"]) == ["p4cnn (a)", "p4cnn (b)", "z2cnn"]
    assert evr.main([str(ckpts["p4cnn"]), "--angles", "0:90", "--out", str(tmp_path / "r")]) == 2
    assert "error: angles" in capsys.readouterr().err
    assert evr.main([str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_checkpoint_that_builds_no_model_is_a_clear_error(ckpts, tmp_path, capsys):
    payload = torch.load(ckpts["p4cnn"], weights_only=False)
    no_target = {**payload, "net": {"group": "p4"}}
    no_target.pop("sha256", None)
    missing_weight = {**payload, "state_dict": {k: v for k, v in payload["state_dict"].items() if k != "c1.weight"}}
    missing_weight.pop("sha256", None)
    for name, bad in (("no_target", no_target), ("missing_weight", missing_weight)):
        path = save_checkpoint(tmp_path / f"{name}.ckpt", bad)
        out = tmp_path / "figs" / name
        assert script("eval_rotations").main([str(path), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: checkpoint {path} does not hold a usable model") and err.count("\n") == 1
        assert not (tmp_path / "figs").exists()  # the output folder is made only when writing


def test_visualize_attention_wants_a_png_and_a_writable_folder(ckpts, tmp_path, capsys):
    va = script("visualize_attention")
    assert va.main([str(ckpts["fa_p4cnn"]), "--out", str(tmp_path / "maps.txt")]) == 2
    assert "must end in .png" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert va.main([str(ckpts["fa_p4cnn"]), "--out", str(tmp_path / "file/maps.png")]) == 2
    assert "file is not a directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_check_checkpoints_refuses_a_malformed_sums_file_and_unknown_models(ckpts, tmp_path, capsys):
    cc = script("check_checkpoints")
    (tmp_path / "SHA256SUMS").write_text("garbage line\n")
    assert cc.main(["--dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'SHA256SUMS'}, line 1: not '<sha256>  <file name>'")
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  p4cnn.ckpt\n")
    assert cc.main(["--dir", str(tmp_path), "--models", "p4cnn", "nosuch"]) == 2
    assert "no checkpoint of nosuch" in capsys.readouterr().err
    assert cc.main(["--dir", str(tmp_path)]) == 1  # listed but missing: a failed check, not an error
    assert "FAIL p4cnn.ckpt" in capsys.readouterr().out
    (tmp_path / "z2cnn.ckpt").write_bytes(b"not a checkpoint")  # its checksum right, its contents unusable
    digest = hashlib.sha256(b"not a checkpoint").hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  p4cnn.ckpt\n{digest}  z2cnn.ckpt\n")
    assert cc.main(["--dir", str(tmp_path)]) == 1  # both fail, each on its own line
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("FAIL p4cnn.ckpt") and out[1].startswith("FAIL z2cnn.ckpt: ")
    assert "not a readable checkpoint" in out[1]
