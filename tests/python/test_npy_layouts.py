"""Every npy layout DeePMD-kit 3.2 reads for an energy model, read by dpa3 as DeePMD-kit
reads it, or refused by name (issue 18, point 2).

The fixtures (tests/data/deepmd_data/layouts/, ``layouts_dp.npz``,
``layouts_reference.json``) come from tests/deepmd_data/generate_reference.py step 5: small
systems written with numpy, read by DeePMD-kit's ``DeepmdData`` with its energy loss's label
requirements through both of its readers (``get_test``, as ``dp test``; ``get_item_torch``,
as ``dp --pt train``).  Atoms in file order; types in the model type map O H C (the systems'
``type_map.raw`` is H O C).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dpa3.data.system import load_system
from dpa3.errors import DataError, DPA3Error

FIX = Path(__file__).resolve().parents[1] / "data" / "deepmd_data"
REF = json.loads((FIX / "layouts_reference.json").read_text())
DP = np.load(FIX / "layouts_dp.npz")
TYPE_MAP = REF["model_type_map"]
LABELS = ("energy", "force", "virial", "atom_ener", "atom_ener_coeff")

#: layouts both DeePMD-kit readers read alike, and dpa3 reads the same numbers
BOTH = [
    "standard",
    "labels_3d",
    "energy_column",
    "dtypes",
    "fortran_big_endian",
    "single_frame_1d",
    "energy_0d",
    "several_sets",
    "nopbc",
    "nopbc_with_box",
    "mixed",
    "atomic_spelling",
    "labels_missing_per_set",
    "extra_files",
    "type_raw_one_line",
    "no_type_map",
]
#: layouts only ``dp --pt train``'s reader reads (``dp test``'s fails): dpa3 reads them so
TRAIN_ONLY = ["coord_3d", "mixed_no_type_map"]
#: layout -> the words of dpa3's refusal
REFUSED = {
    "energy_transposed": r"energy\.npy' has shape \(1, 3\); expected \(nframes, 1\)",
    "force_3_by_natoms": r"force\.npy' has shape \(3, 3, 4\); expected \(nframes, 12\) or "
    r"\(nframes, 4, 3\)",
    "virtual_atoms": r"type -1 \(virtual atoms",
}


def test_every_layout_of_the_fixture_is_classified():
    assert sorted(BOTH + TRAIN_ONLY + list(REFUSED)) == sorted(REF["layouts"])


def _dp(name: str) -> dict[str, np.ndarray]:
    return {k.split("/", 1)[1]: DP[k] for k in DP.files if k.startswith(name + "/")}


@pytest.mark.parametrize("name", BOTH + TRAIN_ONLY)
def test_layout_reads_as_deepmd_reads_it(name):
    ref = REF["layouts"][name]
    readers = ["get_item_torch", "get_test"] if name in BOTH else ["get_item_torch"]
    assert ref["read_by"] == sorted(readers)
    assert ref["readers_agree"] is (True if name in BOTH else None)
    dp = _dp(name)
    s = load_system(FIX / "layouts" / name, TYPE_MAP)
    np.testing.assert_array_equal(s.coord, dp["coord"])
    assert s.pbc == ("box" in dp)
    if s.pbc:
        np.testing.assert_array_equal(s.box, dp["box"])
    np.testing.assert_array_equal(s.atype, dp["type"])
    np.testing.assert_array_equal(s.labels["energy"], dp["energy"])
    np.testing.assert_array_equal(s.labels["force"], dp["force"])
    for k in ("virial", "atom_ener", "atom_ener_coeff"):
        np.testing.assert_array_equal(s.labels[k], dp[k])
    for k in LABELS:
        np.testing.assert_array_equal(s.find[k], dp[f"find_{k}"])


def test_the_fixture_exercises_what_it_claims():
    """The layouts differ where they should (so that the comparisons above can fail)."""
    assert _dp("labels_missing_per_set")["find_energy"].tolist() == [False, False, True]
    assert _dp("labels_missing_per_set")["find_force"].tolist() == [True, True, False]
    assert _dp("atomic_spelling")["find_atom_ener"].all()
    assert not _dp("standard")["find_atom_ener"].any()
    assert (_dp("standard")["atom_ener_coeff"] == 1.0).all()  # the default where absent
    assert "box" not in _dp("nopbc_with_box")
    mixed = _dp("mixed")["type"]
    assert len({tuple(r) for r in mixed}) > 1  # types change between frames
    # type_map.raw H O C mapped into O H C; without it, the integers are taken as they are
    assert _dp("standard")["type"][0].tolist() == [1, 0, 0, 1]
    assert _dp("no_type_map")["type"][0].tolist() == [0, 1, 1, 0]
    for name in ("dtypes", "single_frame_1d", "energy_0d", "several_sets"):
        sets = sorted(p.name for p in (FIX / "layouts" / name).glob("set.*"))
        assert sets == (["set.000", "set.01", "set.1"] if name == "several_sets" else ["set.000"])


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_layout_refused_by_name(name):
    with pytest.raises(DataError, match=REFUSED[name]) as err:
        load_system(FIX / "layouts" / name, TYPE_MAP)
    assert isinstance(err.value, DPA3Error)
    assert name in str(err.value)  # the path of the system or file


def test_why_these_layouts_are_refused():
    """What DeePMD-kit does with them: one reader fails (energy (1, nframes)); forces stored
    as (nframes, 3, natoms) are reshaped in memory order into other forces (a silent misread
    in both readers); virtual atoms are DeePMD-kit's padding, which dpa3 does not model."""
    ref = REF["layouts"]
    assert ref["energy_transposed"]["read_by"] == ["get_test"]
    assert "cannot reshape" in ref["energy_transposed"]["errors"]["get_item_torch"]
    stored = np.load(FIX / "layouts" / "force_3_by_natoms" / "set.000" / "force.npy")
    assert stored.shape == (3, 3, 4)
    dp_force = _dp("force_3_by_natoms")["force"]
    np.testing.assert_array_equal(dp_force, stored.reshape(3, 4, 3))
    assert not np.allclose(dp_force, stored.transpose(0, 2, 1))
    assert (_dp("virtual_atoms")["type"] == -1).sum() == 1


@pytest.mark.parametrize(
    ("rel", "array", "match"),
    [
        ("set.000/coord.npy", np.zeros((4, 3)), r"coord\.npy' has shape \(4, 3\)"),
        ("set.000/box.npy", np.zeros((3, 3, 2)), r"box\.npy' has shape \(3, 3, 2\)"),
        ("set.000/virial.npy", np.zeros((3, 9, 1)), r"virial\.npy' has shape \(3, 9, 1\)"),
        ("set.000/atomic_ener.npy", np.zeros((3, 5)), r"atomic_ener\.npy' has shape \(3, 5\)"),
    ],
)
def test_other_shapes_are_refused_with_the_file_named(tmp_path, rel, array, match):
    import shutil

    shutil.copytree(FIX / "layouts" / "standard", tmp_path / "s")
    np.save(tmp_path / "s" / rel, array)
    with pytest.raises(DataError, match=match):
        load_system(tmp_path / "s", TYPE_MAP)
