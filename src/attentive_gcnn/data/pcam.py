"""PatchCamelyon (Veeling et al. 2018) from the ``.h5`` files of Zenodo record 2546921, read lazily with h5py.

``root/camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5``: dataset ``x`` uint8 [N, 96, 96, 3] and ``y``
uint8 [N, 1, 1, 1] (0 = no tumour, 1 = tumour). Batches are scaled to [0, 1] and normalised with the mean/std of
the authors' code (``docs/method.md#pcam-data``). Both protocols fit on train, select on valid and report test.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from attentive_gcnn.data.arrays import Splits, check_protocol, normalize_
from attentive_gcnn.data.errors import (
    DataError,
    check_labels,
    download_hint,
    refetch_hint,
    require_files,
    unreadable,
)

MEAN = (0.701, 0.538, 0.692)
STD = (0.235, 0.277, 0.213)
SIZES = {"train": 262144, "valid": 32768, "test": 32768}
SHAPE = (96, 96, 3)


def file_name(split: str, kind: str) -> str:
    """``camelyonpatch_level_2_split_{split}_{kind}.h5`` for kind in x, y."""
    return f"camelyonpatch_level_2_split_{split}_{kind}.h5"


# what h5py raises on a damaged file or dataset
H5_ERRORS = (OSError, ValueError, KeyError, RuntimeError)


def _inspect(path: Path, key: str, hint: str, read: bool = False) -> tuple[tuple, np.dtype, np.ndarray | None]:
    """(shape, dtype, the data if ``read``) of dataset ``key`` in an h5 file; DataError if unreadable."""
    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise DataError(f"{path}: no dataset {key!r} (has {', '.join(f.keys())}); {hint}")
            return f[key].shape, f[key].dtype, (f[key][()] if read else None)
    except H5_ERRORS as e:
        raise unreadable(path, e, hint) from None


class PCamSplit(Dataset):
    """One PCam split: images read from ``x_path`` per batch (or held in memory), labels in memory.

    The h5 file is opened on first access in each process (handles are dropped when pickled and reopened after a
    fork), so DataLoader workers read through their own handles. ``__getitems__`` reads a batch with one
    increasing fancy-index read, then restores the requested order (duplicates allowed).
    """

    def __init__(self, x_path: Path, labels: np.ndarray, in_memory: bool = False, hint: str = ""):
        self.x_path, self.hint = Path(x_path), hint
        self.labels = torch.from_numpy(labels)
        self.mean = torch.tensor(MEAN, dtype=torch.float32).reshape(3, 1, 1)
        self.std = torch.tensor(STD, dtype=torch.float32).reshape(3, 1, 1)
        self._file, self._pid = None, None
        self._memory = self._read_all() if in_memory else None

    def _read_all(self) -> np.ndarray:
        try:
            with h5py.File(self.x_path, "r") as f:
                return f["x"][()]
        except H5_ERRORS as e:
            raise unreadable(self.x_path, e, self.hint) from None

    def _images(self):
        if self._memory is not None:
            return self._memory
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.x_path, "r"), os.getpid()
        return self._file["x"]

    def __getstate__(self):
        return {**self.__dict__, "_file": None, "_pid": None}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(list(indices), dtype=np.int64)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for a split of {n} images")
        idx = idx % n if n else idx
        unique, inverse = np.unique(idx, return_inverse=True)
        try:
            x = self._images()[unique][inverse]  # [B, 96, 96, 3] uint8
        except H5_ERRORS as e:
            raise unreadable(self.x_path, e, self.hint) from None
        x = torch.from_numpy(x).permute(0, 3, 1, 2).to(torch.float32).div_(255)
        return normalize_(x, self.mean, self.std), self.labels[torch.from_numpy(idx)]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.__getitems__([i])
        return x[0], int(y[0])


class PCam:
    """PCam under ``root`` (``.h5`` files, decompressed). ``sizes`` overrides the expected split sizes (tests);
    ``in_memory`` loads the images into memory (7.2 GB for train) instead of reading them per batch."""

    input_shape = (3, 96, 96)
    num_classes = 2

    def __init__(self, root: str | Path, in_memory: bool = False, sizes: Mapping | None = None):
        self.root = Path(root)
        self.sizes = {**SIZES, **{k: int(v) for k, v in (sizes or {}).items()}}
        if set(self.sizes) != set(SIZES):
            raise ValueError(f"sizes keys must be {', '.join(SIZES)}, got {', '.join(self.sizes)}")
        names = [file_name(s, k) for s in SIZES for k in ("x", "y")]
        hint = download_hint("pcam", self.root.parent)
        self.hint = refetch_hint("pcam", self.root.parent)
        gz_only = [n for n in names if not (self.root / n).is_file() and (self.root / f"{n}.gz").is_file()]
        if gz_only:
            hint = f"decompress {', '.join(n + '.gz' for n in gz_only)} (gunzip -k), or {hint}"
        require_files(self.root, names, hint)
        self._splits = {s: self._open(s, in_memory) for s in SIZES}

    def _open(self, split: str, in_memory: bool) -> PCamSplit:
        x_path, y_path = self.root / file_name(split, "x"), self.root / file_name(split, "y")
        x_shape, x_dtype, _ = _inspect(x_path, "x", self.hint)
        if x_dtype != np.uint8 or tuple(x_shape[1:]) != SHAPE:
            raise DataError(f"{x_path}: x is {x_dtype} {x_shape}, expected uint8 [N, 96, 96, 3]; {self.hint}")
        y_shape, _, y = _inspect(y_path, "y", self.hint, read=True)
        if len(y_shape) == 0 or int(np.prod(y_shape[1:])) != 1:
            raise DataError(f"{y_path}: y has shape {y_shape}, expected [N, 1, 1, 1]")
        if x_shape[0] != y_shape[0]:
            raise DataError(f"{self.root}: {split} has {x_shape[0]} images but {y_shape[0]} labels")
        if x_shape[0] != self.sizes[split]:
            raise DataError(f"{x_path}: {x_shape[0]} images, expected {self.sizes[split]} (a truncated file?)")
        labels = check_labels(np.asarray(y).reshape(-1), 2, str(y_path))
        return PCamSplit(x_path, labels, in_memory, self.hint)

    def splits(self, protocol: str) -> Splits:
        """Both protocols: fit on train, select on valid, report test."""
        check_protocol(protocol)
        s = self._splits
        return Splits(s["train"], s["valid"], "valid", s["test"], {"mean": list(MEAN), "std": list(STD)})
