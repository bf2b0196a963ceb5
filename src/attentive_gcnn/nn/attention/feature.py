"""alpha-F attention: attend on the input of a conv, ``x' = attend(x)``, then apply the plain conv.

alpha-F approximates the full attention's a(g, g~) by a(g~): the attention depends on the input position (x, h)
only, not on the output channel or orientation, so it is computed on the layer's input and applied there:

    x' = x * (1 - a_C a_X)        (computed as x - a_X (a_C x); "product": a_X a_C x)
    y = conv(x')                  the plain lifting or group conv, with its stride, padding and Haar factor

On a planar input (first layer) the maps are planar: channel ``[B, Ci, 1, 1]``, spatial ``[B, 1, X, Y]``; on a
map over G they are ``[B, Ci, |H|, 1, 1]`` and ``[B, 1, |H|, X, Y]``. With ``pool_channels=False`` and a 1x1
spatial kernel the spatial attention is RomHog's co-attention.

A layer's ``impl`` chooses, when it is built (:func:`attentive_gcnn.accel.implementation`), how the attention and
the convs are computed: ``reference`` (:func:`attend` op by op, ``F.conv2d``) or ``lean`` (the default:
:mod:`attentive_gcnn.accel.feature`, one autograd node with few passes over the input, and
:mod:`attentive_gcnn.accel.small_conv` for the convs with few channels); the same function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attentive_gcnn import accel
from attentive_gcnn.groups import Z2, Group, get_group
from attentive_gcnn.nn.attention.combine import ChoosesImpl, KeepsMap, attend
from attentive_gcnn.nn.attention.full import _hidden
from attentive_gcnn.nn.conv import GConv


class FeatureChannelAttention(KeepsMap, nn.Module):
    """Channel attention on a conv input: a CBAM MLP whose two layers are 1x1 group convs without space.

        a_C[b, c, h] = sigmoid(mlp(s_avg[b])[c, h] + mlp(s_max[b])[c, h])
        mlp(s)[c, h] = sum_{q, i} W2[c, q, src_h(i)] relu(sum_{c', i'} W1[q, c', src_i(i')] s[c', i'])

    with ``s_avg``, ``s_max`` the spatial mean and max of x, ``[B, Ci, |H|]``. ``[B, Ci, |H|, X, Y]`` -> ``[B, Ci,
    |H|, 1, 1]`` (``on_group``), or ``[B, Ci, X, Y]`` -> ``[B, Ci, 1, 1]``. The MLP mixes channels and orientations
    (``src_h`` the index map of h's action on H). No biases, no mu.
    Weights ``weight_fc1 [Ci//ratio, Ci(, |H|)]``, ``weight_fc2 [Ci, Ci//ratio(, |H|)]``, init as torch's
    default ``kaiming_uniform_(a=sqrt(5))``.
    """

    def __init__(self, group: str | Group, in_channels: int, ratio: int, on_group: bool = True):
        super().__init__()
        self.on_group = on_group
        self.group = get_group(group) if on_group else Z2
        hidden = _hidden(in_channels, ratio)
        tail = (self.group.order,) if on_group else ()
        self.weight_fc1 = nn.Parameter(torch.empty(hidden, in_channels, *tail))
        self.weight_fc2 = nn.Parameter(torch.empty(in_channels, hidden, *tail))
        # index[j, i] = src_{h_j}(i): the 1x1 (k = 1) filter index of the group.
        n = self.group.order
        self.register_buffer("index", self.group.filter_index(n, 1), persistent=False)
        for w in (self.weight_fc1, self.weight_fc2):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        xg = x if self.on_group else x.unsqueeze(2)  # [B, Ci, n, X, Y]
        a = self.from_stats(xg.mean(dim=(-2, -1)), xg.amax(dim=(-2, -1)))[..., None, None]
        return self.keep(a if self.on_group else a.squeeze(2))

    def from_stats(self, s_avg: Tensor, s_max: Tensor) -> Tensor:
        """``sigmoid(mlp(s_avg) + mlp(s_max))``: spatial mean and max ``[B, Ci, n]`` -> ``[B, Ci, n]`` (n = 1 on a
        planar input)."""
        n = self.group.order
        w1 = self.weight_fc1.reshape(*self.weight_fc1.shape[:2], n)[:, :, self.index]  # [q, Ci, n_out, n_in]
        w2 = self.weight_fc2.reshape(*self.weight_fc2.shape[:2], n)[:, :, self.index]  # [Ci, q, n_out, n_in]

        s = torch.stack((s_avg, s_max))  # [2, B, Ci, n]: both branches through the MLP at once
        hid = torch.relu(torch.einsum("qcji,zbci->zbqj", w1, s))
        return torch.sigmoid(torch.einsum("cqji,zbqi->zbcj", w2, hid).sum(0))


class FeatureSpatialAttention(ChoosesImpl, KeepsMap, GConv):
    """Spatial attention on a conv input: a conv to one channel, then a sigmoid.

        a_X = sigmoid(conv(z)),    z = (mean_c g, max_c g) with g = a_C x (pool_channels), else z = x

    With ``pool_channels`` (alpha-F) the conv sees the channel mean and max (in that order); without it
    (RomHog co-attention) it sees all Ci channels, typically with a 1x1 kernel.

    - map over G ``[B, Ci, |H|, X, Y]`` -> group conv (times mu) -> ``[B, 1, |H|, X, Y]``;
    - planar ``[B, Ci, X, Y]`` -> lifting conv -> max over H -> ``[B, 1, X, Y]``, a map that rotates like an
      image.

    Stride 1, dilation d, padding ``d * (k // 2)``. Weight ``[1, 2 or Ci(, |H|), k, k]``. ``impl``: the conv's
    computation, ``F.conv2d`` (``reference``) or ``small_conv2d`` (``lean``).
    """

    def __init__(
        self,
        group: str | Group,
        in_channels: int,
        kernel_size: int = 7,
        dilation: int = 1,
        on_group: bool = True,
        pool_channels: bool = True,
        wscale: float = 1.0,
        haar: bool = True,
        impl: str = "auto",
    ):
        super().__init__(
            group,
            2 if pool_channels else in_channels,
            1,
            kernel_size,
            lifting=not on_group,
            padding=dilation * (kernel_size // 2),
            dilation=dilation,
            wscale=wscale,
            haar=haar,
        )
        self.pool_channels = pool_channels
        self.impl = impl

    def choose_impl(self, impl: str) -> None:
        self.conv2d = accel.implementation("conv2d", impl, F.conv2d)

    def forward(self, x: Tensor) -> Tensor:
        z = torch.cat((x.mean(1, keepdim=True), x.amax(1, keepdim=True)), dim=1) if self.pool_channels else x
        return self.keep(self.from_stats(z))

    def from_stats(self, z: Tensor) -> Tensor:
        """The map from the conv's input ``z`` (the stacked channel mean and max, or all channels): ``[B, 1, |H|,
        X, Y]`` on G, ``[B, 1, X, Y]`` on the plane."""
        logits = super().forward(z)  # [B, 1, |H|, X, Y]
        if self.lifting:
            logits = logits.amax(dim=2)
        return torch.sigmoid(logits)


class FAttGConv(ChoosesImpl, GConv):
    """Lifting or group convolution whose input is first weighted by alpha-F attention.

    ``forward(x) = conv(attend(x))`` (``x' = x * (1 - a_C a_X)``, see :func:`attend`): stride, padding, dilation and
    Haar factor are the plain conv's.

    Args (besides :class:`GConv`'s):
        channel, spatial: switch the two attention parts.
        ratio: channel MLP reduction (hidden = Ci // ratio).
        spatial_kernel, spatial_dilation: the spatial attention conv (padding ``d * (k // 2)``).
        pool_channels: spatial attention on (mean_c, max_c) statistics (alpha-F); False gives RomHog's conv
            over all channels (use ``channel=False, spatial_kernel=1``).
        combine: see :func:`attend`.
        impl: ``lean`` (default; :mod:`attentive_gcnn.accel.feature`, one autograd node with few passes over the
            input, and ``small_conv2d`` for the convs) or ``reference`` (:func:`attend`, op by op, and ``F.conv2d``);
            the same function. RomHog's attention (``pool_channels=False``) has no lean form and runs op by op.
    Attention kernels use the conv's ``wscale`` and ``haar``.
    """

    def __init__(
        self,
        group: str | Group,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        lifting: bool,
        channel: bool = True,
        spatial: bool = True,
        ratio: int = 2,
        spatial_kernel: int = 7,
        spatial_dilation: int = 1,
        pool_channels: bool = True,
        combine: str = "one_minus_product",
        wscale: float = 1.0,
        haar: bool = True,
        impl: str = "auto",
        **conv_kw,
    ):
        super().__init__(
            group, in_channels, out_channels, kernel_size, lifting=lifting, wscale=wscale, haar=haar, **conv_kw
        )
        self.combine = combine
        on_group = not lifting
        self.channel_attention = FeatureChannelAttention(self.group, in_channels, ratio, on_group) if channel else None
        self.spatial_attention = (
            FeatureSpatialAttention(
                self.group, in_channels, spatial_kernel, spatial_dilation, on_group, pool_channels, wscale, haar, impl
            )
            if spatial
            else None
        )
        self.impl = impl

    def choose_impl(self, impl: str) -> None:
        sa = self.spatial_attention
        self.conv2d = accel.implementation("conv2d", impl, F.conv2d)  # the attended input needs its gradient
        lean_attention = sa is None or sa.pool_channels  # RomHog's attention has no lean form
        self._attend = accel.implementation("feature_attention", impl if lean_attention else "reference", attend)
        if sa is not None:
            sa.impl = impl

    def forward(self, x: Tensor) -> Tensor:
        self.fold_input(x)  # shape check before the attention sees x
        return super().forward(self._attend(x, self.channel_attention, self.spatial_attention, self.combine))


class FAttLiftingConv(FAttGConv):
    """alpha-F lifting convolution, ``[B, Ci, X, Y]`` -> ``[B, Co, |H|, X', Y']``."""

    def __init__(self, group, in_channels, out_channels, kernel_size, **kw):
        super().__init__(group, in_channels, out_channels, kernel_size, lifting=True, **kw)


class FAttGroupConv(FAttGConv):
    """alpha-F group convolution, ``[B, Ci, |H|, X, Y]`` -> ``[B, Co, |H|, X', Y']``."""

    def __init__(self, group, in_channels, out_channels, kernel_size, **kw):
        super().__init__(group, in_channels, out_channels, kernel_size, lifting=False, **kw)
