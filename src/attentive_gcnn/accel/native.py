"""The native CPU kernels: their loader, and the one rule that decides where they run.

Two modules are compiled on first use with :mod:`torch.utils.cpp_extension` (a C++ compiler is needed):
``feature_attend`` (the alpha-F attention's passes, ``csrc/feature_attend.cpp``) and ``full_attend`` (the full
attention's passes and the small convs, the sources of ``csrc/full_attend/``, one extension). ``make install`` builds
them once (``python -m attentive_gcnn.accel``); the builds are cached by torch under ``$TORCH_EXTENSIONS_DIR``
(default ``~/.cache/torch_extensions``) and rebuilt when a source or header changes.

:func:`native_kernels` is the only place that decides whether they run: for a tensor ``t`` they apply iff

- ``t`` is a CPU tensor of float32 or float64,
- ``torch.compile`` is not tracing (the compiler gets the torch ops, which it can fuse itself),
- the environment variable ``ATTENTIVE_GCNN_NATIVE`` is not ``0`` (read at every call), and
- the module is built (the first call builds it; a failed build warns once, and the torch ops are used).

Elsewhere (a GPU, another dtype, no compiler) the same computations run as torch ops.

The first build changes no global state of the process: the build puts this environment's ``bin/`` (where pip puts
``ninja``) on ``PATH`` and quietens the ``torch.utils.cpp_extension`` logger (which reports a missing CUDA
toolkit on CPU builds), and restores both when it ends, successful or not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

CSRC = Path(__file__).with_name("csrc")
SOURCES: dict[str, list[Path]] = {
    "feature_attend": [CSRC / "feature_attend.cpp"],
    "full_attend": [
        CSRC / "full_attend" / f"{name}.cpp"
        for name in ("lane_conv", "spatial_map", "channel_pass", "backward", "bindings")
    ],
}
ENV = "ATTENTIVE_GCNN_NATIVE"
DTYPES = (torch.float32, torch.float64)
_loaded: dict[str, ModuleType | None] = {}


def enabled() -> bool:
    """False where ``ATTENTIVE_GCNN_NATIVE=0`` switches the kernels off."""
    return os.environ.get(ENV, "1") != "0"


def native_kernels(t: torch.Tensor, name: str = "full_attend") -> ModuleType | None:
    """The compiled module ``name`` if the native kernels apply to ``t`` (see the module's docstring), else None."""
    if t.device.type != "cpu" or t.dtype not in DTYPES or torch.compiler.is_compiling():
        return None
    return cpu_kernels(name)


def cpu_kernels(name: str = "feature_attend") -> ModuleType | None:
    """The compiled module ``name``, or None (switched off, or it could not be built: warns once)."""
    if not enabled():
        return None
    if name not in _loaded:
        try:
            _loaded[name] = build(name)
        except Exception as err:  # any build failure means: use the torch ops
            warnings.warn(f"attentive_gcnn: fused CPU kernels unavailable, using torch ops ({err})", stacklevel=2)
            _loaded[name] = None
    return _loaded[name]


@contextlib.contextmanager
def _build_environment() -> Iterator[None]:
    """This environment's ``bin/`` on ``PATH`` (for ``ninja``) and a quiet ``torch.utils.cpp_extension`` logger (no
    CUDA chatter on CPU builds), for the duration of a build only."""
    path = os.environ.get("PATH")
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    scripts = sysconfig.get_path("scripts")
    try:
        if scripts and scripts not in (path or "").split(os.pathsep):
            os.environ["PATH"] = os.pathsep.join(p for p in (scripts, path) if p)
        logger.setLevel(logging.ERROR)
        yield
    finally:
        logger.setLevel(level)
        if path is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = path


def build(name: str) -> ModuleType:
    """Compile (or load the cached build of) kernel module ``name``; raises if it cannot."""
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise RuntimeError(f"no C++ compiler ({cxx!r} not found)")
    with _build_environment():
        from torch.utils import cpp_extension

        return cpp_extension.load(
            name=f"attentive_gcnn_{name}",
            sources=[str(s) for s in SOURCES[name]],
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )


def main() -> int:
    """Build every kernel module now; prints what happened, exits 0 either way (the kernels are optional)."""
    for name in SOURCES:
        try:
            build(name)
            print(f"attentive_gcnn: built CPU kernels {name!r}")
        except Exception as err:
            print(f"attentive_gcnn: CPU kernels {name!r} not built, torch ops will be used ({err})", file=sys.stderr)
    return 0
