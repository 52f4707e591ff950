"""A fixed directory-listing order for tests of system discovery.

DeePMD-kit lists the systems under a parent folder in the file system's order (``Path.rglob``).
The fixture generator (tests/deepmd_data/generate_reference.py) and the test that compares with
its output both patch ``os.scandir`` with :func:`reversed_scandir`, so the recorded order does not
depend on the file system and differs from ``sorted()``.
"""

from __future__ import annotations

import contextlib
import os


class _Listing(list):
    """A list that can stand in for the ``os.scandir`` iterator (context manager, ``close``)."""

    def __enter__(self) -> _Listing:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def close(self) -> None:
        return None


@contextlib.contextmanager
def reversed_scandir():
    """``os.scandir`` lists the entries of a folder by reversed name (``name[::-1]``)."""
    real = os.scandir

    def scandir(path="."):
        with real(path) as it:
            return _Listing(sorted(it, key=lambda e: e.name[::-1]))

    os.scandir = scandir
    try:
        yield
    finally:
        os.scandir = real
