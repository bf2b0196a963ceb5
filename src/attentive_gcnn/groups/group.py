"""Finite point groups H acting on the plane, and their action on filters and feature maps.

A roto-translation group G = Z^2 x| H is described here by H alone: the translations are handled by the
convolutions. Elements are integer indices ``0 .. order-1``; element ``i`` is ``(k, m)`` = rotate by
``k * 90`` degrees, then, if ``m`` is a mirror, reverse the row axis (dim -2). For p4m the indices are
``0..3`` = rotations 0, 90, 180, 270 degrees and ``4..7`` = the same rotations followed by the mirror.

The composition table is not written down by hand: it is read off the planar action itself (applying two
actions to a generic pattern and finding the element that does both at once), so composition agrees with
``torch.rot90``/``torch.flip`` by construction. Tests check the group axioms and that every action below is
a homomorphism.

Actions of ``g`` (all left actions, ``act(compose(a, b)) == act(a) o act(b)``):

- on a planar image or kernel ``[..., X, Y]``: ``rot90(x, k, dims=(-2, -1))``, then the mirror;
- on a function on G, e.g. a feature map ``[B, C, |H|, X, Y]`` or a group filter ``[Co, Ci, |H|, k, k]``:
  ``(L_g f)(x, h) = f(g^-1 x, g^-1 h)``, i.e. the planar action plus the index map
  ``out[..., i, :, :] = planar_g(f[..., src_g[i], :, :])`` with ``src_g[i] = index(g^-1 h_i)``;
- on a vector indexed by H only (no planar part): the index map alone (``planar=False``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor


@dataclass(frozen=True)
class Group:
    """A finite group H of planar rotations by multiples of 90 degrees and mirrors.

    Args:
        name: short name (``z2``, ``p4``, ``p4m``).
        elements: ``(k, mirror)`` per element, in index order; element 0 must be the identity.
        haar: the Haar constant mu that multiplies a group convolution (pi/2 for p4, pi for p4m).
    """

    name: str
    elements: tuple[tuple[int, bool], ...]
    haar: float
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.elements[0] != (0, False):
            raise ValueError(f"{self.name}: element 0 must be the identity, got {self.elements[0]}")

    @property
    def order(self) -> int:
        """|H|, the number of elements."""
        return len(self.elements)

    # --- planar action -------------------------------------------------------------------------------
    def act_on_plane(self, x: Tensor, g: int) -> Tensor:
        """Act with element ``g`` on the last two (spatial) axes of ``x``: rotate, then mirror rows."""
        k, mirror = self.elements[g]
        y = torch.rot90(x, k, dims=(-2, -1)) if k % 4 else x
        return torch.flip(y, dims=(-2,)) if mirror else y

    # --- group structure, derived from the planar action ---------------------------------------------
    @cached_property
    def cayley(self) -> Tensor:
        """``cayley[a, b]`` = index of ``a * b``, where ``act(a * b) = act(a) o act(b)``. Long ``[|H|, |H|]``."""
        # 3x3 pattern with 9 distinct values: its 8 images under D4 are distinct, so an image names its element.
        pattern = torch.arange(9).view(3, 3)
        images = [self.act_on_plane(pattern, g) for g in range(self.order)]
        table = torch.empty(self.order, self.order, dtype=torch.long)
        for a in range(self.order):
            for b in range(self.order):
                ab = self.act_on_plane(self.act_on_plane(pattern, b), a)
                matches = [c for c, img in enumerate(images) if torch.equal(img, ab)]
                if len(matches) != 1:
                    raise ValueError(f"{self.name} is not closed under composition ({a} * {b})")
                table[a, b] = matches[0]
        return table

    def compose(self, a: int, b: int) -> int:
        """Index of the product ``a * b`` (first ``b``, then ``a``)."""
        return int(self.cayley[a, b])

    @cached_property
    def inverses(self) -> Tensor:
        """``inverses[g]`` = index of ``g^-1``. Long ``[|H|]``."""
        return torch.tensor([int((self.cayley[g] == 0).nonzero()) for g in range(self.order)])

    def inverse(self, g: int) -> int:
        return int(self.inverses[g])

    def src(self, g: int) -> Tensor:
        """Index map of the regular action on H: ``src_g[i] = index(g^-1 h_i)``. Long ``[|H|]``."""
        return self.cayley[self.inverse(g)]

    @cached_property
    def relative(self) -> Tensor:
        """``relative[j, l] = index(h_j^-1 h_l)``; invariant under ``(j, l) -> (g h_j, g h_l)``. ``[|H|, |H|]``."""
        return self.cayley[self.inverses]

    # --- action on functions on G --------------------------------------------------------------------
    def act(self, x: Tensor, g: int, h_dims: Sequence[int] = (), planar: bool = True) -> Tensor:
        """Left action of ``g`` on a tensor with H axes at ``h_dims`` and space on the last two axes.

        ``out[..., i, ...] = planar_g(x[..., src_g[i], ...])`` on each H axis in ``h_dims``, then the planar
        action on dims (-2, -1) when ``planar``.
        """
        src = self.src(g).to(x.device)
        for d in h_dims:
            if x.shape[d] != self.order:
                raise ValueError(f"axis {d} of shape {tuple(x.shape)} is not an H axis of {self.name}")
            x = x.index_select(d, src)
        return self.act_on_plane(x, g) if planar else x

    def act_on_features(self, f: Tensor, g: int) -> Tensor:
        """Act on a feature map on G, ``[B, C, |H|, X, Y]``."""
        return self.act(f, g, h_dims=(2,))

    def act_on_group_filters(self, w: Tensor, g: int) -> Tensor:
        """Act on a group-convolution filter ``[Co, Ci, |H|, k, k]``."""
        return self.act(w, g, h_dims=(2,))

    # --- filter-bank index tables --------------------------------------------------------------------
    def filter_index(self, in_order: int, kernel_size: int) -> Tensor:
        """Gather index that builds the transformed filter bank in one ``index_select``.

        A filter with ``in_order`` (1 for lifting, |H| for group convs) input slices of ``k x k`` is flattened
        to ``in_order * k * k`` entries; row ``j`` of the result lists, for output element ``h_j``, which entry
        lands at each position of ``L_{h_j} W``. Long ``[|H|, in_order * k * k]``, cached.
        """
        key = (in_order, kernel_size)
        if key not in self._cache:
            if in_order not in (1, self.order):
                raise ValueError(f"in_order must be 1 or {self.order}, got {in_order}")
            ids = torch.arange(in_order * kernel_size**2).view(1, 1, in_order, kernel_size, kernel_size)
            h_dims = (2,) if in_order > 1 else ()
            rows = [self.act(ids, j, h_dims=h_dims).reshape(-1) for j in range(self.order)]
            self._cache[key] = torch.stack(rows)
        return self._cache[key]


Z2 = Group("z2", ((0, False),), haar=1.0)
P4 = Group("p4", tuple((k, False) for k in range(4)), haar=2 * math.pi / 4)
P4M = Group("p4m", tuple((k, m) for m in (False, True) for k in range(4)), haar=2 * (2 * math.pi / 4))

GROUPS: dict[str, Group] = {g.name: g for g in (Z2, P4, P4M)}


def get_group(group: str | Group) -> Group:
    """Look a group up by name (``z2``, ``p4``, ``p4m``); a ``Group`` is returned as is."""
    if isinstance(group, Group):
        return group
    try:
        return GROUPS[group]
    except KeyError:
        raise ValueError(f"unknown group {group!r}; choose one of {sorted(GROUPS)}") from None
