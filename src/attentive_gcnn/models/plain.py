"""A plain CNN with P4CNN's expanded shapes: the benchmark's baseline, no part of the paper.

``scripts/bench.py`` measures it under the name ``plain_p4cnn`` (it has no model config: it is not trained), to
compare P4CNN's training step with the cost of its dense convolutions alone, i.e. the floor of the
filter-transform G-conv (docs/performance.md#targets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PlainP4CNN(nn.Module):
    """P4CNN's layers as plain convolutions with the expanded shapes: ``[B, 1, 28, 28]`` -> ``[B, 10]``.

    c1 ``1 -> C*|H|`` (3x3), c2..c6 ``C*|H| -> C*|H|`` (3x3), c7 ``C*|H| -> 10*|H|`` (4x4), no biases; BatchNorm2d
    (eps 2e-5) + ReLU after c1..c6, max-pool 2 after c2, dropout after the others; the logits are the max over the
    ``|H|`` slices of c7's output, as in :class:`attentive_gcnn.models.RotMNISTNet`. No filter transform and no
    group structure: it costs what the dense convolutions of P4CNN cost, and nothing else.
    """

    input_shape = (1, 28, 28)
    num_classes = 10

    def __init__(self, channels: int = 10, group_order: int = 4, dropout: float = 0.3) -> None:
        super().__init__()
        width = channels * group_order
        self.group_order = group_order
        self.c1 = nn.Conv2d(1, width, 3, bias=False)
        for i in range(2, 7):
            setattr(self, f"c{i}", nn.Conv2d(width, width, 3, bias=False))
        self.c7 = nn.Conv2d(width, self.num_classes * group_order, 4, bias=False)
        for i in range(1, 7):
            setattr(self, f"bn{i}", nn.BatchNorm2d(width, eps=2e-5))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(1, 7):
            x = torch.relu(getattr(self, f"bn{i}")(getattr(self, f"c{i}")(x)))
            x = F.max_pool2d(x, 2) if i == 2 else self.dropout(x)
        y = self.c7(x)  # [B, 10 * |H|, 1, 1]
        return y.view(y.shape[0], self.num_classes, self.group_order).amax(dim=2)
