"""Pooling on maps over G, ``[B, C, |H|, X, Y]``: planar pooling per orientation, and pooling over H."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SpatialPool(nn.Module):
    """Planar ``kernel x kernel`` max or average pooling (stride = kernel, padding 0) of every H slice.

    ``[B, C, |H|, X, Y]`` -> ``[B, C, |H|, X/k, Y/k]``; planar ``[B, C, X, Y]`` inputs are pooled as they are.
    Exactly equivariant when X is a multiple of the kernel (even X for 2x2).
    """

    def __init__(self, mode: str = "max", kernel_size: int = 2) -> None:
        super().__init__()
        pools = {"max": F.max_pool2d, "avg": F.avg_pool2d}
        if mode not in pools:
            raise ValueError(f"SpatialPool mode must be one of {sorted(pools)}, got {mode!r}")
        self.mode, self.kernel_size, self._pool = mode, kernel_size, pools[mode]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            return self._pool(x, self.kernel_size)
        y = self._pool(x.flatten(1, 2), self.kernel_size)
        return y.view(*x.shape[:3], *y.shape[-2:])

    def extra_repr(self) -> str:
        return f"mode={self.mode}, kernel_size={self.kernel_size}"


class GroupPool(nn.Module):
    """Pool over the H axis (dim 2): ``[B, C, |H|, X, Y]`` -> ``[B, C, X, Y]``; invariant to the H index map."""

    def __init__(self, mode: str = "max") -> None:
        super().__init__()
        if mode not in ("max", "mean"):
            raise ValueError(f"GroupPool mode must be 'max' or 'mean', got {mode!r}")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        return x.amax(dim=2) if self.mode == "max" else x.mean(dim=2)

    def extra_repr(self) -> str:
        return f"mode={self.mode}"
