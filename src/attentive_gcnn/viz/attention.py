"""Spatial attention maps of a model for an input, combined over layers, and their rotation law.

alpha-F (and RomHog): every layer keeps the spatial map it applied to its input: the first (lifting) layer a
planar ``[B, 1, X, Y]`` that rotates like an image, each group layer ``[B, 1, |H|, X', Y']`` at its own input
resolution. Upsampled to the input size (bilinear, ``align_corners=True``, per orientation plane, which commutes
with rot90 and flips of a square grid) and multiplied, they give ``m [B, 1, |H|, X, Y]``, a function on G that
transforms like a feature map: ``m(g x) = L_g m(x)`` (for p4 and a 90 degree rotation: rot90 in the plane and a
roll of the H axis by +1).

Full attention (alpha-nets): every conv keeps its spatial map ``alpha^X_o(x, h, h~)`` ``[B, Co, |H|, 1, n_in,
X', Y']`` on its output grid (n_in = |H| input orientations h~, 1 for the lifting conv). Averaged over the output
channels o, upsampled the same way and multiplied over layers (the lifting map broadcast over h~), they give
``M [B, |H|, |H|, X, Y]``, a function of (x, h, h~) that transforms with BOTH H axes:
``M(g x)(x, h, h~) = M(x)(g^-1 x, g^-1 h, g^-1 h~)`` (p4, 90 degrees: rot90 in the plane, both axes rolled by +1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attentive_gcnn.groups import Group
from attentive_gcnn.nn import FeatureSpatialAttention, FullChannelAttention, FullSpatialAttention

FULL_ATTENTION = (
    "it has full attention (alpha-nets): its spatial maps alpha^X [B, Co, |H|, 1, n_in, X', Y'] weight each "
    "conv's intermediate responses, not its input (see full_spatial_attention_modules)"
)
NO_SPATIAL = (
    "has no spatial attention maps (a plain or channel-attention model); use an alpha-F model (fa_*), "
    "romhog_p4cnn, or a full-attention model with spatial attention (a_*, a_sp_*)"
)
CHANNEL_ONLY_FULL = (
    "has no spatial attention maps: it has full channel attention only, whose maps alpha^C [B, Co, |H|, Ci, "
    "n_in, 1, 1] have no spatial extent; use a full-attention model with spatial attention (a_*, a_sp_*)"
)


def spatial_attention_modules(model: nn.Module) -> list[tuple[str, FeatureSpatialAttention]]:
    """The model's alpha-F / RomHog spatial attention modules, by name, in forward order.

    Raises ValueError (with an explanation) for models without such maps: plain, channel-only or full attention.
    """
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, FeatureSpatialAttention)]
    if found:
        return found
    if any(isinstance(m, FullSpatialAttention) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no input attention maps to draw: {FULL_ATTENTION}")
    raise ValueError(f"{type(model).__name__} {NO_SPATIAL}")


def full_spatial_attention_modules(model: nn.Module) -> list[tuple[str, FullSpatialAttention]]:
    """The model's full-attention spatial modules, by the name of their conv (``c3``), in forward order.

    Raises ValueError (with an explanation) for models without them: channel-only full attention, alpha-F, plain.
    """
    suffix = ".spatial_attention"
    found = [(n.removesuffix(suffix), m) for n, m in model.named_modules() if isinstance(m, FullSpatialAttention)]
    if found:
        return found
    if any(isinstance(m, FullChannelAttention) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} {CHANNEL_ONLY_FULL}")
    if any(isinstance(m, FeatureSpatialAttention) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has alpha-F maps, not full attention: see spatial_attention_modules")
    raise ValueError(f"{type(model).__name__} {NO_SPATIAL}")


def spatial_map_kind(model: nn.Module) -> str:
    """``"feature"`` (alpha-F / RomHog: maps on each layer's input) or ``"full"`` (full attention's alpha^X).

    Raises ValueError (with an explanation) for models without spatial maps: plain, channel-only (alpha-F or full).
    """
    if any(isinstance(m, FeatureSpatialAttention) for m in model.modules()):
        return "feature"
    full_spatial_attention_modules(model)  # raises for the rest
    return "full"


def model_group(model: nn.Module) -> Group:
    """The group H of a model with spatial attention (that of its attention convs)."""
    if spatial_map_kind(model) == "feature":
        return spatial_attention_modules(model)[0][1].group
    return full_spatial_attention_modules(model)[0][1].group


def _kept_maps(model: nn.Module, modules: Sequence[nn.Module], x: Tensor) -> list[Tensor]:
    """The maps that ``modules`` (attention modules of ``model``) keep in one forward pass of ``x``, in order.

    Runs the model in eval mode without gradients; the model's mode and the modules' ``keep_map`` are restored.
    """
    keep = [m.keep_map for m in modules]
    for m in modules:
        m.keep_map, m.attention_map = True, None  # only maps of this forward pass
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for m, k in zip(modules, keep, strict=True):
            m.keep_map = k
    return [m.attention_map for m in modules]


def _resize(a: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (align_corners=True) resize of ``[B, P, X', Y']`` to ``[B, P, *size]``, each plane P alone."""
    if tuple(a.shape[-2:]) == tuple(size):
        return a
    return F.interpolate(a, size=size, mode="bilinear", align_corners=True)


