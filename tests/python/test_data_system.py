"""DeePMD-kit npy systems: layouts, type maps, labels and clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dpa3.data.system import DataError, find_systems, load_system

DATA = Path(__file__).resolve().parents[2] / "examples" / "data"


def test_standard_multiset_and_type_map_order():
    s = load_system(DATA / "water" / "data_1", ["O", "H"])
    assert (s.nframes, s.natoms) == (160, 192)  # two sets concatenated
    assert s.coord.dtype == np.float64 and s.coord.shape == (160, 192, 3)
    assert s.box.shape == (160, 9) and s.pbc
    assert s.has_label("energy") and s.has_label("force") and not s.has_label("virial")
    assert s.labels["force"].shape == (160, 192, 3)
    raw = np.load(DATA / "water" / "data_1" / "set.001" / "coord.npy")
    np.testing.assert_array_equal(s.coord[80:].reshape(80, -1), raw.astype(np.float64))
    # a model type map in another order (and with extra elements) remaps the types
    r = load_system(DATA / "water" / "data_1", ["C", "H", "O"])
    assert set(np.unique(r.atype)) == {1, 2}
    np.testing.assert_array_equal(r.atype == 2, s.atype == 0)
    np.testing.assert_array_equal(r.type_counts()[0], [0, 128, 64])


def test_mixed_type_and_nopbc():
    m = load_system(DATA / "alloy-emt-CuAlNi" / "natoms_31", ["Ni", "Cu", "Al"])
    raw = np.load(DATA / "alloy-emt-CuAlNi" / "natoms_31" / "set.000" / "real_atom_types.npy")
    np.testing.assert_array_equal(m.atype, np.array([1, 2, 0])[raw])
    assert m.has_label("virial")
    mol = load_system(DATA / "molecules-nopbc" / "C1H4O2", ["C", "H", "O"])
    assert mol.box is None and not mol.pbc and mol.natoms == 7


def test_element_missing_from_type_map():
    with pytest.raises(DataError, match=r"\['H'\].*not in the model type_map"):
        load_system(DATA / "water" / "data_0", ["O", "C"])


def test_find_systems(tmp_path):
    found = find_systems([DATA / "alloy-emt-CuAlNi"])  # DeePMD-kit's order: test_deepmd_data
    expected = [str(p.parent) for p in sorted(DATA.glob("alloy-emt-CuAlNi/*/type.raw"))]
    assert sorted(found) == expected and len(expected) == 6
    assert find_systems([DATA / "water" / "data_0"]) == [str(DATA / "water" / "data_0")]
    with pytest.raises(DataError, match="does not exist"):
        find_systems([tmp_path / "nope"])
    with pytest.raises(DataError, match="no system"):
        find_systems([tmp_path])


@pytest.fixture
def water_copy(tmp_path):
    dst = tmp_path / "sys"
    shutil.copytree(DATA / "water" / "data_0", dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def test_missing_label_turns_term_off(water_copy):
    (water_copy / "set.000" / "energy.npy").unlink()
    s = load_system(water_copy, ["O", "H"])
    assert not s.has_label("energy") and s.has_label("force")
    assert np.all(s.labels["energy"] == 0)


def test_shape_errors_name_the_file(water_copy):
    f = water_copy / "set.000" / "force.npy"
    np.save(f, np.zeros((80, 10)))
    with pytest.raises(DataError, match=r"force\.npy.*\(80, 10\).*natoms = 192"):
        load_system(water_copy, ["O", "H"])
    np.save(f, np.zeros((79, 576)))
    with pytest.raises(DataError, match=r"force\.npy.*79 frames"):
        load_system(water_copy, ["O", "H"])


def test_nan_label(water_copy):
    e = np.load(water_copy / "set.000" / "energy.npy").astype(np.float64)
    e[3] = np.nan
    np.save(water_copy / "set.000" / "energy.npy", e)
    with pytest.raises(DataError, match=r"energy\.npy.*NaN.*frame 3"):
        load_system(water_copy, ["O", "H"])


def test_missing_box_and_coord(water_copy):
    (water_copy / "set.000" / "box.npy").unlink()
    with pytest.raises(DataError, match=r"box\.npy' is missing.*nopbc"):
        load_system(water_copy, ["O", "H"])
    (water_copy / "nopbc").touch()
    assert load_system(water_copy, ["O", "H"]).box is None
    (water_copy / "set.000" / "coord.npy").unlink()
    with pytest.raises(DataError, match=r"coord\.npy' is missing"):
        load_system(water_copy, ["O", "H"])


def test_type_raw_mismatch(water_copy):
    (water_copy / "type.raw").write_text("0\n1\n1\n")
    with pytest.raises(DataError, match=r"coord\.npy.*natoms = 3"):
        load_system(water_copy, ["O", "H"])
