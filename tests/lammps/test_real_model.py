"""pair_style dpa3 with the real DPA3 model (small float64 config) against the Python model.

LAMMPS on 1 and several ranks must reproduce ``EnergyModel.forward`` (energy, forces, virial,
per-atom energy and centroid virial) within 1e-8 on periodic water, a triclinic alloy, a
cell smaller than the cutoff and a free molecule (``boundary f f f``).
"""

from __future__ import annotations

import lmp_driver as L
import numpy as np
import pytest
import reference
from conftest import evaluate, make_model
from lmp_helpers import assert_matches, make_system, mpirun, plugin, slab  # noqa: F401

pytestmark = pytest.mark.lammps


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from dpa3.export import freeze

    model = make_model(seed=2)
    path = freeze(model, tmp_path_factory.mktemp("real") / "dpa3.pth")
    return model, path


_refs: dict[str, reference.Result] = {}


def python_reference(model, frames, name):
    """``EnergyModel.forward`` on the frame as LAMMPS holds it (cached per frame)."""
    if name not in _refs:
        system = make_system(frames[name])
        box = None if system.cell is None else system.cell.reshape(9)
        out = evaluate(model, system.coord, system.atype, box, atomic=True)
        _refs[name] = reference.Result(
            energy=float(out["energy"][0]),
            atom_energy=out["atom_energy"][:, 0],
            force=out["force"],
            virial=out["virial"],
            atom_virial=out["atom_virial"],
        )
    return _refs[name]


def _case(name, nprocs=1, grid=None):
    marks = [pytest.mark.mpi] if nprocs > 1 else []
    return pytest.param(name, nprocs, grid, marks=marks, id=f"{name}-np{nprocs}")


CASES = [
    _case("water"),
    _case("water", 2, "2 1 1"),
    _case("alloy"),
    _case("alloy", 4, "1 2 2"),
    _case("small_cell"),
    _case("small_cell", 2, "1 1 2"),
    _case("molecule"),
    _case("molecule", 4, "2 2 1"),
]


@pytest.mark.parametrize("name,nprocs,grid", CASES)
def test_lammps_matches_python_model(request, tmp_path, plugin, real, frames, name, nprocs, grid):
    if nprocs > 1:
        request.getfixturevalue("mpirun")
    model, path = real
    system = make_system(frames[name])
    system.write(tmp_path / "data.lmp")
    script = L.make_script(
        plugin,
        path,
        "* * " + " ".join(system.elements),
        boundary=system.boundary,
        processors=grid,
    )
    res = L.run_lammps(tmp_path, script, nprocs=nprocs)
    ref = python_reference(model, frames, name)
    assert_matches(res, ref, atol=1e-8)


def test_brute_force_reference_agrees_with_model_forward(real, frames):
    """The toy tests' brute-force reference and EnergyModel.forward agree (checks the former)."""
    model, _ = real
    system = make_system(frames["small_cell"])
    brute = system.reference(model)
    ref = python_reference(model, frames, "small_cell")
    assert abs(brute.energy - ref.energy) < 1e-10
    np.testing.assert_allclose(brute.force, ref.force, atol=1e-10)
    np.testing.assert_allclose(brute.atom_virial, ref.atom_virial, atol=1e-10)


@pytest.mark.mpi
def test_slab_with_empty_ranks(tmp_path, plugin, mpirun, real, frames):
    """p p f water slab on 4 ranks along z: the top ranks own no atoms and no ghosts, yet
    run the model and its exchanges; brute-force reference (mixed boundaries)."""
    model, path = real
    system = slab(frames["water"])
    system.write(tmp_path / "data.lmp")
    script = L.make_script(plugin, path, "* * O H", boundary=system.boundary, processors="1 1 4")
    res = L.run_lammps(tmp_path, script, nprocs=4)
    assert_matches(res, system.reference(model), atol=1e-8)
