"""pair_style dpa3 with a model on the low-memory path, on 1, 2 and 4 ranks.

A small float64 model frozen with ``graph_budget_bytes = 0`` recomputes its layers in the
backward pass, in blocks of centres, and the exchange runs again inside every recomputed layer.
Without per-atom virials (which keep the graph), LAMMPS on N ranks must give the forces, energy
and virial of the same model on the standard path (brute-force Python reference), within 1e-9.
The slab on a 1 x 1 x 4 grid leaves the upper ranks without atoms: their graph estimate is 0 and
fits any budget, so only the collective choice of the path (every rank recomputes when one must)
keeps their exchanges in step with the others; otherwise the run hangs (killed at the timeout)
or gives wrong forces.
"""

from __future__ import annotations

import lmp_driver as L
import numpy as np
import pytest
from conftest import make_model
from lmp_helpers import make_system, mpirun, plugin, slab  # noqa: F401

pytestmark = pytest.mark.lammps

TOL = 1e-9


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from dpa3.export import freeze

    model = make_model(seed=2)
    model.graph_budget_bytes = 0
    model.descriptor.chunk_angles = 2000  # several blocks of centres per rank
    path = freeze(model, tmp_path_factory.mktemp("lowmem") / "lowmem.pth")
    model.graph_budget_bytes = 1 << 60  # the reference evaluates on the standard path
    return model, path


def _run(work, plugin, model_file, system, nprocs, grid):
    work.mkdir(parents=True, exist_ok=True)
    system.write(work / "data.lmp")
    elements = " ".join(system.elements)
    procs = f"processors {grid}\n" if grid else ""
    vir = " ".join(f"$(c_vir[{k}]:%.17g)" for k in range(1, 7))
    script = f"""plugin unload pair dpa3
plugin load {plugin}
units metal
atom_style atomic
boundary {system.boundary}
newton on
{procs}read_data data.lmp
pair_style dpa3 {model_file}
pair_coeff * * {elements}
neighbor 1.0 bin
compute vir all pressure NULL virial
thermo_style custom step pe press
dump d all custom 1 dump.atoms id fx fy fz
dump_modify d format float %.17g sort id
run 0
print "RESULT $(pe:%.17g) $(vol:%.17g) {vir}" file result.txt
"""
    proc = L.run_input(work, script, nprocs=nprocs, timeout=120)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and (work / "result.txt").exists(), log[-3000:]
    vals = (work / "result.txt").read_text().split()
    energy, vol = float(vals[1]), float(vals[2])
    virial = np.zeros(9)
    virial[[0, 4, 8, 3, 6, 7]] = np.array([float(v) for v in vals[3:9]]) * vol / L.NKTV2P["metal"]
    virial[[1, 2, 5]] = virial[[3, 6, 7]]
    lines = (work / "dump.atoms").read_text().splitlines()
    start = max(i for i, s in enumerate(lines) if s.startswith("ITEM: ATOMS")) + 1
    rows = np.array([[float(x) for x in s.split()] for s in lines[start:]])
    return energy, rows[np.argsort(rows[:, 0]), 1:4], virial


@pytest.mark.mpi
@pytest.mark.parametrize(
    "name,nprocs,grid",
    [("water", 1, None), ("water", 2, "2 1 1"), ("water", 4, "2 2 1"), ("slab", 4, "1 1 4")],
)
def test_low_memory_model_on_ranks(tmp_path, plugin, mpirun, models, frames, name, nprocs, grid):
    model, path = models
    system = make_system(frames["water"]) if name == "water" else slab(frames["water"])
    if name == "slab":  # the two upper sub-domains of 1x1x4 hold no atom
        assert system.coord[:, 2].max() < 0.5 * system.cell[2, 2]
    energy, force, virial = _run(tmp_path, plugin, path, system, nprocs, grid)
    ref = system.reference(model)
    assert abs(energy - ref.energy) < TOL * max(1.0, abs(ref.energy)), (energy, ref.energy)
    assert np.abs(ref.force).max() > 1e-3
    np.testing.assert_allclose(force, ref.force, rtol=0, atol=TOL)
    sym = 0.5 * (ref.virial.reshape(3, 3) + ref.virial.reshape(3, 3).T).reshape(9)
    np.testing.assert_allclose(virial, sym, rtol=0, atol=TOL * max(1.0, np.abs(sym).max()))
