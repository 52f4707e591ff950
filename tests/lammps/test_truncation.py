"""Neighbour truncation in LAMMPS: more neighbours than e_sel / a_sel.

A DPA3 keeps the ``e_sel`` nearest neighbours within ``e_rcut`` and, of those, the first
``a_sel`` within ``a_rcut`` for its angles.  Which neighbours survive is decided by the key
(distance, dx, dy, dz) rounded to ``TIE_QUANTUM`` (``dpa3.model.graph.format_nlist``,
``dpa3.data.neighbor``): never by the order of LAMMPS's neighbour list, the atom numbering or
the rank that owns an atom.  Checked here with a model of e_sel 20 / a_sel 8 on

- water (192 atoms, ~38 neighbours within 4.5 Å): every atom is truncated, on both sides of
  every rank boundary;
- a simple cubic Cu/Al lattice with exactly representable positions: the cut at 20 falls in
  the shell of 8 at 2*sqrt(3) Å and the cut at 8 in the shell of 12 at 2*sqrt(2) Å, so the
  tie rule alone picks the kept neighbours (and the energy depends on which: two types,
  different angles).

Python: the neighbour-list path (``model.forward``) equals the raw-list path
(``forward_lower``, the reference) and both are invariant under a permutation of the atoms;
LAMMPS on 1 rank equals the reference and N ranks equal 1 rank, within 1e-8.
"""

from __future__ import annotations

import re

import lmp_driver as L
import numpy as np
import pytest
import reference
import torch
from conftest import make_model
from lmp_helpers import System, assert_matches, make_system, mpirun, plugin  # noqa: F401

pytestmark = pytest.mark.lammps

TOL = 1e-8
E_SEL, A_SEL = 20, 8
TIMEOUT = 300


@pytest.fixture(scope="module")
def truncating(tmp_path_factory):
    """The small float64 test model (e_rcut 4.5, a_rcut 3.5) with e_sel 20 and a_sel 8."""
    from dpa3.export import freeze

    model = make_model(seed=4, e_sel=E_SEL, a_sel=A_SEL)
    return model, freeze(model, tmp_path_factory.mktemp("trunc") / "dpa3.pth")


def _lattice() -> System:
    """Simple cubic, a = 2 Å, 5x5x5 cells, positions 0.75 + 2k (exact in binary and off the
    rank boundaries of the grids below), Cu and Al at random."""
    k = np.arange(5) * 2.0 + 0.75
    coord = np.array(np.meshgrid(k, k, k, indexing="ij")).reshape(3, -1).T.copy()
    atype = np.random.default_rng(11).choice([2, 3], size=len(coord))
    return System(coord, atype, np.diag([10.0, 10.0, 10.0]), ["Cu", "Al"], (True,) * 3)


SYSTEMS = {"water": lambda frames: make_system(frames["water"]), "lattice": lambda _: _lattice()}


def _distances(system: System, rcut: float) -> list[np.ndarray]:
    """Sorted neighbour distances (r <= rcut) of every atom."""
    ext, _ = reference.extend(system.coord, system.cell, system.pbc, rcut + 0.1)
    d = np.linalg.norm(ext[None, :, :] - system.coord[:, None, :], axis=-1)
    return [np.sort(row[(row > 0) & (row <= rcut)]) for row in d]


def _forward(model, system: System) -> reference.Result:
    """``model.forward`` (the Python neighbour search of dpa3.data.neighbor)."""
    out = model.forward(
        torch.from_numpy(system.coord)[None],
        torch.from_numpy(np.asarray(system.atype))[None],
        torch.from_numpy(system.cell.reshape(1, 9)),
        do_atomic_virial=True,
    )
    return reference.Result(
        energy=float(out["energy"].detach().sum()),
        atom_energy=out["atom_energy"][0, :, 0].detach().numpy(),
        force=out["force"][0].detach().numpy(),
        virial=out["virial"][0].detach().numpy(),
        atom_virial=out["atom_virial"][0].detach().numpy(),
    )


def _assert_results(a: reference.Result, b: reference.Result, perm=None, atol=TOL) -> None:
    """``a`` equals ``b`` (``a``'s atoms are ``b``'s atoms ``perm``)."""
    p = slice(None) if perm is None else perm
    assert abs(a.energy - b.energy) < atol * max(1.0, abs(b.energy)), (a.energy, b.energy)
    np.testing.assert_allclose(a.atom_energy, b.atom_energy[p], rtol=0, atol=atol)
    np.testing.assert_allclose(a.force, b.force[p], rtol=0, atol=atol)
    np.testing.assert_allclose(a.virial, b.virial, rtol=0, atol=atol * max(1.0, abs(b.energy)))
    np.testing.assert_allclose(a.atom_virial, b.atom_virial[p], rtol=0, atol=atol)


_refs: dict[str, reference.Result] = {}


