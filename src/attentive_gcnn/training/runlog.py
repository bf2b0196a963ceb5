"""The files a run writes: ``metrics.csv`` (one row per epoch and split) and JSON (``summary.json``), atomically.

The files in the run directory are the record; a mirror (:mod:`attentive_gcnn.training.mirrors`) only copies them.
Writes are atomic (temporary file, then rename), so a killed run never leaves a half-written file; checkpoints,
published runs and figures are written the same way (:func:`atomic_path`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


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

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: list[dict] = []
        if self.path.is_file():
            with self.path.open(newline="") as f:
                self.rows = list(csv.DictReader(f))

    def truncate(self, epoch: int) -> None:
        self.rows = [r for r in self.rows if int(r["epoch"]) <= epoch]
        self._write()

    def append(self, *rows: dict) -> None:
        self.rows.extend({k: _fmt(r.get(k, "")) for k in METRIC_FIELDS} for r in rows)
        self._write()

    def _write(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomic(self.path, buf.getvalue())


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
