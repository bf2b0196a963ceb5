"""Where a run computes: the ``device`` option, and ``compile=true`` (``torch.compile``) on that device."""

from __future__ import annotations

import os
import shutil

import torch

from attentive_gcnn.errors import ConfigError


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else the CPU; otherwise a torch device string that must be available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={name} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name}: only cpu and cuda devices train here (auto, cpu, cuda, cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here (use device=auto or device=cpu)")
    return device


def compiled(model: torch.nn.Module, compile: bool, device: torch.device) -> torch.nn.Module:
    """``torch.compile(model)`` where ``compile`` (the module to call; checkpoints keep ``model`` itself).

    On a CPU the compiled kernels are C++, so a C++ compiler must be on the PATH (or in ``$CXX``).
    """
    if not compile:
        return model
    if device.type == "cpu" and not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")):
        raise ConfigError("compile=true on a CPU needs a C++ compiler (g++ or clang++ on the PATH, or $CXX)")
    return torch.compile(model)
