"""DeePMD-kit's data handling, against fixtures DeePMD-kit made (tests/data/deepmd_data/,
generator tests/deepmd_data/generate_reference.py): HDF5 systems, the order in which
``systems`` are found, ``rglob_patterns``, the data summary of the training log, and DeePMD-kit
frozen models given to ``dpa3 test`` / :class:`DPA3Calculator`."""

from __future__ import annotations

import json
import logging
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from scandir_order import reversed_scandir

from dpa3.config._base import Section
from dpa3.config.train import DataConfig
from dpa3.data.loader import DataSampler
from dpa3.data.system import find_systems, load_system
from dpa3.errors import CheckpointError, DataError

FIX = Path(__file__).resolve().parents[1] / "data" / "deepmd_data"
REF = json.loads((FIX / "reference.json").read_text())
TRAIN_INPUT = json.loads((FIX / "train_input.json").read_text())
LONG = "npy_systems_written_by_dpdata_multi"
TYPE_MAP = ["O", "H", "C"]


# ----------------------------------------------------------------------------- HDF5


@pytest.mark.parametrize("spelling", ["multi.hdf5", "sets.hdf5#/top"])
def test_hdf5_systems_found_as_deepmd_finds_them(spelling, monkeypatch):
    monkeypatch.chdir(FIX)
    assert find_systems(spelling) == REF["hdf5"]["process_systems"][spelling]
    assert find_systems([spelling]) == REF["hdf5"]["process_systems"][spelling]


def test_hdf5_without_a_system_at_the_searched_level(monkeypatch):
    monkeypatch.chdir(FIX)
    assert REF["hdf5"]["process_systems"]["sets.hdf5"] == []  # DeePMD-kit searches one level
    with pytest.raises(DataError, match="no system"):
        find_systems("sets.hdf5")


@pytest.mark.parametrize(
    ("h5", "npy"),
    [
        ("multi.hdf5#/O64H128C0", f"{LONG}/O64H128C0"),
        ("multi.hdf5#/O2H4C1", f"{LONG}/O2H4C1"),
        ("sets.hdf5#/top/water", "npy_sets"),
    ],
)
def test_hdf5_system_reads_as_its_npy_twin(h5, npy, monkeypatch):
    """dpdata wrote both from the same frames: same coordinates, cells, types and labels."""
    monkeypatch.chdir(FIX)
    a, b = load_system(h5, TYPE_MAP), load_system(npy, TYPE_MAP)
    ref = REF["hdf5"]["systems"][h5]
    assert (a.natoms, a.nframes, a.pbc) == (ref["natoms"], ref["nframes"], ref["pbc"])
    assert len(a.set_nframes) == ref["nsets"] and a.set_batches(2) == ref["numb_batch_2"]
    assert a.set_nframes == b.set_nframes
    np.testing.assert_array_equal(a.coord, b.coord)
    np.testing.assert_array_equal(a.atype, b.atype)
    if a.pbc:
        np.testing.assert_array_equal(a.box, b.box)
    else:
        assert a.box is None and b.box is None
    for k in ("energy", "force", "virial"):
        np.testing.assert_array_equal(a.labels[k], b.labels[k])
        np.testing.assert_array_equal(a.find[k], b.find[k])
    assert a.find["energy"].all() and a.find["force"].all() and not a.find["virial"].any()
    # the raw HDF5 datasets, read here without dpa3 (first set: coordinates in the file order)
    import h5py

    file, group = h5.split("#")
    with h5py.File(FIX / file) as f:
        g = f[group]
        names = [n.decode() for n in g["type_map.raw"][:]]
        types = g["type.raw"][:]
        first = sorted(k for k in g if k.startswith("set."))[0]
        nf = g[first]["coord.npy"].shape[0]
        np.testing.assert_array_equal(a.coord[:nf].reshape(nf, -1), g[first]["coord.npy"][:])
        energy = g[first]["energy.npy"][:].reshape(nf)
        np.testing.assert_array_equal(a.labels["energy"][:nf], energy)
    assert [TYPE_MAP[t] for t in a.atype[0]] == [names[t] for t in types]


def test_hdf5_needs_h5py(monkeypatch):
    monkeypatch.chdir(FIX)
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(DataError, match="install h5py"):
        load_system("multi.hdf5#/O2H4C1", TYPE_MAP)


def test_hdf5_missing_group_is_named(monkeypatch):
    monkeypatch.chdir(FIX)
    with pytest.raises(DataError, match="no group '/nothing'"):
        load_system("multi.hdf5#/nothing", TYPE_MAP)


# ----------------------------------------------------------------------------- order


@pytest.mark.parametrize("case", sorted(REF["order"]["cases"]))
def test_systems_come_in_deepmd_order(case, tmp_path, monkeypatch):
    for rel in REF["order"]["tree"]:
        d = tmp_path / "tree" / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "type.raw").write_text("0\n")
    (tmp_path / "tree" / "c" / "notes.txt").write_text("not a system\n")
    monkeypatch.chdir(tmp_path)
    c = REF["order"]["cases"][case]
    with reversed_scandir():
        found = find_systems(c["systems"], patterns=c["rglob_patterns"])
    if c["ordered"]:
        assert found == c["found"]
        assert found != sorted(found)  # the case tells DeePMD-kit's order from a sorted one
    else:  # rglob_patterns: DeePMD-kit's order is that of a set; the same systems
        assert sorted(found) == c["found"] and len(found) == len(set(found))


def _data_config(sec: dict, validation: bool = False) -> DataConfig:
    return DataConfig.parse(Section(sec, "training.training_data"), validation)


