"""Rotation of digits about the image centre: the one function behind ``rotmnist_mini`` and
``rotmnist_from_mnist``."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def rotate_images(images: np.ndarray, angles_deg: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Rotate ``images`` [N, H, W] (float32 or float64, H == W) by ``angles_deg`` [N] about the image centre.

    A positive angle turns the image counter-clockwise as displayed with row 0 at the top, so +90 equals
    ``torch.rot90(x, 1, dims=(-2, -1))`` (up to interpolation round-off). Bilinear interpolation, zeros outside
    the image (``grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)``), on the CPU in the
    input's dtype; returns [N, H, W] in that dtype.
    """
    images = np.asarray(images)
    angles = np.asarray(angles_deg, dtype=np.float64)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be [N, H, H], got {images.shape}")
    if images.dtype not in (np.float32, np.float64):
        raise ValueError(f"images must be float32 or float64, got {images.dtype}")
    if angles.shape != (len(images),):
        raise ValueError(f"angles must be [{len(images)}], got {angles.shape}")
    out = np.empty_like(images)
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(images[start : start + chunk]).unsqueeze(1)  # [n, 1, H, W]
        t = torch.from_numpy(np.deg2rad(angles[start : start + chunk]))
        cos, sin, zero = torch.cos(t), torch.sin(t), torch.zeros_like(t)
        # theta maps output (x right, y down) to the sampled input location: the inverse of the rotation.
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[start : start + chunk] = y[:, 0].numpy()
    return out
