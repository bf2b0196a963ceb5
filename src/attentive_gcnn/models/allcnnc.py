"""The All-CNN-C family on CIFAR-10 (Springenberg et al. 2015; Cohen & Welling 2016; the paper's Table 2)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attentive_gcnn.models.kit import LayerKit
from attentive_gcnn.nn import SpatialPool


class AllCNNC(nn.Module):
    """Nine convs, ``[B, 3, 32, 32]`` -> logits ``[B, 10]``, each stride-2 conv replaced by conv + MaxPool 2.

    Dropout(0.2) on the image; c1, c2 3x3 -> C1; c3 3x3 -> C1 -> MaxPool -> BN -> ReLU -> Dropout(0.5);
    c4, c5 -> C2; c6 -> C2 -> MaxPool -> BN -> ReLU -> Dropout(0.5); c7 3x3 (pad 1); c8, c9 1x1 (c9 -> 10);
    every conv is followed by BN -> ReLU; the logits are the mean over (H, X, Y). Maps 32, 16, 8.
    With attention every conv c1..c9 carries it (c1 with ``first_ratio``).

    Args:
        group, attention, wscale, init and, by keyword, the other :class:`LayerKit` fields (haar, combine,
            attention_impl, attention_memory_gib): see :class:`LayerKit`.
        channels: (C1, C2), e.g. (96, 192) z2, (48, 96) p4, (32, 64) p4m.
        ratio, first_ratio, spatial_kernel: attention settings.
        stride2: the authors' layout for c3/c6 (3x3 stride-2 convs, no pool), **not** equivariant at 32x32.
    """

    input_shape = (3, 32, 32)
    num_classes = 10

    def __init__(
        self,
        group: str = "p4",
        attention: str = "none",
        channels: tuple[int, int] = (48, 96),
        ratio: int = 16,
        first_ratio: int = 1,
        spatial_kernel: int = 7,
        input_dropout: float = 0.2,
        dropout: float = 0.5,
        stride2: bool = False,
        wscale: float = 0.035,
        init: str = "uniform_fan_in",
        **kit: Any,
    ) -> None:
        super().__init__()
        kit = LayerKit(group, attention, wscale=wscale, init=init, **kit)
        c1, c2 = channels
        att = dict(ratio=ratio, spatial_kernel=spatial_kernel)
        down = dict(stride=2 if stride2 else 1, padding=1)
        self.c1 = kit.conv(3, c1, 3, lifting=True, padding=1, ratio=first_ratio, spatial_kernel=spatial_kernel)
        self.c2 = kit.conv(c1, c1, 3, padding=1, **att)
        self.c3 = kit.conv(c1, c1, 3, **down, **att)
        self.c4 = kit.conv(c1, c2, 3, padding=1, **att)
        self.c5 = kit.conv(c2, c2, 3, padding=1, **att)
        self.c6 = kit.conv(c2, c2, 3, **down, **att)
        self.c7 = kit.conv(c2, c2, 3, padding=1, **att)
        self.c8 = kit.conv(c2, c2, 1, **att)
        self.c9 = kit.conv(c2, self.num_classes, 1, **att)
        for i, c in enumerate((c1, c1, c1, c2, c2, c2, c2, c2, self.num_classes), start=1):
            setattr(self, f"bn{i}", kit.bn(c))
        self.pool = nn.Identity() if stride2 else SpatialPool("max")
        self.input_dropout = nn.Dropout(input_dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_dropout(x)
        for i in range(1, 10):
            y = getattr(self, f"c{i}")(x)
            y = self.pool(y) if i in (3, 6) else y
            x = torch.relu(getattr(self, f"bn{i}")(y))
            x = self.dropout(x) if i in (3, 6) else x
        return x.mean(dim=(2, 3, 4))  # explicit [B, 10], also at batch size 1
