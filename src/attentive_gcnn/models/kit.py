"""The layer kit shared by every architecture family: group and attention kind are its parameters.

Every model is written once against a :class:`LayerKit`; ``kit.conv(...)`` returns the plain, full-attention
or alpha-F convolution that the kit's attention kind asks for, on the kit's group. Z2 models use the trivial
group, whose maps are ``[B, C, 1, X, Y]``: the same code, and the same parameter counts as plain CNNs.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from attentive_gcnn.groups import Group, get_group
from attentive_gcnn.nn import AttGConv, FAttGConv, GConv, GroupBatchNorm

# attention kind -> (conv class, fixed attention arguments)
ATTENTION_KINDS: dict[str, tuple[type[GConv], dict]] = {
    "none": (GConv, {}),
    "full": (AttGConv, {"channel": True, "spatial": True}),
    "full_channel": (AttGConv, {"channel": True, "spatial": False}),
    "full_spatial": (AttGConv, {"channel": False, "spatial": True}),
    "f": (FAttGConv, {"channel": True, "spatial": True}),
    "romhog": (FAttGConv, {"channel": False, "spatial": True, "spatial_kernel": 1, "pool_channels": False}),
}


@dataclass
class LayerKit:
    """Builds the layers of one model.

    Args:
        group: ``z2``, ``p4`` or ``p4m``.
        attention: a key of :data:`ATTENTION_KINDS`.
        wscale, init: weight initialisation of every conv (see :class:`attentive_gcnn.nn.GConv`); attention
            kernels use ``wscale`` with the uniform fan-in rule.
        haar: apply the Haar factors of the authors' code (``haar=code_exact``); False drops them.
        combine: how attention weights its input (see :func:`attentive_gcnn.nn.attend`).
        attention_impl: how attention is computed, always the same function (:data:`attentive_gcnn.accel.IMPLS`):
            ``auto`` (default: ``lean`` on a CPU, ``batched`` on a GPU), ``lean`` (the CPU form: full attention
            without all intermediate responses at once, :mod:`attentive_gcnn.accel.full`; alpha-F as one autograd
            node, :mod:`attentive_gcnn.accel.feature`), ``batched`` (the GPU form, :mod:`attentive_gcnn.accel.batched`)
            or ``reference`` (op by op).
        attention_memory_gib: GiB of device memory the batched full attention may use per layer (None: half of
            the free device memory; see :mod:`attentive_gcnn.accel.batched`).
    """

    group: str | Group = "p4"
    attention: str = "none"
    wscale: float = 1.0
    init: str = "uniform_fan_in"
    haar: bool = True
    combine: str = "one_minus_product"
    attention_impl: str = "auto"
    attention_memory_gib: float | None = None

    def __post_init__(self) -> None:
        self.group = get_group(self.group)
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention {self.attention!r}; choose one of {sorted(ATTENTION_KINDS)}")
        if self.attention_memory_gib is not None and not self.attention_memory_gib > 0:
            raise ValueError(f"attention_memory_gib must be positive, got {self.attention_memory_gib!r}")

    def conv(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        lifting: bool = False,
        stride: int = 1,
        padding: int = 0,
        ratio: int | str = 2,
        spatial_kernel: int = 7,
        spatial_dilation: int = 1,
    ) -> GConv:
        """A (lifting) conv with the kit's attention. ``ratio="half"`` means ``in_channels // 2`` (2 hidden units)."""
        cls, fixed = ATTENTION_KINDS[self.attention]
        kw = dict(stride=stride, padding=padding, wscale=self.wscale, init=self.init, haar=self.haar)
        if cls is not GConv:
            ratio = max(in_channels // 2, 1) if ratio == "half" else ratio
            kw |= dict(ratio=ratio, spatial_kernel=spatial_kernel, spatial_dilation=spatial_dilation)
            kw |= dict(combine=self.combine) | fixed
        if cls in (AttGConv, FAttGConv):
            kw["impl"] = self.attention_impl
        if cls is AttGConv and self.attention_memory_gib is not None:
            kw["memory_budget"] = int(self.attention_memory_gib * 2**30)
        return cls(self.group, in_channels, out_channels, kernel_size, lifting=lifting, **kw)

    def bn(self, channels: int) -> GroupBatchNorm:
        """Batch norm with statistics shared over (|H|, X, Y), eps 2e-5."""
        return GroupBatchNorm(channels)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, BN affine parameters included."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
