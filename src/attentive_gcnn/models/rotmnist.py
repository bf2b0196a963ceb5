"""The rot-MNIST family: Z2CNN, P4CNN and their attentive variants (Cohen & Welling 2016; the paper's Table 1)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attentive_gcnn.models.kit import LayerKit
from attentive_gcnn.nn import SpatialPool


class RotMNISTNet(nn.Module):
    """Seven 3x3/4x4 valid convs: ``[B, 1, 28, 28]`` -> logits ``[B, 10]``.

    c1 (lifting) -> BN -> ReLU -> Dropout; c2 -> BN -> ReLU -> MaxPool 2; c3..c6 -> BN -> ReLU -> Dropout;
    c7 (4x4) -> ``[B, 10, |H|, 1, 1]`` -> max over H. Maps: 26, 24 -> 12, 10, 8, 6, 4, 1. With attention every
    conv c1..c7 carries it; c1 uses ``first_ratio`` and ``first_spatial_dilation`` (alpha-F: 4, padding 12).

    Args:
        group, attention, wscale, init and, by keyword, the other :class:`LayerKit` fields (haar, combine,
            attention_impl, attention_memory_gib): see :class:`LayerKit`.
        channels: width C of every hidden layer (10 for P4CNN, 20 for Z2CNN).
        ratio, first_ratio: channel-attention reduction of c2..c7 and of c1.
        spatial_kernel, first_spatial_dilation: spatial-attention kernel; dilation of c1's spatial attention.
        dropout: dropout probability after c1, c3..c6.
    """

    input_shape = (1, 28, 28)
    num_classes = 10

    def __init__(
        self,
        group: str = "p4",
        attention: str = "none",
        channels: int = 10,
        ratio: int = 2,
        first_ratio: int = 1,
        spatial_kernel: int = 7,
        first_spatial_dilation: int = 1,
        dropout: float = 0.3,
        wscale: float = 1.0,
        init: str = "uniform_fan_in",
        **kit: Any,
    ) -> None:
        super().__init__()
        kit = LayerKit(group, attention, wscale=wscale, init=init, **kit)
        att = dict(ratio=ratio, spatial_kernel=spatial_kernel)
        self.c1 = kit.conv(1, channels, 3, lifting=True, ratio=first_ratio, spatial_kernel=spatial_kernel,
                           spatial_dilation=first_spatial_dilation)  # fmt: skip
        for i in range(2, 7):
            setattr(self, f"c{i}", kit.conv(channels, channels, 3, **att))
        self.c7 = kit.conv(channels, self.num_classes, 4, **att)
        for i in range(1, 7):
            setattr(self, f"bn{i}", kit.bn(channels))
        self.pool = SpatialPool("max")
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(1, 7):
            x = torch.relu(getattr(self, f"bn{i}")(getattr(self, f"c{i}")(x)))
            x = self.pool(x) if i == 2 else self.dropout(x)
        y = self.c7(x)  # [B, 10, |H|, 1, 1]
        if y.shape[-2:] != (1, 1):
            raise ValueError(f"{type(self).__name__} expects 28x28 inputs; the last conv gave {tuple(y.shape[-2:])}")
        return y.amax(dim=2).flatten(1)
