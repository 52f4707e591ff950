"""LAMMPS partitions: ``mpirun -np N lmp -partition 2xM`` (independent replicas, as NEB,
PIMD and temper use) gives each partition the result of a separate run.

The plugin and the exchange op must use only LAMMPS's ``world`` communicator (the ranks of
one partition), never MPI_COMM_WORLD: the two partitions here hold different systems (the
water frame and a rattled copy), and with ``2x2`` each partition is split over 2 ranks, so
ghost features travel between ranks, and a message sent through MPI_COMM_WORLD would reach
the other replica (or wait for it forever).
"""

from __future__ import annotations

import lmp_driver as L
import numpy as np
import pytest
from conftest import make_model
from lmp_helpers import System, assert_matches, make_system, mpirun, plugin  # noqa: F401

pytestmark = [pytest.mark.lammps, pytest.mark.mpi]
TIMEOUT = 300


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from dpa3.export import freeze

    return freeze(make_model(seed=2), tmp_path_factory.mktemp("part") / "dpa3.pth")


def _systems(frames) -> list[System]:
    water = make_system(frames["water"])
    rng = np.random.default_rng(7)
    rattled = np.mod(water.coord + rng.normal(0.0, 0.1, water.coord.shape), water.cell[0, 0])
    return [water, System(rattled, water.atype, water.cell, water.elements, water.pbc)]


def _as_reference(res: L.LammpsResult):
    import reference

    virial = np.zeros(9)
    virial[[0, 4, 8, 3, 6, 7]] = res.virial
    return reference.Result(res.energy, res.atom_energy, res.force, virial, res.atom_virial)


@pytest.mark.parametrize("ranks", [1, 2], ids=["2x1", "2x2"])
def test_each_partition_equals_a_separate_run(tmp_path, plugin, mpirun, model_file, frames, ranks):
    systems = _systems(frames)
    grid = "2 1 1" if ranks == 2 else None
    script = L.make_script(plugin, model_file, "* * O H", processors=grid, pair_extra="check on")
    separate = []
    for p, system in enumerate(systems):
        work = tmp_path / f"p{p}"
        work.mkdir()
        system.write(work / "data.lmp")
        alone = tmp_path / f"alone{p}"
        alone.mkdir()
        system.write(alone / "data.lmp")
        separate.append(L.run_lammps(alone, script, nprocs=ranks, timeout=TIMEOUT))
    # each partition works in its own folder (shell cd runs on every rank of the partition)
    (tmp_path / "in.lmp").write_text("variable p world 0 1\nshell cd p${p}\n" + script)
    cmd = [mpirun, "-np", str(2 * ranks), L.LMP, "-nocite", "-partition", f"2x{ranks}"]
    cmd += ["-in", "in.lmp", "-log", "log.lammps"]
    proc = L.run_process_group(cmd, tmp_path, L.environment(), TIMEOUT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    energies = []
    for p in range(len(systems)):
        work = tmp_path / f"p{p}"
        log = (tmp_path / f"log.lammps.{p}").read_text()
        assert "dpa3: exchange check passed" in log, log[-3000:]
        res = L.read_results(work, log=log)
        assert_matches(res, _as_reference(separate[p]), atol=1e-10)
        energies.append(res.energy)
    assert abs(energies[0] - energies[1]) > 1e-3  # the replicas hold different systems
