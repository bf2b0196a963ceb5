"""Test accuracy as a function of a continuous rotation of the input.

The rotations are :func:`attentive_gcnn.rotations.rotate_batch`: the images as stored (before normalisation)
rotated bilinearly with zero fill, except multiples of 90 degrees, which are exact ``torch.rot90``, so a p4 model
scores identically at 0, 90, 180 and 270 degrees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from attentive_gcnn.rotations import rotate_batch


def parse_angles(spec: str) -> list[float]:
    """Angles in degrees from ``start:stop:step`` (stop excluded, like ``range``) or a list ``a,b,c``."""
    try:
        if ":" in spec:
            start, stop, step = (float(v) for v in spec.split(":"))
            if step <= 0 or stop <= start:
                raise ValueError
            n = math.ceil((stop - start) / step - 1e-9)
            return [start + i * step for i in range(n)]
        angles = [float(v) for v in spec.split(",")]
    except ValueError:
        raise ValueError(f"angles {spec!r}: expected START:STOP:STEP (STOP > START, STEP > 0) or A,B,C") from None
    if not angles:
        raise ValueError(f"angles {spec!r}: no angle")
    return angles


def accuracy_vs_angle(
    model: nn.Module,
    dataset: Dataset,
    normalization: dict,
    angles: Sequence[float],
    batch_size: int = 500,
    limit: int | None = None,
    device: str | torch.device = "cpu",
) -> list[tuple[float, float, int]]:
    """``[(angle, accuracy, n)]``: accuracy of ``model`` (eval mode) on the first ``limit`` items of ``dataset``
    (all without a limit), every image rotated by each angle. ``dataset.__getitems__(indices)`` must return
    ``(x [B, C, H, W] normalised with ``normalization``, y [B])``.
    """
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    if n < 1:
        raise ValueError("no images to evaluate (empty split or limit < 1)")
    model = model.eval().to(device)
    correct = [0] * len(angles)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            x, y = dataset.__getitems__(list(range(start, min(start + batch_size, n))))
            y = y.to(device)
            for i, angle in enumerate(angles):
                logits = model(rotate_batch(x, angle, normalization).to(device))
                correct[i] += int((logits.argmax(dim=1) == y).sum())
    return [(float(a), c / n, n) for a, c in zip(angles, correct, strict=True)]
