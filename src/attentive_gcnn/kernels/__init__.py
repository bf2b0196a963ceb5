"""Optional fused CPU kernels, compiled on first use with :mod:`torch.utils.cpp_extension` (needs a C++ compiler).

The attention code asks :func:`cpu_kernels` for the compiled module and falls back to the same computation in torch
ops when it returns None: without a compiler, when the build fails (one warning says why), or with the environment
variable ``ATTENTIVE_GCNN_NATIVE=0``. ``make install`` builds them once (``python -m attentive_gcnn.kernels``); the
build is cached by torch under ``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) and rebuilt when
the source changes.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import sysconfig
import warnings
from pathlib import Path
from types import ModuleType

SOURCES = {name: Path(__file__).with_name(f"{name}.cpp") for name in ("feature_attend", "full_attend")}
ENV = "ATTENTIVE_GCNN_NATIVE"
_loaded: dict[str, ModuleType | None] = {}


def enabled() -> bool:
    """False where ``ATTENTIVE_GCNN_NATIVE=0`` switches the kernels off."""
    return os.environ.get(ENV, "1") != "0"


def build(name: str) -> ModuleType:
    """Compile (or load the cached build of) kernel module ``name``; raises if it cannot."""
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise RuntimeError(f"no C++ compiler ({cxx!r} not found)")
    scripts = sysconfig.get_path("scripts")  # this environment's bin/, where pip puts ninja: on PATH for the build
    if scripts and scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # no CUDA_HOME chatter on CPU builds
    from torch.utils import cpp_extension

    return cpp_extension.load(
        name=f"attentive_gcnn_{name}",
        sources=[str(SOURCES[name])],
        extra_cflags=["-O3", "-march=native", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )


def cpu_kernels(name: str = "feature_attend") -> ModuleType | None:
    """The compiled module ``name``, or None (switched off, or it could not be built: warns once)."""
    if not enabled():
        return None
    if name not in _loaded:
        try:
            _loaded[name] = build(name)
        except Exception as err:  # any build failure means: use the torch-op path
            warnings.warn(f"attentive_gcnn: fused CPU kernels unavailable, using torch ops ({err})", stacklevel=2)
            _loaded[name] = None
    return _loaded[name]


def main() -> int:
    """Build every kernel module now; prints what happened, exits 0 either way (the kernels are optional)."""
    for name in SOURCES:
        try:
            build(name)
            print(f"attentive_gcnn: built CPU kernels {name!r}")
        except Exception as err:
            print(f"attentive_gcnn: CPU kernels {name!r} not built, torch ops will be used ({err})", file=sys.stderr)
    return 0
