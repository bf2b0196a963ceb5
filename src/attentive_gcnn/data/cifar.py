"""CIFAR-10 and CIFAR-10+ from torchvision's on-disk format ``root/cifar-10-batches-py``, read without torchvision.

Images are kept as uint8 ``[N, 3, 32, 32]``; each batch is scaled to [0, 1] and normalised with the ImageNet
mean/std (``docs/method.md#cifar-10-data``). CIFAR-10+ (``augment=True``, train split only): random horizontal
flip, then a random 32x32 crop of the image zero-padded by 4 pixels, both on the uint8 batch before normalisation
(as torchvision's RandomHorizontalFlip, RandomCrop(32, padding=4), ToTensor, Normalize would), vectorised over the
batch.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from attentive_gcnn.data.arrays import ArrayDataset, Splits, check_protocol
from attentive_gcnn.data.errors import (
    DataError,
    check_labels,
    download_hint,
    refetch_hint,
    require_files,
    unreadable,
)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
FILES = (*TRAIN_FILES, "test_batch", "batches.meta")
SIZES = {"train": 50000, "test": 10000}


def flip_crop(
    x: torch.Tensor, generator: torch.Generator | None, offset: int = 0, total: int | None = None, padding: int = 4
) -> torch.Tensor:
    """Random horizontal flip (p = 1/2), then a random crop of the zero-padded image back to its size.

    x: [B, C, H, W] (any dtype), rows ``offset .. offset + B`` of a batch of ``total`` (default B) whose flips and
    offsets are drawn together; offsets uniform in {0, ..., 2 * padding} per image and axis.
    """
    b, c, h, w = x.shape
    total = b if total is None else total
    rows_of_x = slice(offset, offset + b)
    flip = (torch.rand(total, generator=generator) < 0.5)[rows_of_x]
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    offsets = torch.randint(0, 2 * padding + 1, (total, 2), generator=generator)[rows_of_x]
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = (offsets[:, 0, None] + torch.arange(h))[:, None, :, None]  # [B, 1, H, 1]
    cols = (offsets[:, 1, None] + torch.arange(w))[:, None, None, :]  # [B, 1, 1, W]
    return padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def holdout_indices(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) indices into ``n`` training images: ``default_rng(seed).permutation(n)``, the first
    ``val_size`` held out; both sorted."""
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be in (0, {n}), got {val_size}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


# what unpickling a damaged file raises: a cut file (EOFError, UnpicklingError), bad opcodes or arguments
# (UnpicklingError, TypeError, ValueError incl. UnicodeDecodeError, LookupError: an unknown encoding, a bad memo or
# list index), a mangled module or class name (ImportError, AttributeError), absurd lengths (OverflowError,
# MemoryError)
_PICKLE_ERRORS = (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, LookupError, AttributeError)
_PICKLE_ERRORS += (ImportError, OverflowError, MemoryError)


def _unpickle(path: Path, hint: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except _PICKLE_ERRORS as e:
        raise unreadable(path, e, hint) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}; {hint}")
    return obj


def _read_batch(path: Path, hint: str) -> tuple[np.ndarray, np.ndarray]:
    """A pickled batch -> (uint8 [N, 3, 32, 32], int64 [N])."""
    obj = _unpickle(path, hint)
    if "data" not in obj or "labels" not in obj:
        raise DataError(f"{path}: missing key 'data' or 'labels' (has {', '.join(map(str, obj))}); {hint}")
    data = np.asarray(obj["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: data is {data.dtype} {data.shape}, expected uint8 [N, 3072]; {hint}")
    labels = check_labels(np.asarray(obj["labels"]), 10, str(path))
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


class CIFAR10:
    """CIFAR-10 (``augment=False``) or CIFAR-10+ (``augment=True``) under ``root/cifar-10-batches-py``.

    Protocols: ``clean`` fits on the 45,000 training images outside a fixed validation split of ``val_size``
    (``holdout_indices(50000, val_size, val_split_seed)``), selects on that split, reports test; ``original``
    fits on all 50,000 and selects on test. ``sizes`` overrides the expected numbers of images (tests).
    """

    input_shape = (3, 32, 32)
    num_classes = 10

    def __init__(
        self,
        root: str | Path,
        augment: bool = False,
        val_size: int = 5000,
        val_split_seed: int = 0,
        sizes: Mapping | None = None,
    ):
        self.root, self.augment = Path(root), bool(augment)
        self.val_size, self.val_split_seed = int(val_size), int(val_split_seed)
        self.sizes = {**SIZES, **{k: int(v) for k, v in (sizes or {}).items()}}
        if set(self.sizes) != set(SIZES):
            raise ValueError(f"sizes keys must be {', '.join(SIZES)}, got {', '.join(self.sizes)}")
        holdout_indices(self.sizes["train"], self.val_size, self.val_split_seed)  # validates val_size
        self.folder = self.root / FOLDER
        require_files(self.folder, FILES, download_hint("cifar10", self.root))
        self.hint = refetch_hint("cifar10", self.root)
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    def _load(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if self._arrays is None:
            meta = _unpickle(self.folder / "batches.meta", self.hint)
            if len(meta.get("label_names", ())) != 10:
                raise DataError(f"{self.folder / 'batches.meta'}: expected 10 label_names; {self.hint}")
            parts = [_read_batch(self.folder / name, self.hint) for name in TRAIN_FILES]
            train = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            test = _read_batch(self.folder / "test_batch", self.hint)
            for split, arrays in (("train", train), ("test", test)):
                if len(arrays[1]) != self.sizes[split]:
                    raise DataError(f"{self.folder}: {len(arrays[1])} {split} images, expected {self.sizes[split]}")
            self._arrays = {"train": train, "test": test}
        return self._arrays

    def splits(self, protocol: str) -> Splits:
        """clean: fit 45k, select on the 5k held out, report test; original: fit 50k, select on and report test."""
        protocol = check_protocol(protocol)
        arrays = self._load()
        augment = flip_crop if self.augment else None
        test = ArrayDataset(*arrays["test"], MEAN, STD)
        x, y = arrays["train"]
        if protocol == "clean":
            fit, held = holdout_indices(len(y), self.val_size, self.val_split_seed)
            train = ArrayDataset(x[fit], y[fit], MEAN, STD, augment=augment)
            select, select_name = ArrayDataset(x[held], y[held], MEAN, STD), "valid"
        else:
            train, select, select_name = ArrayDataset(x, y, MEAN, STD, augment=augment), test, "test"
        return Splits(train, select, select_name, test, {"mean": list(MEAN), "std": list(STD)})
