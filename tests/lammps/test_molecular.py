"""Molecular data (atom_style full with bonds) and special_bonds.

With the default ``special_bonds`` (lj/coul 0 0 0) LAMMPS leaves the 1-2, 1-3 and 1-4 pairs of
bonded atoms out of every neighbour list: a DPA3 evaluated on that list would silently
compute another energy (the bundled water as ``full`` data: -29926 instead of -29943 eV with
a trained model). ``pair_style dpa3`` stops with an error instead; with
``special_bonds lj/coul 1 1 1``, or with nonzero factors under ``hybrid/overlay`` (the pairs
stay in the list, flagged, and dpa3 ignores the flags), energy, forces and virial equal the
``atom_style atomic`` run of the same water.
"""

from __future__ import annotations

import lmp_driver as L
import numpy as np
import pytest
from conftest import make_model
from lmp_helpers import ROOT, assert_matches, mpirun, plugin  # noqa: F401

pytestmark = pytest.mark.lammps
TIMEOUT = 180
WATER = ROOT / "examples" / "lammps" / "data.water"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from dpa3.export import freeze

    return freeze(make_model(seed=2), tmp_path_factory.mktemp("mol") / "dpa3.pth")


def _read_water():
    """(box length, types [N], coord [N, 3]) of examples/lammps/data.water (cubic)."""
    lines = WATER.read_text().splitlines()
    length = float(next(ln for ln in lines if ln.endswith("xhi")).split()[1])
    start = next(i for i, ln in enumerate(lines) if ln.startswith("Atoms")) + 2
    rows = np.array([[float(x) for x in ln.split()[:5]] for ln in lines[start:] if ln.strip()])
    return length, rows[:, 1].astype(int), rows[:, 2:5]


def _write_full(path):
    """data.water as atom_style full: every H bonded to its nearest O (minimum image), one
    molecule per O, charges 0. Returns the number of bonds."""
    length, types, coord = _read_water()
    oxygens, hydrogens = np.nonzero(types == 1)[0], np.nonzero(types == 2)[0]
    d = coord[hydrogens][:, None, :] - coord[oxygens][None, :, :]
    d -= length * np.round(d / length)
    owner = oxygens[np.argmin(np.linalg.norm(d, axis=-1), axis=1)]
    assert np.all(np.bincount(owner, minlength=len(types))[oxygens] == 2)  # H2O
    mol = np.zeros(len(types), dtype=int)
    mol[oxygens] = np.arange(1, len(oxygens) + 1)
    mol[hydrogens] = mol[owner]
    out = [
        "water as atom_style full",
        "",
        f"{len(types)} atoms",
        f"{len(hydrogens)} bonds",
        "2 atom types",
        "1 bond types",
        "",
        *(f"0.0 {length:.10f} {a}lo {a}hi" for a in "xyz"),
        "",
        "Masses",
        "",
        "1 15.999",
        "2 1.008",
        "",
        "Atoms # full",
        "",
    ]
    out += [
        f"{i + 1} {mol[i]} {types[i]} 0.0 {x:.10f} {y:.10f} {z:.10f}"
        for i, (x, y, z) in enumerate(coord)
    ]
    out += ["", "Bonds", ""]
    pairs = zip(hydrogens, owner, strict=True)
    out += [f"{k + 1} 1 {o + 1} {h + 1}" for k, (h, o) in enumerate(pairs)]
    path.write_text("\n".join(out) + "\n")
    return len(hydrogens)


def _full_script(plugin, model_file, special, pair="", nprocs=1):
    """make_script on the full data; ``pair`` replaces the pair_style / pair_coeff lines."""
    grid = "2 1 1" if nprocs == 2 else None
    script = L.make_script(
        plugin, model_file, "* * O H", processors=grid, pre=f"bond_coeff *\n{special}"
    )
    script = script.replace("atom_style atomic", "atom_style full\nbond_style zero")
    if pair:
        head, tail = script.split(f"pair_style dpa3 {model_file} \n")
        script = head + pair + "\n" + tail.split("\n", 1)[1]
    return script


def _atomic(tmp_path, plugin, model_file):
    work = tmp_path / "atomic"
    work.mkdir()
    length, types, coord = _read_water()
    L.write_data(work / "data.lmp", coord, types, ["O", "H"], np.diag([length] * 3))
    return L.run_lammps(work, L.make_script(plugin, model_file, "* * O H"), timeout=TIMEOUT)


def _as_reference(res):
    import reference

    virial = np.zeros(9)
    virial[[0, 4, 8, 3, 6, 7]] = res.virial
    return reference.Result(res.energy, res.atom_energy, res.force, virial, res.atom_virial)


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [1, 2])
@pytest.mark.parametrize(
    "special,excluded",
    [
        ("", "1-2, 1-3, 1-4"),  # the default: lj/coul 0 0 0
        ("special_bonds lj/coul 0.0 0.0 0.5", "1-2, 1-3"),
        ("special_bonds lj 0.0 1.0 1.0 coul 0.0 1.0 1.0", "1-2"),
    ],
)
def test_excluded_bonded_pairs_are_an_error(
    tmp_path, plugin, mpirun, model_file, special, excluded, nprocs
):
    assert _write_full(tmp_path / "data.lmp") == 128
    proc = L.run_input(
        tmp_path, _full_script(plugin, model_file, special, nprocs=nprocs), nprocs, TIMEOUT
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    message = f"special_bonds factors of 0 remove the {excluded} pairs of bonded atoms"
    assert message in out and "special_bonds lj/coul 1 1 1" in out, out[-3000:]


HYBRID = "pair_style hybrid/overlay dpa3 {model} lj/cut 6.0\n" + (
    "pair_coeff * * dpa3 O H\npair_coeff * * lj/cut 0.0 3.0\n"
    "pair_modify pair lj/cut special lj 0.0 0.0 0.5"
)


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [1, 2])
@pytest.mark.parametrize(
    "special,hybrid",
    [
        ("special_bonds lj/coul 1 1 1", False),
        # nonzero factors keep the bonded pairs (flagged) in the list: dpa3 ignores the flags
        ("special_bonds lj/coul 0.5 0.5 0.5", False),
        # the documented hybrid recipe: nonzero global factors, pair_modify special for lj/cut
        ("special_bonds lj/coul 0.5 0.5 0.5", True),
    ],
    ids=["111", "half", "hybrid"],
)
def test_full_style_equals_atomic_style(
    tmp_path, plugin, mpirun, model_file, special, hybrid, nprocs
):
    atomic = _atomic(tmp_path, plugin, model_file)
    work = tmp_path / "full"
    work.mkdir()
    _write_full(work / "data.lmp")
    pair = HYBRID.format(model=model_file) if hybrid else ""
    script = _full_script(plugin, model_file, special, pair=pair, nprocs=nprocs)
    res = L.run_lammps(work, script, nprocs=nprocs, timeout=TIMEOUT)
    assert abs(res.energy - atomic.energy) < 1e-10 * abs(atomic.energy), (res.energy, atomic.energy)
    assert_matches(res, _as_reference(atomic), atol=1e-9)
