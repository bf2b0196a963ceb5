"""The files a run writes: ``metrics.csv`` (one row per epoch and split) and JSON (``summary.json``), atomically.

The files in the run directory are the record; a mirror (:mod:`attentive_gcnn.training.mirrors`) only copies them.
Writes are atomic (temporary file, then rename), so a killed run never leaves a half-written file; checkpoints,
published runs and figures are written the same way (:func:`atomic_path`).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from attentive_gcnn.errors import ConfigError, DiskFullError

METRIC_FIELDS = ("epoch", "split", "loss", "accuracy", "lr", "time_s")


def file_mode() -> int:
    """The permissions a new file gets under the current umask (``mkstemp`` would give 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block succeeds it gets the umask's permissions and
    is renamed onto ``path`` (so a killed write never leaves a half-written file), otherwise it is removed."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        if (full := _disk_full(e, path)) is None:
            raise
        raise full from None
    os.close(fd)
    try:
        try:
            yield Path(tmp)
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
            if (full := _disk_full(e, path)) is None:
                raise
            raise full from None
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _disk_full(error: Exception, path: Path) -> DiskFullError | None:
    """A :class:`DiskFullError` for ``path`` where ``error`` comes from a full disk, else None."""
    full = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(error, RuntimeError):  # torch's zip writer: "unexpected pos ..." / "file write failed"
        try:
            full = shutil.disk_usage(path.parent).free < 2**26
        except OSError:
            full = False
    if not full:
        return None
    return DiskFullError(
        f"no space left on the device of {path.parent} while writing {path.name} (the previous {path.name}, if any, "
        "is intact); free some space, then continue the run with resume=true"
    )


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data: dict) -> Path:
    """Write ``data`` as strict JSON (a NaN or infinite float becomes ``null``: never a bare ``NaN``)."""
    return write_atomic(path, json.dumps(strict_json(data), indent=2, sort_keys=False, allow_nan=False) + "\n")


def strict_json(value):
    """``value`` with every non-finite float replaced by None, through dicts, lists and tuples."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


class MetricsCSV:
    """``metrics.csv``: columns ``epoch, split, loss, accuracy, lr, time_s``; accuracy is a fraction in [0, 1].

    Rows are kept in memory and the whole file is rewritten atomically on every ``append``, so the file always
    ends at a completed epoch. ``truncate(epoch)`` drops rows after ``epoch`` (a resumed run redoes them).
    """

    def __init__(self, path: str | Path, write: bool = True):
        self.path, self.write = Path(path), write  # write=False: rows in memory only (another rank than 0)
        self.rows: list[dict] = []
        if self.path.is_file():
            with self.path.open(newline="") as f:
                self.rows = list(csv.DictReader(f))

    def truncate(self, epoch: int) -> None:
        self.rows = [r for r in self.rows if epoch and _epoch_of(r, self.path) <= epoch]
        self._write()

    def append(self, *rows: dict) -> None:
        self.rows.extend({k: _fmt(r.get(k, "")) for k in METRIC_FIELDS} for r in rows)
        self._write()

    def _write(self) -> None:
        if not self.write:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomic(self.path, buf.getvalue())


def _epoch_of(row: dict, path: Path) -> int:
    try:
        return int(row["epoch"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{path} has a damaged row ({row}); restore the file or move it away") from None


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
