"""The PCam DenseNet family (Veeling et al. 2018; the paper's Table 3)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from attentive_gcnn.models.kit import LayerKit
from attentive_gcnn.nn import SpatialPool


class BNReLUConv(nn.Module):
    """BN -> ReLU -> conv (valid); the conv's attention, if any, acts on the ReLU output."""

    def __init__(self, kit: LayerKit, in_channels: int, out_channels: int, kernel_size: int, **att) -> None:
        super().__init__()
        self.bn = kit.bn(in_channels)
        self.conv = kit.conv(in_channels, out_channels, kernel_size, ratio="half", **att)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(torch.relu(self.bn(x)))


class DenseNet(nn.Module):
    """Five one-layer dense blocks with growth rate n: ``[B, 3, 96, 96]`` -> logits ``[B, 2]``.

    c1 3x3 (lifting) -> n; block i: ``cat([BNReLUConv3x3(x) (n new maps), x cropped by 1 px])`` (new maps
    first); transitions 1..4: BNReLUConv1x1 (C -> C) -> AvgPool 2; head: BN -> ReLU -> 1x1 conv -> 2 ->
    mean over (H, X, Y). Maps 94, 92, 46, 44, 22, 20, 10, 8, 4, 2. All convs valid.

    Args:
        group, attention, wscale, init and, by keyword, the other :class:`LayerKit` fields (haar, combine,
            attention_impl, attention_memory_gib): see :class:`LayerKit` (He init: wscale sqrt 2).
        growth: n (26 z2, 13 p4, 9 p4m).
        first_dilation, block_kernels, block_dilations, trans_dilations, head_kernel: the alpha-F spatial
            attention kernels and dilations ("dilated kernels everywhere"; padding d * (k // 2)).
    """

    input_shape = (3, 96, 96)
    num_classes = 2

    def __init__(
        self,
        group: str = "p4",
        attention: str = "none",
        growth: int = 13,
        first_dilation: int = 4,
        block_kernels: Sequence[int] = (7, 7, 7, 7, 5),
        block_dilations: Sequence[int] = (4, 4, 3, 2, 1),
        trans_dilations: Sequence[int] = (4, 4, 3, 1),
        head_kernel: int = 3,
        wscale: float = math.sqrt(2.0),
        init: str = "uniform_fan_in",
        **kit: Any,
    ) -> None:
        super().__init__()
        kit = LayerKit(group, attention, wscale=wscale, init=init, **kit)
        n = growth
        self.c1 = kit.conv(3, n, 3, lifting=True, ratio=1, spatial_dilation=first_dilation)
        self.block_layers = nn.ModuleList(
            BNReLUConv(kit, n * (i + 1), n, 3, spatial_kernel=k, spatial_dilation=d)
            for i, (k, d) in enumerate(zip(block_kernels, block_dilations, strict=True))
        )
        self.trans_layers = nn.ModuleList(
            BNReLUConv(kit, n * (i + 2), n * (i + 2), 1, spatial_dilation=d) for i, d in enumerate(trans_dilations)
        )
        if len(self.trans_layers) != len(self.block_layers) - 1:
            raise ValueError("DenseNet needs one transition fewer than dense blocks")
        width = n * (len(self.block_layers) + 1)
        self.bn_out = kit.bn(width)
        self.c_out = kit.conv(width, self.num_classes, 1, ratio="half", spatial_kernel=head_kernel)
        self.pool = SpatialPool("avg")

    def forward(self, x: Tensor) -> Tensor:
        x = self.c1(x)
        for i, block in enumerate(self.block_layers):
            x = torch.cat([block(x), x[..., 1:-1, 1:-1]], dim=1)
            if i < len(self.trans_layers):
                x = self.pool(self.trans_layers[i](x))
        return self.c_out(torch.relu(self.bn_out(x))).mean(dim=(2, 3, 4))
