"""Every architecture: parameter counts, invariance of the logits, forward/backward, the authors' weights."""

import numpy as np
import pytest
import torch

from attentive_gcnn.models import build, count_parameters, from_authors_checkpoint, model_config, model_names
from attentive_gcnn.nn import equivariance_errors
from tests.conftest import BROKEN, authors_release_dir, needs_authors_release, rel_err

NAMES = model_names()
GROUP_MODELS = [n for n in NAMES if model_config(n).net.group != "z2"]
Z2_MODELS = [n for n in NAMES if model_config(n).net.group == "z2"]
ROTMNIST_MODELS = [n for n in NAMES if model_config(n).dataset == "rotmnist"]


def test_all_24_models_have_configs():
    assert len(NAMES) == 24
    assert {"z2cnn", "a_p4cnn", "a_p4_allcnnc", "fa_p4m_resnet44", "fa_p4m_densenet"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_equals_the_expected_count(name):
    assert count_parameters(build(name)) == model_config(name).params


def invariance_errors(model, group_name):
    model = model.double().eval()
    x = torch.randn(2, *model.input_shape, dtype=torch.float64)
    return equivariance_errors(model, group_name, x, out_h_dims=(), out_planar=False)


@pytest.mark.parametrize("name", GROUP_MODELS)
def test_group_models_are_invariant(name):
    """Eval-mode logits invariant under every rotation (and, for p4m, every mirror) at the dataset's size."""
    group = model_config(name).net.group
    errors = invariance_errors(build(name), group)
    assert len(errors) == {"p4": 3, "p4m": 7}[group]
    assert max(errors.values()) < 1e-9, errors


@pytest.mark.parametrize("name", Z2_MODELS)
def test_z2_models_are_not_invariant(name):
    errors = invariance_errors(build(name), "p4")
    assert max(errors.values()) > BROKEN, errors


def test_p4_models_are_not_mirror_invariant():
    errors = invariance_errors(build("p4cnn"), "p4m")
    assert max(errors[g] for g in range(4, 8)) > BROKEN


def test_authors_stride2_layout_is_not_invariant_but_has_the_same_parameters():
    model = build("p4_allcnnc", stride2=True)
    assert count_parameters(model) == model_config("p4_allcnnc").params
    assert max(invariance_errors(model, "p4").values()) > BROKEN


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name):
    model = build(name).train()
    batch = 1 if name == "a_p4_allcnnc" else 3
    x = torch.randn(batch, *model.input_shape)
    logits = model(x)
    assert logits.shape == (batch, model.num_classes)
    torch.nn.functional.cross_entropy(logits, torch.zeros(batch, dtype=torch.long)).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_build_overrides_and_errors():
    assert count_parameters(build("p4cnn", channels=11)) == model_config("p4cnn_w11").params
    with pytest.raises(ValueError, match="unknown model 'p5cnn'"):
        build("p5cnn")
    with pytest.raises(ValueError, match="unknown attention"):
        build("p4cnn", attention="fancy")
    with pytest.raises(ValueError, match="expects 28x28"):
        build("p4cnn").eval()(torch.randn(1, 1, 32, 32))


# --- the authors' released checkpoints --------------------------------------------------------------------

RELEASED = [  # (file stem, this project's model, input set)
    ("rotmnist_z2cnn", "z2cnn", "rotmnist"),
    ("rotmnist_p4cnn", "p4cnn", "rotmnist"),
    ("rotmnist_att_p4cnn", "a_p4cnn", "rotmnist"),
    ("rotmnist_f_att_p4cnn", "fa_p4cnn", "rotmnist"),
    ("pcam_p4m_densenet", "p4m_densenet", "pcam"),
]


@needs_authors_release
@pytest.mark.parametrize("stem, name, inputs", RELEASED, ids=[r[1] for r in RELEASED])
def test_released_checkpoints_reproduce_the_authors_logits(stem, name, inputs):
    release = authors_release_dir()
    ref = np.load(release / "reference_outputs.npz")
    model = from_authors_checkpoint(release / f"{stem}.pth", name).double().eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(ref[f"{inputs}_inputs"]))
    assert rel_err(logits, torch.from_numpy(ref[f"{stem}_logits"])) < 1e-10
    if inputs == "rotmnist":
        labels = torch.from_numpy(ref["rotmnist_labels"]).long()
        assert torch.equal(logits[:16].argmax(1), labels)  # all 16 digits right
        if name != "z2cnn":  # rows 16-31 are rows 0-15 rotated by 90 degrees
            assert rel_err(logits[16:], logits[:16]) < 1e-10


@needs_authors_release
def test_checkpoint_of_another_model_is_refused_clearly():
    release = authors_release_dir()
    with pytest.raises(ValueError, match="missing .*channel_attention"):
        from_authors_checkpoint(release / "rotmnist_p4cnn.pth", "fa_p4cnn")
    with pytest.raises(ValueError, match="f_att_p4m_densenet' run is p4m_densenet"):
        from_authors_checkpoint(release / "pcam_p4m_densenet.pth", "fa_p4m_densenet")
    with pytest.raises(ValueError, match="does not fit"):
        from_authors_checkpoint(release / "rotmnist_p4cnn.pth", "p4cnn_w11")


@pytest.mark.parametrize("name", ["fa_p4cnn", "fa_p4m_allcnnc", "fa_p4m_resnet44"])
def test_spatial_kernel_override_reaches_every_attentive_conv(name):
    model = build(name, spatial_kernel=5)
    kernels = {m.spatial_attention.kernel_size for m in model.modules() if getattr(m, "spatial_attention", None)}
    assert kernels == {5}


@pytest.mark.parametrize("name", ROTMNIST_MODELS)
def test_eval_logits_do_not_depend_on_the_batch(name):
    """In eval mode every image is evaluated on its own, so the evaluation batch size changes nothing."""
    torch.manual_seed(0)
    model = build(name).double()
    x = torch.randn(5, *model.input_shape, dtype=torch.float64)
    with torch.no_grad():
        model.train()(x)  # move the batch-norm running statistics away from their initial values
        whole = model.eval()(x)
        split = torch.cat([model(x[:2]), model(x[2:])])
        assert rel_err(split, whole) < 1e-12
        # negative control: in training mode batch norm uses the batch's statistics
        assert rel_err(torch.cat([model.train()(x[:2]), model(x[2:])]), model(x)) > BROKEN
