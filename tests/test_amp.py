"""Mixed precision: every model trains under autocast (bfloat16, and float16 as CUDA's Functions see it) with
finite gradients close to float32's, and ``amp=true`` runs train attentive models end to end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attentive_gcnn.models import build, model_names
from attentive_gcnn.train import train
from tests.test_train import compose_cfg, tiny_rotmnist

# Gradient agreement: the cosine similarity of the flattened gradients of all parameters, amp and float32. bfloat16
# keeps 8 significant bits (relative rounding 2^-8, float16 2^-11); over a deep net's forward and backward the
# rounding and the occasional flipped arg-max (max pooling, the attention's maxima) move the gradient by a few
# percent in direction (plain models, with no Function of this package, reach a relative norm error of 0.28 in
# bfloat16, a cosine of 0.96), while a wrong path (a gradient lost, zeroed or taken in the wrong dtype) takes it
# to 0 or below. The models
# run in eval mode with batch normalization's running statistics set to the batch's own: its statistics of a batch of
# 2, differentiated in training mode, amplify the rounding, and untrained running statistics leave deep nets
# unnormalized (float16 overflows).
MIN_GRAD_COSINE = 0.9
SMALLER_SIDE = {32: 16}  # CIFAR-10's models (All-CNN-C, ResNet-44) take 16 x 16 too: a quarter of the pixels
AMP_DTYPES = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]


def step_grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None) -> dict:
    """One training step's gradients (forward, cross-entropy, backward), under CPU autocast to ``dtype`` (None:
    float32)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module", params=model_names())
def model_step(request):
    """A model (eval mode: see ``MIN_GRAD_COSINE``), a batch of 2 at its (smallest) input size, and its float32
    gradients."""
    torch.manual_seed(0)
    model = build(request.param)
    channels, side, _ = model.input_shape
    side = SMALLER_SIDE.get(side, side)
    x = torch.randn(2, channels, side, side)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a cumulative average: after one batch, that batch's statistics
    with torch.no_grad():
        model.train()(x)
    model.eval()
    y = torch.tensor([0, 1])
    return model, x, y, step_grads(model, x, y, None)


@pytest.mark.parametrize("dtype", AMP_DTYPES)
def test_a_training_step_under_autocast_gives_float32s_gradients(model_step, dtype):
    model, x, y, reference = model_step
    grads = step_grads(model, x, y, dtype)
    assert grads.keys() == reference.keys()
    for name, g in grads.items():
        assert g.dtype == reference[name].dtype and torch.isfinite(g).all(), name
    flat, flat32 = (torch.cat([g[name].flatten().double() for name in reference]) for g in (grads, reference))
    cosine = float(F.cosine_similarity(flat, flat32, dim=0))
    assert cosine > MIN_GRAD_COSINE, cosine


@pytest.mark.parametrize("name", ["fa_p4cnn", "a_p4cnn"])
def test_mixed_precision_training_of_attentive_models(tmp_path, name):
    data = tiny_rotmnist(tmp_path, n_train=16, n_valid=8, n_test=8)
    s = train(compose_cfg(*data, f"model={name}", "training.epochs=1", "amp=true"), tmp_path / "run")
    assert s["config"]["amp"] is True and s["status"] == "complete"
