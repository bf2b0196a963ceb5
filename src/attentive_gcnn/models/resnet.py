"""The pre-activation ResNet44 family on CIFAR-10 (Cohen & Welling 2016; the paper's Table 2)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from attentive_gcnn.models.kit import LayerKit
from attentive_gcnn.nn import SpatialPool


class PreActBlock(nn.Module):
    """``shortcut(x) + conv2(ReLU(BN2(pool(conv1(ReLU(BN1(x)))))))``.

    A downsampling block max-pools after conv1 and uses ``pool(1x1 conv(x))`` on the raw input as shortcut;
    the others use the identity. Each conv's attention (if any) acts on that conv's own input.
    """

    def __init__(
        self, kit: LayerKit, in_channels: int, out_channels: int, downsample: bool, spatial_kernel: int = 7
    ) -> None:
        super().__init__()
        att = dict(ratio="half", spatial_kernel=spatial_kernel)
        self.bn1 = kit.bn(in_channels)
        self.conv1 = kit.conv(in_channels, out_channels, 3, padding=1, **att)
        self.bn2 = kit.bn(out_channels)
        self.conv2 = kit.conv(out_channels, out_channels, 3, padding=1, **att)
        self.pool = SpatialPool("max") if downsample else nn.Identity()
        self.shortcut = kit.conv(in_channels, out_channels, 1, **att) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(torch.relu(self.bn2(self.pool(self.conv1(torch.relu(self.bn1(x)))))))
        return out + (x if self.shortcut is None else self.pool(self.shortcut(x)))


class ResNet44(nn.Module):
    """Pre-activation ResNet, depth 1 + 42 + 1: ``[B, 3, 32, 32]`` -> logits ``[B, 10]``.

    c1 3x3 (lifting; no BN after it); 3 stages of 7 blocks at 32, 16, 8 (the first block of stages 2 and 3
    downsamples); head: BN -> ReLU -> global average pool -> 1x1 conv -> mean over H.

    Args:
        group, attention, wscale, init and, by keyword, the other :class:`LayerKit` fields (haar, combine,
            attention_impl, attention_memory_gib): see :class:`LayerKit` (He init: wscale sqrt 2).
        channels: per stage, (32, 64, 128) z2 or (11, 23, 45) p4m.
        blocks: blocks per stage.
        spatial_kernel: attention kernel. Channel attention: ratio 1 on the image, Ci // 2 elsewhere.
    """

    input_shape = (3, 32, 32)
    num_classes = 10

    def __init__(
        self,
        group: str = "p4m",
        attention: str = "none",
        channels: tuple[int, int, int] = (11, 23, 45),
        blocks: int = 7,
        spatial_kernel: int = 7,
        wscale: float = math.sqrt(2.0),
        init: str = "uniform_fan_in",
        **kit: Any,
    ) -> None:
        super().__init__()
        kit = LayerKit(group, attention, wscale=wscale, init=init, **kit)
        self.c1 = kit.conv(3, channels[0], 3, lifting=True, padding=1, ratio=1, spatial_kernel=spatial_kernel)
        stages, width = [], channels[0]
        for s, out in enumerate(channels):
            stage = [
                PreActBlock(kit, width if b == 0 else out, out, s > 0 and b == 0, spatial_kernel) for b in range(blocks)
            ]
            stages.append(nn.Sequential(*stage))
            width = out
        self.stages = nn.Sequential(*stages)
        self.bn_out = kit.bn(width)
        self.c_out = kit.conv(width, self.num_classes, 1, ratio="half", spatial_kernel=spatial_kernel)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn_out(self.stages(self.c1(x))))
        x = x.mean(dim=(-2, -1), keepdim=True)  # global average pool: [B, C, |H|, 1, 1]
        return self.c_out(x).mean(dim=(2, 3, 4))
