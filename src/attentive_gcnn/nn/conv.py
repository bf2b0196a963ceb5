"""Lifting (Z^2 -> G) and group (G -> G) convolutions: transform the filter bank once, then one conv2d.

Layouts: planar maps ``[B, C, X, Y]``; maps on G ``[B, C, |H|, X, Y]``; lifting weights ``[Co, Ci, k, k]``;
group weights ``[Co, Ci, |H|, k, k]``. No biases. The output channel axis of the expanded conv2d is
o-major (``o * |H| + j``), so its output is a free view ``[B, Co, |H|, X', Y']``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attentive_gcnn.groups import Group, get_group

INITS = {
    "uniform_fan_in": lambda w, s, fan_in: nn.init.uniform_(w, -s / math.sqrt(fan_in), s / math.sqrt(fan_in)),
    "normal_fan_in": lambda w, s, fan_in: nn.init.normal_(w, 0.0, s / math.sqrt(fan_in)),
    "normal": lambda w, s, fan_in: nn.init.normal_(w, 0.0, s),
}


def transformed_filters(weight: Tensor, group: Group, index: Tensor) -> Tensor:
    """All transformed copies ``L_{h_j} W`` of a filter bank, gathered in one go.

    Args:
        weight: ``[Co, Ci, in_order, k, k]`` (``in_order`` = 1 for lifting kernels, |H| for group kernels).
        group: the group H.
        index: ``group.filter_index(in_order, k)``, ``[|H|, in_order * k * k]``.

    Returns:
        ``[Co, |H|, Ci, in_order, k, k]`` with ``out[:, j] = L_{h_j} W``.
    """
    co, ci, n_in, k, _ = weight.shape
    flat = weight.reshape(co, ci, n_in * k * k)
    bank = flat[:, :, index]  # [Co, Ci, |H|, n_in*k*k]
    return bank.view(co, ci, group.order, n_in, k, k).transpose(1, 2)


class GConv(nn.Module):
    """Shared machinery of :class:`LiftingConv` and :class:`GroupConv` (``lifting`` selects the input).

    Args:
        group: ``"z2"``, ``"p4"``, ``"p4m"`` or a :class:`Group`.
        in_channels, out_channels: channel counts (not multiplied by |H|).
        kernel_size: spatial size k of the square kernel.
        lifting: input is a planar map (lifting conv) instead of a map on G.
        stride, padding, dilation: as in ``F.conv2d`` (int).
        wscale, init: the initialisation, with fan_in = in_channels * k^2 (|H| is not in the fan-in):
            ``uniform_fan_in`` U(-b, b), b = wscale / sqrt(fan_in) (group models); ``normal_fan_in``
            N(0, std = wscale / sqrt(fan_in)) (Z2CNN, He init with wscale sqrt 2); ``normal`` N(0, std = wscale).
        haar: multiply the output of a group conv by the Haar constant mu (lifting convs: always 1).
    """

    conv2d = staticmethod(F.conv2d)  #: the planar conv the expanded filter bank runs through

    def __init__(
        self,
        group: str | Group,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        lifting: bool,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        wscale: float = 1.0,
        init: str = "uniform_fan_in",
        haar: bool = True,
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {sorted(INITS)}, got {init!r}")
        self.group = get_group(group)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.lifting = lifting
        self.in_order = 1 if lifting else self.group.order
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.wscale, self.init = wscale, init
        self.scale = 1.0 if (lifting or not haar) else self.group.haar
        shape = (out_channels, in_channels) + (() if lifting else (self.in_order,)) + (kernel_size,) * 2
        self.weight = nn.Parameter(torch.empty(shape))
        self.register_buffer("index", self.group.filter_index(self.in_order, kernel_size), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        INITS[self.init](self.weight, self.wscale, self.in_channels * self.kernel_size**2)

    @property
    def weight5d(self) -> Tensor:
        """The weight as ``[Co, Ci, in_order, k, k]``."""
        return self.weight.view(self.out_channels, self.in_channels, self.in_order, *self.weight.shape[-2:])

    def transformed_weight(self) -> Tensor:
        """All transformed filters ``L_{h_j} W``: ``[Co, |H|, Ci, in_order, k, k]``, ``out[:, j] = L_{h_j} W``."""
        return transformed_filters(self.weight5d, self.group, self.index)

    def filter_bank(self) -> Tensor:
        """The expanded conv2d weight ``[Co*|H|, Ci*in_order, k, k]`` (o-major), scale not included."""
        k = self.kernel_size
        return self.transformed_weight().reshape(
            self.out_channels * self.group.order, self.in_channels * self.in_order, k, k
        )

    def fold_input(self, x: Tensor) -> Tensor:
        """``[B, Ci, X, Y]`` (lifting) or ``[B, Ci, |H|, X, Y]`` -> ``[B, Ci*in_order, X, Y]``, checking shapes."""
        expected = 4 if self.lifting else 5
        if x.dim() != expected or x.shape[1] != self.in_channels or (not self.lifting and x.shape[2] != self.in_order):
            want = "[B, Ci, X, Y]" if self.lifting else f"[B, Ci, {self.in_order}, X, Y]"
            raise ValueError(f"{type(self).__name__} expects {want} with Ci={self.in_channels}, got {tuple(x.shape)}")
        return x if self.lifting else x.flatten(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, Ci, X, Y]`` or ``[B, Ci, |H|, X, Y]`` -> ``[B, Co, |H|, X', Y']``."""
        y = self.conv2d(self.fold_input(x), self.filter_bank(), None, self.stride, self.padding, self.dilation)
        y = y.view(y.shape[0], self.out_channels, self.group.order, *y.shape[-2:])
        return y * self.scale if self.scale != 1.0 else y

    def extra_repr(self) -> str:
        return (
            f"{self.group.name}, {self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, scale={self.scale:.4g}"
        )


