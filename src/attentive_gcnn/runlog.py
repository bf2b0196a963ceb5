"""What a run leaves behind: ``metrics.csv`` (one row per epoch and split), ``summary.json`` and a mirror of both.

The files in the run directory are the record; a mirror (``logger=wandb``) only copies them. Writes are atomic
(temporary file, then rename), so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

METRIC_FIELDS = ("epoch", "split", "loss", "accuracy", "lr", "time_s")


def file_mode() -> int:
    """The permissions a new file gets under the current umask (``mkstemp`` would give 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def ensure_writable(path: str | Path) -> None:
    """Create directory ``path`` if needed and write (then remove) a probe file in it; raises OSError if not."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    probe = path / ".write_test"
    probe.write_text("")
    probe.unlink()


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
    return write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


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


def git_sha() -> str | None:
    """The commit of the source tree (``+dirty`` when it has uncommitted changes); None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated memory; CPU: peak resident memory of this process (both in MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024


def environment(device: torch.device) -> dict:
    """Where a number was made: host, platform, Python, torch and the device's name."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "device": str(device),
        "device_name": name,
        "cpu_threads": torch.get_num_threads(),
    }


def provenance(device: torch.device) -> dict:
    """What a summary records about how and where it was made: peak memory, git SHA, command line, machine."""
    return {
        "peak_memory_mb": peak_memory_mb(device),
        "git_sha": git_sha(),
        "command": " ".join(sys.argv),
        "environment": environment(device),
    }


class NoMirror:
    """The default: nothing beyond the run directory's own files."""

    def __init__(self, **_):
        pass

    def start(self, run_dir: Path, config: dict, run_id: str | None) -> str | None:
        return None

    def log(self, epoch: int, metrics: dict) -> None:
        pass

    def finish(self, summary: dict | None, failed: bool) -> None:
        pass


class WandbMirror(NoMirror):
    """Mirror per-epoch metrics and the summary to Weights & Biases (``mode``: offline by default)."""

    def __init__(
        self,
        project: str,
        entity: str | None = None,
        mode: str = "offline",
        group: str | None = None,
        job_type: str | None = None,
        tags: list[str] | None = None,
    ):
        self.kwargs = dict(project=project, entity=entity, mode=mode, group=group, job_type=job_type, tags=tags)
        self.run = None

    def start(self, run_dir: Path, config: dict, run_id: str | None) -> str:
        import wandb

        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True)
        name = f"{self.kwargs['group']}/seed{config.get('seed')}"
        self.run = wandb.init(
            dir=str(run_dir), config=config, name=name, id=run_id, resume="allow", settings=settings, **self.kwargs
        )
        return self.run.id

    def log(self, epoch: int, metrics: dict) -> None:
        self.run.log({"epoch": epoch, **metrics}, step=epoch)

    def finish(self, summary: dict | None, failed: bool) -> None:
        if self.run is None:
            return
        if summary:
            self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        self.run.finish(exit_code=1 if failed else 0)
        self.run = None
