"""The training and benchmark processes keep freed memory for reuse (glibc), unless told not to."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from attentive_gcnn.accel import allocator

# in a fresh process: apply the setting, then free a 24 MiB block at the heap's top and see how much of it the
# process gives back to the system (glibc's default: all of it, as its own mapping; kept: none)
PROBE = """
import ctypes, os
from attentive_gcnn.accel import allocator
applied = allocator.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
n = 24 << 20
p = libc.malloc(n)
ctypes.memset(p, 1, n)
before = rss()
libc.free(p)
print(applied, (before - rss()) / 2**20, allocator.describe())
"""

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None, reason="glibc only"
)


def probe(**env) -> tuple[bool, float, str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=os.environ | env, check=True
    )
    applied, returned, described = proc.stdout.strip().split(" ", 2)
    return applied == "True", float(returned), described


@glibc
def test_freed_memory_stays_in_the_process():
    applied, returned, described = probe()
    assert applied and returned < 1.0
    assert described.startswith("glibc malloc keeping freed memory")


@glibc
def test_the_default_allocator_on_request():  # negative control: glibc gives the block back
    applied, returned, described = probe(**{allocator.ENV: "default"})
    assert not applied and returned > 20.0
    assert described == "the C library's default malloc"
