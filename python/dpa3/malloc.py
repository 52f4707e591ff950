"""Let glibc's malloc keep freed memory for reuse (the ``dpa3`` command calls this at start).

A model evaluation allocates and frees the same large tensors every call (tens to hundreds of
MB each from ~1,000 atoms on).  With glibc's defaults, blocks above the mmap threshold
(dynamic, at most 32 MB) are mmap-ed and unmapped again, and free memory at the top of the heap
goes back to the kernel, so every call faults those pages in again: an evaluation of 1,536
water atoms (float32 recipe, one process) made ~2 million page faults and took twice as long as
with tcmalloc (``docs/lammps.md``, "Running").  :func:`keep_freed_memory` sets
``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` to their maximum (2 GiB), as tcmalloc behaves:
freed memory stays in the process, the resident set stays at the peak of a call (which every
call reaches anyway).  With gperftools' tcmalloc preloaded instead, free spans go back to the
kernel a little at a time (its release rate, default 1): at 6,144 atoms in one process every
other evaluation made ~1 million page faults (2.9 s of system time in 31 s); the release rate is
then set to 0 (what ``TCMALLOC_RELEASE_RATE=0`` does; left alone when that variable is set).
Numerics are not affected.  ``pair_style dpa3`` does the same in LAMMPS.

Nothing happens at import; the ``dpa3`` command and :class:`dpa3.calculator.DPA3Calculator`
(when constructed, unless told not to) call it; other Python code may call it once.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1
# gperftools' tcmalloc: its release-rate flag (a double; the symbol of its FLAGS_ variable)
TCMALLOC_RELEASE_RATE = (
    "_ZN62FLAG__namespace_do_not_use_directly_use_DECLARE_double_instead"
    "27FLAGS_tcmalloc_release_rateE"
)


def keep_freed_memory() -> str | None:
    """Set glibc's malloc thresholds or tcmalloc's release rate (see the module); returns None
    when set, else why not (another allocator is preloaded, not Linux/glibc, ``mallopt``
    refused, or ``TCMALLOC_RELEASE_RATE`` is set)."""
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
        return _tcmalloc_keeps_freed_memory(process)
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, _INT_MAX) != 1 or mallopt(_M_TRIM_THRESHOLD, _INT_MAX) != 1:
        return "mallopt refused the thresholds"
    return None


def _tcmalloc_keeps_freed_memory(process: ctypes.CDLL) -> str | None:
    """Release rate 0 for gperftools' tcmalloc (None), else why not."""
    try:
        rate = ctypes.c_double.in_dll(process, TCMALLOC_RELEASE_RATE)
    except ValueError:
        return "the process's malloc is not glibc's nor tcmalloc's (another allocator is preloaded)"
    if "TCMALLOC_RELEASE_RATE" in os.environ:
        return "the process's malloc is tcmalloc, whose TCMALLOC_RELEASE_RATE is set"
    rate.value = 0.0
    return None