class LiftingConv(GConv):
    """Lifting convolution Z^2 -> G: ``[B, Ci, X, Y]`` -> ``[B, Co, |H|, X', Y']``.

        y[b, o, j](x) = sum_c sum_x~ f[b, c](x~) W[o, c](h_j^-1 (x~ - x))

    Weight ``[Co, Ci, k, k]``; no Haar factor.
    """

    def __init__(self, group: str | Group, in_channels: int, out_channels: int, kernel_size: int, **kw) -> None:
        super().__init__(group, in_channels, out_channels, kernel_size, lifting=True, **kw)


class GroupConv(GConv):
    """Group convolution G -> G, times mu: ``[B, Ci, |H|, X, Y]`` -> ``[B, Co, |H|, X', Y']``.

        y[b, o, j](x) = mu * sum_c sum_l sum_x~ f[b, c, l](x~) W[o, c, index(h_j^-1 h_l)](h_j^-1 (x~ - x))

    Weight ``[Co, Ci, |H|, k, k]``; mu the Haar constant (pi/2 for p4, pi for p4m; 1 with ``haar=False``).
    """

    def __init__(self, group: str | Group, in_channels: int, out_channels: int, kernel_size: int, **kw) -> None:
        super().__init__(group, in_channels, out_channels, kernel_size, lifting=False, **kw)


def export_conv2d(conv: GConv) -> nn.Sequential:
    """Fold a lifting or group convolution into a plain ``nn.Conv2d`` plus reshapes.

    The result needs nothing from this library: ``Flatten(1, 2)`` (group convs only) -> ``Conv2d`` with the
    transformed, scaled filter bank -> ``Unflatten(1, (Co, |H|))``. Same input and output layouts as ``conv``.
    """
    bank = conv.filter_bank().detach() * conv.scale
    plain = nn.Conv2d(
        bank.shape[1],
        bank.shape[0],
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=False,
    ).to(device=bank.device, dtype=bank.dtype)
    with torch.no_grad():
        plain.weight.copy_(bank)
    layers = ([] if conv.lifting else [nn.Flatten(1, 2)]) + [
        plain,
        nn.Unflatten(1, (conv.out_channels, conv.group.order)),
    ]
    return nn.Sequential(*layers)
