"""Every layer and attention module is equivariant under every element of p4 and p4m.

float64 to ~1e-10 relative, float32 to ~1e-5 relative to max|y|, on sizes where strides and pooling commute
with rotation; attention maps transform as docs/method.md#transformation-laws says; negative controls must fail loudly.
"""

import pytest
import torch
from torch import nn

from attentive_gcnn.nn import (
    AttGConv,
    FAttGConv,
    GroupBatchNorm,
    GroupConv,
    GroupPool,
    LiftingConv,
    SpatialPool,
    attention_maps,
    check_equivariance,
    equivariance_errors,
)
from tests.conftest import BROKEN, DTYPES, GROUPS, RTOL


def planar_input(dtype, n=9, c=3):
    return torch.randn(2, c, n, n, dtype=dtype)


def group_input(group, dtype, n=9, c=3):
    return torch.randn(2, c, group.order, n, n, dtype=dtype)


def check(fn, group, x, **kw):
    return check_equivariance(fn, group, x, RTOL[x.dtype], **kw)


CONV_SETTINGS = [  # (kernel, stride, padding, dilation, size): every one commutes with the group
    dict(k=3, s=1, p=0, d=1, n=9),
    dict(k=3, s=1, p=1, d=1, n=8),
    dict(k=3, s=2, p=1, d=1, n=9),  # (9 + 2 - 3) % 2 == 0
    dict(k=4, s=1, p=0, d=1, n=7),
    dict(k=3, s=1, p=2, d=2, n=8),
]


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONV_SETTINGS, ids=lambda c: "k{k}s{s}p{p}d{d}n{n}".format(**c))
def test_convolutions(group, dtype, cfg):
    kw = dict(stride=cfg["s"], padding=cfg["p"], dilation=cfg["d"])
    lift = LiftingConv(group, 3, 4, cfg["k"], **kw).to(dtype)
    check(lift, group, planar_input(dtype, cfg["n"]))
    conv = GroupConv(group, 3, 4, cfg["k"], **kw).to(dtype)
    check(conv, group, group_input(group, dtype, cfg["n"]), in_h_dims=(2,))


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pooling_and_batchnorm(group, dtype):
    x = group_input(group, dtype, n=8)
    for mode in ("max", "avg"):
        check(SpatialPool(mode), group, x, in_h_dims=(2,))
    for mode in ("max", "mean"):
        check(GroupPool(mode), group, x, in_h_dims=(2,), out_h_dims=())
    bn = GroupBatchNorm(3).to(dtype)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
    check(bn.train(), group, x, in_h_dims=(2,))  # batch statistics are invariant
    check(bn.eval(), group, x, in_h_dims=(2,))


ATTENTION_PARTS = [
    pytest.param(dict(channel=True, spatial=True), id="full"),
    pytest.param(dict(channel=True, spatial=False), id="channel"),
    pytest.param(dict(channel=False, spatial=True), id="spatial"),
    pytest.param(dict(channel=True, spatial=True, combine="product"), id="product"),
]


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("parts", ATTENTION_PARTS)
@pytest.mark.parametrize("lifting", [True, False], ids=["lifting", "group"])
def test_full_attention_conv(group, dtype, parts, lifting):
    layer = AttGConv(group, 4, 3, 3, lifting=lifting, ratio=2, spatial_kernel=5, **parts).to(dtype)
    x = planar_input(dtype, c=4) if lifting else group_input(group, dtype, c=4)
    check(layer, group, x, in_h_dims=() if lifting else (2,))


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lifting", [True, False], ids=["lifting", "group"])
def test_full_attention_maps_transform_with_both_h_axes(group, dtype, lifting):
    """Channel map [B, Co, |H|, Ci, n_in, 1, 1] and spatial map [B, Co, |H|, 1, n_in, X, Y]: roll both H axes
    (the output one and, for group convs, the input one), plus the planar action."""
    layer = AttGConv(group, 4, 3, 3, lifting=lifting, ratio=2, padding=1).to(dtype)
    x = planar_input(dtype, n=8, c=4) if lifting else group_input(group, dtype, n=8, c=4)
    in_dims = () if lifting else (2,)
    map_dims = (2,) if lifting else (2, 4)

    def channel_map(x):
        layer(x)
        return layer.channel_attention.attention_map

    def spatial_map(x):
        layer(x)
        return layer.spatial_attention.attention_map

    assert channel_map(x).shape == (2, 3, group.order, 4, 1 if lifting else group.order, 1, 1)
    check(channel_map, group, x, in_h_dims=in_dims, out_h_dims=map_dims)
    check(spatial_map, group, x, in_h_dims=in_dims, out_h_dims=map_dims)


