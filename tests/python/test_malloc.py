"""dpa3.malloc.keep_freed_memory: glibc keeps a freed large block for the next allocation.

Each case runs in a fresh interpreter (mallopt changes the process for good): a 256 MiB block is
allocated, written, freed, allocated and written again; the page faults of the second write are
counted.  With glibc's defaults the block is mmap-ed and unmapped on free, so the second write
faults every page in again; after keep_freed_memory() it reuses the freed pages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = r"""
import ctypes, json, resource, sys
from dpa3.malloc import keep_freed_memory
why = keep_freed_memory() if sys.argv[1] == "keep" else "not called"
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
n = 256 << 20
p = libc.malloc(n); ctypes.memset(p, 1, n); libc.free(p)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
p = libc.malloc(n); ctypes.memset(p, 2, n)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
libc.free(p)
print(json.dumps({"why": why, "faults": faults, "pages": n // resource.getpagesize()}))
"""


def _run(mode: str) -> dict:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_freed_large_block_is_reused_without_page_faults():
    default = _run("default")
    kept = _run("keep")
    assert kept["why"] is None, kept
    # glibc's default: the second write faults (nearly) every page of the block in again
    assert default["faults"] > 0.9 * default["pages"], default
    assert kept["faults"] < 0.01 * kept["pages"], kept


def test_another_allocator_is_left_alone(malloc_shim):
    """With another allocator preloaded nothing is changed and the reason says so."""
    env = dict(os.environ, LD_PRELOAD=str(malloc_shim))
    out = subprocess.run(
        [sys.executable, "-c", "from dpa3.malloc import keep_freed_memory as k; print(k())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "not glibc's" in out.stdout, out.stdout
