"""How attention weights a tensor, and how attention maps are kept for inspection."""

from __future__ import annotations

from collections.abc import Callable

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


class KeepsMap:
    """Mixin for attention modules: the last attention map is kept (detached) as ``attention_map``."""

    keep_map: bool = True
    attention_map: Tensor | None = None

    def keep(self, a: Tensor) -> Tensor:
        if self.keep_map:
            self.attention_map = a.detach()
        return a


def attention_maps(model: nn.Module) -> dict[str, Tensor]:
    """Every attention map kept by the last forward pass, by module name."""
    return {
        name: m.attention_map
        for name, m in model.named_modules()
        if isinstance(m, KeepsMap) and m.attention_map is not None
    }
