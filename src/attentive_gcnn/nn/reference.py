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
    outs = [F.conv2d(x, group.act_on_plane(weight, j), None, stride, padding, dilation) for j in range(group.order)]
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


def full_responses_reference(
    x: Tensor, weight: Tensor, group: Group, lifting: bool, stride=1, padding=0, dilation=1
) -> Tensor:
    """Intermediate responses of a full-attention conv, one planar correlation per (j, l) pair, by loops.

    ``x [B, Ci, X, Y]`` (lifting, ``weight [Co, Ci, k, k]``) or ``[B, Ci, |H|, X, Y]`` (``[Co, Ci, |H|, k, k]``)
    -> ``[B, Co, |H|, Ci, n_in, X', Y']`` with ``n_in`` = 1 for lifting.
    """
    xs = x.unsqueeze(2) if lifting else x
    ws = weight.unsqueeze(2) if lifting else weight
    co, ci, n_in, k, _ = ws.shape
    per_j = []
    for j in range(group.order):
        per_l = []
        for l in range(n_in):
            m = 0 if lifting else group.compose(group.inverse(j), l)
            kernel = group.act_on_plane(ws[:, :, m], j)  # [Co, Ci, k, k]
            depthwise = kernel.transpose(0, 1).reshape(ci * co, 1, k, k)  # c-major
            y = F.conv2d(xs[:, :, l], depthwise, None, stride, padding, dilation, groups=ci)
            per_l.append(y.view(y.shape[0], ci, co, *y.shape[-2:]).transpose(1, 2))  # [B, Co, Ci, X', Y']
        per_j.append(torch.stack(per_l, dim=3))  # [B, Co, Ci, n_in, X', Y']
    return torch.stack(per_j, dim=2)