def combined_spatial_attention(model: nn.Module, x: Tensor, skip_lifting: bool = False) -> Tensor:
    """``m [B, 1, |H|, X, Y]``: the product of every layer's spatial attention map, for input ``x [B, C, X, Y]``.

    Runs the model once in eval mode (restoring its mode after), without gradients. Planar (lifting) maps
    ``[B, 1, X, Y]`` are broadcast over H (left out with ``skip_lifting``, as in the authors' All-CNN-C plot);
    group maps ``[B, 1, |H|, X', Y']`` are upsampled to ``X x Y``. Maps are in ``x``'s dtype.
    """
    modules = spatial_attention_modules(model)
    maps = _kept_maps(model, [m for _, m in modules], x)
    size = tuple(x.shape[-2:])
    out = x.new_ones(x.shape[0], 1, modules[0][1].group.order, *size)
    for a in maps:
        if a.dim() == 4:  # planar [B, 1, X, Y]
            if not skip_lifting:
                out = out * _resize(a, size).unsqueeze(2)
        else:  # [B, 1, |H|, X', Y']
            out = out * _resize(a[:, 0], size).unsqueeze(1)
    return out


def full_spatial_attention_maps(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Every full-attention conv's spatial map alpha^X for input ``x [B, C, X, Y]``, by conv name, in forward order.

    Each ``[B, Co, |H|, 1, n_in, X', Y']`` on that conv's output grid (n_in = 1 for the lifting conv), in
    ``x``'s dtype. Both implementations keep it (``lean`` without the intermediate responses). Runs the model
    once in eval mode without gradients (its mode is restored).
    """
    modules = full_spatial_attention_modules(model)
    return dict(zip([n for n, _ in modules], _kept_maps(model, [m for _, m in modules], x), strict=True))


def orientation_grid(a: Tensor, size: tuple[int, int]) -> Tensor:
    """alpha^X ``[B, Co, |H|, 1, n_in, X', Y']`` -> its mean over the output channels o, upsampled to ``size``
    like the alpha-F maps: ``[B, |H|, n_in, *size]``. The mean over o keeps the transformation law."""
    b, _, n_h, _, n_in, x, y = a.shape
    planes = a.mean(dim=1).reshape(b, n_h * n_in, x, y)
    return _resize(planes, size).view(b, n_h, n_in, *size)


def combined_full_attention(
    model: nn.Module, x: Tensor, layers: Sequence[str] | None = None, skip_lifting: bool = False
) -> Tensor:
    """``M [B, |H|, |H|, X, Y]``: the product over layers of :func:`orientation_grid`, for ``x [B, C, X, Y]``.

    ``M[b, h, h~]`` multiplies, over the chosen convs (``layers`` by name, default all; ``skip_lifting`` leaves
    the lifting conv out), the spatial attention that output orientation h gives to input orientation h~, averaged
    over output channels; the lifting conv's ``[B, |H|, 1, X, Y]`` is broadcast over h~. In ``x``'s dtype.
    """
    maps = full_spatial_attention_maps(model, x)
    chosen = list(maps) if layers is None else list(layers)
    unknown = [n for n in chosen if n not in maps]
    if unknown:
        raise ValueError(f"no full spatial attention in layer(s) {unknown}; choose from: {', '.join(maps)}")
    if skip_lifting:
        chosen = [n for n in chosen if maps[n].shape[4] > 1]
    if not chosen:
        raise ValueError("no layer left to combine (only the lifting conv was chosen, and it is skipped)")
    size = tuple(x.shape[-2:])
    n_h = maps[chosen[0]].shape[2]
    out = x.new_ones(x.shape[0], n_h, n_h, *size)
    for name in chosen:
        out = out * orientation_grid(maps[name], size)  # n_in = 1 broadcasts over h~
    return out


def rotation_errors(group: Group, m: Tensor, m_rot: Tensor, h_dims: Sequence[int] = (2,)) -> tuple[float, float]:
    """How well ``m_rot``, the map of the input rotated by 90 degrees, matches the transformed map ``m``.

    ``h_dims``: the H axes, ``(2,)`` for alpha-F maps ``[B, 1, |H|, X, Y]``, ``(1, 2)`` for full-attention maps
    ``[B, |H|, |H|, X, Y]`` (:func:`combined_full_attention`). Returns ``(error, control)``, relative errors
    ``max|a - b| / max|b|``: ``error`` against ``L_r m`` (rot90 in the plane and the index map of the rotation r
    on every H axis, for p4 a roll by +1), ~1e-7 in float32 for an equivariant model; ``control`` against the
    wrong shift (rot90 in the plane, H axes moved as by r^-1, for p4 a roll by -1), O(0.1-1).
    """
    r = 1  # element 1 of p4 and p4m: rotation by 90 degrees, torch.rot90(., 1, dims=(-2, -1))
    expected = group.act(m, r, h_dims=h_dims)
    wrong = group.act_on_plane(group.act(m, group.inverse(r), h_dims=h_dims, planar=False), r)

    def rel(a: Tensor, b: Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max())

    return rel(m_rot, expected), rel(m_rot, wrong)


def orientation_vectors(group: Group) -> Tensor:
    """Unit arrow ``(d_row, d_col)`` per element of H: element h moves the "up" arrow ``(-1, 0)`` to ``h . up``.

    p4: 0, 1, 2, 3 -> up, left, down, right. p4m mirror half (rotate, then reverse rows): 4..7 -> down, left,
    up, right, so that arrow fields rotate with the image in both halves. Long ``[|H|, 2]``.
    """
    marker = torch.zeros(3, 3, dtype=torch.long)
    marker[0, 1] = 1  # one step up from the centre (row 0 is the top)
    vectors = []
    for h in range(group.order):
        row, col = (group.act_on_plane(marker, h) == 1).nonzero()[0].tolist()
        vectors.append((row - 1, col - 1))
    return torch.tensor(vectors)
