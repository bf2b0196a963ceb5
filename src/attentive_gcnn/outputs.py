"""Where the scripts write: an output path is checked before any work is done, and its folder is created only
when the file is written, so that a refused or failed command leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

from attentive_gcnn.errors import UserError
from attentive_gcnn.training.runlog import atomic_path


def check_output(path: str | Path, force: bool = False) -> Path:
    """``path`` if a file can be written there: :class:`UserError` where it exists (unless ``force``), is a
    folder, or where its nearest existing folder is a file or not writable."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a file name")
    if path.exists() and not force:
        raise UserError(f"{path} exists; pass --force to replace it")
    check_folder(path.parent, f"cannot write {path}")
    return path


def check_folder(folder: str | Path, what: str) -> Path:
    """``folder`` if it exists as a writable folder or can be made: else :class:`UserError` starting with ``what``."""
    folder = Path(folder)
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise UserError(f"{what}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what}: {existing} is not writable")
    return folder


def make_parent(path: str | Path) -> Path:
    """Create the folder of an output ``path`` (with its parents) just before it is written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {path.parent} ({e.strerror})") from None
    return path


def save_figure(fig, path: str | Path, dpi: int = 150) -> Path:
    """Write a matplotlib figure as a PNG atomically (see :func:`attentive_gcnn.training.runlog.atomic_path`),
    making its folder, with everything drawn outside the axes included; the figure is closed either way."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(make_parent(path)) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)
