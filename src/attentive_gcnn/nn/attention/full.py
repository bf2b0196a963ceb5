"""Full attention (alpha-nets): attention on every planar response of a lifting or group convolution.

The attentive group convolution weights every term of the group convolution's sum,

    (f *^a_G psi)(g) = sum_c int_G a_c(g, g~) f_c(g~) psi_c(g^-1 g~) dg~,      a_c(g, g~) = a_X(.) a_C_c(h, h~),

with an attention map A[f] that factorises into a channel part a_C and a spatial part a_X, each ending in a sigmoid.
On G = Z^2 x| H the terms are the intermediate responses, one planar correlation per (o, j, c, l):

    ft[b, o, j, c, l] = x[b, c, l] (*) (L_{h_j} W)[o, c, l]                       [B, Co, |H|, Ci, n_in, X', Y']

(``n_in`` input orientations: 1 for a lifting conv, whose input has no H axis, |H| for a group conv), and the layer
(:func:`full_attention`) returns

    y = scale * sum_{c, l} ft * (1 - a_C a_X)                                     [B, Co, |H|, X', Y']

computed as ``ft - a_X (a_C ft)`` (``combine="one_minus_product"``, the paper's; ``"product"``: ``a_X a_C ft``), with
``scale = 2 pi / |H|`` for group convs (the authors' code) and 1 for lifting convs. The maps are
``a_C [B, Co, |H|, Ci, n_in, 1, 1]`` (:class:`FullChannelAttention`) and ``a_X [B, Co, |H|, 1, n_in, X', Y']``
(:class:`FullSpatialAttention`); a lifting layer keeps ``n_in = 1`` as a singleton axis.

The layer's forward runs the function that its ``impl`` chose when it was built
(:func:`attentive_gcnn.accel.implementation`): ``reference``, :func:`full_attention` itself, or ``lean`` (the
default), :mod:`attentive_gcnn.accel.full`, the same function without all of ``ft`` at once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attentive_gcnn import accel
from attentive_gcnn.groups import Group, get_group
from attentive_gcnn.nn.attention.combine import ChoosesImpl, KeepsMap, attend
from attentive_gcnn.nn.conv import INITS, GConv, transformed_filters


def _hidden(in_channels: int, ratio: int) -> int:
    hidden = in_channels // ratio
    if hidden < 1:
        raise ValueError(f"attention ratio {ratio} leaves no hidden unit for {in_channels} input channels")
    return hidden


class FullChannelAttention(KeepsMap, nn.Module):
    """Channel attention a_C(h_j, h_l) per output channel o and relative element ``h_j^-1 h_l``:

        a_C[b, o, j, :, l] = sigmoid(mlp_om(s_avg[b, o, j, :, l]) + mlp_om(s_max[b, o, j, :, l]))
        mlp_om(s) = W2[o, :, :, m] relu(W1[o, :, :, m] s),    m = index(h_j^-1 h_l)

    with ``s_avg`` and ``s_max`` the spatial mean and max of ``ft``. ``ft [B, Co, |H|, Ci,
    n_in, X, Y]`` -> ``[B, Co, |H|, Ci, n_in, 1, 1]``. A CBAM MLP (no biases, shared by the two statistics) contracts
    the input channels c only. Weights: ``weight_fc1 [Co, Ci//ratio, Ci(, |H|)]``, ``weight_fc2 [Co, Ci, Ci//ratio(,
    |H|)]`` (the last axis only for group convs), initialised as torch's default ``kaiming_uniform_(a=sqrt(5))``. For
    p4 the relative index is ``(l - j) mod 4``, the authors' cyclic roll; for p4m it is the D4 product.
    """

    def __init__(self, group: str | Group, in_channels: int, out_channels: int, ratio: int, lifting: bool):
        super().__init__()
        group = get_group(group)
        hidden = _hidden(in_channels, ratio)
        tail = () if lifting else (group.order,)
        self.weight_fc1 = nn.Parameter(torch.empty(out_channels, hidden, in_channels, *tail))
        self.weight_fc2 = nn.Parameter(torch.empty(out_channels, in_channels, hidden, *tail))
        relative = torch.zeros(group.order, 1, dtype=torch.long) if lifting else group.relative
        self.register_buffer("relative", relative, persistent=False)
        self.n_weights = 1 if lifting else group.order
        for w in (self.weight_fc1, self.weight_fc2):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))

    def forward(self, ft: Tensor) -> Tensor:
        return self.keep(self.from_stats(ft.mean(dim=(-2, -1)), ft.amax(dim=(-2, -1)))[..., None, None])

    def from_stats(self, s_avg: Tensor, s_max: Tensor, o: slice = slice(None)) -> Tensor:
        """``sigmoid(mlp(s_avg) + mlp(s_max))`` for the output channels ``o``: ``[B, Co', |H|, Ci, n_in]``."""
        n_w = self.n_weights
        w1, w2 = self.weight_fc1[o], self.weight_fc2[o]
        co, q, ci = w1.shape[:3]
        n_h, n_in = self.relative.shape
        # one batched matmul per MLP layer, over (o, j, l), for both statistics: [(o, j, l), 2B, c]
        w1 = w1.reshape(co, q, ci, n_w)[..., self.relative].permute(0, 3, 4, 2, 1).reshape(-1, ci, q)
        w2 = w2.reshape(co, ci, q, n_w)[..., self.relative].permute(0, 3, 4, 2, 1).reshape(-1, q, ci)
        b = s_avg.shape[0]
        s = torch.stack((s_avg, s_max)).permute(2, 3, 5, 0, 1, 4).reshape(-1, 2 * b, ci)
        out = torch.bmm(torch.relu(torch.bmm(s, w1)), w2).view(co, n_h, n_in, 2, b, ci).sum(3)
        return torch.sigmoid(out).permute(3, 0, 1, 4, 2)  # [B, Co, H, Ci, n_in]


class FullSpatialAttention(KeepsMap, nn.Module):
    """Spatial attention a_X(x, h_j, h_l) from the channel mean and max of the (channel-attended) responses g:

        a_X[b, o, j, 0, l] = sigmoid(sum_s stat_s[b, o, j, l] (*) (L_{h_j} phi)[o, s, l])

    with ``stat_0 = mean_c g``, ``stat_1 = max_c g``. ``g [B, Co, |H|, Ci, n_in, X, Y]`` -> ``[B, Co, |H|, 1, n_in,
    X, Y]``. Weight phi ``[Co, 2(, |H|), k, k]``, transformed per output element like a group kernel; each (o, j, l)
    plane gets its own slice, summed over the two statistics only. Stride 1, "same" padding, no Haar factor.
    Init U(+-wscale / sqrt(2 k^2)).
    """

    def __init__(
        self,
        group: str | Group,
        out_channels: int,
        kernel_size: int = 7,
        dilation: int = 1,
        lifting: bool = False,
        wscale: float = 1.0,
    ):
        super().__init__()
        self.group = get_group(group)
        self.n_in = 1 if lifting else self.group.order
        self.kernel_size, self.dilation = kernel_size, dilation
        tail = () if lifting else (self.n_in,)
        self.weight = nn.Parameter(torch.empty(out_channels, 2, *tail, kernel_size, kernel_size))
        self.register_buffer("index", self.group.filter_index(self.n_in, kernel_size), persistent=False)
        INITS["uniform_fan_in"](self.weight, wscale, 2 * kernel_size**2)  # fan-in: the 2 statistics

    def forward(self, g: Tensor) -> Tensor:
        return self.keep(self.from_stats(torch.stack((g.mean(dim=3), g.amax(dim=3)), dim=4)))

    def transformed_weight(self, o: slice = slice(None)) -> Tensor:
        """The transformed kernels ``L_{h_j} phi`` of the output channels ``o``, ``[Co', |H|, 2, n_in, k, k]``:
        plane (o, j, l) gets ``[o, j, :, l]``."""
        weight, k = self.weight[o], self.kernel_size
        return transformed_filters(weight.reshape(weight.shape[0], 2, self.n_in, k, k), self.group, self.index)

    def from_stats(self, stats: Tensor, o: slice = slice(None)) -> Tensor:
        """``stats [B, Co', |H|, n_in, 2, X, Y]`` (mean, max over c) of the output channels ``o`` -> ``[B, Co', |H|,
        1, n_in, X, Y]``."""
        b, co, n_h, n_in, _, x, y = stats.shape
        k, d = self.kernel_size, self.dilation
        bank = self.transformed_weight(o).transpose(2, 3).reshape(co * n_h * n_in, 2, k, k)  # [(o, j, l), stat, k, k]
        stats = stats.reshape(b, co * n_h * n_in * 2, x, y)
        logits = F.conv2d(stats, bank, padding=d * (k // 2), dilation=d, groups=co * n_h * n_in)
        return torch.sigmoid(logits.view(b, co, n_h, 1, n_in, *logits.shape[-2:]))


def full_attention(layer: AttGConv, x: Tensor) -> Tensor:
    """The full-attention layer as the paper computes it (``impl="reference"``): all of ``ft`` at once.

        y = scale * sum_{c, l} attend(ft)          ft = layer.responses(x)  [B, Co, |H|, Ci, n_in, X', Y']

    ``x [B, Ci(, |H|), X, Y]`` -> ``[B, Co, |H|, X', Y']``; :func:`attend` weights ``ft`` by ``a_C``, then ``a_X``.
    """
    ft = layer.responses(x)
    return layer.scale * attend(ft, layer.channel_attention, layer.spatial_attention, layer.combine).sum(dim=(3, 4))


class AttGConv(ChoosesImpl, GConv):
    """Lifting or group convolution with full attention on its intermediate responses.

    ``[B, Ci(, |H|), X, Y]`` -> ``[B, Co, |H|, X', Y']``: ``scale * sum_{c, l} attend(ft)`` (:func:`full_attention`)
    with ``scale = 2 pi / |H|`` for group convs (= mu for p4; the authors' code, which has no p4m full-attention
    model, would give pi/4 for p4m) and 1 for lifting convs. ``channel``/``spatial`` switch the two parts
    (ablations); with both off the layer equals the plain conv.

    Args (besides :class:`GConv`'s): ratio (channel MLP reduction, hidden = Ci // ratio), spatial_kernel,
    spatial_dilation, combine (see :func:`attend`). Attention kernels use the conv's ``wscale``.
    impl: how the forward computes the layer (:data:`attentive_gcnn.accel.IMPLS`), always the same function:
    ``auto`` (default: ``lean`` on a CPU, ``batched`` elsewhere), ``lean`` (:mod:`attentive_gcnn.accel.full`,
    never holds all of ``ft``; fastest on CPUs), ``batched`` (:mod:`attentive_gcnn.accel.batched`, the reference's
    ops over chunks of output channels sized by a memory budget; for GPUs) or ``reference`` (:func:`full_attention`).
    memory_budget: bytes the ``batched`` form may use (None: from the device, see :mod:`attentive_gcnn.accel.batched`).
    The lean computation's memory and speed are set by:
    chunk_elements: without the fused kernels, ``ft`` is built (without autograd, for its arg-maxes) for chunks of
    output channels of at most this many values, or one channel.
    attend_chunk_elements: the differentiable part runs over chunks of output channels whose per-orientation
    tensors ``[B, n_in, Co', |H|, X', Y']`` and per-sample conv weights ``[B, Co', |H|, Ci, n_in, k, k]`` hold at
    most this many values each, or one channel: larger is faster and holds more memory.
    recompute_stats: False (default): training keeps, for backward, each chunk's per-orientation tensors (the
    channel sum and max, the channel arg-max, the spatial map), each a factor Ci smaller than ``ft``; True: the
    whole chunk is recomputed in backward (``torch.utils.checkpoint``), which keeps about a third as much and is
    slower.
    """

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
        combine: str = "one_minus_product",
        wscale: float = 1.0,
        haar: bool = True,
        impl: str = "auto",
        memory_budget: int | None = None,
        chunk_elements: int = 2**22,
        attend_chunk_elements: int = 2**22,
        recompute_stats: bool = False,
        **conv_kw,
    ):
        super().__init__(
            group, in_channels, out_channels, kernel_size, lifting=lifting, wscale=wscale, haar=haar, **conv_kw
        )
        self.scale = 1.0 if (lifting or not haar) else 2 * math.pi / self.group.order
        self.combine, self.memory_budget = combine, memory_budget
        self.chunk_elements, self.attend_chunk_elements = chunk_elements, attend_chunk_elements
        self.recompute_stats = recompute_stats
        self.channel_attention = (
            FullChannelAttention(self.group, in_channels, out_channels, ratio, lifting) if channel else None
        )
        self.spatial_attention = (
            FullSpatialAttention(self.group, out_channels, spatial_kernel, spatial_dilation, lifting, wscale)
            if spatial
            else None
        )
        self.impl = impl

    def choose_impl(self, impl: str) -> None:
        self._compute = accel.implementation("full_attention", impl, full_attention)

    def forward(self, x: Tensor) -> Tensor:
        return self._compute(self, x)

    def responses(self, x: Tensor) -> Tensor:
        """The intermediate responses ``ft [B, Co, |H|, Ci, n_in, X', Y']`` (one depthwise conv2d)."""
        return self.conv_responses(self.fold_input(x), self.transformed_weight()).permute(0, 3, 4, 1, 2, 5, 6)

    def conv_responses(self, xin: Tensor, bank: Tensor) -> Tensor:
        """``ft`` of the output channels of ``bank [Co', |H|, Ci, n_in, k, k]`` (transformed filters) from the folded
        input ``xin [B, Ci * n_in, X, Y]``, in the layout of the depthwise conv that makes it: ``[B, Ci, n_in, Co',
        |H|, X', Y']``, each input plane (c, l) correlated with each filter slice (o, j)."""
        co, n_h, ci, n_in, k, _ = bank.shape
        bank = bank.permute(2, 3, 0, 1, 4, 5).reshape(ci * n_in * co * n_h, 1, k, k)
        y = F.conv2d(xin, bank, None, self.stride, self.padding, self.dilation, groups=ci * n_in)
        return y.view(y.shape[0], ci, n_in, co, n_h, *y.shape[-2:])


class AttLiftingConv(AttGConv):
    """Full-attention lifting convolution, ``[B, Ci, X, Y]`` -> ``[B, Co, |H|, X', Y']``."""

    def __init__(self, group, in_channels, out_channels, kernel_size, **kw):
        super().__init__(group, in_channels, out_channels, kernel_size, lifting=True, **kw)


class AttGroupConv(AttGConv):
    """Full-attention group convolution, ``[B, Ci, |H|, X, Y]`` -> ``[B, Co, |H|, X', Y']``."""

    def __init__(self, group, in_channels, out_channels, kernel_size, **kw):
        super().__init__(group, in_channels, out_channels, kernel_size, lifting=False, **kw)