FEATURE_VARIANTS = [
    pytest.param(dict(), id="alphaF"),
    pytest.param(dict(spatial_dilation=2), id="alphaF-dilated"),
    pytest.param(dict(channel=False), id="alphaF-spatial"),
    pytest.param(dict(spatial=False), id="alphaF-channel"),
    pytest.param(dict(channel=False, spatial_kernel=1, pool_channels=False), id="romhog"),
]


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", FEATURE_VARIANTS)
@pytest.mark.parametrize("lifting", [True, False], ids=["lifting", "group"])
def test_feature_attention_conv(group, dtype, variant, lifting):
    layer = FAttGConv(group, 4, 3, 3, lifting=lifting, ratio=2, **{"spatial_kernel": 5, **variant}).to(dtype)
    x = planar_input(dtype, c=4) if lifting else group_input(group, dtype, c=4)
    check(layer, group, x, in_h_dims=() if lifting else (2,))


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_feature_attention_maps(group, dtype):
    """First layer: channel map invariant, spatial map rotates like an image. Group layers: maps on G."""
    for lifting in (True, False):
        layer = FAttGConv(group, 4, 3, 3, lifting=lifting, ratio=2).to(dtype)
        x = planar_input(dtype, c=4) if lifting else group_input(group, dtype, c=4)
        in_dims = () if lifting else (2,)
        map_dims = () if lifting else (2,)

        def channel_map(x, layer=layer):
            layer(x)
            return layer.channel_attention.attention_map

        def spatial_map(x, layer=layer):
            layer(x)
            return layer.spatial_attention.attention_map

        expected_channel = (2, 4, 1, 1) if lifting else (2, 4, group.order, 1, 1)
        expected_spatial = (2, 1, 9, 9) if lifting else (2, 1, group.order, 9, 9)
        assert channel_map(x).shape == expected_channel and spatial_map(x).shape == expected_spatial
        check(channel_map, group, x, in_h_dims=in_dims, out_h_dims=map_dims)
        check(spatial_map, group, x, in_h_dims=in_dims, out_h_dims=map_dims)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_small_network_is_invariant(group, dtype):
    """lift -> BN -> ReLU -> pool -> attentive G-convs -> pool over H and space: logits invariant."""
    net = nn.Sequential(
        FAttGConv(group, 2, 4, 3, lifting=True, ratio=1, spatial_dilation=2, padding=1),
        GroupBatchNorm(4),
        nn.ReLU(),
        SpatialPool("max"),
        AttGConv(group, 4, 4, 3, lifting=False, ratio=2),
        GroupBatchNorm(4),
        nn.ReLU(),
        FAttGConv(group, 4, 5, 3, lifting=False, ratio=2),
        GroupPool("max"),
        nn.Flatten(2),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(1),
    ).to(dtype)
    net.eval()
    check(net, group, planar_input(dtype, n=12, c=2), out_h_dims=(), out_planar=False)
    assert len(attention_maps(net)) == 6  # three attentive layers, channel + spatial map each


# --- negative controls: these must fail ------------------------------------------------------------------


def wrong_roll_index(group, in_order, k):
    """A filter index that rolls the H axis the wrong way (src of g instead of g^-1)."""
    ids = torch.arange(in_order * k * k).view(1, 1, in_order, k, k)
    rows = [group.act_on_plane(ids.index_select(2, group.src(group.inverse(j))), j) for j in range(group.order)]
    return torch.stack([r.reshape(-1) for r in rows])


@pytest.mark.parametrize("group", GROUPS)
def test_negative_control_wrong_roll_direction(group):
    conv = GroupConv(group, 3, 4, 3).double()
    x = group_input(group, torch.float64)
    conv.index = wrong_roll_index(group, group.order, 3)
    errors = equivariance_errors(conv, group, x, in_h_dims=(2,))
    assert max(errors.values()) > BROKEN
    with pytest.raises(AssertionError, match="not equivariant"):
        check(conv, group, x, in_h_dims=(2,))
    # a correct layer, compared with its output rolled the wrong way, fails too
    conv.index = group.filter_index(group.order, 3)
    y, y_rot = conv(x), conv(group.act(x, 1, (2,)))
    assert (y_rot - group.act(y, 1, (2,))).abs().max() / y_rot.abs().max() < RTOL[torch.float64]
    wrong = group.act_on_plane(y.index_select(2, group.src(group.inverse(1))), 1)
    assert (y_rot - wrong).abs().max() / y_rot.abs().max() > BROKEN


@pytest.mark.parametrize("group", GROUPS)
def test_negative_control_strides_and_pools_that_do_not_commute(group):
    stride2 = GroupConv(group, 3, 4, 3, stride=2, padding=1).double()  # (8 + 2 - 3) % 2 == 1
    errors = equivariance_errors(stride2, group, group_input(group, torch.float64, n=8), in_h_dims=(2,))
    assert max(errors.values()) > BROKEN
    odd_pool = SpatialPool("max")  # 9 is odd
    errors = equivariance_errors(odd_pool, group, group_input(group, torch.float64, n=9), in_h_dims=(2,))
    assert max(errors.values()) > BROKEN


def test_negative_control_plain_conv_is_not_equivariant():
    conv = nn.Conv2d(3, 4, 3, bias=False).double()
    from attentive_gcnn.groups import P4

    errors = equivariance_errors(conv, P4, planar_input(torch.float64), out_h_dims=())
    assert max(errors.values()) > BROKEN
