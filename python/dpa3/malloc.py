"""Let glibc's malloc keep freed memory for reuse (the ``dpa3`` command calls this at start).

A model evaluation allocates and frees the same large tensors every call (tens to hundreds of
MB each from ~1,000 atoms on).  With glibc's defaults, blocks above the mmap threshold
(dynamic, at most 32 MB) are mmap-ed and unmapped again, and free memory at the top of the heap
goes back to the kernel, so every call faults those pages in again: an evaluation of 1,536
water atoms (float32 recipe, one process) made ~2 million page faults and took twice as long as
with tcmalloc (``docs/lammps.md``, "Running").  :func:`keep_freed_memory` sets
``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` to their maximum (2 GiB), as tcmalloc behaves:
freed memory stays in the process, the resident set stays at the peak of a call (which every
call reaches anyway).  Numerics are not affected.  ``pair_style dpa3`` does the same in LAMMPS.

Nothing happens at import; a library user (an ASE script) may call it once.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1


def keep_freed_memory() -> str | None:
    """Set glibc's malloc thresholds (see the module); returns None when set, else why not
    (another allocator is preloaded, not Linux/glibc, or ``mallopt`` refused)."""
    if not sys.platform.startswith("linux"):
        return "not Linux"
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "no glibc (libc.so.6 with mallopt)"
    process = ctypes.CDLL(None)
    used = ctypes.cast(process.malloc, ctypes.c_void_p).value
    if used != ctypes.cast(libc.malloc, ctypes.c_void_p).value:
        return "the process's malloc is not glibc's (another allocator is preloaded)"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, _INT_MAX) != 1 or mallopt(_M_TRIM_THRESHOLD, _INT_MAX) != 1:
        return "mallopt refused the thresholds"
    return None
