"""In-memory image datasets normalised per batch, the train/select/test bundle and the protocols.

Every dataset here returns ``(x, y)`` with ``x`` float32 ``[C, H, W]`` (normalised) and ``y`` an int from
``__getitem__``, and ``(x [B, C, H, W] float32, y [B] int64)`` from the vectorised ``__getitems__``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

PROTOCOLS = ("clean", "original")

# augment(x [B, C, H, W] (dtype as stored: uint8 or float32), generator or None, offset, total) -> x, same shape and
# dtype; x holds rows offset .. offset + B of a batch of total rows, whose randomness the generator draws for all of
# them (so a data-parallel rank's slice is augmented as those rows of the whole batch)
Augment = Callable[[torch.Tensor, "torch.Generator | None", int, "int | None"], torch.Tensor]


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of PROTOCOLS, else ValueError."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    return protocol


@dataclass
class Splits:
    """What a protocol fits on (``train``), selects the best epoch on (``select``, named ``select_name``:
    "valid" or "test") and reports (``test``), with the normalisation actually used."""

    train: Dataset
    select: Dataset
    select_name: str
    test: Dataset
    normalization: dict = field(default_factory=dict)


def batch_seed(indices) -> int | None:
    """The augmentation seed a seeded batch carries (see ``loader.SeededBatch``), or None."""
    return getattr(indices, "seed", None)


def batch_place(indices) -> tuple[int, int]:
    """(offset, total): the rows ``indices`` are of their whole batch (``loader.SeededBatch``), else all of it."""
    return getattr(indices, "offset", 0), getattr(indices, "total", len(indices))


def normalize_(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """In place ``(x - mean) / std`` for x float32 [B, C, H, W] and mean/std [C, 1, 1]."""
    return x.sub_(mean).div_(std)


class ArrayDataset(Dataset):
    """Images ``[N, C, H, W]`` (uint8, scaled by 1/255 per batch, or float32 used as is) and labels ``[N]``.

    Each batch is converted to float32, optionally augmented first (on the stored dtype, so uint8 crops pad
    with the value 0 exactly as torchvision's RandomCrop before ToTensor), then normalised with ``mean``/``std``
    (one value per channel, or one for all). Augmentation draws from ``torch.Generator().manual_seed(s)`` where
    ``s`` is the seed carried by the index list (``make_loader`` attaches one per batch); without one (a direct
    call) it draws from the global torch RNG.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Augment | None = None,
    ):
        if images.ndim != 4 or images.dtype not in (np.uint8, np.float32):
            raise ValueError(f"images must be uint8 or float32 [N, C, H, W], got {images.dtype} {images.shape}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        channels = images.shape[1]
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1).expand(channels, 1, 1).clone()
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1).expand(channels, 1, 1).clone()
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        x = self.images[idx]
        if self.augment is not None:
            seed = batch_seed(indices)
            x = self.augment(x, None if seed is None else torch.Generator().manual_seed(seed), *batch_place(indices))
        x = x.to(torch.float32)
        if self.images.dtype == torch.uint8:
            x = x.div_(255)
        return normalize_(x, self.mean, self.std), self.labels[idx]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.__getitems__([i])
        return x[0], int(y[0])


def scalar_stats(images: np.ndarray) -> tuple[float, float]:
    """Global mean and std (ddof 0) of all pixels, in float64 then rounded to float32; uint8 is read as /255."""
    mean = float(np.mean(images, dtype=np.float64))
    std = float(np.std(images, dtype=np.float64))
    if images.dtype == np.uint8:
        mean, std = mean / 255, std / 255
    return float(np.float32(mean)), float(np.float32(std))