def test_rglob_patterns_key(tmp_path, monkeypatch):
    monkeypatch.chdir(FIX)
    cfg = _data_config({"systems": ".", "rglob_patterns": ["O2*"], "batch_size": 1})
    assert cfg.rglob_patterns == ("O2*",)
    s = DataSampler.from_config(cfg, TYPE_MAP, seed=1)
    assert [b.system.path for b in s.batchers] == [f"{LONG}/O2H4C1"]
    cfg = _data_config({"systems": ".", "rglob_patterns": ["O*"], "batch_size": [1, 2]})
    with pytest.raises(DataError, match="rglob_patterns"):
        DataSampler.from_config(cfg, TYPE_MAP, seed=1)


# ----------------------------------------------------------------------------- summary


def _dp_summary() -> list[str]:
    return (FIX / "dp_summary.txt").read_text().splitlines()


def test_data_summary_matches_dp(monkeypatch):
    monkeypatch.chdir(FIX)
    t = TRAIN_INPUT["training"]
    train = DataSampler.from_config(_data_config(t["training_data"]), TYPE_MAP, seed=1)
    valid = DataSampler.from_config(_data_config(t["validation_data"], True), TYPE_MAP, seed=2)
    assert train.summary("training") + valid.summary("validation") == _dp_summary()


def test_training_logs_the_data_summary(tmp_path, monkeypatch, caplog):
    from dpa3.train.trainer import Trainer

    monkeypatch.chdir(FIX)
    data = json.loads(json.dumps(TRAIN_INPUT))
    data["training"]["save_ckpt"] = str(tmp_path / "model.ckpt")
    data["training"]["disp_file"] = str(tmp_path / "lcurve.out")
    with caplog.at_level(logging.INFO):
        Trainer(data)
    lines = [r.getMessage() for r in caplog.records]
    start = lines.index(_dp_summary()[0])
    assert lines[start : start + len(_dp_summary())] == _dp_summary()


# ----------------------------------------------------------------------------- frozen models


def test_deepmd_frozen_model_is_converted_on_load():
    """``dp --pt freeze`` output: dpa3 (test, model-devi, calculator) runs it as DeePMD-kit."""
    from dpa3.export.load import load_model
    from dpa3.train.evaluate import predict

    ref = np.load(FIX / "m0_eval.npz")
    model = load_model(FIX / "m0_frozen.pth")
    out = predict(model, ref["coord"].reshape(2, -1, 3), np.tile(ref["atype"], (2, 1)), ref["box"])
    np.testing.assert_allclose(out["energy"].reshape(2), ref["energy"], rtol=1e-10)
    np.testing.assert_allclose(out["force"], ref["force"], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(out["virial"].reshape(2, 9), ref["virial"], rtol=1e-8, atol=1e-9)


def test_calculator_runs_a_deepmd_frozen_model():
    import ase

    from dpa3.calculator import DPA3Calculator

    ref = np.load(FIX / "m0_eval.npz")
    symbols = [["O", "H"][t] for t in ref["atype"]]
    pos, cell = ref["coord"][0].reshape(-1, 3), ref["box"][0].reshape(3, 3)
    atoms = ase.Atoms(symbols, positions=pos, cell=cell, pbc=True)
    atoms.calc = DPA3Calculator(str(FIX / "m0_frozen.pth"), device="cpu")
    assert atoms.get_potential_energy() == pytest.approx(float(ref["energy"][0]), rel=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), ref["force"][0], rtol=1e-8, atol=1e-10)


def test_unconvertible_deepmd_frozen_model_names_the_command(tmp_path):
    from dpa3.export.load import load_model

    bad = tmp_path / "other.pth"  # a DeePMD-kit TorchScript archive without a usable model
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("other/code/__torch__/deepmd/pt/model/model/ener_model.py", "")
        zf.writestr("other/data.pkl", b"not a pickle")
        zf.writestr("other/constants.pkl", b"")
    with pytest.raises(
        CheckpointError, match=r"dpa3 convert-deepmd .*other\.pth other-dpa3\.ckpt\.pt"
    ):
        load_model(bad)


# ----------------------------------------------------------------------------- commands


def test_dpa3_test_reads_hdf5_systems(monkeypatch, capfd):
    """``dpa3 test -s file.hdf5#/group`` (as ``dp test -s``) gives what the npy twin gives."""
    from dpa3.cli.main import main

    monkeypatch.chdir(FIX)
    results = {}
    for spelling in ("sets.hdf5#/top", "npy_sets"):
        capfd.readouterr()
        assert main(["test", "-m", "m0_frozen.pth", "-s", spelling, "--device", "cpu"]) == 0
        msgs = "".join(capfd.readouterr()).splitlines()
        results[spelling] = [m for m in msgs if "RMSE" in m or "MAE" in m]
        assert any("testing system : sets.hdf5#/top/water" in m for m in msgs) == (
            spelling != "npy_sets"
        )
    assert len(results["npy_sets"]) == 12 and results["sets.hdf5#/top"] == results["npy_sets"]


def test_model_devi_reads_hdf5_systems(monkeypatch):
    from dpa3.cli.model_devi import _systems
    from dpa3.model_devi import read_frames

    monkeypatch.chdir(FIX)
    assert _systems("multi.hdf5") == REF["hdf5"]["process_systems"]["multi.hdf5"]
    assert _systems("sets.hdf5#/top") == ["sets.hdf5#/top/water"]
    a = read_frames("sets.hdf5#/top/water", TYPE_MAP)
    b = read_frames("npy_sets", TYPE_MAP)
    np.testing.assert_array_equal(a.coord, b.coord)
    np.testing.assert_array_equal(a.box, b.box)
