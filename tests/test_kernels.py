"""The native CPU kernels (:mod:`attentive_gcnn.accel.native`) of alpha-F attention compute what the torch-op passes
compute, those of the full attention what their torch-op counterparts in :mod:`attentive_gcnn.accel.full` compute,
and :func:`small_conv2d` what ``F.conv2d`` computes, gradients included; the native kernels apply where the one rule
says, and building them leaves the process as it was."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attentive_gcnn.accel import feature as feature_lean
from attentive_gcnn.accel import full as lean
from attentive_gcnn.accel import native as kernels
from attentive_gcnn.accel.feature import TorchPasses, passes_for
from attentive_gcnn.accel.small_conv import small_conv2d
from tests.conftest import DTYPES, RTOL, rel_err

needs_compiler = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler to build the kernels")


@pytest.fixture
def native():
    module = kernels.cpu_kernels("feature_attend")
    assert module is not None, "a C++ compiler is present, so the kernels must build"
    return module


def inputs(dtype, b=3, c=5, n=4, p=30):
    x = torch.randn(b, c, n, p, dtype=dtype)
    x[0, :, 0, :7] = 0.0  # ties, as after a ReLU: the first arg-max wins in both
    return dict(
        x=x,
        grad=torch.randn(b, c, n, p, dtype=dtype),
        a=torch.rand(b, c, n, dtype=dtype),
        a_x=torch.rand(b, n, p, dtype=dtype),
        g_mean=torch.randn(b, n, p, dtype=dtype),
        g_max=torch.randn(b, n, p, dtype=dtype),
        g_avg=torch.randn(b, c, n, dtype=dtype),
        g_smax=torch.randn(b, c, n, dtype=dtype),
    )


def same(a, b, dtype):
    if a is None or b is None:
        assert a is None and b is None
    elif a.dtype in (torch.int32, torch.int64):
        assert torch.equal(a.long(), b.long())
    else:
        a, b = a.detach(), b.detach()
        assert a.shape == b.shape and float((a - b).abs().max()) <= RTOL[dtype] * max(float(b.abs().max()), 1.0)


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("has_a", [True, False], ids=["channel", "no-channel"])
@pytest.mark.parametrize("has_ax", [True, False], ids=["spatial", "no-spatial"])
@pytest.mark.parametrize("product", [False, True], ids=["one-minus", "product"])
def test_native_passes_equal_torch_passes(native, dtype, has_a, has_ax, product):
    t = inputs(dtype)
    x, grad, a, a_x = t["x"], t["grad"], t["a"] if has_a else None, t["a_x"] if has_ax else None
    torch_ = TorchPasses()
    for got, want in zip(native.channel_stats(x), torch_.channel_stats(x), strict=True):
        same(got, want, dtype)
    stats = native.spatial_stats(x, a)
    for got, want in zip(stats, torch_.spatial_stats(x, a), strict=True):
        same(got, want, dtype)
    same(native.apply(x, a, a_x, product), torch_.apply(x, a, a_x, product), dtype)
    same(native.spatial_map_grad(grad, x, a, -1.0), torch_.spatial_map_grad(grad, x, a, -1.0), dtype)
    winner = stats[2]
    spatial = (t["g_mean"], t["g_max"]) if has_ax else (None, None)
    for need_x, need_a in [(True, True), (True, False), (False, True)]:
        args = (grad, x, a, a_x, *spatial, winner if has_ax else None, -1.0, product, need_x, need_a)
        got, want = native.backward_rest(*args), torch_.backward_rest(*args[:6], winner.long() if has_ax else None,
                                                                      *args[7:])  # fmt: skip
        for u, v in zip(got, want, strict=True):
            same(u, v, dtype)
    pos = torch_.channel_stats(x)[2]
    g1, g2 = grad.clone(), grad.clone()
    native.add_channel_stats_grad(g1, t["g_avg"], t["g_smax"], pos.int())
    torch_.add_channel_stats_grad(g2, t["g_avg"], t["g_smax"], pos)
    same(g1, g2, dtype)


@needs_compiler
def test_native_maxima_propagate_nan_like_torch(native):
    x = torch.randn(2, 3, 1, 10, dtype=torch.float64)
    x[0, 1, 0, 4] = x[1, 2, 0, 6] = float("nan")
    stats = [*native.channel_stats(x), *native.spatial_stats(x, None)]
    for got, want in zip(stats, [*TorchPasses.channel_stats(x), *TorchPasses.spatial_stats(x, None)], strict=True):
        if got.dtype == torch.int32:
            assert torch.equal(got.long(), want)
        else:
            assert torch.allclose(got, want, equal_nan=True)
    assert stats[1].isnan().sum() == 2 and stats[4].isnan().sum() == 2


@needs_compiler
def test_passes_are_native_for_float_cpu_tensors_and_can_be_switched_off(monkeypatch):
    assert passes_for(torch.zeros(1, 1, 1, 1)) is kernels.cpu_kernels("feature_attend") is not None
    assert isinstance(passes_for(torch.zeros(1, 1, 1, 1, dtype=torch.float16)), TorchPasses)
    monkeypatch.setenv(kernels.ENV, "0")
    assert kernels.cpu_kernels("feature_attend") is None
    assert isinstance(passes_for(torch.zeros(1, 1, 1, 1)), TorchPasses)


def test_a_failed_build_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setattr(kernels, "_loaded", {})

    def broken(name):
        raise RuntimeError("compiler exploded")

    monkeypatch.setattr(kernels, "build", broken)
    with pytest.warns(UserWarning, match="compiler exploded"):
        assert kernels.cpu_kernels("feature_attend") is None
    assert kernels.cpu_kernels("feature_attend") is None  # remembered: no second warning, no second build
    assert isinstance(feature_lean.passes_for(torch.zeros(1, 1, 1, 1)), TorchPasses)


def test_one_rule_decides_where_the_native_kernels_run(monkeypatch):
    """float32/float64 CPU tensors, not while torch.compile traces, not with ATTENTIVE_GCNN_NATIVE=0, and built."""
    built = object()
    monkeypatch.setattr(kernels, "_loaded", {"full_attend": built, "feature_attend": None})
    for dtype in (torch.float32, torch.float64):
        assert kernels.native_kernels(torch.zeros(1, dtype=dtype), "full_attend") is built
    assert kernels.native_kernels(torch.zeros(1, dtype=torch.float16), "full_attend") is None
    assert kernels.native_kernels(torch.zeros(1, device="meta"), "full_attend") is None
    assert kernels.native_kernels(torch.zeros(1), "feature_attend") is None  # not built
    with monkeypatch.context() as m:
        m.setattr(torch.compiler, "is_compiling", lambda: True)
        assert kernels.native_kernels(torch.zeros(1), "full_attend") is None
    monkeypatch.setenv(kernels.ENV, "0")
    assert kernels.native_kernels(torch.zeros(1), "full_attend") is None


@pytest.mark.parametrize("fails", [False, True], ids=["built", "failed"])
def test_a_build_leaves_the_process_as_it_was(fails, monkeypatch):
    """The build puts the environment's bin/ on PATH and quietens torch's extension logger only while it runs."""
    import logging

    from torch.utils import cpp_extension

    logger = logging.getLogger("torch.utils.cpp_extension")
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.setattr(logger, "level", logging.INFO)
    seen = {}

    def load(**kw):
        seen.update(path=os.environ["PATH"], level=logger.level, sources=kw["sources"])
        if fails:
            raise RuntimeError("compiler exploded")
        return "module"

    monkeypatch.setattr(cpp_extension, "load", load)
    monkeypatch.setattr(kernels.shutil, "which", lambda cxx: "/usr/bin/c++")
    if fails:
        with pytest.raises(RuntimeError, match="compiler exploded"):
            kernels.build("full_attend")
    else:
        assert kernels.build("full_attend") == "module"
    assert seen["path"].split(os.pathsep)[-1] == "/usr/bin" and seen["level"] == logging.ERROR
    assert [Path(s).name for s in seen["sources"]] == [p.name for p in kernels.SOURCES["full_attend"]]
    assert os.environ["PATH"] == "/usr/bin" and logger.level == logging.INFO


@pytest.mark.parametrize(
    "ci, co, k, stride, padding, dilation",
    [
        pytest.param(1, 6, 3, 1, 0, 1, id="lane-valid"),
        pytest.param(8, 4, 7, 1, 3, 1, id="lane-same"),
        pytest.param(2, 4, 7, 1, 12, 4, id="lane-dilated"),
        pytest.param(3, 4, 3, 2, 1, 2, id="fold-strided"),
        pytest.param(20, 3, 3, 2, 1, 1, id="default-strided"),
        pytest.param(20, 20, 3, 1, 1, 1, id="channels-last-many-channels"),
    ],
)
@pytest.mark.parametrize("batch", [2, 19])
@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
def test_small_conv2d_equals_conv2d(ci, co, k, stride, padding, dilation, batch, native, monkeypatch):
    if not native:
        monkeypatch.setenv(kernels.ENV, "0")
    x = torch.randn(batch, ci, 13, 13, dtype=torch.float64, requires_grad=True)
    w = torch.randn(co, ci, k, k, dtype=torch.float64, requires_grad=True)
    y, y_ref = small_conv2d(x, w, None, stride, padding, dilation), F.conv2d(x, w, None, stride, padding, dilation)
    assert y.grad_fn is not None and type(y.grad_fn).__name__ != type(y_ref.grad_fn).__name__  # the custom backward
    g = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, [x, w], g), torch.autograd.grad(y_ref, [x, w], g), strict=True):
        assert rel_err(got, want) < 1e-12
    assert rel_err(y, y_ref) < 1e-12
    with torch.no_grad():
        y_eval = small_conv2d(x, w, None, stride, padding, dilation)
        assert y_eval.grad_fn is None and rel_err(y_eval, y_ref) < 1e-12


@pytest.fixture
def full_native():
    module = kernels.cpu_kernels("full_attend")
    assert module is not None, "a C++ compiler is present, so the kernels must build"
    return module


SPATIAL_CASES = [  # B, n_in, Co, |H|, Y, X, k, dilation
    (3, 4, 2, 4, 9, 7, 7, 1),
    (19, 1, 3, 4, 6, 5, 7, 1),  # lifting (n_in = 1); more samples than vector lanes
    (2, 4, 1, 4, 1, 1, 7, 1),  # a 1 x 1 map
    (2, 2, 2, 4, 8, 9, 3, 2),  # dilation 2
]


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SPATIAL_CASES, ids=str)
@pytest.mark.parametrize("with_plain", [False, True], ids=["sum", "plain-minus-sum"])
@pytest.mark.parametrize("stats", [2, 1], ids=["sum-and-max", "sum-only"])
def test_native_spatial_attention_equals_torch(full_native, dtype, case, with_plain, stats, monkeypatch):
    """The fused spatial map, sigmoid and weighting (and their one backward) = planewise conv, sigmoid, sum; with
    ``plain``, the fused subtraction from it too; with one statistic (no maximum), the same."""
    b, n_in, co, h, y, x, k, d = case
    summed = torch.randn(b, n_in, co, h, y, x, dtype=dtype, requires_grad=True)
    maximum = torch.randn(b, n_in, co, h, y, x, dtype=dtype, requires_grad=True) if stats == 2 else None
    bank = torch.randn(n_in * co * h, stats, k, k, dtype=dtype, requires_grad=True)
    plain = torch.randn(b, co, h, y, x, dtype=dtype, requires_grad=True) if with_plain else None
    leaves = [t for t in (summed, maximum, bank, plain) if t is not None]
    scale = 1.5 if with_plain else 1.0  # the layer's Haar factor, applied by the kernel
    got, got_a = lean.spatial_attention_sum(summed, maximum, bank, d, plain, scale)
    monkeypatch.setenv(kernels.ENV, "0")  # the torch-op path
    want, want_a = lean.spatial_attention_sum(summed, maximum, bank, d, plain, scale)
    same(got, want, dtype)
    same(got_a, want_a, dtype)
    assert not got_a.requires_grad
    g = torch.randn_like(want)
    wanted = torch.autograd.grad(want, leaves, g)
    for a, b_ in zip(torch.autograd.grad(got, leaves, g), wanted, strict=True):
        same(a, b_, dtype)


CONV_CASES = [  # B, Ci, L, Y, X, Co, |H|, k, stride, padding, dilation
    (2, 3, 4, 9, 9, 5, 4, 3, 1, 0, 1),
    (2, 3, 1, 12, 11, 10, 4, 3, 1, 1, 1),  # lifting
    (3, 2, 4, 10, 10, 7, 8, 3, 2, 1, 1),  # stride 2, eight orientations
    (2, 300, 1, 5, 5, 2, 4, 3, 1, 1, 1),  # more than 256 input channels: int32 indices
    (2, 4, 4, 8, 9, 6, 4, 4, 1, 0, 2),  # even kernel, dilation 2
    (2, 3, 4, 11, 11, 2, 4, 3, 2, 0, 1),  # stride 2: inputs the conv never reads
    (19, 3, 4, 6, 5, 2, 4, 3, 1, 1, 1),  # more samples than vector lanes, the last lane block partly empty
]


def responses(xin, bank, stride, padding, dilation):
    """``ft [B, Co, |H|, Ci, L, Y', X']`` as one depthwise conv (as the reference computes it)."""
    co, h, ci, n_in, k, _ = bank.shape
    w = bank.permute(2, 3, 0, 1, 4, 5).reshape(ci * n_in * co * h, 1, k, k)
    y = F.conv2d(xin, w, None, stride, padding, dilation, groups=ci * n_in)
    return y.view(xin.shape[0], ci, n_in, co, h, *y.shape[-2:]).permute(0, 3, 4, 1, 2, 5, 6)


def conv_case(case, dtype):
    b, ci, n_in, y, x, co, h, k, stride, padding, dilation = case
    xin = torch.randn(b, ci * n_in, y, x, dtype=dtype).relu()  # ties at zero: the first arg-max wins in both
    bank = torch.randn(co, h, ci, n_in, k, k, dtype=dtype)
    a = torch.rand(b, co, h, ci, n_in, dtype=dtype)
    return xin, bank, a, dict(stride=stride, padding=padding, dilation=dilation)


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_native_arg_maxes_equal_torch(full_native, dtype, case):
    xin, bank, a, conv = conv_case(case, dtype)
    ft = responses(xin, bank, **conv)
    values, positions = ft.flatten(-2).max(dim=-1)
    got_values, got_positions = full_native.spatial_argmax(xin, bank, **conv)
    same(got_values, values, dtype)
    assert torch.equal(got_positions.long(), positions)
    for weights in (a, None):
        g = ft if weights is None else ft * weights[..., None, None]
        channel = g.max(dim=3).indices  # [B, Co, |H|, L, Y', X']
        got_channel, got_sum, got_max, got_plain = full_native.channel_argmax(
            xin, bank, weights, **conv, with_plain=True
        )
        same(got_plain, ft.sum(dim=(3, 4)), dtype)  # the plain conv, whatever the weights
        assert got_channel.dtype == (torch.uint8 if xin.shape[1] // bank.shape[3] <= 256 else torch.int32)
        assert torch.equal(got_channel.long().permute(0, 2, 3, 1, 4, 5), channel)
        same(got_sum.permute(0, 2, 3, 1, 4, 5), g.sum(dim=3), dtype)
        same(got_max.permute(0, 2, 3, 1, 4, 5), g.amax(dim=3), dtype)


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_native_spatial_max_equals_responses_at(full_native, dtype, case):
    """max_xy ft with the fused backward = recomputed from its windows (torch ops), values and gradients."""
    xin, bank, _, conv = conv_case(case, dtype)
    geo = lean.ConvGeometry.of(xin, bank.shape[-1], **conv)
    found = lean.native_spatial_argmax(xin, bank, geo)
    leaves = [t.requires_grad_() for t in (xin, bank)]
    got = lean.spatial_maxima(xin, bank, found.spatial, found.spatial_max, geo)
    want = lean.responses_at(xin, bank, found.spatial, geo)
    same(got, want, dtype)
    g = torch.randn_like(want)
    for x, y in zip(torch.autograd.grad(got, leaves, g), torch.autograd.grad(want, leaves, g), strict=True):
        same(x, y, dtype)


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("with_a", [True, False], ids=["a", "no-a"])
def test_native_selected_responses_equal_torch(full_native, dtype, case, with_a):
    """max_c a * ft from the winning channel's window (fused kernels) = from the stored winner (torch ops)."""
    xin, bank, a, conv = conv_case(case, dtype)
    a = a if with_a else None
    geo = lean.ConvGeometry.of(xin, bank.shape[-1], **conv)
    channel, _, maximum, _ = full_native.channel_argmax(xin, bank, a, **conv, with_plain=False)
    ft = responses(xin, bank, **conv).permute(0, 4, 1, 2, 3, 5, 6)  # [B, L, Co, |H|, Ci, Y', X']
    winner = ft.gather(4, channel.long().unsqueeze(4)).squeeze(4)
    leaves = [t.requires_grad_() for t in (xin, bank, *([a] if with_a else []))]
    got = lean.NativeSelectedResponses.apply(xin, bank, a, channel, None, geo)
    want = lean.SelectedResponses.apply(xin, bank, a, channel, winner, geo)
    same(got, want, dtype)
    same(lean.NativeSelectedResponses.apply(xin, bank, a, channel, maximum, geo), want, dtype)
    g = torch.randn_like(want)
    for x, y in zip(torch.autograd.grad(got, leaves, g), torch.autograd.grad(want, leaves, g), strict=True):
        same(x, y, dtype)


