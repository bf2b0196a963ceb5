"""The lean attention (``impl="lean"``: :mod:`attentive_gcnn.accel.full` for the full attention,
:mod:`attentive_gcnn.accel.feature` for alpha-F) computes the same function as the straightforward
reference, keeps the same maps, and (full attention) holds far less memory for backward."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from attentive_gcnn.accel import batched
from attentive_gcnn.accel import feature as feature_lean
from attentive_gcnn.accel import full as lean
from attentive_gcnn.accel.full import PlanewiseConv
from attentive_gcnn.accel.native import ENV
from attentive_gcnn.accel.small_conv import small_conv2d
from attentive_gcnn.models import build
from attentive_gcnn.nn import AttGConv, FAttGConv
from attentive_gcnn.nn.attention import attention_maps
from attentive_gcnn.nn.attention.combine import attend
from attentive_gcnn.nn.attention.full import full_attention
from tests.conftest import GROUPS, rel_err

VARIANTS = [
    pytest.param(dict(channel=True, spatial=True), id="full"),
    pytest.param(dict(channel=True, spatial=False), id="channel"),
    pytest.param(dict(channel=False, spatial=True), id="spatial"),
    pytest.param(dict(channel=True, spatial=True, combine="product"), id="product"),
]
# the full attention can also recompute each chunk's channel statistics in backward
FULL_VARIANTS = [*VARIANTS, pytest.param(dict(recompute_stats=True), id="full-recompute")]


def twins(group, lifting: bool, ci: int, co: int, **kw) -> tuple[AttGConv, AttGConv]:
    """A reference layer and a lean copy with the same weights; the lean one works one output channel at a time."""
    ref = AttGConv(group, ci, co, 3, lifting=lifting, ratio=1, padding=1, impl="reference", **kw).double()
    lean = copy.deepcopy(ref)
    lean.impl = "lean"
    lean.chunk_elements = lean.attend_chunk_elements = 1  # one output channel per chunk: the most chunks
    return ref, lean


@pytest.fixture(params=["native", "torch"])
def full_passes(request, monkeypatch):
    """The full attention's lean path with its fused CPU kernels (where built) and as torch ops (as on a GPU)."""
    if request.param == "torch":
        monkeypatch.setenv(ENV, "0")
    return request.param


