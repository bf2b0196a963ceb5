"""Test accuracy as a function of a continuous rotation of the input.

Rotations act on the images as stored, before normalisation: a batch is de-normalised (``x * std + mean``),
rotated about the image centre by :func:`attentive_gcnn.data.rotate_images` (bilinear, zeros outside the image,
the background of MNIST-rot digits; black corners for CIFAR-10 and PCam) and normalised again. Multiples of
90 degrees use ``torch.rot90`` on the normalised tensor instead (exact: no interpolation, no fill), so a p4
model scores identically at 0, 90, 180 and 270 degrees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from attentive_gcnn.data import rotate_images
from attentive_gcnn.viz.common import denormalize, normalize


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


def rotate_batch(x: Tensor, angle: float, normalization: dict) -> Tensor:
    """Rotate normalised images ``x [B, C, H, W]`` (H == W) counter-clockwise by ``angle`` degrees.

    Multiples of 90: ``torch.rot90(x, angle // 90, dims=(-2, -1))``. Other angles: de-normalise, rotate
    bilinearly with zero fill, re-normalise (in ``x``'s dtype, on the CPU).
    """
    if float(angle) % 90 == 0:
        return torch.rot90(x, int(angle // 90) % 4, dims=(-2, -1))
    raw = denormalize(x.cpu(), normalization)
    flat = raw.reshape(-1, *raw.shape[-2:]).numpy()
    rotated = rotate_images(flat, np.full(len(flat), float(angle)))
    return normalize(torch.from_numpy(rotated).view_as(raw), normalization).to(x.device)


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
