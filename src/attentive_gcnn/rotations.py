"""Rotations of normalised image batches, and rotation test-time augmentation (TTA).

Rotations act on the images as stored, before normalisation: a batch is de-normalised (``x * std + mean``),
rotated about the image centre by :func:`attentive_gcnn.data.rotate_images` (bilinear, zeros outside the image,
the background of MNIST-rot digits; black corners for CIFAR-10 and PCam) and normalised again. Multiples of
90 degrees use ``torch.rot90`` on the normalised tensor instead (exact: no interpolation, no fill).

:class:`RotationTTA` averages a model's logits over K evenly spaced rotations of its input; ``eval_tta=K`` of
``python -m attentive_gcnn.train eval_only=true ...`` evaluates a checkpoint through it, e.g.
``python -m attentive_gcnn.train eval_only=true experiment=mini/z2cnn seed=0 ckpt_path=PATH eval_tta=4``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from attentive_gcnn.data import rotate_images
from attentive_gcnn.values import is_int


def _stats(normalization: dict, x: Tensor) -> tuple[Tensor, Tensor]:
    mean = torch.as_tensor(normalization["mean"], dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    std = torch.as_tensor(normalization["std"], dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    return mean, std


def denormalize(x: Tensor, normalization: dict) -> Tensor:
    """``x * std + mean`` per channel: ``[..., C, H, W]`` normalised -> the images as stored (MNIST-rot: 0..1).

    ``normalization``: ``{"mean": [C or 1 floats], "std": [...]}``, as in ``Splits.normalization``.
    """
    mean, std = _stats(normalization, x)
    return x * std + mean


def normalize(x: Tensor, normalization: dict) -> Tensor:
    """``(x - mean) / std`` per channel, the inverse of :func:`denormalize`."""
    mean, std = _stats(normalization, x)
    return (x - mean) / std


def rotate_batch(x: Tensor, angle: float, normalization: dict) -> Tensor:
    """Rotate normalised images ``x [B, C, H, W]`` (H == W) counter-clockwise by ``angle`` degrees.

    Multiples of 90: ``torch.rot90(x, angle // 90, dims=(-2, -1))``. Other angles: de-normalise, rotate
    bilinearly with zero fill, re-normalise (in ``x``'s dtype, on the CPU; the result is on ``x``'s device).
    """
    if float(angle) % 90 == 0:
        return torch.rot90(x, int(angle // 90) % 4, dims=(-2, -1))
    raw = denormalize(x.cpu(), normalization)
    flat = raw.reshape(-1, *raw.shape[-2:]).numpy()
    rotated = rotate_images(flat, np.full(len(flat), float(angle)))
    return normalize(torch.from_numpy(rotated).view_as(raw), normalization).to(x.device)


def tta_angles(k: int) -> list[float]:
    """The ``k`` evenly spaced angles ``360 * i / k`` degrees, ``i = 0 .. k-1`` (multiples of 90 exactly)."""
    if not is_int(k) or k < 1:
        raise ValueError(f"the number of rotations must be a positive integer, got {k!r}")
    return [360 * i / k for i in range(k)]


class RotationTTA(nn.Module):
    """``model`` with its logits averaged over ``k`` rotations of the input (rotation test-time augmentation).

    ``forward(x)``: ``x [B, C, H, W]`` normalised with ``normalization`` (H == W) -> logits ``[B, classes]``,
    the mean of ``model(rotate_batch(x, a, normalization))`` over the angles ``a = 360 * i / k``, i < k. With
    ``k = 4`` (or any multiple of 4 for those angles) rotations are exact ``torch.rot90``; the others are
    bilinear (:func:`rotate_batch`). ``k = 4`` makes any model's logits invariant to ``rot90`` of the input.
    """

    def __init__(self, model: nn.Module, k: int, normalization: dict):
        super().__init__()
        self.model, self.angles, self.normalization = model, tta_angles(k), dict(normalization)
        for attr in ("input_shape", "num_classes"):  # what the project's models describe themselves by
            if hasattr(model, attr):
                setattr(self, attr, getattr(model, attr))

    @property
    def k(self) -> int:
        return len(self.angles)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"rotation TTA needs square images [B, C, H, H], got {tuple(x.shape)}")
        total = None
        for angle in self.angles:
            logits = self.model(rotate_batch(x, angle, self.normalization))
            total = logits if total is None else total + logits
        return total / self.k

    def extra_repr(self) -> str:
        return f"k={self.k}"
