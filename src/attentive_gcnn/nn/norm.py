"""Batch normalisation of maps over G with statistics shared over (|H|, X, Y)."""

from __future__ import annotations

from torch import nn


class GroupBatchNorm(nn.BatchNorm3d):
    """BatchNorm over the C axis of ``[B, C, |H|, X, Y]``: one mean/var/affine pair per channel, shared over
    all orientations and positions, so it commutes with the group action. Defaults of the authors' code:
    eps 2e-5, momentum 0.1, affine, running statistics.
    """

    def __init__(self, num_features: int, eps: float = 2e-5, momentum: float = 0.1, **kw) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, **kw)