def _reference(name, frames, model) -> reference.Result:
    if name not in _refs:
        _refs[name] = SYSTEMS[name](frames).reference(model)
    return _refs[name]


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_systems_are_truncated(frames, name):
    """Every atom has more than e_sel neighbours within 4.5 Å (and more than a_sel within
    3.5 Å); on the lattice both cuts fall inside a shell of equal distances."""
    system = SYSTEMS[name](frames)
    for row in _distances(system, 4.5):
        assert len(row) > E_SEL
        assert (row <= 3.5).sum() > A_SEL
        if name == "lattice":
            assert row[E_SEL - 1] == row[E_SEL] == 2.0 * np.sqrt(3.0)
            assert row[A_SEL - 1] == row[A_SEL] == 2.0 * np.sqrt(2.0)


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_python_paths_agree_and_ignore_atom_order(truncating, frames, name):
    """forward (dpa3.data.neighbor) == forward_lower on the raw list (the reference), and a
    permutation of the atoms permutes the results (ties are not broken by atom order)."""
    model, _ = truncating
    system = SYSTEMS[name](frames)
    ref = _reference(name, frames, model)
    _assert_results(_forward(model, system), ref)
    perm = np.random.default_rng(3).permutation(len(system.coord))
    shuffled = System(
        system.coord[perm], system.atype[perm], system.cell, system.elements, system.pbc
    )
    _assert_results(shuffled.reference(model), ref, perm)
    _assert_results(_forward(model, shuffled), ref, perm)


def _as_reference(res: L.LammpsResult) -> reference.Result:
    virial = np.zeros(9)
    virial[[0, 4, 8, 3, 6, 7]] = res.virial
    return reference.Result(res.energy, res.atom_energy, res.force, virial, res.atom_virial)


_one_rank: dict[str, L.LammpsResult] = {}


def _run(workdir, plugin, model_file, system: System, nprocs=1, grid=None) -> L.LammpsResult:
    workdir.mkdir(parents=True, exist_ok=True)
    system.write(workdir / "data.lmp")
    script = L.make_script(plugin, model_file, "* * " + " ".join(system.elements), processors=grid)
    return L.run_lammps(workdir, script, nprocs=nprocs, timeout=TIMEOUT)


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_one_rank_equals_python(tmp_path, plugin, truncating, frames, name):
    model, path = truncating
    system = SYSTEMS[name](frames)
    res = _run(tmp_path, plugin, path, system)
    _one_rank[name] = res
    assert_matches(res, _reference(name, frames, model), atol=TOL)


def _sel_warnings(log: str) -> list[tuple[int, float, str]]:
    """(count, radius, limit) of every neighbour-count warning in a LAMMPS log."""
    pattern = (
        r"WARNING: pair_style dpa3: an atom has (\d+) neighbours within ([\d.]+) Angstrom "
        r"\(step \d+\), more than the (e_sel|a_sel) "
    )
    return [(int(n), float(r), k) for n, r, k in re.findall(pattern, log)]


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [1, 2])
def test_truncation_is_reported_once(tmp_path, plugin, mpirun, truncating, frames, nprocs):
    """More neighbours than e_sel / a_sel: one warning per limit and run (printed by rank 0,
    counts the largest over the ranks, as counted here from the positions)."""
    _, path = truncating
    system = SYSTEMS["water"](frames)
    system.write(tmp_path / "data.lmp")
    script = L.make_script(
        plugin,
        path,
        "* * " + " ".join(system.elements),
        processors="2 1 1" if nprocs == 2 else None,
        run="run 3",
    )
    res = L.run_lammps(tmp_path, script, nprocs=nprocs, timeout=TIMEOUT)
    rows = _distances(system, 4.5)
    most_e = max(len(r) for r in rows)
    most_a = max(int((r <= 3.5).sum()) for r in rows)
    assert _sel_warnings(res.log) == [(most_e, 4.5, "e_sel"), (most_a, 3.5, "a_sel")]


def test_no_report_without_truncation(tmp_path, plugin, frames):
    from dpa3.export import freeze

    system = SYSTEMS["water"](frames)
    assert max(len(r) for r in _distances(system, 4.5)) <= make_model().sel
    path = freeze(make_model(seed=4), tmp_path / "wide.pth")
    system.write(tmp_path / "data.lmp")
    script = L.make_script(plugin, path, "* * " + " ".join(system.elements), run="run 1")
    res = L.run_lammps(tmp_path, script, timeout=TIMEOUT)
    assert "Angstrom (step" not in res.log and "e_sel" not in res.log


CASES = [
    ("water", 2, "2 1 1"),
    ("water", 4, "2 2 1"),
    ("water", 4, "4 1 1"),  # sub-domains 3.1 Å wide: truncated atoms on every rank boundary
    ("lattice", 2, "2 1 1"),
    ("lattice", 4, "1 2 2"),
    ("lattice", 4, "1 1 4"),  # 2.5 Å sub-domains: one plane of atoms per rank
]


@pytest.mark.mpi
@pytest.mark.parametrize(
    "name,nprocs,grid", CASES, ids=[f"{n}-{g.replace(' ', 'x')}" for n, _, g in CASES]
)
def test_ranks_equal_one_rank(tmp_path, plugin, mpirun, truncating, frames, name, nprocs, grid):
    model, path = truncating
    system = SYSTEMS[name](frames)
    res = _run(tmp_path / f"np{nprocs}", plugin, path, system, nprocs, grid)
    if name not in _one_rank:
        _one_rank[name] = _run(tmp_path / "np1", plugin, path, system)
    assert_matches(res, _as_reference(_one_rank[name]), atol=TOL)
    assert_matches(res, _reference(name, frames, model), atol=TOL)
