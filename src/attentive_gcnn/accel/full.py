"""The lean full attention: the same function as nn's ``full_attention``, without all of the responses ``ft``.

With ``ft[b, o, j, c, l] = x[b, c, l] (*) bank[o, j, c, l]`` (``[B, Co, |H|, Ci, n_in, X', Y']``), ``g = a_C * ft``
and ``G_l = sum_c g`` (``ft`` without channel attention), the layer's output is ``scale * (sum_{c,l} ft - sum_l a_X
G_l)`` (``one_minus_product``) or ``scale * sum_l a_X G_l`` (``product``); channel-only attention is one conv with
the per-sample weights ``(1 - a_C) * bank`` (or ``a_C * bank``). Every ingredient is either linear in ``ft`` or a
maximum of it (``docs/performance.md#what-the-lean-computation-exploits``):

- ``mean_xy ft`` is the bank applied to the mean of each filter tap's input window (:func:`window_means`);
- ``sum_c g`` is a convolution with per-sample weights ``a_C * bank`` (:func:`modulated_conv`), and
  ``mean_c g`` is that divided by Ci;
- ``max_xy ft`` and ``max_c g`` depend on ``ft`` only at their arg-max. The arg-maxes are found chunk by chunk
  without autograd (:func:`argmax_pass`); the maxima are then recomputed differentiably from the input windows
  at those positions (:func:`responses_at`) or, for the channel max, by :class:`SelectedResponses`, whose
  backward touches each position's winning channel only.

:func:`lean_full_attention` puts these together: the plain sum ``sum_{c,l} ft`` as one conv for all output channels,
the rest over chunks of output channels (:func:`attend_chunk`), so that only one chunk's per-orientation tensors
``[B, n_in, Co', |H|, X', Y']`` exist at a time in forward; training keeps them for backward (never ``ft``), or with
the layer's ``recompute_stats`` recomputes each chunk in backward instead. The spatial-attention conv runs as
:func:`planewise_conv`.

Where the native kernels apply (:func:`~attentive_gcnn.accel.native.native_kernels`: float CPU tensors), the
arg-max passes, the spatial maxima's gradients (:class:`NativeSpatialMax`) and, at stride 1, a whole chunk of the
layer (the channel statistics, the spatial-attention conv with its sigmoid and weighting, the plain sum and the
layer's scale, and one backward for all: :func:`native_attend`; other strides: :func:`native_channel_stats` and
:func:`spatial_attention_sum`) run as the fused kernels of ``csrc/full_attend/``; elsewhere as torch ops. The two
agree to round-off.

Shapes: ``xin [B, Ci * n_in, X, Y]`` (the folded conv input, channel-major), ``bank [Co, |H|, Ci, n_in, k, k]``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from attentive_gcnn.accel.native import native_kernels
from attentive_gcnn.accel.precision import float32_backward, float32_forward


def lean_full_attention(layer, x: Tensor) -> Tensor:
    """``full_attention(layer, x)`` of :mod:`attentive_gcnn.nn.attention.full` for an ``AttGConv`` ``layer``,
    without all of ``ft`` (see the module's docstring). Keeps the layer's attention maps as the reference does."""
    xin = layer.fold_input(x)
    bank = layer.transformed_weight()  # [Co, |H|, Ci, n_in, k, k]
    plan = Plan.of(layer, xin)
    ca, sa = layer.channel_attention, layer.spatial_attention
    s_avg = mean_responses(xin, bank, plan.geo) if ca is not None else None
    found = _argmaxes(layer, plan, xin, bank, s_avg)
    # max_xy ft, differentiable, for all output channels at once (one backward pass for the layer)
    s_max = spatial_maxima(xin, bank, found.spatial, found.spatial_max, plan.geo) if ca is not None else None
    # the channel map and the spatial kernels for all output channels, then split into chunks: one backward node
    # for the split, not one zero-filled copy per sliced chunk
    sizes = _chunk_sizes(layer, xin, plan)
    a_all = ca.from_stats(s_avg, s_max) if ca is not None else None
    if a_all is not None and plan.native:  # the fused kernels take one dtype (autocast may make a_C lower)
        a_all = a_all.to(xin.dtype)
    bank_x = _spatial_kernels(layer, plan) if sa is not None else None  # [n_in, Co, |H|, S, k, k]
    chunks = zip(
        bank.split(sizes),
        a_all.split(sizes, dim=1) if a_all is not None else [None] * len(sizes),
        bank_x.split(sizes, dim=1) if bank_x is not None else [None] * len(sizes),
        strict=True,
    )
    attend = functools.partial(attend_chunk, layer, plan)
    outs, maps, o0 = [], [], 0
    for bank_o, a_o, bank_x_o in chunks:
        o = slice(o0, o0 + bank_o.shape[0])
        o0 = o.stop
        bank_x_o = None if bank_x_o is None else bank_x_o.reshape(-1, *bank_x_o.shape[-3:])  # [(l, o, j), S, k, k]
        args = [xin, bank_o, a_o, bank_x_o]
        args += [None if t is None else t[:, :, o] for t in (found.channel, found.winner)]
        if layer.recompute_stats and torch.is_grad_enabled():
            out, *chunk_maps = checkpoint(attend, *args, use_reentrant=False)
        else:
            out, *chunk_maps = attend(*args)
        outs.append(out)
        maps.append(chunk_maps)
    for i, module in enumerate((ca, sa)):
        if module is not None and module.keep_map:
            module.keep_chunks([m[i] for m in maps], dim=1)
    out = torch.cat(outs, dim=1)
    if sa is not None and layer.combine == "one_minus_product" and not plan.with_plain:  # one conv for all channels
        out = modulated_conv(xin, bank, None, plan.geo, sum_orientations=True) - out
    return out * plan.final_scale if plan.final_scale != 1.0 else out


@dataclasses.dataclass(frozen=True)
class Plan:
    """How :func:`lean_full_attention` computes one forward of a layer, decided once from the layer and its input.

    ``native``: the fused kernels apply to the input. ``with_plain``: each chunk's output already includes the
    plain sum, ``sum_{c,l} ft - sum_l a_X G_l`` (the fused kernels make both in one pass over the responses); else
    a chunk gives ``sum_l a_X G_l`` and one conv for all output channels makes the plain sum. ``single``: the layer
    has one input channel and orientation (Ci * n_in = 1), so ``max_c g = sum_c g``, and the spatial map is computed
    from that one statistic with its two kernels summed (the same function). The layer's scale is applied by the
    chunks (``chunk_scale``, with ``with_plain``) or at the end (``final_scale``), the other being 1.
    """

    geo: ConvGeometry
    native: bool
    with_plain: bool
    single: bool
    chunk_scale: float
    final_scale: float

    @classmethod
    def of(cls, layer, xin: Tensor) -> Plan:
        native = native_kernels(xin) is not None
        with_plain = native and layer.spatial_attention is not None and layer.combine == "one_minus_product"
        return cls(
            geo=ConvGeometry.of(xin, layer.kernel_size, layer.stride, layer.padding, layer.dilation),
            native=native,
            with_plain=with_plain,
            single=layer.in_channels * layer.in_order == 1,
            chunk_scale=layer.scale if with_plain else 1.0,
            final_scale=1.0 if with_plain else layer.scale,
        )


def attend_chunk(layer, plan: Plan, xin, bank, a, bank_x, channel_at, winner) -> tuple:
    """The layer's output for the output channels of ``bank`` (a chunk), and its (detached) channel and spatial
    maps (None where absent or not kept), given the chunk's channel map ``a [B, Co', |H|, Ci, n_in]`` and spatial
    kernels ``bank_x [(l, o, j), S, k, k]`` (None where that part is absent) and, on the torch-op path, its channel
    arg-maxes ``channel_at`` and the responses there, ``winner`` (see :class:`ArgMaxes`). The output is ``sum_l a_X
    G_l``, or with ``plan.with_plain`` the plain sum minus that, times ``plan.chunk_scale``. Per-orientation tensors
    are l-major, ``[B, n_in, Co', |H|, X', Y']``, the layout of the convs that make them."""
    ca, sa = layer.channel_attention, layer.spatial_attention
    geo = plan.geo
    a_map = a.detach()[..., None, None] if ca is not None and ca.keep_map else None
    if sa is None:  # channel only: sum_{c,l} (1 - a_C) ft, or a_C ft; neither: the plain sum
        if a is not None and layer.combine == "one_minus_product":
            a = 1 - a
        return modulated_conv(xin, bank, a, geo, sum_orientations=True), a_map, None
    if plan.native and geo.stride == 1:  # the whole chunk as fused kernels
        out, a_x = native_attend(xin, bank, a, bank_x, geo, sa.dilation, plan.with_plain, plan.single, plan.chunk_scale)
    else:
        plain = None
        if plan.native:  # G_l and max_c g (and the plain sum), from one fused pass
            summed, maximum, *rest = native_channel_stats(xin, bank, a, geo, with_plain=plan.with_plain)
            plain = rest[0] if rest else None
        else:
            summed = modulated_conv(xin, bank, a, geo, sum_orientations=False)  # G_l
            maximum = None if plan.single else SelectedResponses.apply(xin, bank, a, channel_at, winner, geo)
        stats = (summed, None if plan.single else maximum)
        out, a_x = spatial_attention_sum(*stats, bank_x, sa.dilation, plain, plan.chunk_scale)
    x_map = a_x.permute(0, 2, 3, 1, 4, 5).unsqueeze(3) if sa.keep_map else None  # [B, Co', H, 1, n_in, X', Y']
    return out, a_map, x_map


def _channels_per_chunk(out_channels: int, elements_per_channel: int, budget: int) -> int:
    """Output channels per chunk, so that a chunk of a tensor with ``elements_per_channel`` values per output
    channel holds at most ``budget`` values, or one channel."""
    return max(1, min(out_channels, budget // max(elements_per_channel, 1)))


def _argmaxes(layer, plan: Plan, xin: Tensor, bank: Tensor, s_avg: Tensor | None) -> ArgMaxes:
    """The arg-maxes of ``ft`` that the layer needs: with the fused kernels the spatial ones only (the channel
    arg-maxes come, chunk by chunk, from the fused channel pass); with torch ops both, from ``ft`` built (without
    autograd) for chunks of at most the layer's ``chunk_elements`` values."""
    ca, sa = layer.channel_attention, layer.spatial_attention
    if plan.native:
        return native_spatial_argmax(xin, bank, plan.geo) if ca is not None else ArgMaxes()

    def channel_map(s_max: Tensor, o: slice) -> Tensor:
        return ca.from_stats(s_avg[:, o], s_max, o)

    per_channel = xin.shape[0] * layer.group.order * xin.shape[1] * plan.geo.pixels  # of ft
    return argmax_pass(
        lambda o: layer.conv_responses(xin, bank[o]),
        layer.out_channels,
        _channels_per_chunk(layer.out_channels, per_channel, layer.chunk_elements),
        channel_map if ca is not None else None,
        sa is not None,
    )


def _chunk_sizes(layer, xin: Tensor, plan: Plan) -> list[int]:
    """As few chunks of output channels as the layer's ``attend_chunk_elements`` allows, of balanced sizes: each
    chunk's per-orientation tensors (and per-sample conv weights ``a_C * W``) hold at most that many values."""
    order, co = layer.group.order, layer.out_channels
    per_channel = xin.shape[0] * order * layer.in_order * plan.geo.pixels  # of a per-orientation tensor
    if layer.channel_attention is not None:  # ... and of the per-sample conv weights a_C * W
        per_channel = max(per_channel, xin.shape[0] * order * xin.shape[1] * layer.kernel_size**2)
    n_chunks = -(-co // _channels_per_chunk(co, per_channel, layer.attend_chunk_elements))
    return [co // n_chunks + (i < co % n_chunks) for i in range(n_chunks)]


def _spatial_kernels(layer, plan: Plan) -> Tensor:
    """The spatial attention's transformed kernels for the l-major statistics, ``[n_in, Co, |H|, S, k, k]`` (the
    same function as its ``from_stats``, faster on CPUs). The mean's kernels carry the channel mean's 1 / Ci, so that
    the statistic is the channel sum ``G_l``; with ``plan.single`` the two kernels are summed (S = 1)."""
    bank = layer.spatial_attention.transformed_weight().permute(3, 0, 1, 2, 4, 5)  # [n_in, Co, H, 2, k, k]
    bank = torch.cat((bank[..., :1, :, :] * (1.0 / layer.in_channels), bank[..., 1:, :, :]), dim=-3)
    return bank.sum(dim=3, keepdim=True) if plan.single else bank


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """Stride, padding and dilation of a conv, and the spatial size of its output."""

    stride: int
    padding: int
    dilation: int
    out_hw: tuple[int, int]

    @classmethod
    def of(cls, xin: Tensor, kernel_size: int, stride: int, padding: int, dilation: int) -> ConvGeometry:
        k = kernel_size
        out = tuple((n + 2 * padding - dilation * (k - 1) - 1) // stride + 1 for n in xin.shape[-2:])
        return cls(stride, padding, dilation, out)

    @property
    def pixels(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    def tap_indicator(self, in_len: int, out_len: int, k: int, like: Tensor) -> Tensor:
        """``R [k, in_len]``: ``R[t, i] = 1`` where input position i (unpadded) is read by filter tap t at some of
        the ``out_len`` output positions, along one axis (padding reads zeros and has no column)."""
        taps = torch.arange(k, device=like.device)[:, None] * self.dilation
        outs = torch.arange(out_len, device=like.device)[None, :] * self.stride
        rows = (taps + outs - self.padding).flatten()  # the input position of (tap, output)
        indicator = torch.zeros(k, in_len, dtype=like.dtype, device=like.device)
        inside = ((rows >= 0) & (rows < in_len)).to(like.dtype)  # padding adds 0 (no boolean mask: no sync)
        tap_of = torch.arange(k, device=like.device)[:, None].expand(k, out_len).flatten()
        indicator.index_put_((tap_of, rows.clamp(0, in_len - 1)), inside, accumulate=True)
        return indicator

    @property
    def conv_kwargs(self) -> dict[str, int]:
        """``stride``, ``padding`` and ``dilation``, as the fused kernels take them."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation)

    def conv(self, x: Tensor, w: Tensor, groups: int = 1) -> Tensor:
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, groups)


def window_means(xin: Tensor, k: int, geo: ConvGeometry) -> Tensor:
    """``m[b, i, dy, dx]``: the mean, over all output positions, of the input that tap (dy, dx) multiplies.

    ``xin [B, C, X, Y]`` -> ``[B, C, k, k]``; ``mean_xy (x (*) w) = sum_taps w * m``. The sum over a tap's window is
    ``R x C^T`` with the 0/1 tap indicators of the two axes (:meth:`ConvGeometry.tap_indicator`): two small matmuls,
    whose backward is two more (no padded copy of the input).
    """
    rows = geo.tap_indicator(xin.shape[-2], geo.out_hw[0], k, xin)
    cols = geo.tap_indicator(xin.shape[-1], geo.out_hw[1], k, xin)
    b, c, y, x = xin.shape
    by_col = (xin.reshape(-1, x) @ cols.t()).view(b * c, y, k)  # one matmul for all rows of all planes
    return torch.einsum("dy,nye->nde", rows, by_col).view(b, c, k, k) / geo.pixels


def mean_responses(xin: Tensor, bank: Tensor, geo: ConvGeometry) -> Tensor:
    """``mean_xy ft`` -> ``[B, Co, |H|, Ci, n_in]``, by linearity (no ``ft``)."""
    co, n_h, ci, n_in, k, _ = bank.shape
    m = window_means(xin, k, geo).view(xin.shape[0], ci, n_in, k, k)
    return torch.einsum("ojclyx,bclyx->bojcl", bank, m)


def responses_at(xin: Tensor, bank: Tensor, pos: Tensor, geo: ConvGeometry) -> Tensor:
    """``ft[b, o, j, c, l]`` at the flat output position ``pos [B, Co, |H|, Ci, n_in]`` -> same shape.

    Contracts the k x k input window at each position with its filter: differentiable in ``xin`` and ``bank``
    (:class:`ResponsesAt`), k^2 values per statistic.
    """
    return ResponsesAt.apply(xin, bank, pos.to(torch.int32), geo)


class ResponsesAt(torch.autograd.Function):
    """See :func:`responses_at`. Saves the inputs and the positions only; backward gathers the windows again."""

    @staticmethod
    @float32_forward
    def forward(ctx, xin: Tensor, bank: Tensor, pos: Tensor, geo: ConvGeometry) -> Tensor:
        ctx.save_for_backward(xin, bank, pos)
        ctx.geo = geo
        xpad, index = _window_index(xin, bank.shape, pos, geo)
        windows = xpad.gather(-1, index).view(*index.shape[:3], *bank.shape[:2], -1)
        return torch.einsum("bclojt,ojclt->bojcl", windows, bank.flatten(-2))

    @staticmethod
    @float32_backward
    def backward(ctx, grad: Tensor):
        xin, bank, pos = ctx.saved_tensors
        xpad, index = _window_index(xin, bank.shape, pos, ctx.geo)
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            windows = xpad.gather(-1, index).view(*index.shape[:3], *bank.shape[:2], -1)
            grad_w = torch.einsum("bclojt,bojcl->ojclt", windows, grad).view_as(bank)
        if ctx.needs_input_grad[0]:
            grad_windows = torch.einsum("ojclt,bojcl->bclojt", bank.flatten(-2), grad).reshape(index.shape)
            grad_pad = torch.zeros_like(xpad).scatter_add_(-1, index, grad_windows)
            p = ctx.geo.padding
            grad_pad = grad_pad.view(*xpad.shape[:3], *grad_pad.shape[-1:]).view(
                xin.shape[0], -1, *(n + 2 * p for n in xin.shape[-2:])
            )
            grad_x = grad_pad[..., p : grad_pad.shape[-2] - p, p : grad_pad.shape[-1] - p] if p else grad_pad
        return grad_x, grad_w, None, None


def _window_index(xin: Tensor, bank_shape: torch.Size, pos: Tensor, geo: ConvGeometry) -> tuple[Tensor, Tensor]:
    """The padded input ``[B, Ci, n_in, Xp * Yp]`` and the flat indices ``[B, Ci, n_in, Co * |H| * k^2]`` of
    the window of every statistic at ``pos [B, Co, |H|, Ci, n_in]``."""
    co, n_h, ci, n_in, k, _ = bank_shape
    b = xin.shape[0]
    p, d, s = geo.padding, geo.dilation, geo.stride
    xpad = F.pad(xin, (p, p, p, p)) if p else xin
    width = xpad.shape[-1]
    pos = pos.long()
    oy, ox = pos // geo.out_hw[1], pos % geo.out_hw[1]
    taps = torch.arange(k, device=xin.device)
    offsets = ((taps[:, None] * width + taps[None, :]) * d).flatten()  # [k*k]
    start = (oy * s * width + ox * s).permute(0, 3, 4, 1, 2)  # [B, Ci, n_in, Co, |H|]
    index = (start[..., None] + offsets).reshape(b, ci, n_in, -1)
    return xpad.reshape(b, ci, n_in, -1), index


def modulated_conv(xin: Tensor, bank: Tensor, a: Tensor | None, geo: ConvGeometry, sum_orientations: bool) -> Tensor:
    """``sum_c a * ft`` (``a [B, Co, |H|, Ci, n_in]``, None for 1): one conv2d with per-sample weights.

    Returns ``[B, n_in, Co, |H|, X', Y']`` (the l-major layout of the lean path's per-orientation tensors), or
    ``[B, Co, |H|, X', Y']`` summed over l too (``sum_orientations``). Without ``a`` the weights are shared and
    the batch stays a batch.
    """
    co, n_h, ci, n_in, k, _ = bank.shape
    b = xin.shape[0]
    if sum_orientations:  # groups: samples; channels (c, l) as in xin
        if a is None:
            return geo.conv(xin, bank.reshape(co * n_h, ci * n_in, k, k)).unflatten(1, (co, n_h))
        w = (a[..., None, None] * bank).reshape(b * co * n_h, ci * n_in, k, k)
        y = geo.conv(xin.reshape(1, b * ci * n_in, *xin.shape[-2:]), w, groups=b)
        return y.view(b, co, n_h, *y.shape[-2:])
    xl = xin.view(b, ci, n_in, *xin.shape[-2:]).transpose(1, 2)  # [B, n_in, Ci, X, Y]: groups (b, l)
    if a is None:
        w = bank.permute(3, 0, 1, 2, 4, 5).reshape(n_in * co * n_h, ci, k, k)
        y = geo.conv(xl.reshape(b, n_in * ci, *xin.shape[-2:]), w, groups=n_in)
    else:
        w = (a[..., None, None] * bank).permute(0, 4, 1, 2, 3, 5, 6).reshape(b * n_in * co * n_h, ci, k, k)
        y = geo.conv(xl.reshape(1, b * n_in * ci, *xin.shape[-2:]), w, groups=b * n_in)
    return y.view(b, n_in, co, n_h, *y.shape[-2:])


@dataclasses.dataclass
class ArgMaxes:
    """Where the maxima of ``ft`` lie (found without autograd).

    ``spatial [B, Co, |H|, Ci, n_in]``: flat output position of ``max_xy ft`` (None without channel attention),
    and ``spatial_max`` that maximum (found by the fused kernels only, else None);
    ``channel [B, n_in, Co, |H|, X', Y']`` (l-major): the channel c of ``max_c g``, and ``winner`` the value of
    ``ft`` there (None without spatial attention).
    """

    spatial: Tensor | None = None
    spatial_max: Tensor | None = None
    channel: Tensor | None = None
    winner: Tensor | None = None


def argmax_pass(
    responses: Callable[[slice], Tensor],
    out_channels: int,
    step: int,
    channel_map: Callable[[Tensor, Tensor, slice], Tensor] | None,
    spatial: bool,
) -> ArgMaxes:
    """Find the arg-maxes over chunks of ``step`` output channels; ``ft`` exists for one chunk at a time.

    ``responses(o)`` gives ``ft`` of the output channels ``o`` in the conv's own layout
    ``[B, Ci, n_in, Co', |H|, X', Y']`` (reductions over c are then over an outer axis, which CPUs do fast);
    ``channel_map(s_max, o)`` the channel attention ``[B, Co', |H|, Ci, n_in]`` of those channels from their
    spatial maxima ``s_max [B, Co', |H|, Ci, n_in]`` (None: no channel attention).
    """
    found = ArgMaxes()
    buffers: dict[str, Tensor] = {}  # per-chunk scratch, reused: fewer allocations for the allocator to keep

    def buffer(name: str, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        full = buffers.get(name)
        if full is None:
            full = buffers[name] = torch.empty_like(like, dtype=dtype or like.dtype)
        return full[:, :, :, : like.shape[3]]  # the last chunk may hold fewer output channels

    with torch.no_grad():
        for o0 in range(0, out_channels, step):
            o = slice(o0, min(o0 + step, out_channels))
            ft = responses(o)  # [B, Ci, n_in, Co', H, X', Y']
            b, ci, n_in, _, n_h = ft.shape[:5]
            g = ft
            if channel_map is not None:
                s_max, pos = ft.flatten(-2).max(dim=-1)
                if found.spatial is None:
                    found.spatial = pos.new_empty(b, out_channels, n_h, ci, n_in)
                found.spatial[:, o] = pos.permute(0, 3, 4, 1, 2)
                a = channel_map(s_max.permute(0, 3, 4, 1, 2), o)  # [B, Co', H, Ci, n_in]
                g = torch.mul(ft, a.permute(0, 3, 4, 1, 2)[..., None, None], out=buffer("g", ft))
            if spatial:
                values, c = buffer("max", ft[:, :1]), buffer("argmax", ft[:, :1], torch.long)
                torch.max(g, dim=1, keepdim=True, out=(values, c))  # c [B, 1, n_in, Co', H, X', Y']
                if found.winner is None:
                    shape = (b, n_in, out_channels, n_h, *ft.shape[-2:])
                    found.winner = ft.new_empty(shape)
                    found.channel = torch.empty(shape, dtype=_index_dtype(ci), device=ft.device)
                torch.gather(ft, 1, c, out=found.winner[:, None, :, o])
                found.channel[:, :, o] = c.squeeze(1)
            del ft, g
    return found


def native_spatial_argmax(xin: Tensor, bank: Tensor, geo: ConvGeometry) -> ArgMaxes:
    """The spatial arg-maxes of :func:`argmax_pass` as one fused kernel (where :func:`native_kernels` applies): all
    output channels at once, ``ft`` never built, the same positions (ties: the first). The channel arg-maxes come
    later, chunk by chunk, from the fused channel pass."""
    found = ArgMaxes()
    with torch.no_grad():
        found.spatial_max, found.spatial = native_kernels(xin).spatial_argmax(
            *_contiguous(xin, bank), **geo.conv_kwargs
        )
    return found


def spatial_maxima(xin: Tensor, bank: Tensor, pos: Tensor, values: Tensor | None, geo: ConvGeometry) -> Tensor:
    """``max_xy ft`` ``[B, Co, |H|, Ci, n_in]``, differentiable, from its arg-max ``pos``: given its ``values``
    (from :func:`native_spatial_argmax`) as :class:`NativeSpatialMax`, else recomputed by :func:`responses_at`."""
    if values is not None:
        return NativeSpatialMax.apply(xin, bank, pos, values, geo)
    return responses_at(xin, bank, pos, geo)


class NativeSpatialMax(torch.autograd.Function):
    """:func:`responses_at` at the spatial arg-maxes, given their values; the backward is one fused kernel that
    sends each statistic's gradient to its k x k window and filter. Arguments ``(xin, bank, pos, values, geo)``."""

    @staticmethod
    @float32_forward
    def forward(ctx, xin: Tensor, bank: Tensor, pos: Tensor, values: Tensor, geo: ConvGeometry) -> Tensor:
        ctx.save_for_backward(xin, bank, pos)
        ctx.geo, ctx.kernels = geo, native_kernels(xin)
        return values

    @staticmethod
    @float32_backward
    def backward(ctx, grad: Tensor):
        xin, bank, pos = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        grad_x, grad_w = ctx.kernels.spatial_max_backward(
            grad, *_contiguous(xin, bank, pos), **ctx.geo.conv_kwargs, need_x=need_x, need_w=need_w
        )
        return (grad_x if need_x else None), (grad_w if need_w else None), None, None, None


def native_channel_stats(
    xin: Tensor, bank: Tensor, a: Tensor | None, geo: ConvGeometry, with_plain: bool = False
) -> tuple[Tensor, ...]:
    """``(sum_c g, max_c g)`` (``g = a * ft``, ``a`` None for 1), each ``[B, n_in, Co', |H|, X', Y']``, and with
    ``with_plain`` also the plain conv ``sum_{c, l} ft`` ``[B, Co', |H|, X', Y']``, for strides other than 1 (stride
    1: :func:`native_attend`): the channel arg-max from one fused pass without autograd, then :func:`modulated_conv`
    and :class:`NativeSelectedResponses`."""
    with torch.no_grad():
        kernels = native_kernels(xin)
        channel, _, maximum, _ = kernels.channel_argmax(*_contiguous(xin, bank, a), **geo.conv_kwargs, with_plain=False)
    summed = modulated_conv(xin, bank, a, geo, sum_orientations=False)
    stats = (summed, NativeSelectedResponses.apply(xin, bank, a, channel, maximum, geo))
    return (*stats, modulated_conv(xin, bank, None, geo, sum_orientations=True)) if with_plain else stats


def _contiguous(*tensors: Tensor | None) -> list[Tensor | None]:
    return [None if t is None else t.detach().contiguous() for t in tensors]


def _index_dtype(n: int) -> torch.dtype:
    return torch.uint8 if n <= 256 else torch.int32


class SelectedResponses(torch.autograd.Function):
    """``a[b, o, j, c*, l] * ft[b, o, j, c*, l, x, y]`` with ``c* = channel[b, o, j, l, x, y]``: ``max_c g``.

    Inputs: ``xin [B, Ci * n_in, X, Y]``, ``bank [Co, |H|, Ci, n_in, k, k]``, ``a [B, Co, |H|, Ci, n_in]`` (None
    for 1), ``channel`` and ``winner`` (``ft`` at ``c*``, found by :func:`argmax_pass`) ``[B, n_in, Co, |H|, X',
    Y']``, ``geo``. Saves no more than the inputs; backward sends the gradient to the winning channel's input
    window and filter only, as one conv backward per input channel c over the positions c won.
    """

    @staticmethod
    @float32_forward
    def forward(ctx, xin, bank, a, channel, winner, geo: ConvGeometry) -> Tensor:
        ctx.save_for_backward(xin, bank, a, channel, winner)
        ctx.geo = geo
        if a is None:
            return winner.clone()
        return _at_winner(a, channel) * winner

    @staticmethod
    @float32_backward
    def backward(ctx, grad: Tensor):
        xin, bank, a, channel, winner = ctx.saved_tensors
        geo: ConvGeometry = ctx.geo
        co, n_h, ci, n_in, k, _ = bank.shape
        b = xin.shape[0]
        need_x, need_w, need_a = ctx.needs_input_grad[:3]
        grad_a = None
        if need_a:  # sum over the positions each channel won: one scatter-add
            grad_a = torch.zeros(b, n_in, co, n_h, ci, dtype=grad.dtype, device=grad.device)
            grad_a.flatten(0, -2).scatter_add_(
                -1, channel.flatten(-2).flatten(0, -2).long(), (grad * winner).flatten(-2).flatten(0, -2)
            )
            grad_a = grad_a.permute(0, 2, 3, 4, 1)  # [B, Co, H, Ci, n_in]
        if not (need_x or need_w):
            return None, None, grad_a, None, None, None
        if a is not None:  # the gradient reaching ft at the winner
            grad = grad * _at_winner(a, channel)
        grad = grad.reshape(b, n_in * co * n_h, *grad.shape[-2:])  # conv layout, groups l
        channel = channel.reshape(grad.shape)
        grad_x = torch.empty_like(xin).view(b, ci, n_in, *xin.shape[-2:]) if need_x else None
        grad_w = torch.empty_like(bank) if need_w else None
        xc = xin.view(b, ci, n_in, *xin.shape[-2:])
        won, q = torch.empty_like(channel, dtype=torch.bool), torch.empty_like(grad)  # reused buffers
        zero = grad.new_zeros(())
        for c in range(ci):
            w = bank[:, :, c].permute(2, 0, 1, 3, 4).reshape(n_in * co * n_h, 1, k, k)
            torch.eq(channel, c, out=won)
            gx, gw, _ = torch.ops.aten.convolution_backward(
                torch.where(won, grad, zero, out=q),
                xc[:, c],
                w,
                None,
                [geo.stride] * 2,
                [geo.padding] * 2,
                [geo.dilation] * 2,
                False,
                [0, 0],
                n_in,
                [need_x, need_w, False],
            )
            if need_x:
                grad_x[:, c] = gx
            if need_w:
                grad_w[:, :, c] = gw.view(n_in, co, n_h, k, k).permute(1, 2, 0, 3, 4)
        return (grad_x.view_as(xin) if need_x else None), grad_w, grad_a, None, None, None


class NativeSelectedResponses(torch.autograd.Function):
    """:class:`SelectedResponses` as the fused kernels, without a stored ``winner``: given the value ``maximum``
    (from :func:`native_channel_stats`; None: computed by the kernel), backward recomputes ``ft`` at the winning
    channel from its k x k window (k^2 products). Arguments ``(xin, bank, a, channel, maximum, geo)``; ``a`` None
    for 1."""

    @staticmethod
    @float32_forward
    def forward(ctx, xin, bank, a, channel, maximum, geo: ConvGeometry) -> Tensor:
        xin, bank, a = _contiguous(xin, bank, a)
        ctx.save_for_backward(xin, bank, a, channel)
        ctx.geo, ctx.kernels = geo, native_kernels(xin)
        if maximum is not None:
            return maximum
        return ctx.kernels.selected_forward(xin, bank, a, channel, **geo.conv_kwargs)

    @staticmethod
    @float32_backward
    def backward(ctx, grad: Tensor):
        xin, bank, a, channel = ctx.saved_tensors
        need_x, need_w, need_a = ctx.needs_input_grad[:3]
        grads = ctx.kernels.selected_backward(
            grad, xin, bank, a, channel, **ctx.geo.conv_kwargs, need_x=need_x, need_w=need_w, need_a=need_a
        )
        return *grads, None, None, None


def _at_winner(a: Tensor, channel: Tensor) -> Tensor:
    """``a[b, o, j, c*, l]`` for ``c* = channel[b, l, o, j, x, y]`` -> ``[B, n_in, Co, |H|, X', Y']``."""
    return a.permute(0, 4, 1, 2, 3).gather(-1, channel.flatten(-2).long()).view(channel.shape)


def spatial_attention_sum(
    summed: Tensor,
    maximum: Tensor | None,
    bank: Tensor,
    dilation: int,
    plain: Tensor | None = None,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """``(sum_l a * summed, a)`` with ``a = sigmoid(logits)``, ``logits = planewise_conv([summed, maximum], bank)``:
    the spatial attention map of the full attention and its weighting of the channel sums; with ``plain``, the
    first output is ``plain - sum_l a * summed`` (the layer's one-minus-product output); either times ``scale``.
    ``maximum`` None: one statistic, ``summed`` (``bank [(l, o, j), 1, k, k]``), for layers where the two are the
    same tensor.

    ``summed, maximum [B, n_in, Co', |H|, X, Y]`` (l-major), ``bank [(l, o, j), 2, k, k]`` (odd k), ``plain [B,
    Co', |H|, X, Y]`` -> ``[B, Co', |H|, X, Y]`` and ``a`` (the shape of ``summed``; no gradient flows through it).
    :class:`NativeSpatialAttention` where :func:`native_kernels` has the fused kernels, else
    :func:`planewise_conv` and torch ops.
    """
    if native_kernels(bank) is not None:
        out, a = NativeSpatialAttention.apply(summed, maximum, bank, dilation, plain, scale)
        return out, a
    stats = [t.flatten(1, 3) for t in (summed, maximum) if t is not None]
    a = torch.sigmoid(planewise_conv(stats, bank, dilation).view_as(summed))
    out = (a * summed).sum(dim=1)
    out = out if plain is None else plain - out
    return (out * scale if scale != 1.0 else out), a.detach()


class NativeSpatialAttention(torch.autograd.Function):
    """:func:`spatial_attention_sum` as fused kernels: the planewise conv, the sigmoid and the weighting (and the
    subtraction from ``plain``) in one pass (``attention_map_forward``), and the backward in one pass
    (``attention_map_backward``) that forms the logits' gradient in its tiles and adds the weighting's gradient of
    ``summed`` to the conv's. Arguments ``(summed, maximum, bank, dilation, plain, scale)`` (``plain`` may be
    None); returns ``(out, a)``, ``a`` not differentiable."""

    @staticmethod
    @float32_forward
    def forward(ctx, summed, maximum, bank, dilation: int, plain, scale: float) -> tuple[Tensor, Tensor]:
        kernels = native_kernels(bank)
        summed, bank = summed.contiguous(), bank.contiguous()
        maximum = None if maximum is None else maximum.contiguous()
        out, a = kernels.attention_map_forward(
            summed.flatten(1, 3),
            _flat(maximum),
            bank,
            plain,
            orientations=summed.shape[1],
            dilation=dilation,
            scale=scale,
        )
        out, a = out.view(summed.shape[:1] + summed.shape[2:]), a.view_as(summed)
        ctx.save_for_backward(summed, maximum, a, bank)
        ctx.dilation, ctx.kernels, ctx.with_plain, ctx.scale = dilation, kernels, plain is not None, scale
        ctx.mark_non_differentiable(a)
        ctx.set_materialize_grads(False)  # no zero tensor for a's gradient
        return out, a

    @staticmethod
    @float32_backward
    def backward(ctx, grad: Tensor, _grad_a: Tensor | None):
        summed, maximum, a, bank = ctx.saved_tensors
        if grad is None:
            return None, None, None, None, None, None
        need_x = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_summed, grad_maximum, grad_bank = ctx.kernels.attention_map_backward(
            grad,
            summed.flatten(1, 3),
            _flat(maximum),
            a.flatten(1, 3),
            bank,
            orientations=summed.shape[1],
            dilation=ctx.dilation,
            with_plain=ctx.with_plain,
            scale=ctx.scale,
            need_x=need_x,
            need_w=ctx.needs_input_grad[2],
        )
        grad_summed = grad_summed.view_as(summed) if need_x else None
        grad_maximum = grad_maximum.view_as(maximum) if need_x and maximum is not None else None
        grad_plain = grad * ctx.scale if ctx.with_plain and ctx.needs_input_grad[4] else None
        return grad_summed, grad_maximum, grad_bank, None, grad_plain, None


def native_attend(
    xin: Tensor,
    bank: Tensor,
    a: Tensor | None,
    bank_x: Tensor,
    geo: ConvGeometry,
    dilation: int,
    with_plain: bool,
    single: bool,
    scale: float,
) -> tuple[Tensor, Tensor]:
    """A chunk of the full attention's layer at stride 1 as fused kernels (:class:`NativeAttend`): ``(out, a_x)``
    with ``out = scale (plain - sum_l a_x G_l)`` (``with_plain``) or ``scale sum_l a_x G_l``, ``G_l = sum_c a ft``,
    ``a_x`` the spatial map (l-major ``[B, n_in, Co', |H|, X', Y']``, not differentiable). ``a [B, Co', |H|, Ci,
    n_in]`` (None for 1), ``bank_x [(l, o, j), 2, k, k]`` (``[(l, o, j), 1, k, k]`` with ``single``: the layer's
    channel sum and max are the same tensor, Ci * n_in = 1). Equals :func:`native_channel_stats` followed by
    :func:`spatial_attention_sum`."""
    return NativeAttend.apply(xin, bank, a, bank_x, geo, dilation, with_plain, single, scale)


class NativeAttend(torch.autograd.Function):
    """See :func:`native_attend`. Forward: ``attend_forward``, one pass over the responses for the channel statistics,
    the channel arg-max and the plain sum, and on their tiles the spatial map and the weighting; backward:
    ``attend_backward``, one pass in which the statistics' gradients go from the spatial attention's backward to the
    responses' without leaving the kernel's tiles. Keeps the statistics, the arg-max and the map for backward (never
    ``ft``)."""

    @staticmethod
    @float32_forward
    def forward(ctx, xin, bank, a, bank_x, geo: ConvGeometry, dilation: int, with_plain: bool, single: bool, scale):
        kernels = native_kernels(xin)
        options = kernels.AttendOptions(
            padding=geo.padding, dilation=geo.dilation, map_dilation=dilation, with_plain=with_plain, single=single,
            scale=scale,
        )  # fmt: skip
        xin, bank, a, bank_x = _contiguous(xin, bank, a, bank_x)
        # single: no maximum, no channel (max_c g = sum_c g)
        channel, summed, maximum, a_x, out = kernels.attend_forward(xin, bank, a, bank_x, options=options)
        ctx.save_for_backward(xin, bank, a, bank_x, channel, summed, maximum, a_x)
        ctx.options, ctx.kernels = options, kernels
        ctx.mark_non_differentiable(a_x)
        ctx.set_materialize_grads(False)
        return out, a_x

    @staticmethod
    @float32_backward
    def backward(ctx, grad: Tensor | None, _grad_a_x: Tensor | None):
        n_args = len(ctx.needs_input_grad)
        if grad is None:
            return (None,) * n_args
        xin, bank, a, bank_x, channel, summed, maximum, a_x = ctx.saved_tensors
        need = ctx.needs_input_grad[:4]
        grads = ctx.kernels.attend_backward(
            grad, xin, bank, a, channel, summed, maximum, a_x, bank_x, options=ctx.options,
            need_x=need[0], need_w=need[1], need_a=need[2], need_w_x=need[3],
        )  # fmt: skip
        return *(g if wanted else None for g, wanted in zip(grads, need, strict=True)), *[None] * (n_args - 4)


def _flat(t: Tensor | None) -> Tensor | None:
    """``[B, n_in, Co', |H|, X, Y]`` -> ``[B, n_in * Co' * |H|, X, Y]`` (None stays None)."""
    return None if t is None else t.flatten(1, 3)


def planewise_conv(planes: list[Tensor], w: Tensor, dilation: int) -> Tensor:
    """Every plane its own filter: ``out[b, p] = sum_s w[p, s] (*) planes[s][b, p]``, stride 1, padding
    ``d * (k // 2)``, dilation d. ``planes``: S tensors ``[B, P, X, Y]``, ``w [P, S, k, k]`` -> ``[B, P, X, Y]``.

    :class:`PlanewiseConv` on the stacked statistics (the torch-op form; the fused kernels run this conv inside
    :class:`NativeSpatialAttention`).
    """
    b, p, x, y = planes[0].shape
    stats = torch.stack([t.permute(0, 2, 3, 1) for t in planes], -1).view(b, x, y, -1).permute(0, 3, 1, 2)
    return PlanewiseConv.apply(stats, w, dilation)


class PlanewiseConv(torch.autograd.Function):
    """``F.conv2d(x, w, padding=d * (k // 2), dilation=d, groups=G)`` with few input channels per group: the
    spatial attention conv, where every plane has its own filter. Same values and gradients; the forward and
    the input gradient run in channels-last layout and the weight gradient as one grouped conv whose kernels
    are the output gradients, which the CPU convolution library does several times faster than its own
    backward of this depthwise-like shape.

    ``x [B, G * n, X, Y]``, ``w [G, n, k, k]`` -> ``[B, G, X, Y]`` (channels-last strides).
    """

    @staticmethod
    @float32_forward
    def forward(ctx, x: Tensor, w: Tensor, dilation: int) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        ctx.save_for_backward(x, w)
        ctx.dilation = dilation
        return F.conv2d(x, w, padding=dilation * (w.shape[-1] // 2), dilation=dilation, groups=w.shape[0])

    @staticmethod
    @float32_backward
    def backward(ctx, grad: Tensor):
        x, w = ctx.saved_tensors
        d = ctx.dilation
        groups, pad = w.shape[0], d * (w.shape[-1] // 2)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad = grad.contiguous(memory_format=torch.channels_last)
            grad_x = F.conv_transpose2d(grad, w, padding=pad, dilation=d, groups=groups)
        if ctx.needs_input_grad[1]:
            grad_w = torch.cat(
                [_planewise_weight_grad(x, grad, w.shape, d, g) for g in _chunks(groups, GROUPS_PER_WEIGHT_GRAD)]
            )
        return grad_x, grad_w, None


GROUPS_PER_WEIGHT_GRAD = 32  # bounds the copies the weight gradient makes of the input


def _chunks(n: int, step: int) -> list[slice]:
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _planewise_weight_grad(x: Tensor, grad: Tensor, shape: torch.Size, d: int, groups: slice) -> Tensor:
    """``dL/dw[groups]`` of :class:`PlanewiseConv` as one grouped conv: batch = the n inputs of a group,
    in-channels = the samples, kernels = the output gradients. ``-> [G', n, k, k]``."""
    _, n, k, _ = shape
    b, _, h, wd = x.shape
    g = groups.stop - groups.start
    pad = d * (k // 2)
    xs = x[:, groups.start * n : groups.stop * n].reshape(b, g, n, h, wd)
    xs = xs.permute(2, 1, 0, 3, 4).reshape(n, g * b, h, wd)
    kernels = grad[:, groups].transpose(0, 1).contiguous()  # [G', B, X, Y]
    return F.conv2d(xs, kernels, padding=pad, groups=g)[..., ::d, ::d].transpose(0, 1)
