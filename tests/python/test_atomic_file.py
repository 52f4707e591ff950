"""dpa3.atomic_file: the one way dpa3 writes files (checkpoints, frozen models, model_devi.out,
statistics, out.json, systems)."""

from __future__ import annotations

import os

import pytest

from dpa3.atomic_file import TMP_PATTERN, atomic_open, symlink, temporary_name, write_text
from dpa3.errors import DataError


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old\n")
    write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_open(path, "wb") as fh:
            fh.write(b"half of the new")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_temporary_name_is_the_documented_pattern(tmp_path):
    tmp = temporary_name(tmp_path / "model.ckpt-3.pt")
    m = TMP_PATTERN.match(tmp.name)
    assert tmp.parent == tmp_path and m is not None
    assert (m.group("name"), int(m.group("pid"))) == ("model.ckpt-3.pt", os.getpid())


def test_bad_targets_are_named(tmp_path):
    with pytest.raises(DataError, match="is a folder, not a file"):
        write_text(tmp_path, "x")
    with pytest.raises(DataError, match="folder '.*missing' does not exist"):
        write_text(tmp_path / "missing" / "out.txt", "x")
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_open(tmp_path / "x", "a"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_symlink_is_replaced(tmp_path):
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    symlink("a", tmp_path / "link")
    symlink("b", tmp_path / "link")
    assert os.readlink(tmp_path / "link") == "b" and (tmp_path / "link").read_text() == "b"
