"""The fast filter-bank path equals the slow loop reference (float64), and export equals the module."""

import math

import pytest

from attentive_gcnn.nn import AttGConv, FAttGConv, GroupConv, LiftingConv, export_conv2d
from attentive_gcnn.nn.reference import full_responses_reference, group_conv_reference, lifting_conv_reference
from tests.conftest import GROUPS, randn, rel_err

CONV_SETTINGS = [  # (kernel, stride, padding, dilation, size)
    (3, 1, 0, 1, 9),
    (3, 1, 1, 1, 8),
    (3, 2, 1, 1, 9),
    (4, 1, 0, 1, 7),
    (5, 1, 4, 2, 10),
    (1, 1, 0, 1, 6),
]


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("k, s, p, d, n", CONV_SETTINGS)
def test_fast_equals_reference(group, k, s, p, d, n):
    kw = dict(stride=s, padding=p, dilation=d)
    lift = LiftingConv(group, 3, 4, k, **kw).double()
    x = randn(2, 3, n, n)
    ref = lifting_conv_reference(x, lift.weight, group, s, p, d)
    assert rel_err(lift(x), ref) < 1e-13

    conv = GroupConv(group, 3, 4, k, **kw).double()
    x = randn(2, 3, group.order, n, n)
    ref = group_conv_reference(x, conv.weight, group, s, p, d, scale=group.haar)
    assert rel_err(conv(x), ref) < 1e-13


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("lifting", [True, False])
@pytest.mark.parametrize("k, s, p, d, n", CONV_SETTINGS[:3])
def test_full_attention_responses_equal_reference(group, lifting, k, s, p, d, n):
    layer = AttGConv(group, 3, 2, k, lifting=lifting, stride=s, padding=p, dilation=d).double()
    x = randn(2, 3, n, n) if lifting else randn(2, 3, group.order, n, n)
    ref = full_responses_reference(x, layer.weight, group, lifting, s, p, d)
    assert rel_err(layer.responses(x), ref) < 1e-13


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("lifting", [True, False])
def test_attention_switched_off_is_the_plain_conv(group, lifting):
    plain = (LiftingConv if lifting else GroupConv)(group, 3, 4, 3, padding=1).double()
    x = randn(2, 3, 6, 6) if lifting else randn(2, 3, group.order, 6, 6)
    for cls in (AttGConv, FAttGConv):
        layer = cls(group, 3, 4, 3, lifting=lifting, padding=1, channel=False, spatial=False).double()
        layer.weight.data.copy_(plain.weight)
        # full attention scales by 2 pi / |H| (the authors' code), the plain conv by mu
        factor = 1.0 if lifting or cls is FAttGConv else (2 * math.pi / group.order) / group.haar
        assert rel_err(layer(x), factor * plain(x)) < 1e-13


def test_haar_constants_and_init_bounds():
    from attentive_gcnn.groups import P4, P4M

    assert LiftingConv(P4M, 3, 4, 3).scale == 1.0
    assert GroupConv(P4, 3, 4, 3).scale == pytest.approx(math.pi / 2)
    assert GroupConv(P4M, 3, 4, 3).scale == pytest.approx(math.pi)
    assert GroupConv(P4M, 3, 4, 3, haar=False).scale == 1.0
    assert AttGConv(P4M, 3, 4, 3, lifting=False).scale == pytest.approx(math.pi / 4)
    conv = GroupConv(P4, 50, 40, 3, wscale=0.035)
    bound = 0.035 / math.sqrt(50 * 9)  # fan-in excludes |H|
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.95 * bound
    spatial = AttGConv(P4, 10, 10, 3, lifting=False).spatial_attention.weight
    assert spatial.abs().max() <= 1 / math.sqrt(2 * 49)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("lifting", [True, False])
@pytest.mark.parametrize("k, s, p, d, n", CONV_SETTINGS)
def test_export_equals_module(group, lifting, k, s, p, d, n):
    cls = LiftingConv if lifting else GroupConv
    conv = cls(group, 3, 4, k, stride=s, padding=p, dilation=d).double()
    x = randn(2, 3, n, n) if lifting else randn(2, 3, group.order, n, n)
    plain = export_conv2d(conv)
    assert all(type(m).__module__.startswith("torch.") for m in plain.modules())
    assert rel_err(plain(x), conv(x)) < 1e-14
