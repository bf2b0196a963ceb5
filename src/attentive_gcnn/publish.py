"""Publishing finished runs into the repository: the small files of a run, and the selected weights of one seed.

A run directory (``outputs/...``) holds checkpoints and logs; what is committed is a copy of its small files under
``results/runs/<experiment>/<protocol>/seed<k>/`` (and ``.../seed<k>/tta<K>/`` for a test-time-augmented
evaluation of that run's checkpoint):

- ``summary.json``: the run's summary (test errors, parameters, machine, commit, resolved config);
- ``metrics.csv``: one row per epoch and split (training runs only);
- ``config.yaml`` and ``overrides.yaml``: Hydra's composed config and the command-line overrides.

A published directory is never rewritten: publishing the same run again is a no-op, and publishing a different
run onto it is an error. Every file is written beside its destination and renamed into place, so an interrupted
publication never leaves a half-written file; ``summary.json`` goes last, so its presence marks a complete copy.

The repository's pretrained models are the selected weights of one run per model (``best.ckpt``: format, model,
net, state_dict, epoch), copied with the run's identity added (``run``: experiment, protocol, seed, commit, test
error) to ``results/checkpoints/<table>/<model>.ckpt``, listed with their SHA-256 in ``SHA256SUMS`` beside them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from attentive_gcnn.data.errors import sha256_of
from attentive_gcnn.errors import UserError
from attentive_gcnn.training.runlog import atomic_path, write_atomic

SUMMARY = "summary.json"
# (file in the run directory, name in the published directory); the summary is written last
RUN_FILES = (
    (".hydra/config.yaml", "config.yaml"),
    (".hydra/overrides.yaml", "overrides.yaml"),
    ("metrics.csv", "metrics.csv"),
)
SUMS = "SHA256SUMS"


def read_summary(run_dir: Path) -> dict | None:
    """The run's summary if it is complete (``status: complete``), else None."""
    try:
        summary = json.loads((Path(run_dir) / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("status") == "complete" else None


def is_published(dest: Path) -> bool:
    return read_summary(dest) is not None


def publish_run(run_dir: Path, dest: Path) -> bool:
    """Copy the small files of the complete run in ``run_dir`` to ``dest``; False if already published there.

    Raises :class:`UserError` if the run is not complete, or ``dest`` holds another run's files.
    """
    run_dir, dest = Path(run_dir), Path(dest)
    summary_text = (run_dir / SUMMARY).read_text() if (run_dir / SUMMARY).is_file() else ""
    if read_summary(run_dir) is None:
        raise UserError(f"{run_dir} holds no complete run to publish")
    if (dest / SUMMARY).exists():
        if (dest / SUMMARY).read_text() == summary_text:
            return False
        raise UserError(f"{dest} already holds another published run; refusing to overwrite it")
    dest.mkdir(parents=True, exist_ok=True)
    for source, name in RUN_FILES:
        if (run_dir / source).is_file():
            with atomic_path(dest / name) as tmp:
                shutil.copyfile(run_dir / source, tmp)
    write_atomic(dest / SUMMARY, summary_text)
    return True


def publish_checkpoint(run_dir: Path, dest: Path) -> bool:
    """Copy the selected weights (``best.ckpt``) of the complete run in ``run_dir`` to ``dest`` (a ``.ckpt`` path)
    with the run's identity added, and list it in ``SHA256SUMS`` beside it; False if ``dest`` already holds them.

    Raises :class:`UserError` if the run is incomplete or ``dest`` holds another run's weights.
    """
    from attentive_gcnn.checkpoint import load_checkpoint, save_checkpoint

    run_dir, dest = Path(run_dir), Path(dest)
    summary = read_summary(run_dir)
    if summary is None or not (run_dir / "best.ckpt").is_file():
        raise UserError(f"{run_dir} holds no complete run with a best.ckpt to publish")
    run = {
        key: summary.get(key)
        for key in ("name", "protocol", "seed", "best_epoch", "test_error", "test_accuracy", "git_sha")
    }
    if dest.exists():
        if load_checkpoint(dest).get("run") == run:
            return False
        raise UserError(f"{dest} already holds another run's weights; refusing to overwrite it")
    ckpt = load_checkpoint(run_dir / "best.ckpt")
    payload = {k: ckpt[k] for k in ("model", "net", "state_dict", "epoch")}
    payload["state_dict"] = {k: v.contiguous() for k, v in payload["state_dict"].items()}
    save_checkpoint(dest, {**payload, "run": run})
    listed = read_sums(dest.parent) if (dest.parent / SUMS).is_file() else []
    entries = sorted([(d, n) for d, n in listed if n != dest.name] + [(sha256_of(dest), dest.name)], key=lambda e: e[1])
    write_atomic(dest.parent / SUMS, "".join(f"{d}  {n}\n" for d, n in entries))
    return True


def read_sums(directory: Path) -> list[tuple[str, str]]:
    """The (SHA-256, file name) entries of ``directory/SHA256SUMS``; :class:`UserError` for a missing file or a
    line that is not ``<64 hex digits>  <name>``."""
    path = Path(directory) / SUMS
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} ({e})") from None
    entries = []
    for number, line in enumerate(lines, start=1):
        digest, sep, name = line.partition("  ")
        if not sep or not name or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise UserError(f"{path}, line {number}: not '<sha256>  <file name>' ({line!r})")
        entries.append((digest, name))
    return entries


def check_sums(directory: Path) -> list[str]:
    """The files of ``directory/SHA256SUMS`` whose SHA-256 differs from the listed one (or that are missing)."""
    directory = Path(directory)
    bad = []
    for digest, name in read_sums(directory):
        path = directory / name
        if not path.is_file() or sha256_of(path) != digest:
            bad.append(name)
    return bad
