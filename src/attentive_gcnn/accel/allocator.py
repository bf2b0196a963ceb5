"""The CPU memory allocator setting of the training and benchmark processes.

A training step on the CPU allocates and frees tensors of tens of MiB (activations, their gradients, the attention's
weighted inputs). With glibc's default policy some of that memory goes back to the operating system when it is
freed (``mmap``'d chunks, and the heap's top beyond the trim threshold) and comes back as fresh pages, each one a
page fault, in the next step. On the 2-core development machine αF-P4CNN took about 26,000 page faults per
training step that way (some 100 MiB, about 10 % of its step time), P4CNN none once warm. :func:`keep_freed_memory`
makes glibc keep freed memory in the process for reuse (the effect of a caching allocator such as jemalloc or
tcmalloc, which PyTorch's CPU performance guide recommends); the process's peak memory is unchanged, its memory is
not returned to the system before it exits.

``ATTENTIVE_GCNN_MALLOC=default`` keeps glibc's defaults. Nothing happens on other C libraries or systems.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = "ATTENTIVE_GCNN_MALLOC"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # chunks above this still get their own mapping (glibc's largest allowed value)
TRIM_THRESHOLD = 2**31 - 1  # give the heap's top back only beyond 2 GiB of free memory there

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's thresholds so that freed memory stays in the process (once per process); True if in effect.

    False where ``ATTENTIVE_GCNN_MALLOC=default``, or where the C library is not glibc.
    """
    global _applied
    if _applied is None:
        _applied = os.environ.get(ENV, "keep") != "default" and _mallopt_glibc()
    return _applied


def _mallopt_glibc() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to set
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def describe() -> str:
    """One line for reports: this process's allocator setting (as :func:`keep_freed_memory` left it)."""
    if _applied:
        return (
            f"glibc malloc keeping freed memory (M_MMAP_THRESHOLD {MMAP_THRESHOLD // 2**20} MiB, M_TRIM_THRESHOLD "
            f"2 GiB; {ENV}=default for glibc's defaults)"
        )
    return "the C library's default malloc"