ATTEND_CASES = [c for c in CONV_CASES if c[8] == 1] + [
    (19, 1, 1, 8, 7, 3, 4, 3, 1, 1, 1),  # one input channel and orientation: one statistic (max_c g = sum_c g)
]


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ATTEND_CASES, ids=str)
@pytest.mark.parametrize("with_plain", [True, False], ids=["plain-minus-sum", "sum"])
@pytest.mark.parametrize(
    ("with_a", "need"),
    [(with_a, need) for with_a in (True, False) for need in ("all", "x", "w", "a", "w_x") if with_a or need != "a"],
    ids=str,
)
def test_native_attend_equals_torch(full_native, dtype, case, with_a, with_plain, need, monkeypatch):
    """A stride-1 chunk of the layer as fused kernels (channel statistics, spatial map, weighting, plain sum, scale;
    one fused backward) = the modulated conv, the selected responses, the plain conv and the spatial attention in
    torch ops, in values and in each gradient alone or all together."""
    xin, bank, a, conv = conv_case(case, dtype)
    a = a if with_a else None
    co, h, ci, n_in, _, _ = bank.shape
    single = ci * n_in == 1
    bank_x = torch.randn(n_in * co * h, 1 if single else 2, 5, 5, dtype=dtype) / 5
    geo = lean.ConvGeometry.of(xin, bank.shape[-1], **conv)
    scale = 1.5 if with_plain else 1.0
    leaves = {"x": xin, "w": bank, "a": a, "w_x": bank_x}
    leaves = [t.requires_grad_() for k, t in leaves.items() if need in ("all", k) and t is not None]
    got, got_a = lean.native_attend(xin, bank, a, bank_x, geo, 2, with_plain, single, scale)
    channel, *_ = full_native.channel_argmax(xin, bank, a, **conv, with_plain=False)
    ft = responses(xin, bank, **conv).permute(0, 4, 1, 2, 3, 5, 6)  # [B, L, Co, |H|, Ci, Y', X']
    winner = ft.gather(4, channel.long().unsqueeze(4)).squeeze(4)
    monkeypatch.setenv(kernels.ENV, "0")  # the torch-op path
    summed = lean.modulated_conv(xin, bank, a, geo, sum_orientations=False)
    maximum = None if single else lean.SelectedResponses.apply(xin, bank, a, channel, winner, geo)
    plain = lean.modulated_conv(xin, bank, None, geo, sum_orientations=True) if with_plain else None
    want, want_a = lean.spatial_attention_sum(summed, maximum, bank_x, 2, plain, scale)
    same(got, want, dtype)
    same(got_a, want_a, dtype)
    assert not got_a.requires_grad
    g = torch.randn_like(want)
    for x, y in zip(torch.autograd.grad(got, leaves, g), torch.autograd.grad(want, leaves, g), strict=True):
        same(x, y, dtype)
