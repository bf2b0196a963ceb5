"""The one exception for bad data on disk, and helpers that phrase its messages."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from attentive_gcnn.errors import UserError


class DataError(UserError):
    """Data on disk is missing, truncated, corrupt or inconsistent (message: what, where, how to fix)."""


def download_hint(name: str, data_dir: str | Path) -> str:
    """The command that fetches dataset ``name`` into ``data_dir`` (the trainer's ``paths.data_dir``)."""
    return f"get them with: python scripts/download_data.py {name} --root {data_dir}"


def require_files(directory: Path, names: Iterable[str], hint: str) -> None:
    """Raise DataError unless every file ``names`` exists in ``directory``; the message lists the missing ones."""
    names = list(names)
    if not directory.is_dir():
        raise DataError(f"data directory {directory} does not exist; expected {', '.join(names)}; {hint}")
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise DataError(f"missing in {directory}: {', '.join(missing)}; {hint}")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_labels(labels, num_classes: int, where: str) -> np.ndarray:
    """Labels as int64 [N]; DataError if any is not an integer in [0, num_classes)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"{where}: labels have shape {labels.shape}, expected [N]")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise DataError(f"{where}: labels are not integers")
    elif labels.dtype.kind not in "iu":
        raise DataError(f"{where}: labels have dtype {labels.dtype}, expected integers")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{where}: labels out of range [0, {num_classes - 1}] (min {labels.min():g}, max {labels.max():g})"
        )
    return labels.astype(np.int64)
