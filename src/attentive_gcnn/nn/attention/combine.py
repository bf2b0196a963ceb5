"""How attention weights a tensor, and how attention maps are kept for inspection."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

COMBINES = ("one_minus_product", "product")


def attend(
    f: Tensor,
    channel: Callable[[Tensor], Tensor] | None,
    spatial: Callable[[Tensor], Tensor] | None,
    combine: str = "one_minus_product",
) -> Tensor:
    """Weight ``f`` by channel attention, then spatial attention (CBAM order).

    ``g = a_C * f`` (``g = f`` without channel attention); the spatial statistics are taken from ``g``.

    - ``one_minus_product`` (the paper's): ``f - a_X * g = f * (1 - a_C * a_X)``, computed literally as the
      subtraction (channel-only: ``f - g``, spatial-only: ``f - a_X * f``);
    - ``product``: ``a_X * g``.

    With neither module the input is returned unchanged (the plain, unattended sum follows).
    """
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    if channel is None and spatial is None:
        return f
    g = channel(f) * f if channel is not None else f
    weighted = spatial(g) * g if spatial is not None else g
    return f - weighted if combine == "one_minus_product" else weighted


class ChoosesImpl:
    """Mixin for layers computed in one of two ways, ``impl`` = ``lean`` or ``reference``: setting ``impl`` calls the
    layer's :meth:`choose_impl`, which picks (through :func:`attentive_gcnn.accel.implementation`) the functions its
    forward runs. The choice is made when the layer is built, or its ``impl`` set, never in forward."""

    @property
    def impl(self) -> str:
        """``lean`` or ``reference``: how the forward computes the layer (setting it chooses anew)."""
        return self._impl

    @impl.setter
    def impl(self, impl: str) -> None:
        self.choose_impl(impl)
        self._impl = impl

    def choose_impl(self, impl: str) -> None:
        raise NotImplementedError


class KeepsMap:
    """Mixin for attention modules: the last attention map is kept (detached) as ``attention_map``.

    A map computed in chunks can be kept as its chunks (:meth:`keep_chunks`): they are concatenated when
    ``attention_map`` is first read, so that training, which never reads it, does not pay for the copy."""

    keep_map: bool = True
    _map: Tensor | None = None
    _map_chunks: tuple[list[Tensor], int] | None = None

    @property
    def attention_map(self) -> Tensor | None:
        if self._map_chunks is not None:
            chunks, dim = self._map_chunks
            self._map, self._map_chunks = torch.cat(chunks, dim=dim), None
        return self._map

    @attention_map.setter
    def attention_map(self, value: Tensor | None) -> None:
        self._map, self._map_chunks = value, None

    def keep(self, a: Tensor) -> Tensor:
        if self.keep_map:
            self.attention_map = a.detach()
        return a

    def keep_chunks(self, chunks: list[Tensor], dim: int) -> None:
        """Keep the map ``torch.cat(chunks, dim)`` (detached), concatenated when first read."""
        if self.keep_map:
            self._map, self._map_chunks = None, ([c.detach() for c in chunks], dim)


def attention_maps(model: nn.Module) -> dict[str, Tensor]:
    """Every attention map kept by the last forward pass, by module name."""
    return {
        name: m.attention_map
        for name, m in model.named_modules()
        if isinstance(m, KeepsMap) and m.attention_map is not None
    }
