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
from pathlib import Path

SCRIPT = r"""
import ctypes, json, resource, sys
from dpa3.malloc import keep_freed_memory
why = keep_freed_memory() if sys.argv[1] == "keep" else "not called"
if sys.argv[1].startswith("calc"):  # what the ASE calculator does when constructed
    sys.path.insert(0, sys.argv[2])
    from conftest import make_model
    from dpa3.calculator import DPA3Calculator
    DPA3Calculator(make_model(seed=3), keep_freed_memory=sys.argv[1] == "calc")
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
    tests = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, tests],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_large_block_is_reused_without_page_faults():
    default = _run("default")
    kept = _run("keep")
    assert kept["why"] is None, kept
    # glibc's default: the second write faults (nearly) every page of the block in again
    assert default["faults"] > 0.9 * default["pages"], default
    assert kept["faults"] < 0.01 * kept["pages"], kept


def test_ase_calculator_keeps_freed_memory_unless_told_not_to():
    """DPA3Calculator sets the same as keep_freed_memory() when constructed (default), and
    leaves malloc alone with keep_freed_memory=False."""
    on = _run("calc")
    off = _run("calc-off")
    assert on["faults"] < 0.01 * on["pages"], on
    assert off["faults"] > 0.9 * off["pages"], off


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


RATE = r"""
import ctypes, json, sys
from dpa3.malloc import TCMALLOC_RELEASE_RATE, keep_freed_memory
rate = ctypes.c_double.in_dll(ctypes.CDLL(None), TCMALLOC_RELEASE_RATE)
before = rate.value
why = keep_freed_memory()
print(json.dumps({"why": why, "before": before, "after": rate.value}))
"""


def _rate(preload: str, **env: str) -> dict:
    full = {k: v for k, v in os.environ.items() if k != "TCMALLOC_RELEASE_RATE"}
    full.update(LD_PRELOAD=preload, **env)
    out = subprocess.run(
        [sys.executable, "-c", RATE], env=full, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tcmalloc_release_rate_is_set_to_zero(tcmalloc_shim):
    """With tcmalloc preloaded (a stand-in exporting its release-rate flag; and the real
    library too where this machine has it) the release rate goes from its default to 0, unless
    the user set TCMALLOC_RELEASE_RATE (then it is left alone and the reason says so)."""
    libs = [str(tcmalloc_shim)]
    real = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
    if os.path.exists(real):
        libs.append(real)
    for lib in libs:
        res = _rate(lib)
        assert res == {"why": None, "before": 1.0, "after": 0.0}, (lib, res)
        res = _rate(lib, TCMALLOC_RELEASE_RATE="3")
        assert res["after"] == res["before"] and res["before"] > 0, (lib, res)
        assert "TCMALLOC_RELEASE_RATE is set" in res["why"], (lib, res)
