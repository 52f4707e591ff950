"""``training.stat_file`` against DeePMD-kit 3.2: the files ``dp --pt train`` wrote for a tiny
DPA3 input (tests/data/dp_train/, made by tests/dp_train/generate_reference.py, see NOTES.md
there) are read by dpa3 with the same result, dpa3 writes the same layout and numbers, and
DeePMD-kit loaded the values dpa3 writes from a file dpa3 wrote (recorded in the fixture)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from dpa3.errors import ConfigError
from dpa3.train.trainer import Trainer

FIX = Path(__file__).resolve().parents[1] / "data" / "dp_train"
REF = json.loads((FIX / "stat_reference.json").read_text())
DP_FILES = {"hdf5": "dp_stat.hdf5", "folder": "dp_stat_dir"}


def _input(tmp_path: Path, stat_file: str, **training) -> dict:
    """The fixture's input (two systems, every frame in the statistics), 0 steps, no
    TensorBoard, run from ``tmp_path`` holding copies of the systems."""
    for name in ("mol", "water"):
        if not (tmp_path / name).exists():
            shutil.copytree(FIX / name, tmp_path / name)
    d = copy.deepcopy(json.loads((FIX / "input.json").read_text()))
    d["training"].update(numb_steps=0, tensorboard=False, stat_file=stat_file, **training)
    return d


def _layout(path: Path) -> dict[str, tuple]:
    """Every group and dataset of an HDF5 stat file or a stat folder: relative name ->
    (shape, dtype) for datasets, () for groups."""
    out: dict[str, tuple] = {}
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            rel = str(p.relative_to(path))
            out[rel] = () if p.is_dir() else (np.load(p).shape, np.load(p).dtype.str)
    else:
        with h5py.File(path, "r") as f:
            f.visititems(
                lambda n, o: out.__setitem__(
                    n, (o.shape, o.dtype.str) if isinstance(o, h5py.Dataset) else ()
                )
            )
    return out


def _values(path: Path, name: str) -> np.ndarray:
    if path.is_dir():
        return np.load(path / name)
    with h5py.File(path, "r") as f:
        return f[name][()]


@pytest.mark.parametrize("kind", list(DP_FILES))
def test_dpa3_reads_deepmd_stat_file(tmp_path, monkeypatch, kind):
    """stat_file_mode 'read' on the file dp wrote: dpa3's out_bias/out_std are exactly those
    of dp's checkpoint."""
    monkeypatch.chdir(tmp_path)
    src = FIX / DP_FILES[kind]
    name = "stat.hdf5" if kind == "hdf5" else "stat_dir"
    (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    t = Trainer(_input(tmp_path, name, stat_file_mode="read"))
    assert t.model.out_bias.tolist() == REF["dp"]["out_bias"]
    assert t.model.out_std.tolist() == REF["dp"]["out_std"]
    # another type map has no group: 'read' refuses, naming the group
    d = _input(tmp_path, name, stat_file_mode="read")
    d["model"]["type_map"] = ["H", "C", "O"]
    with pytest.raises(ConfigError, match="has no statistics for the type map.*group 'H C O'"):
        Trainer(d)


@pytest.mark.parametrize("kind", list(DP_FILES))
def test_dpa3_writes_deepmd_layout(tmp_path, monkeypatch, kind):
    """Computed by dpa3 from the same frames: the same groups, dataset names, shapes and
    dtypes as dp's file, and the same numbers (least squares on the same frames)."""
    monkeypatch.chdir(tmp_path)
    name = "ours.hdf5" if kind == "hdf5" else "ours_dir"
    t = Trainer(_input(tmp_path, name))
    ours, theirs = tmp_path / name, FIX / DP_FILES[kind]
    assert ours.is_dir() == (kind == "folder")
    assert _layout(ours) == _layout(theirs)
    assert set(_layout(ours)) == {
        "C H O",
        "C H O/bias_atom_energy",
        "C H O/std_atom_energy",
        "C H O/observed_type",
    }
    for ds in ("bias_atom_energy", "std_atom_energy"):
        np.testing.assert_allclose(
            _values(ours, f"C H O/{ds}"), _values(theirs, f"C H O/{ds}"), rtol=1e-10
        )
    assert _values(ours, "C H O/observed_type").tolist() == [b"H", b"C", b"O"]
    np.testing.assert_allclose(t.model.out_bias.numpy(), REF["dp"]["out_bias"], rtol=1e-10)
    # dp's file is used as it is in 'update' mode (not rewritten)
    shutil.copy(FIX / "dp_stat.hdf5", tmp_path / "dp.hdf5")
    before = (tmp_path / "dp.hdf5").read_bytes()
    Trainer(_input(tmp_path, "dp.hdf5"))
    assert (tmp_path / "dp.hdf5").read_bytes() == before


def test_deepmd_read_the_file_dpa3_writes(tmp_path, monkeypatch):
    """The generator had dpa3 write statistics of the molecules alone (dpa3_stat.hdf5) and
    trained dp on both systems with that file in 'read' mode: dp loaded them (they differ
    from its own).  dpa3 today writes that file again, the same layout and numbers, so dp
    reads dpa3's files."""
    monkeypatch.chdir(tmp_path)
    d = _input(tmp_path, "mol_only.hdf5")
    d["training"]["training_data"] = {"systems": ["mol"], "batch_size": 6}
    t = Trainer(d)
    got = REF["dp_read_dpa3"]
    assert not np.allclose(got["out_bias"], REF["dp"]["out_bias"])
    np.testing.assert_allclose(t.model.out_bias.numpy(), got["out_bias"], rtol=1e-10)
    np.testing.assert_allclose(t.model.out_std.numpy(), got["out_std"], rtol=1e-10)
    fixture = FIX / "dpa3_stat.hdf5"
    assert (
        _layout(tmp_path / "mol_only.hdf5") == _layout(fixture) == _layout(FIX / DP_FILES["hdf5"])
    )
    for ds in ("bias_atom_energy", "std_atom_energy", "observed_type"):
        a, b = _values(tmp_path / "mol_only.hdf5", f"C H O/{ds}"), _values(fixture, f"C H O/{ds}")
        assert a.tolist() == b.tolist(), ds
