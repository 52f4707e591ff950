"""NVE energy conservation with pair_style dpa3 and a real DPA3 model (float64).

2,000 velocity-Verlet steps of 0.5 fs (1 ps) on the bundled 192-atom water
(examples/lammps/data.water), 300 K initial velocities, one rank. The model is a small random
DPA3 (2 layers, so ghost node features go through the exchange op's self swaps) whose forces
are of the size of real water forces (~0.7 eV/Å rms); re-neighbouring happens on its own
(``check yes``). The total energy must not drift: the slope of a linear fit of etotal against
time is below 1e-4 eV/atom/ps.
"""

from __future__ import annotations

import shutil
import time

import lmp_driver as L
import numpy as np
import pytest
from lmp_helpers import ROOT, md_model, plugin, thermo_table  # noqa: F401

pytestmark = pytest.mark.lammps

NSTEPS = 2000
DT = 0.0005  # ps
DRIFT_LIMIT = 1e-4  # eV/atom/ps


@pytest.fixture(scope="module")
def md_file(tmp_path_factory):
    from dpa3.export import freeze

    return freeze(md_model(), tmp_path_factory.mktemp("md") / "md.pth")


def test_nve_energy_conservation(tmp_path, plugin, md_file):
    shutil.copy(ROOT / "examples" / "lammps" / "data.water", tmp_path / "data.water")
    script = f"""plugin unload pair dpa3
plugin load {plugin}
units metal
atom_style atomic
boundary p p p
newton on
read_data data.water
pair_style dpa3 {md_file}
pair_coeff * * O H
neighbor 1.0 bin
neigh_modify every 1 delay 0 check yes
velocity all create 300.0 4928459 mom yes rot no dist gaussian loop geom
fix nve all nve
timestep {DT}
thermo_style custom step time temp pe ke etotal fnorm
thermo_modify format float %.15g norm no
thermo 10
run {NSTEPS}
"""
    t0 = time.perf_counter()
    proc = L.run_input(tmp_path, script, timeout=900)
    wall = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    names, rows = thermo_table(log)
    col = {n: rows[:, k] for k, n in enumerate(names)}
    natoms = 192
    assert rows.shape[0] == NSTEPS // 10 + 1 and np.all(np.isfinite(rows)), log[-3000:]

    # not a trivially weak model: forces of the size of real water forces at the start,
    # and the atoms really move (the temperature changes, lists are rebuilt)
    f_rms = col["Fnorm"][0] / np.sqrt(natoms)
    assert f_rms > 0.3, f"rms force {f_rms:.3g} eV/Å: model too weak for a meaningful test"
    assert col["Temp"].max() > 400.0, col["Temp"].max()
    builds = int(log.split("Neighbor list builds =")[1].split()[0])
    assert builds > 20, builds
    assert "Dangerous builds = 0" in log, log[-2000:]

    etot = col["TotEng"]
    slope = np.polyfit(col["Time"], etot, 1)[0] / natoms  # eV/atom/ps
    spread = (etot.max() - etot.min()) / natoms
    print(
        f"\nNVE {NSTEPS} x {DT * 1000:g} fs, water 192 atoms: etotal drift {slope:.3e} "
        f"eV/atom/ps (limit {DRIFT_LIMIT:g}); etotal spread {spread:.3e} eV/atom; "
        f"rms force at start {f_rms:.3f} eV/Å; T {col['Temp'].min():.0f}-"
        f"{col['Temp'].max():.0f} K; {builds} neighbour-list builds; {wall:.1f} s"
    )
    assert abs(slope) < DRIFT_LIMIT, (slope, spread)
    # no jumps either (a jump would hardly move the fitted slope if it came early)
    assert spread < 10 * DRIFT_LIMIT, spread
