"""The one exception for bad data on disk, and helpers that phrase its messages."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from attentive_gcnn.errors import UserError

# torch's DataLoader re-raises a worker's exception as ``type("Caught T in DataLoader worker process K.\nOriginal
# Traceback (most recent call last): ... module.T: message")`` (torch/_utils.py, ExceptionWrapper.reraise)
_RERAISED = re.compile(r"Caught (\w+) in [^\n]*\.\nOriginal Traceback \(most recent call last\):\n")


def _original_message(message: str) -> str:
    """The message of an exception re-raised across the DataLoader worker boundary, else ``message`` itself."""
    wrapper = _RERAISED.match(message)
    if wrapper is None:
        return message
    finals = list(re.finditer(rf"^(?:[\w.]+\.)?{wrapper.group(1)}: ", message, re.M))  # the last is the raised one
    return message[finals[-1].end() :].rstrip("\n") if finals else message


class DataError(UserError):
    """Data on disk is missing, truncated, corrupt or inconsistent (message: what, where, how to fix).

    Raised in a DataLoader worker, it reaches the main process with its own message, without the worker's
    traceback that torch puts in front of it.
    """

    def __init__(self, message: object = "", *args):
        super().__init__(_original_message(message) if isinstance(message, str) else message, *args)


def download_hint(name: str, data_dir: str | Path) -> str:
    """The command that fetches dataset ``name`` into ``data_dir`` (the trainer's ``paths.data_dir``)."""
    return f"get them with: python scripts/download_data.py {name} --root {data_dir}"


def refetch_hint(name: str, data_dir: str | Path) -> str:
    """What to do about a file that is there but bad (``download_data.py`` skips the files that are present)."""
    return f"delete it and fetch it again: python scripts/download_data.py {name} --root {data_dir}"


def unreadable(path: Path, error: BaseException, hint: str) -> DataError:
    """The DataError for a file that its parser rejected with ``error`` (named as ``zlib.error: ...``)."""
    kind = type(error)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__.lstrip('_')}.{kind.__qualname__}"
    what = f"{name}: {error}" if str(error) else name
    return DataError(f"cannot read {path}: {what} (a corrupt or truncated file){_then(hint)}")


def _then(hint: str) -> str:
    return f"; {hint}" if hint else ""


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


def check_finite(images: np.ndarray, where: str, hint: str) -> None:
    """DataError if float ``images`` hold NaN or inf: how many of each, and the index of the first."""
    if images.dtype.kind != "f":
        return
    bad = ~np.isfinite(images)
    if not bad.any():
        return
    first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), images.shape))
    n, nan = int(np.count_nonzero(bad)), int(np.count_nonzero(np.isnan(images)))
    raise DataError(
        f"{where}: {n} non-finite pixel values ({nan} NaN, {n - nan} inf), the first in image {first[0]} "
        f"(index {first} of {list(images.shape)}){_then(hint)}"
    )


def check_stats(mean: float, std: float, where: str, hint: str) -> None:
    """DataError unless the normalisation statistics of the images in ``where`` are finite with ``std > 0``."""
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise DataError(
            f"{where}: the pixel mean and std overflow ({mean:g}, {std:g}): these are not images in [0, 1]{_then(hint)}"
        )
    if std <= 0:
        raise DataError(
            f"{where}: every pixel equals {mean:g} (std 0), so the images cannot be normalised (a blank or "
            f"corrupt file){_then(hint)}"
        )


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
