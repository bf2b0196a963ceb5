"""Slow, obviously correct reference convolutions, for testing the fast filter-bank path.

Both loop over (output element h_j, input element h_l) and build each kernel slice straight from the
definition ``psi(h^-1 (x' - x), h^-1 h')``: the planar part is ``act_on_plane(W[..., m], h_j)`` with
``m = index(h_j^-1 h_l)`` computed from ``group.compose``/``group.inverse``, not from the precomputed index
tables of :mod:`attentive_gcnn.nn.conv`. Each term is one small ``F.conv2d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attentive_gcnn.groups import Group


def lifting_conv_reference(x: Tensor, weight: Tensor, group: Group, stride=1, padding=0, dilation=1) -> Tensor:
    """``x [B, Ci, X, Y]``, ``weight [Co, Ci, k, k]`` -> ``[B, Co, |H|, X', Y']`` (no Haar factor)."""
    outs = [
        F.conv2d(x, group.act_on_plane(weight, j), None, stride, padding, dilation) for j in range(group.order)
    ]
    return torch.stack(outs, dim=2)


def group_conv_reference(
    x: Tensor, weight: Tensor, group: Group, stride=1, padding=0, dilation=1, scale: float = 1.0
) -> Tensor:
    """``x [B, Ci, |H|, X, Y]``, ``weight [Co, Ci, |H|, k, k]`` -> ``scale * [B, Co, |H|, X', Y']``."""
    outs = []
    for j in range(group.order):
        total = 0
        for l in range(group.order):
            m = group.compose(group.inverse(j), l)
            kernel = group.act_on_plane(weight[:, :, m], j)
            total = total + F.conv2d(x[:, :, l], kernel, None, stride, padding, dilation)
        outs.append(total)
    return scale * torch.stack(outs, dim=2)
