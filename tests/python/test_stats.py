"""Energy bias least squares, the stat file cache, and neighbour statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dpa3.config.model import AutoSel
from dpa3.data.neighbor import neighbor_counts
from dpa3.data.stat_file import EnergyStat, load_stat, save_stat, sort_by_atomic_number
from dpa3.data.stats import auto_sel, fit_energy_bias, neighbor_stat
from dpa3.data.system import load_system
from dpa3.errors import ConfigError

DATA = Path(__file__).resolve().parents[2] / "examples" / "data"


def test_lstsq_recovers_bias_and_absent_type_is_zero():
    rng = np.random.default_rng(0)
    counts = np.zeros((20, 3))
    counts[:, 0] = rng.integers(1, 6, 20)
    counts[:, 2] = rng.integers(1, 6, 20)  # type 1 never appears
    true = np.array([-3.0, 0.0, -7.5])
    e = counts @ true
    bias, std = fit_energy_bias(e, counts)
    np.testing.assert_allclose(bias, true, atol=1e-10)
    assert bias[1] == 0.0
    np.testing.assert_allclose(std, 0.0, atol=1e-10)
    # identical to numpy.linalg.lstsq(rcond=None) including the rank-deficient case
    c = np.tile([[64.0, 128.0]], (5, 1))
    e = rng.normal(size=5) - 500
    bias, _ = fit_energy_bias(e, c)
    want = np.linalg.lstsq(c, e, rcond=None)[0]
    np.testing.assert_allclose(bias, want)


def test_preset_bias_removed_from_regression():
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 5, size=(30, 2)).astype(float)
    e = counts @ np.array([-2.0, -5.0]) + 0.01 * rng.normal(size=30)
    bias, _ = fit_energy_bias(e, counts, preset=[None, -4.0])
    assert bias[1] == -4.0
    want = np.linalg.lstsq(counts[:, :1], e - counts[:, 1] * -4.0, rcond=None)[0][0]
    assert bias[0] == pytest.approx(want)


@pytest.mark.parametrize("name", ["dpa3.hdf5", "dpa3.H5", "stat_dir", "stat.npz"])
def test_stat_file_roundtrip_per_type_map(tmp_path, name):
    """One group per type map ("O H C"); another type map has none; an .h5/.hdf5 name is one
    HDF5 file, any other a folder of suffix-less .npy files (DeePMD-kit's rule)."""
    p = tmp_path / name
    st = EnergyStat(("O", "H", "C"), np.array([1.0, 2.0, 3.0]), np.full(3, 0.5), ("H", "C", "O"))
    assert save_stat(p, st) == p
    assert p.is_file() == name.lower().endswith((".hdf5", ".h5"))
    if p.is_dir():
        assert sorted(x.name for x in (p / "O H C").iterdir()) == [
            "bias_atom_energy",
            "observed_type",
            "std_atom_energy",
        ]
        assert np.load(p / "O H C" / "bias_atom_energy").shape == (3, 1)
    back = load_stat(p, ["O", "H", "C"])
    np.testing.assert_array_equal(back.bias, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(back.std, [0.5, 0.5, 0.5])
    assert back.observed == ("H", "C", "O")
    assert load_stat(p, ["H", "O", "C"]) is None  # another type map: another group
    save_stat(p, EnergyStat(("H", "O"), np.array([-1.0, -2.0]), np.ones(2), ("H", "O")))
    np.testing.assert_array_equal(load_stat(p, ["O", "H", "C"]).bias, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(load_stat(p, ["H", "O"]).bias, [-1.0, -2.0])
    assert load_stat(tmp_path / "other.hdf5", ["O"]) is None
    assert not list(tmp_path.glob(".*tmp*")) and not list(p.rglob(".*tmp*") if p.is_dir() else [])


def test_stat_file_interrupted_write_and_bad_file(tmp_path):
    """A group with DeePMD-kit's transaction marker counts as missing; a file that is not
    HDF5 is named in the error."""
    p = tmp_path / "stat"
    save_stat(p, EnergyStat(("O",), np.array([1.0]), np.ones(1), ("O",)))
    np.save((p / "O" / "__deepmd_output_stat_transaction__").open("wb"), np.array([1], np.uint8))
    assert load_stat(p, ["O"]) is None
    bad = tmp_path / "junk.hdf5"
    bad.write_text("not hdf5")
    with pytest.raises(ConfigError, match="junk.hdf5' is not a readable HDF5 file"):
        load_stat(bad, ["O"])


def test_observed_type_order():
    """observed_type lists elements by atomic number (DeePMD-kit's sort_element_type);
    names that are not elements last."""
    assert sort_by_atomic_number(["O", "Cu", "H", "X", "C", "Og"]) == [
        "H",
        "C",
        "O",
        "Cu",
        "Og",
        "X",
    ]


def brute_counts(coord, box, rcut, atype, ntypes):
    """Per-type neighbour counts and the smallest distance within rcut, over 5^3 images."""
    cell = box.reshape(3, 3)
    out = np.zeros((len(coord), ntypes), dtype=int)
    dmin = np.inf
    shifts = (
        np.array([[i, j, k] for i in range(-2, 3) for j in range(-2, 3) for k in range(-2, 3)])
        @ cell
    )
    for i, x in enumerate(coord):
        d = np.linalg.norm(coord[None, :, :] + shifts[:, None, :] - x, axis=-1)
        d[shifts.tolist().index([0.0, 0.0, 0.0]), i] = np.inf  # the atom itself
        within = d <= rcut
        for t in range(ntypes):
            out[i, t] = int(within[:, atype == t].sum())
        dmin = min(dmin, float(d[within].min()))
    return out, dmin


def test_neighbor_counts_match_brute_force():
    s = load_system(DATA / "alloy-emt-CuAlNi" / "natoms_31", ["Cu", "Al", "Ni"])
    ref, ref_dmin = brute_counts(s.coord[0], s.box[0], 6.0, s.atype[0], 3)
    counts, dmin = neighbor_counts(s.coord[0], s.box[0], 6.0)
    np.testing.assert_array_equal(counts, ref.sum(axis=1))
    per_type, dmin_t = neighbor_counts(s.coord[0], s.box[0], 6.0, s.atype[0], 3)
    np.testing.assert_array_equal(per_type, ref)
    assert dmin == pytest.approx(ref_dmin, rel=1e-12) and dmin_t == dmin
    frames = [brute_counts(s.coord[f], s.box[f], 6.0, s.atype[f], 3) for f in range(s.nframes)]
    st = neighbor_stat([s], 6.0, 3)
    assert st.max_nbor_size == max(int(c.sum(axis=1).max()) for c, _ in frames)
    per_type_max = np.max([c.max(0) for c, _ in frames], axis=0)
    np.testing.assert_array_equal(st.max_nbor_size_per_type, per_type_max)
    assert st.min_nbor_dist == pytest.approx(min(d for _, d in frames), rel=1e-12)


def test_neighbor_stat_and_auto_sel():
    mol = load_system(DATA / "molecules-nopbc" / "C1H4O2", ["C", "H", "O"])
    st = neighbor_stat([mol], 10.0)
    assert st.max_nbor_size == 6  # every other atom
    assert auto_sel(108) == 120 and auto_sel(6) == 8 and auto_sel(100, 1.0) == 100
    assert AutoSel.parse("auto", "x").factor == 1.1
    assert AutoSel.parse("auto:1.5", "x").factor == 1.5
    for bad in ("automatic", "auto:-1", "auto:many"):
        with pytest.raises(ConfigError, match="'x'"):
            AutoSel.parse(bad, "x")
