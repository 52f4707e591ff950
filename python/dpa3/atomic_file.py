"""Atomic file writes: every file dpa3 writes goes through :func:`atomic_open`.

The content is written to a temporary name in the target's folder (``.<name>.tmp-<pid>``),
flushed to disk (``fsync``) and moved into place with ``os.replace``, then the folder is
synced; so a crash or a ``kill -9`` during a write leaves the previous file intact, never a
truncated one.  The temporary file is removed when the write fails; one that a killed process
left can be found by :data:`TMP_PATTERN` (checkpoints remove them at the next save).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import DataError

#: the temporary names of :func:`atomic_open`: groups ``name`` (the target's) and ``pid``
TMP_PATTERN = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")


def temporary_name(path: Path) -> Path:
    """The temporary name of ``path`` for this process (matches :data:`TMP_PATTERN`)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _checked(path: str | os.PathLike) -> Path:
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise DataError(f"output '{path}' is a folder, not a file")
    if not parent.is_dir():
        raise DataError(f"cannot write '{path}': folder '{parent}' does not exist")
    return path


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """``with atomic_open(path, "w") as fh: ...`` writes ``path`` atomically (module docstring).

    Raises :class:`~dpa3.errors.DataError` when ``path`` is a folder or its folder does not
    exist, or when the temporary file cannot be created (its reason).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', not {mode!r}")
    path = _checked(path)
    tmp = temporary_name(path)
    try:
        fh = open(tmp, mode)
    except OSError as err:
        raise DataError(f"cannot write '{path}': {err.strerror}") from None
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_open`)."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def symlink(target: str, link: str | os.PathLike) -> None:
    """Point the symlink ``link`` at ``target`` atomically (nothing on file systems without
    symlinks)."""
    link = Path(link)
    tmp = temporary_name(link)
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except OSError:
        if tmp.is_symlink():
            tmp.unlink()
