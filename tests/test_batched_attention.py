"""The batched full attention (``impl="batched"``, :mod:`attentive_gcnn.accel.batched`, the form that runs on GPUs)
computes the reference's function with its maps and gradients, in one chunk or many, and plans its chunks from a
memory budget."""

from __future__ import annotations

import copy

import pytest
import torch

from attentive_gcnn.accel import batched
from attentive_gcnn.models import build
from attentive_gcnn.nn import AttGConv
from tests.conftest import GROUPS, rel_err

VARIANTS = [
    pytest.param(dict(), id="full"),
    pytest.param(dict(spatial=False), id="channel"),
    pytest.param(dict(channel=False), id="spatial"),
    pytest.param(dict(combine="product"), id="product"),
    pytest.param(dict(channel=False, spatial=False), id="plain"),
]


def values_grads_maps(layer: AttGConv, x: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    x = x.detach().requires_grad_(True)
    y = layer(x)
    maps = [m.attention_map for m in (layer.channel_attention, layer.spatial_attention) if m is not None]
    return [y, *maps, *torch.autograd.grad(y, [x, *layer.parameters()], g)]


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("lifting", [True, False], ids=["lifting", "group"])
@pytest.mark.parametrize("kw", VARIANTS)
@pytest.mark.parametrize("budget", [None, 1], ids=["one-chunk", "chunk-per-channel"])
def test_batched_equals_the_reference(group, lifting, kw, budget):
    torch.manual_seed(0)
    ci, co, n_h = 4, 3, group.order
    ref = AttGConv(group, ci, co, 3, lifting=lifting, ratio=2, padding=1, stride=1, impl="reference", **kw).double()
    fast = copy.deepcopy(ref)
    fast.impl, fast.memory_budget = "batched", budget
    x = torch.randn(2, ci, 7, 7, dtype=torch.float64) if lifting else torch.randn(2, ci, n_h, 7, 7).double()
    g = torch.randn(2, co, n_h, 7, 7, dtype=torch.float64)
    expected, got = values_grads_maps(ref, x, g), values_grads_maps(fast, x, g)
    assert len(expected) == len(got)
    for a, b in zip(expected, got, strict=True):
        assert a.shape == b.shape and rel_err(b, a) < 1e-12


def test_strided_dilated_layer_in_chunks():
    torch.manual_seed(1)
    ref = AttGConv("p4", 4, 5, 3, lifting=False, stride=2, padding=2, dilation=2, impl="reference").double()
    fast = copy.deepcopy(ref)
    fast.impl, fast.memory_budget = "batched", 1
    x, g = torch.randn(2, 4, 4, 9, 9).double(), torch.randn(2, 5, 4, 5, 5).double()
    for a, b in zip(values_grads_maps(ref, x, g), values_grads_maps(fast, x, g), strict=True):
        assert rel_err(b, a) < 1e-12


def test_plan_follows_the_budget():
    layer = AttGConv("p4", 10, 12, 3, lifting=False, impl="batched")
    xin = torch.empty(8, 40, 16, 16, device="meta")
    ft_per_channel = 8 * 4 * 40 * 14 * 14 * 4  # bytes of ft per output channel
    assert batched.plan(layer, xin, (14, 14)) == batched.BatchedPlan((12,), recompute=False)  # 40 GiB on meta
    layer.memory_budget = batched.WORKING_SET * ft_per_channel * 5  # five channels' working set
    assert batched.plan(layer, xin, (14, 14)) == batched.BatchedPlan((4, 4, 4), recompute=True)
    layer.memory_budget = 1
    assert batched.plan(layer, xin, (14, 14)).sizes == (1,) * 12
    assert batched.memory_budget(torch.device("meta")) == batched.META_BUDGET


def test_plans_are_cached():
    layer = AttGConv("p4", 2, 3, 3, lifting=False, impl="batched", memory_budget=1)
    batched._plan.cache_clear()
    layer(torch.randn(1, 2, 4, 6, 6))
    layer(torch.randn(1, 2, 4, 6, 6))
    assert batched._plan.cache_info().misses == 1 and batched._plan.cache_info().hits == 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_batched_trains_under_autocast(dtype):
    """The GPU path under autocast (float16 is what CUDA's autocast gives it): finite gradients close to float32's."""
    from tests.test_amp import MIN_GRAD_COSINE, step_grads

    torch.manual_seed(0)
    model = build("a_p4cnn", attention_impl="batched")
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([0, 1])
    for module in model.modules():  # batch statistics as running statistics (see tests/test_amp.py)
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    with torch.no_grad():
        model.train()(x)
    model.eval()
    reference, got = step_grads(model, x, y, None), step_grads(model, x, y, dtype)
    assert all(torch.isfinite(g).all() for g in got.values())
    flat = [torch.cat([d[k].flatten().double() for k in reference]) for d in (reference, got)]
    assert torch.nn.functional.cosine_similarity(*flat, dim=0) > MIN_GRAD_COSINE
