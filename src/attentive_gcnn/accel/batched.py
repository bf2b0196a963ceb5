"""The batched full attention: the paper's computation in few large ops, for GPUs (and the ``meta`` device).

The reference (:func:`attentive_gcnn.nn.attention.full.full_attention`) builds all intermediate responses ``ft
[B, Co, |H|, Ci, n_in, X', Y']`` at once, which for alpha-P4-All-CNN-C at batch 128 is 77 GB in one layer. The lean
CPU form (:mod:`attentive_gcnn.accel.full`) never builds them, at the cost of thousands of small ops. This form sits
between the two: the reference's ops, run over as few chunks of output channels as a memory budget allows, each
chunk a fixed sequence of about 20 ops with no Python loop inside, no host-device synchronisation and no
data-dependent shape (so it runs on the ``meta`` device and compiles to one graph). When training needs more than
the budget would keep, each chunk is recomputed in backward (``torch.utils.checkpoint``) instead of being kept.

For a chunk of output channels ``o`` (Co' of them), with ``g = a_C * ft`` and ``G = sum_c g``, the chunk's output is

    sum_{c,l} ft - sum_l a_X G        (one_minus_product)          sum_l a_X G        (product)

since ``a_X`` does not depend on c; the channel mean that feeds ``a_X`` is ``G / Ci``. Equal to the reference to
round-off (only the order of the sums differs).

Memory budget: the layer's ``memory_budget`` (bytes), else half of the free device memory on CUDA when the device
is first used (free memory plus what torch's allocator holds unused; a quarter of the total when that first use is
under ``torch.compile``), 40 GiB on ``meta`` (half of an 80 GB GPU, so that what is measured on ``meta`` is what
such a GPU runs), 4 GiB on a CPU. The chunks are planned once per layer geometry, input shape and budget.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

#: bytes a chunk may use per byte of its responses ``ft`` (ft and g in forward; their gradients and the max's
#: mask in backward)
WORKING_SET = 6
#: bytes training keeps per byte of ``ft`` when nothing is recomputed (ft, g and the max's inputs)
KEPT = 3
META_BUDGET = 40 * 2**30
CPU_BUDGET = 4 * 2**30


@dataclasses.dataclass(frozen=True)
class BatchedPlan:
    """``sizes``: output channels per chunk; ``recompute``: training recomputes each chunk in backward."""

    sizes: tuple[int, ...]
    recompute: bool


_CUDA_BUDGETS: dict[torch.device, int] = {}  # per device, measured when first used


def memory_budget(device: torch.device) -> int:
    """Bytes the batched attention of one layer may use on ``device`` (see the module)."""
    if device.type != "cuda":
        return META_BUDGET if device.type == "meta" else CPU_BUDGET
    if device not in _CUDA_BUDGETS:
        if torch.compiler.is_compiling():  # no device queries while tracing
            return torch.cuda.get_device_properties(device).total_memory // 4
        free, _ = torch.cuda.mem_get_info(device)
        unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        _CUDA_BUDGETS[device] = (free + unused) // 2
    return _CUDA_BUDGETS[device]


def plan(layer, xin: Tensor, out_hw: tuple[int, int]) -> BatchedPlan:
    """The chunks of output channels of ``layer`` for the folded input ``xin [B, Ci * n_in, X, Y]``: as few as the
    budget allows, of balanced sizes, each chunk's working set (``WORKING_SET`` times its ``ft``) within it;
    recomputation when more than one chunk is needed or keeping ``ft`` would take over a quarter of the budget."""
    per_channel = xin.shape[0] * layer.group.order * xin.shape[1] * out_hw[0] * out_hw[1] * xin.element_size()
    budget = layer.memory_budget or memory_budget(xin.device)
    planner = _plan.__wrapped__ if torch.compiler.is_compiling() else _plan  # the compiler traces it, uncached
    return planner(layer.out_channels, per_channel, budget)


@functools.lru_cache(maxsize=1024)
def _plan(out_channels: int, per_channel: int, budget: int) -> BatchedPlan:
    co = out_channels
    per_chunk = max(1, min(co, budget // (WORKING_SET * per_channel)))
    n = -(-co // per_chunk)
    sizes = tuple(co // n + (i < co % n) for i in range(n))
    return BatchedPlan(sizes, recompute=n > 1 or KEPT * per_channel * co > budget // 4)


def batched_full_attention(layer, x: Tensor) -> Tensor:
    """``full_attention(layer, x)`` of :mod:`attentive_gcnn.nn.attention.full` over chunks of output channels.

    ``x [B, Ci(, |H|), X, Y]`` -> ``[B, Co, |H|, X', Y']``. Keeps the layer's attention maps as the reference does.
    """
    xin = layer.fold_input(x)
    bank = layer.transformed_weight()  # [Co, |H|, Ci, n_in, k, k]
    k, p, s, d = layer.kernel_size, layer.padding, layer.stride, layer.dilation
    out_hw = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n in xin.shape[-2:])
    chunk_plan = plan(layer, xin, out_hw)
    recompute = chunk_plan.recompute and torch.is_grad_enabled()
    outs, maps, o0 = [], [], 0
    for size in chunk_plan.sizes:
        o = slice(o0, o0 + size)
        o0 += size
        if recompute:
            out, *chunk_maps = checkpoint(attend_chunk, layer, xin, bank[o], o, use_reentrant=False)
        else:
            out, *chunk_maps = attend_chunk(layer, xin, bank[o], o)
        outs.append(out)
        maps.append(chunk_maps)
    for i, module in enumerate((layer.channel_attention, layer.spatial_attention)):
        if module is not None and module.keep_map:
            module.keep_chunks([m[i] for m in maps], dim=1)
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    return out * layer.scale if layer.scale != 1.0 else out


def attend_chunk(layer, xin: Tensor, bank: Tensor, o: slice) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The unscaled output ``[B, Co', |H|, X', Y']`` of the output channels ``o`` (their filters ``bank [Co', |H|,
    Ci, n_in, k, k]``), and their detached channel map ``[B, Co', |H|, Ci, n_in, 1, 1]`` and spatial map ``[B, Co',
    |H|, 1, n_in, X', Y']`` (None where absent)."""
    ca, sa = layer.channel_attention, layer.spatial_attention
    ft = layer.conv_responses(xin, bank).permute(0, 3, 4, 1, 2, 5, 6)  # [B, Co', |H|, Ci, n_in, X', Y']
    plain = ft.sum(dim=(3, 4))
    if ca is None and sa is None:
        return plain, None, None
    a_c = ca.from_stats(ft.mean(dim=(-2, -1)), ft.amax(dim=(-2, -1)), o)[..., None, None] if ca is not None else None
    g = ft * a_c if a_c is not None else ft
    summed = g.sum(dim=3)  # G = sum_c g, [B, Co', |H|, n_in, X', Y']
    a_x = None
    if sa is None:
        weighted = summed.sum(dim=3)
    else:
        stats = torch.stack((summed / layer.in_channels, g.amax(dim=3)), dim=4)  # [B, Co', |H|, n_in, 2, X', Y']
        a_x = sa.from_stats(stats, o)  # [B, Co', |H|, 1, n_in, X', Y']
        weighted = (a_x.squeeze(3) * summed).sum(dim=3)
    out = plain - weighted if layer.combine == "one_minus_product" else weighted
    keep_c = a_c is not None and ca.keep_map
    keep_x = a_x is not None and sa.keep_map
    return out, (a_c.detach() if keep_c else None), (a_x.detach() if keep_x else None)
