"""Where and how a number was made: the source tree's commit, the machine, the command line and the peak memory.

Every ``summary.json`` carries :func:`provenance`; the benchmark's report names its commit through
:func:`git_revision` too, so that both say the same about the same checkout.
"""

from __future__ import annotations

import platform
import resource
import subprocess
import sys

import torch

from attentive_gcnn.config_dir import REPO_DIR


def git_revision() -> tuple[str, bool] | None:
    """``(commit, dirty)`` of the checkout the package runs from (dirty: tracked files have uncommitted changes);
    None outside a git checkout or without git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return sha.stdout.strip(), bool(dirty.stdout.strip())


def git_sha() -> str | None:
    """The commit of the source tree (``+dirty`` when it has uncommitted changes); None outside a git checkout."""
    revision = git_revision()
    if revision is None:
        return None
    sha, dirty = revision
    return sha + ("+dirty" if dirty else "")


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
