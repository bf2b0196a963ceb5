"""The combined alpha-F spatial attention map of a model for an input (SPEC 4.7), and its rotation law.

Every alpha-F (or RomHog) layer keeps the spatial map it applied to its input: the first (lifting) layer a
planar ``[B, 1, X, Y]`` that rotates like an image, each group layer ``[B, 1, |H|, X', Y']`` at its own input
resolution. Upsampled to the input size (bilinear, ``align_corners=True``, per orientation plane, which commutes
with rot90 and flips of a square grid) and multiplied, they give ``m [B, 1, |H|, X, Y]``, a function on G that
transforms like a feature map: ``m(g x) = L_g m(x)`` (for p4 and a 90 degree rotation: rot90 in the plane and a
roll of the H axis by +1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attentive_gcnn.groups import Group
from attentive_gcnn.nn import FeatureSpatialAttention, FullSpatialAttention, attention_maps

FULL_ATTENTION = (
    "it has full attention (alpha-nets): each of its spatial maps alpha^X is [B, Co, |H|, 1, n_in, X', Y'], one "
    "map per output channel, output orientation and input orientation, on each conv's output grid; it weights "
    "the conv's intermediate responses, not its input, so there is no single map over the input to draw. Use an "
    "alpha-F model (fa_*) or romhog_p4cnn"
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
    raise ValueError(
        f"{type(model).__name__} has no spatial attention maps (a plain or channel-attention model); "
        "use an alpha-F model (fa_*) or romhog_p4cnn"
    )


def model_group(model: nn.Module) -> Group:
    """The group H of a model with spatial attention (that of its attention convs)."""
    return spatial_attention_modules(model)[0][1].group


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
    keep = [m.keep_map for _, m in modules]
    for _, m in modules:
        m.keep_map, m.attention_map = True, None  # only maps of this forward pass
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for (_, m), k in zip(modules, keep, strict=True):
            m.keep_map = k
    maps = attention_maps(model)
    size = tuple(x.shape[-2:])
    out = x.new_ones(x.shape[0], 1, modules[0][1].group.order, *size)
    for name, _ in modules:
        a = maps[name]
        if a.dim() == 4:  # planar [B, 1, X, Y]
            if not skip_lifting:
                out = out * _resize(a, size).unsqueeze(2)
        else:  # [B, 1, |H|, X', Y']
            out = out * _resize(a[:, 0], size).unsqueeze(1)
    return out


def rotation_errors(group: Group, m: Tensor, m_rot: Tensor) -> tuple[float, float]:
    """How well ``m_rot``, the map of the input rotated by 90 degrees, matches the transformed map ``m``.

    Returns ``(error, control)``, relative errors ``max|a - b| / max|b|``: ``error`` against ``L_r m`` (rot90 in
    the plane and the H-axis index map of the rotation r, for p4 a roll by +1), ~1e-7 in float32 for an
    equivariant model; ``control`` against the wrong shift (rot90 in the plane, H axis moved as by r^-1, for p4
    a roll by -1), O(0.1-1).
    """
    r = 1  # element 1 of p4 and p4m: rotation by 90 degrees, torch.rot90(., 1, dims=(-2, -1))
    expected = group.act(m, r, h_dims=(2,))
    wrong = group.act_on_plane(group.act(m, group.inverse(r), h_dims=(2,), planar=False), r)

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
