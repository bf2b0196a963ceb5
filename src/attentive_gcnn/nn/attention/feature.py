"""alpha-F attention: attend on the input of a conv, ``x' = attend(x)``, then apply the plain conv.

The attention depends on the input position (x, h) only, not on the output channel or orientation. On a
planar input (first layer) the maps are planar: channel ``[B, Ci, 1, 1]``, spatial ``[B, 1, X, Y]``; on a map
over G they are ``[B, Ci, |H|, 1, 1]`` and ``[B, 1, |H|, X, Y]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from attentive_gcnn.groups import Z2, Group, get_group
from attentive_gcnn.nn.attention.combine import KeepsMap, attend
from attentive_gcnn.nn.attention.feature_lean import lean_feature_attend
from attentive_gcnn.nn.attention.full import IMPLS, _hidden
from attentive_gcnn.nn.conv import GConv
from attentive_gcnn.nn.small_conv import small_conv2d


class FeatureChannelAttention(KeepsMap, nn.Module):
    """Channel attention on a conv input: a CBAM MLP whose two layers are 1x1 group convs without space.

    ``[B, Ci, |H|, X, Y]`` -> ``[B, Ci, |H|, 1, 1]`` (``on_group``), or ``[B, Ci, X, Y]`` -> ``[B, Ci, 1, 1]``.
    Hidden unit q at orientation h: ``sum_{c, i} W1[q, c, src_h(i)] s(c, i)``, mixing channels and
    orientations; then ReLU and the same with W2; avg and max branches summed; sigmoid. No biases, no mu.
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


class FeatureSpatialAttention(KeepsMap, GConv):
    """Spatial attention on a conv input: a conv to one channel, then a sigmoid.

    With ``pool_channels`` (alpha-F) the conv sees the channel mean and max (in that order); without it
    (RomHog co-attention) it sees all Ci channels, typically with a 1x1 kernel.

    - map over G ``[B, Ci, |H|, X, Y]`` -> group conv (times mu) -> ``[B, 1, |H|, X, Y]``;
    - planar ``[B, Ci, X, Y]`` -> lifting conv -> max over H -> ``[B, 1, X, Y]``, a map that rotates like an
      image.

    Stride 1, dilation d, padding ``d * (k // 2)``. Weight ``[1, 2 or Ci(, |H|), k, k]``.
    """

    conv2d = staticmethod(small_conv2d)

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


class FAttGConv(GConv):
    """Lifting or group convolution whose input is first weighted by alpha-F attention.

    ``forward(x) = conv(attend(x))``: stride, padding, dilation and Haar factor are the plain conv's.

    Args (besides :class:`GConv`'s):
        channel, spatial: switch the two attention parts.
        ratio: channel MLP reduction (hidden = Ci // ratio).
        spatial_kernel, spatial_dilation: the spatial attention conv (padding ``d * (k // 2)``).
        pool_channels: spatial attention on (mean_c, max_c) statistics (alpha-F); False gives RomHog's conv
            over all channels (use ``channel=False, spatial_kernel=1``).
        combine: see :func:`attend`.
        impl: ``lean`` (default; :func:`~attentive_gcnn.nn.attention.feature_lean.lean_feature_attend`, one
            autograd node with few passes over the input) or ``reference`` (:func:`attend`, op by op); the same
            function. RomHog's attention (``pool_channels=False``), and any under ``torch.compile``, runs op by op.
    Attention kernels use the conv's ``wscale`` and ``haar``.
    """

    conv2d = staticmethod(small_conv2d)  # the attended input needs its gradient, also in the lifting layer

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
        impl: str = "lean",
        **conv_kw,
    ):
        super().__init__(
            group, in_channels, out_channels, kernel_size, lifting=lifting, wscale=wscale, haar=haar, **conv_kw
        )
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.combine, self.impl = combine, impl
        on_group = not lifting
        self.channel_attention = FeatureChannelAttention(self.group, in_channels, ratio, on_group) if channel else None
        self.spatial_attention = (
            FeatureSpatialAttention(
                self.group, in_channels, spatial_kernel, spatial_dilation, on_group, pool_channels, wscale, haar
            )
            if spatial
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        self.fold_input(x)  # shape check before the attention sees x
        ca, sa = self.channel_attention, self.spatial_attention
        # under torch.compile the op-by-op form, which the compiler fuses itself
        lean = self.impl == "lean" and (sa is None or sa.pool_channels) and not torch.compiler.is_compiling()
        return super().forward((lean_feature_attend if lean else attend)(x, ca, sa, self.combine))


class FAttLiftingConv(FAttGConv):
    """alpha-F lifting convolution, ``[B, Ci, X, Y]`` -> ``[B, Co, |H|, X', Y']``."""

    def __init__(self, group, in_channels, out_channels, kernel_size, **kw):
        super().__init__(group, in_channels, out_channels, kernel_size, lifting=True, **kw)


class FAttGroupConv(FAttGConv):
    """alpha-F group convolution, ``[B, Ci, |H|, X, Y]`` -> ``[B, Co, |H|, X', Y']``."""

    def __init__(self, group, in_channels, out_channels, kernel_size, **kw):
        super().__init__(group, in_channels, out_channels, kernel_size, lifting=False, **kw)
