"""Measure how far a function is from equivariant under a group: per-element relative errors."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from attentive_gcnn.groups import Group, get_group


@torch.no_grad()
def equivariance_errors(
    fn: Callable[[Tensor], Tensor],
    group: str | Group,
    x: Tensor,
    *,
    in_h_dims: Sequence[int] = (),
    out_h_dims: Sequence[int] = (2,),
    out_planar: bool = True,
    elements: Iterable[int] | None = None,
) -> dict[int, float]:
    """``max|fn(g x) - g fn(x)| / max|g fn(x)|`` for every non-identity element g (or ``elements``).

    ``in_h_dims``/``out_h_dims`` name the H axes of input and output (``()`` for planar maps); the last two
    axes are space. ``out_planar=False`` makes the output act without its planar part (``out_h_dims=()`` then
    tests invariance, e.g. of logits ``[B, classes]``).
    """
    group = get_group(group)
    y = fn(x)
    errors = {}
    for g in range(1, group.order) if elements is None else elements:
        y_g = fn(group.act(x, g, in_h_dims))
        expected = group.act(y, g, out_h_dims, planar=out_planar)
        scale = expected.abs().max().clamp_min(1e-300)
        errors[g] = float((y_g - expected).abs().max() / scale)
    return errors


def check_equivariance(fn: Callable[[Tensor], Tensor], group: str | Group, x: Tensor, rtol: float, **kw) -> dict:
    """Like :func:`equivariance_errors`, raising ``AssertionError`` naming every element above ``rtol``."""
    errors = equivariance_errors(fn, group, x, **kw)
    bad = {g: f"{e:.2e}" for g, e in errors.items() if not e <= rtol}
    if bad:
        name = get_group(group).name
        raise AssertionError(f"not equivariant under {name} elements {bad} (rtol {rtol:.0e}, dtype {x.dtype})")
    return errors