def values_and_grads(layer: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    x = x.detach().requires_grad_(True)
    y = layer(x)
    return [y, *torch.autograd.grad(y, [x, *layer.parameters()], g)]


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("lifting", [True, False], ids=["lifting", "group"])
@pytest.mark.parametrize("variant", FULL_VARIANTS)
def test_lean_equals_reference_in_values_gradients_and_maps(group, lifting, variant, full_passes):
    ci, co = (2, 5) if lifting else (4, 5)
    ref, lean = twins(group, lifting, ci, co, **variant)
    n = ref.group.order
    x = torch.randn(2, ci, *(() if lifting else (n,)), 7, 7, dtype=torch.float64)
    g = torch.randn(2, co, n, 7, 7, dtype=torch.float64)
    for a, b in zip(values_and_grads(ref, x, g), values_and_grads(lean, x, g), strict=True):
        assert rel_err(b, a) < 1e-10
    for module in ("channel_attention", "spatial_attention"):
        if getattr(ref, module) is not None:
            a, b = getattr(ref, module).attention_map, getattr(lean, module).attention_map
            assert a.shape == b.shape and rel_err(b, a) < 1e-12
    with torch.no_grad():  # evaluation
        assert rel_err(lean(x), ref(x)) < 1e-10


@pytest.mark.parametrize(
    ("stride", "padding", "dilation"), [(2, 1, 1), (1, 0, 2), (2, 2, 2)], ids=["stride2", "dilated", "both"]
)
@pytest.mark.parametrize("lifting", [True, False], ids=["lifting", "group"])
def test_lean_equals_reference_for_strides_paddings_and_dilations(stride, padding, dilation, lifting, full_passes):
    ci, co = (2, 3) if lifting else (3, 3)
    kw = dict(lifting=lifting, ratio=1, stride=stride, padding=padding, dilation=dilation, spatial_dilation=dilation)
    ref = AttGConv("p4", ci, co, 3, impl="reference", **kw).double()
    lean = copy.deepcopy(ref)
    lean.impl = "lean"
    x = torch.randn(2, ci, *(() if lifting else (4,)), 9, 9, dtype=torch.float64)
    g = torch.randn_like(ref(x))
    for a, b in zip(values_and_grads(ref, x, g), values_and_grads(lean, x, g), strict=True):
        assert rel_err(b, a) < 1e-10


def test_lean_equals_reference_over_uneven_chunks(full_passes):
    ref, lean = twins("p4", False, 4, 5)
    x = torch.randn(2, 4, 4, 7, 7, dtype=torch.float64)
    g = torch.randn(2, 5, 4, 7, 7, dtype=torch.float64)
    lean.chunk_elements = 2 * (2 * 4 * 4 * 4 * 49)  # ft of 2 output channels: chunks of 2, 2 and 1
    lean.attend_chunk_elements = 2 * (2 * 4 * 4 * 49)  # per-orientation tensors of 2 output channels
    for a, b in zip(values_and_grads(ref, x, g), values_and_grads(lean, x, g), strict=True):
        assert rel_err(b, a) < 1e-10


@pytest.mark.parametrize("dilation", [1, 3])
def test_planewise_conv_is_the_grouped_conv(dilation):
    x = torch.randn(3, 12, 8, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 6, 8, 8, dtype=torch.float64)
    ours = PlanewiseConv.apply(x, w, dilation)
    theirs = F.conv2d(x, w, padding=dilation * 2, dilation=dilation, groups=6)
    assert rel_err(ours, theirs) < 1e-12
    for a, b in zip(torch.autograd.grad(ours, (x, w), g), torch.autograd.grad(theirs, (x, w), g), strict=True):
        assert rel_err(a, b) < 1e-12


FEATURE_VARIANTS = [*VARIANTS, pytest.param(dict(spatial_dilation=2), id="dilated")]


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("lifting", [True, False], ids=["lifting", "group"])
@pytest.mark.parametrize("variant", FEATURE_VARIANTS)
@pytest.mark.parametrize("passes", ["native", "torch"])
def test_lean_alpha_f_equals_reference_in_values_gradients_and_maps(group, lifting, variant, passes, monkeypatch):
    if passes == "torch":  # the torch-op passes, as on a GPU or without a compiler
        monkeypatch.setenv(ENV, "0")
    ref = FAttGConv(group, 3, 4, 3, lifting=lifting, ratio=1, padding=1, impl="reference", **variant).double()
    lean = copy.deepcopy(ref)
    lean.impl = "lean"
    x = torch.randn(2, 3, *(() if lifting else (ref.group.order,)), 9, 9, dtype=torch.float64)
    g = torch.randn_like(ref(x))
    for a, b in zip(values_and_grads(ref, x, g), values_and_grads(lean, x, g), strict=True):
        assert rel_err(b, a) < 1e-10
    assert attention_maps(ref).keys() == attention_maps(lean).keys()
    for name, a in attention_maps(ref).items():
        b = attention_maps(lean)[name]
        assert a.shape == b.shape and rel_err(b, a) < 1e-12
    with torch.no_grad():
        assert rel_err(lean(x), ref(x)) < 1e-10
    frozen = copy.deepcopy(lean).requires_grad_(False)  # no parameter gradients wanted: input gradient only
    assert rel_err(torch.autograd.grad(frozen(x.requires_grad_()), x, g)[0], values_and_grads(ref, x, g)[1]) < 1e-10


def test_alpha_f_models_select_the_implementation(monkeypatch):
    assert {m.impl for m in build("fa_p4cnn").modules() if isinstance(m, FAttGConv)} == {"auto"}
    model = build("fa_p4cnn", attention_impl="reference")
    assert {m.impl for m in model.modules() if isinstance(m, FAttGConv)} == {"reference"}

    def refuse(*args):
        raise AssertionError("RomHog's 1x1 spatial attention over all channels has no lean path")

    monkeypatch.setattr(feature_lean, "lean_feature_attend", refuse)
    romhog = build("romhog_p4cnn")
    assert romhog(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="impl"):
        FAttGConv("p4", 2, 2, 3, lifting=False, impl="fast")


def test_auto_is_the_default_and_models_select_the_reference():
    assert AttGConv("p4", 2, 2, 3, lifting=False).impl == "auto"
    model = build("a_p4cnn", attention_impl="reference")
    assert {m.impl for m in model.modules() if isinstance(m, AttGConv)} == {"reference"}
    with pytest.raises(ValueError, match="impl"):
        AttGConv("p4", 2, 2, 3, lifting=False, impl="fast")


def test_layers_run_the_computation_their_impl_chose():
    """The reference is nn's own function; the lean one comes from accel, chosen when the layer is built (or its
    impl is set), never in forward."""
    full = AttGConv("p4", 2, 2, 3, lifting=False, impl="reference")
    assert full._compute is full_attention
    full.impl = "lean"
    assert full._compute is lean.lean_full_attention
    full.impl = "batched"
    assert full._compute is batched.batched_full_attention
    alpha_f = FAttGConv("p4", 2, 2, 3, lifting=False, impl="lean")
    assert alpha_f._attend is feature_lean.lean_feature_attend
    assert alpha_f.conv2d is alpha_f.spatial_attention.conv2d is small_conv2d
    alpha_f.impl = "reference"
    assert alpha_f._attend is attend
    assert alpha_f.conv2d is alpha_f.spatial_attention.conv2d is F.conv2d
    alpha_f.impl = "batched"  # the GPU form of alpha-F is the reference's ops
    assert alpha_f._attend is attend and alpha_f.conv2d is F.conv2d


def test_auto_runs_lean_on_a_cpu_and_batched_elsewhere(monkeypatch):
    calls = []
    monkeypatch.setattr(lean, "lean_full_attention", lambda layer, x: calls.append("lean") or x)
    monkeypatch.setattr(batched, "batched_full_attention", lambda layer, x: calls.append("batched") or x)
    layer = AttGConv("p4", 2, 2, 3, lifting=False)  # auto, chosen after the patches
    layer(torch.zeros(1, 2, 4, 5, 5))
    layer(torch.zeros(1, 2, 4, 5, 5, device="meta"))
    assert calls == ["lean", "batched"]


def test_a_p4cnn_lean_equals_reference_end_to_end():
    torch.manual_seed(0)
    ref = build("a_p4cnn", attention_impl="reference", dropout=0.0).double()  # train mode, no randomness
    lean = build("a_p4cnn", dropout=0.0).double()
    lean.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    g = torch.randn(2, 10, dtype=torch.float64)
    for a, b in zip(values_and_grads(ref, x, g), values_and_grads(lean, x, g), strict=True):
        assert rel_err(b, a) < 1e-10


def saved_bytes(layer: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward during one forward (what training memory is
    made of)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x.requires_grad_(True)).sum()
    return sum(storages.values())


def test_lean_keeps_a_fraction_of_the_memory_for_backward():
    """A memory test, not a timing test: the reference keeps the intermediate responses ``ft``
    [B, Co, |H|, Ci, |H|, X, Y] and their attended copy for backward. The lean path keeps its inputs, the
    arg-maxes and, by default, each chunk's per-orientation tensors (sum and max over c, the channel arg-max, the
    spatial map: each a factor Ci smaller than ``ft``); with ``recompute_stats`` it recomputes the whole chunk in
    backward and keeps less again. Here with P4CNN's Ci = 10."""
    ref, lean = twins("p4", False, 10, 10)
    lean.chunk_elements, lean.attend_chunk_elements = 2**14, 2**21
    x = torch.randn(4, 10, 4, 16, 16, dtype=torch.float64)
    ft_bytes = 4 * 10 * 4 * 10 * 4 * 16 * 16 * 8
    reference, leaner = saved_bytes(ref, x), saved_bytes(lean, x)
    lean.recompute_stats = True
    leanest = saved_bytes(lean, x)
    assert reference > 2 * ft_bytes  # ft and g = a_C * ft
    assert leaner < ft_bytes / 2 and leaner < reference / 5
    assert leanest < ft_bytes / 4 and leanest < reference / 8 and leanest < leaner / 2
