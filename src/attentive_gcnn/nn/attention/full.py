"""Full attention (alpha-nets): weight every planar response of a lifting or group convolution.

The intermediate responses of a conv with ``n_in`` input orientations (1 for lifting, |H| for group convs) are

    ft[b, o, j, c, l] = x[b, c, l] (*) (L_{h_j} W)[o, c, l]          [B, Co, |H|, Ci, n_in, X', Y']

and the layer returns ``scale * sum_{c, l} attend(ft)``. Lifting layers carry ``n_in = 1`` as a singleton
axis, so their maps are ``[B, Co, |H|, Ci, 1, 1, 1]`` (channel) and ``[B, Co, |H|, 1, 1, X', Y']`` (spatial).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from attentive_gcnn.groups import Group, get_group
from attentive_gcnn.nn.attention import lean
from attentive_gcnn.nn.attention.combine import KeepsMap, attend
from attentive_gcnn.nn.conv import INITS, GConv, transformed_filters

# reference: all of ft at once; lean: never all of ft (attention.lean)
IMPLS = ("lean", "reference")


def _hidden(in_channels: int, ratio: int) -> int:
    hidden = in_channels // ratio
    if hidden < 1:
        raise ValueError(f"attention ratio {ratio} leaves no hidden unit for {in_channels} input channels")
    return hidden


class FullChannelAttention(KeepsMap, nn.Module):
    """Channel attention alpha^C(h_j, h_l) per output channel o and relative element ``h_j^-1 h_l``.

    ``ft [B, Co, |H|, Ci, n_in, X, Y]`` -> ``[B, Co, |H|, Ci, n_in, 1, 1]``. A CBAM MLP (no biases, shared by
    the spatial-mean and spatial-max statistics) contracts the input channels c only.
    Weights: ``weight_fc1 [Co, Ci//ratio, Ci(, |H|)]``, ``weight_fc2 [Co, Ci, Ci//ratio(, |H|)]`` (the last
    axis only for group convs), initialised as torch's default ``kaiming_uniform_(a=sqrt(5))``. For p4 the
    relative index is ``(l - j) mod 4``, the authors' cyclic roll; for p4m it is the D4 product.
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
    """Spatial attention alpha^X(x, h_j, h_l) from the channel mean and max of (channel-attended) responses.

    ``g [B, Co, |H|, Ci, n_in, X, Y]`` -> ``[B, Co, |H|, 1, n_in, X, Y]``. Weight ``[Co, 2(, |H|), k, k]``
    (stat 0 = mean, 1 = max), transformed per output element like a group kernel; each (o, j, l) plane gets its
    own slice, summed over the two statistics only. Stride 1, "same" padding, no Haar factor, sigmoid.
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

    def _bank(self, o: slice = slice(None)) -> Tensor:
        """The transformed kernels ``[Co', |H|, 2, n_in, k, k]``: plane (o, j, l) gets ``[o, j, :, l]``."""
        co, k = self.weight[o].shape[0], self.kernel_size
        return transformed_filters(self.weight[o].reshape(co, 2, self.n_in, k, k), self.group, self.index)

    def from_stats(self, stats: Tensor) -> Tensor:
        """``stats [B, Co, |H|, n_in, 2, X, Y]`` (mean, max over c) -> ``[B, Co, |H|, 1, n_in, X, Y]``."""
        b, co, n_h, n_in, _, x, y = stats.shape
        k, d = self.kernel_size, self.dilation
        bank = self._bank().transpose(2, 3).reshape(co * n_h * n_in, 2, k, k)  # [(o, j, l), stat, k, k]
        stats = stats.reshape(b, co * n_h * n_in * 2, x, y)
        logits = F.conv2d(stats, bank, padding=d * (k // 2), dilation=d, groups=co * n_h * n_in)
        return torch.sigmoid(logits.view(b, co, n_h, 1, n_in, *logits.shape[-2:]))

    def lmajor_bank(self, mean_scale: float) -> Tensor:
        """The kernels for l-major statistics ``[B, n_in, Co, |H|, X, Y]``: ``[(l, o, j), stat, k, k]``, for
        :func:`~attentive_gcnn.nn.attention.lean.spatial_attention_sum` (same function as :meth:`from_stats`,
        faster on CPUs). The mean's kernels carry ``mean_scale`` (the channel mean's 1 / Ci), so that the statistic
        is the channel sum."""
        k = self.kernel_size
        bank = self._bank().permute(3, 0, 1, 2, 4, 5).reshape(-1, 2, k, k)  # [Co, H, 2, n_in] -> [(l, o, j), stat]
        return bank * bank.new_tensor([mean_scale, 1.0]).view(1, 2, 1, 1)


class AttGConv(GConv):
    """Lifting or group convolution with full attention on its intermediate responses.

    ``[B, Ci(, |H|), X, Y]`` -> ``[B, Co, |H|, X', Y']``: ``scale * sum_{c, l} attend(ft)`` with
    ``scale = 2 pi / |H|`` for group convs (= mu for p4; the authors' code, which has no p4m full-attention
    model, would give pi/4 for p4m) and 1 for lifting convs. ``channel``/``spatial`` switch the two parts
    (ablations); with both off the layer equals the plain conv.

    Args (besides :class:`GConv`'s): ratio (channel MLP reduction, hidden = Ci // ratio), spatial_kernel,
    spatial_dilation, combine (see :func:`attend`). Attention kernels use the conv's ``wscale``.
    impl: ``lean`` (default; never holds ``ft``, see :mod:`attentive_gcnn.nn.attention.lean`) or ``reference``
    (all of ``ft`` at once, the straightforward computation); the same function.
    chunk_elements: the lean path builds ``ft`` (without autograd) for chunks of output channels of at most
    this many values, or one channel.
    attend_chunk_elements: the lean path's differentiable part runs over chunks of output channels whose
    per-orientation tensors ``[B, n_in, Co', |H|, X', Y']`` and per-sample conv weights ``[B, Co', |H|, Ci, n_in,
    k, k]`` hold at most this many values each, or one channel: larger is faster and holds more memory.
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
        impl: str = "lean",
        chunk_elements: int = 2**22,
        attend_chunk_elements: int = 2**22,
        recompute_stats: bool = False,
        **conv_kw,
    ):
        super().__init__(
            group, in_channels, out_channels, kernel_size, lifting=lifting, wscale=wscale, haar=haar, **conv_kw
        )
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.scale = 1.0 if (lifting or not haar) else 2 * math.pi / self.group.order
        self.combine, self.impl = combine, impl
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

    def responses(self, x: Tensor) -> Tensor:
        """The intermediate responses ``ft [B, Co, |H|, Ci, n_in, X', Y']`` (one depthwise conv2d)."""
        bank = transformed_filters(self.weight5d, self.group, self.index)  # [Co, H, Ci, n_in, k, k]
        return self._responses(self.fold_input(x), bank)

    def _responses(self, xin: Tensor, bank: Tensor) -> Tensor:
        """``ft`` of the output channels of ``bank [Co', |H|, Ci, n_in, k, k]`` from the folded input."""
        return self._conv_responses(xin, bank).permute(0, 3, 4, 1, 2, 5, 6)

    def _conv_responses(self, xin: Tensor, bank: Tensor) -> Tensor:
        """The same in the depthwise conv's layout ``[B, Ci, n_in, Co', |H|, X', Y']``."""
        co, n_h, ci, n_in, k, _ = bank.shape
        bank = bank.permute(2, 3, 0, 1, 4, 5).reshape(ci * n_in * co * n_h, 1, k, k)
        y = F.conv2d(xin, bank, None, self.stride, self.padding, self.dilation, groups=ci * n_in)
        return y.view(y.shape[0], ci, n_in, co, n_h, *y.shape[-2:])

    def forward(self, x: Tensor) -> Tensor:
        if self.impl == "lean":
            return self._lean(x)  # scaled inside (by the fused kernels where they make the output)
        out = self._reference(x)
        return out * self.scale if self.scale != 1.0 else out

    def _reference(self, x: Tensor) -> Tensor:
        """The straightforward computation: all of ``ft`` at once (the tested reference)."""
        return attend(self.responses(x), self.channel_attention, self.spatial_attention, self.combine).sum(dim=(3, 4))

    def chunk_size(self, elements_per_channel: int, budget: int | None = None) -> int:
        """Output channels per chunk, so that a chunk of a tensor with ``elements_per_channel`` values per output
        channel holds at most ``budget`` values (default ``chunk_elements``), or one channel."""
        budget = self.chunk_elements if budget is None else budget
        return max(1, min(self.out_channels, budget // max(elements_per_channel, 1)))

    def _lean(self, x: Tensor) -> Tensor:
        """The same function without ``ft`` (see :mod:`attentive_gcnn.nn.attention.lean`).

        With ``G_l = sum_c g`` (``g = a_C * ft``, or ``ft`` without channel attention) the layer is
        ``sum_{c,l} ft - sum_l a_X * G_l`` (``one_minus_product``) or ``sum_l a_X * G_l`` (``product``), and
        channel-only attention is one conv with the per-sample weights ``(1 - a_C) * bank`` (or ``a_C * bank``).
        The plain sum ``sum_{c,l} ft`` is one conv for all output channels. With torch ops ``ft`` is only ever
        built for a chunk of output channels, without autograd, to find the arg-maxes; the fused kernels
        (:func:`~attentive_gcnn.nn.attention.lean.native_kernels`) never build it, and find the channel arg-maxes
        inside the chunked part. That part runs over chunks of output channels, so that the per-orientation tensors
        ``[B, n_in, Co', |H|, X', Y']`` of one chunk exist at a time in forward; training keeps them for backward
        (never ``ft``), or with ``recompute_stats`` recomputes each chunk in backward instead.
        """
        xin = self.fold_input(x)
        bank = transformed_filters(self.weight5d, self.group, self.index)  # [Co, H, Ci, n_in, k, k]
        geo = lean.ConvGeometry.of(xin, self.kernel_size, self.stride, self.padding, self.dilation)
        ca, sa = self.channel_attention, self.spatial_attention
        s_avg = lean.mean_responses(xin, bank, geo) if ca is not None else None

        def channel_map(s_max: Tensor, o: slice) -> Tensor:
            return ca.from_stats(s_avg[:, o], s_max, o)

        native = lean.native_kernels(xin)
        if native is not None:
            found = lean.native_spatial_argmax(native, xin, bank, geo) if ca is not None else lean.ArgMaxes()
        else:
            found = lean.argmax_pass(
                lambda o: self._conv_responses(xin, bank[o]),
                self.out_channels,
                self.chunk_size(xin.shape[0] * self.group.order * xin.shape[1] * geo.pixels),
                channel_map if ca is not None else None,
                sa is not None,
            )
        # max_xy ft, differentiable, for all output channels at once (one backward pass for the layer)
        s_max = lean.spatial_maxima(xin, bank, found.spatial, found.spatial_max, geo) if ca is not None else None
        # the fused kernels add the plain sum in each chunk (one pass over the responses for both); else one conv
        fused_plain = native is not None and sa is not None and self.combine == "one_minus_product"
        per_channel = xin.shape[0] * self.group.order * self.in_order * geo.pixels  # of a per-orientation tensor
        if ca is not None:  # ... and of the per-sample conv weights a_C * W
            per_channel = max(per_channel, xin.shape[0] * self.group.order * xin.shape[1] * self.kernel_size**2)
        step = self.chunk_size(per_channel, self.attend_chunk_elements)
        # the channel map and the spatial kernels for all output channels, then split into chunks: one backward
        # node for the split, not one zero-filled copy per sliced chunk
        n_chunks = -(-self.out_channels // step)  # as few chunks as the budget allows, of balanced sizes
        sizes = [self.out_channels // n_chunks + (i < self.out_channels % n_chunks) for i in range(n_chunks)]
        a_all = ca.from_stats(s_avg, s_max) if ca is not None else None
        bank_x = None
        if sa is not None:
            k = sa.kernel_size
            bank_x = sa.lmajor_bank(1.0 / self.in_channels).view(self.in_order, self.out_channels, -1, 2, k, k)
        chunks = zip(
            bank.split(sizes),
            a_all.split(sizes, dim=1) if a_all is not None else [None] * len(sizes),
            bank_x.split(sizes, dim=1) if bank_x is not None else [None] * len(sizes),
            strict=True,
        )
        outs, maps, o0 = [], [], 0
        for bank_o, a_o, bank_x_o in chunks:
            o = slice(o0, o0 + bank_o.shape[0])
            o0 = o.stop
            bank_x_o = None if bank_x_o is None else bank_x_o.reshape(-1, *bank_x_o.shape[-3:])  # [(l, o, j), stat]
            args = [xin, bank_o, a_o, bank_x_o]
            args += [None if t is None else t[:, :, o] for t in (found.channel, found.winner)]
            if self.recompute_stats and torch.is_grad_enabled():
                out, *chunk_maps = checkpoint(self._attend, *args, geo, fused_plain, use_reentrant=False)
            else:
                out, *chunk_maps = self._attend(*args, geo, fused_plain)
            outs.append(out)
            maps.append(chunk_maps)
        for i, module in enumerate((ca, sa)):
            if module is not None and module.keep_map:
                module.keep_chunks([m[i] for m in maps], dim=1)
        out = torch.cat(outs, dim=1)
        if sa is not None and self.combine == "one_minus_product" and not fused_plain:  # one conv for all channels
            out = lean.modulated_conv(xin, bank, None, geo, sum_orientations=True) - out
        return out * self.scale if self.scale != 1.0 and not fused_plain else out

    def _attend(self, xin, bank, a, bank_x, channel_at, winner, geo, fused_plain=False) -> tuple:
        """The layer's output for the output channels of ``bank`` (a chunk), given their channel map ``a [B, Co',
        |H|, Ci, n_in]`` and spatial kernels ``bank_x [(l, o, j), 2, k, k]`` (None where that part is absent) and
        the channel arg-maxes (see :meth:`_lean`), and the (detached) channel and spatial maps of the chunk (None
        where absent or not kept). ``fused_plain``: the output includes the plain sum (``sum_{c,l} ft - sum_l a_X
        G_l``), from the fused kernels' pass; else ``sum_l a_X G_l`` alone."""
        ca, sa = self.channel_attention, self.spatial_attention
        a_map = x_map = None
        if ca is not None and ca.keep_map:
            a_map = a.detach()[..., None, None]
        if sa is None:  # channel only: sum_{c,l} (1 - a_C) ft, or a_C ft; neither: the plain sum
            if a is not None and self.combine == "one_minus_product":
                a = 1 - a
            return lean.modulated_conv(xin, bank, a, geo, sum_orientations=True), a_map, x_map
        # per-orientation tensors are l-major, [B, n_in, Co', H, X', Y'], the layout of the convs that make them
        native = lean.native_kernels(xin)
        single = self.in_channels * self.in_order == 1  # max_c g = sum_c g = g: one statistic, its kernels summed
        if single:
            bank_x = bank_x.sum(dim=1, keepdim=True)
        # sum_l a_X G_l, or plain - sum_l a_X G_l; without plain, _lean subtracts it from the plain conv
        scale = self.scale if fused_plain else 1.0  # the fused kernels apply the layer's scale too
        if native is not None and geo.stride == 1:  # the whole chunk as fused kernels
            out, a_x = lean.native_attend(xin, bank, a, bank_x, geo, sa.dilation, fused_plain, single, scale)
        else:
            plain = None
            if native is not None:  # G_l and max_c g (and the plain sum), from one fused pass
                summed, maximum, *rest = lean.native_channel_stats(native, xin, bank, a, geo, with_plain=fused_plain)
                plain = rest[0] if rest else None
            else:
                summed = lean.modulated_conv(xin, bank, a, geo, sum_orientations=False)  # G_l
                maximum = None if single else lean.SelectedResponses.apply(xin, bank, a, channel_at, winner, geo)
            stats = (summed, None if single else maximum)
            out, a_x = lean.spatial_attention_sum(*stats, bank_x, sa.dilation, plain, scale)
        if sa.keep_map:
            x_map = a_x.permute(0, 2, 3, 1, 4, 5).unsqueeze(3)  # [B, Co', H, 1, n_in, X', Y']
        return out, a_map, x_map


class AttLiftingConv(AttGConv):
    """Full-attention lifting convolution, ``[B, Ci, X, Y]`` -> ``[B, Co, |H|, X', Y']``."""

    def __init__(self, group, in_channels, out_channels, kernel_size, **kw):
        super().__init__(group, in_channels, out_channels, kernel_size, lifting=True, **kw)


class AttGroupConv(AttGConv):
    """Full-attention group convolution, ``[B, Ci, |H|, X, Y]`` -> ``[B, Co, |H|, X', Y']``."""

    def __init__(self, group, in_channels, out_channels, kernel_size, **kw):
        super().__init__(group, in_channels, out_channels, kernel_size, lifting=False, **kw)
