"""What a training run leaves in a folder, as the fixtures of tests/data/dp_train/ record it:
shared by generate_reference.py (run with DeePMD-kit) and tests/python/test_checkpoint.py
(run with dpa3), so both tools' folders are described by the same code.  Standard library only.
"""

from __future__ import annotations

import os
from pathlib import Path


def ckpt_listing(folder: Path) -> dict:
    """The checkpoint files of a run folder: name -> ``file`` or ``-> target`` (symlinks),
    and the text of the ``checkpoint`` pointer file."""
    files = {
        p.name: f"-> {os.readlink(p)}" if p.is_symlink() else "file"
        for p in sorted(folder.iterdir())
        if p.name.startswith("model.ckpt")
    }
    return {"files": files, "checkpoint": (folder / "checkpoint").read_text()}


def folder_listing(folder: Path, skip: set[str]) -> dict:
    """Every entry of ``folder`` but ``skip``: ``file``, ``folder`` or ``-> target``, and the
    text of a ``checkpoint`` file in it (``None`` if there is none)."""
    files = {
        p.name: f"-> {os.readlink(p)}" if p.is_symlink() else "folder" if p.is_dir() else "file"
        for p in sorted(folder.iterdir())
        if p.name not in skip
    }
    ptr = folder / "checkpoint"
    return {"files": files, "checkpoint": ptr.read_text() if ptr.is_file() else None}
