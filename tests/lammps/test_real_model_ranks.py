"""pair_style dpa3 with the real DPA3 model (float64) on N ranks equals 1 rank.

Complements test_real_model.py (water 2x1x1, alloy 1x2x2, small cell 1x1x2, molecule 2x2x1,
slab 1x1x4 with empty ranks): the remaining processor grids on water, sub-domains thinner
than the ghost cutoff (several swaps per direction), a strongly tilted (triclinic) water cell
on 2 and 4 ranks, a ``p p f`` water slab and an ``f f f`` water cluster on 2 and 4 ranks,
atoms of a NULL type straddling rank boundaries and a rank that owns only NULL atoms. Each
N-rank result (energy, forces, global virial, per-atom energy and centroid virial) equals the
1-rank result and the brute-force Python reference within 1e-8.

Then MD: 200 NVE steps at 1500 K with re-neighbouring every step (atoms migrate between the
ranks) on 2 ranks track the 1-rank trajectory; ``run`` after redefining the pair style with
another real model (different cutoff) and the ``comm_style tiled`` error, on 2 ranks.
"""

from __future__ import annotations

import lmp_driver as L
import numpy as np
import pytest
import reference
from conftest import make_model
from lmp_helpers import (  # noqa: F401
    System,
    assert_matches,
    exchange_swaps,
    make_system,
    md_model,
    mpirun,
    plugin,
    slab,
    thermo_table,
)

pytestmark = pytest.mark.lammps

TOL = 1e-8
TIMEOUT = 300


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The small float64 test model of test_real_model.py (e_rcut 4.5, 2 layers)."""
    from dpa3.export import freeze

    model = make_model(seed=2)
    return model, freeze(model, tmp_path_factory.mktemp("real") / "dpa3.pth")


@pytest.fixture(scope="module")
def md(tmp_path_factory):
    """A cheaper float64 DPA3 (e_rcut 3.0, 2 layers) with water-sized forces, for MD."""
    from dpa3.export import freeze

    model = md_model()
    return model, freeze(model, tmp_path_factory.mktemp("md") / "md.pth")


# ------------------------------------------------------------------ test systems

X_ELEMENT = "X"  # an extra LAMMPS type mapped to NULL (not an element of the model)


def _sheared_water(frames) -> System:
    """The water frame's fractional coordinates in a strongly tilted cell (xy, xz, yz)."""
    s = make_system(frames["water"])
    frac = s.coord @ np.linalg.inv(s.cell)
    cell = s.cell.copy()
    cell[1, 0], cell[2, 0], cell[2, 1] = 2.5, -1.5, 2.0
    return System(frac @ cell, s.atype, cell, s.elements, s.pbc)


def _cluster(frames) -> System:
    """The 192 water atoms as a free cluster (boundary f f f)."""
    s = make_system(frames["water"])
    return System(s.coord, s.atype, None, s.elements, (False, False, False))


def _null_on_boundaries(frames, seed=5):
    """Water plus 16 NULL-type atoms within 0.3 Å of the planes x, y = 0 and L/2 (the
    rank boundaries of 2x1x1 and 2x2x1 grids)."""
    s = make_system(frames["water"])
    length = s.cell[0, 0]
    rng = np.random.default_rng(seed)
    extra = rng.uniform(0.0, length, size=(16, 3))
    planes = np.array([0.0, 0.5 * length] * 4)
    offsets = rng.uniform(-0.3, 0.3, size=8)
    extra[:8, 0] = np.mod(planes + offsets, length)
    extra[8:, 1] = np.mod(planes + offsets[::-1], length)
    return s, extra, s.cell, s.boundary


def _null_in_vacuum(frames, seed=6):
    """The p p f water slab (20 Å vacuum) plus NULL atoms: 6 straddling z = 3/4 of the box
    (a rank boundary of a 1x1x4 grid) and 10 deep in the vacuum (the top rank owns only
    NULL atoms)."""
    s = slab(frames["water"])
    rng = np.random.default_rng(seed)
    lz = s.cell[2, 2]
    extra = rng.uniform(0.0, 1.0, size=(16, 3)) @ np.diag([s.cell[0, 0], s.cell[1, 1], 1.0])
    extra[:6, 2] = 0.75 * lz + rng.uniform(-0.3, 0.3, size=6)
    extra[6:, 2] = rng.uniform(0.78 * lz, 0.97 * lz, size=10)
    return s, extra, s.cell, s.boundary


SYSTEMS = {
    "water": lambda frames: make_system(frames["water"]),
    "small_cell": lambda frames: make_system(frames["small_cell"]),
    "alloy": lambda frames: make_system(frames["alloy"]),
    "sheared_water": _sheared_water,
    "slab": lambda frames: slab(frames["water"]),
    "cluster": _cluster,
}
NULL_SYSTEMS = {"null_boundary": _null_on_boundaries, "null_vacuum": _null_in_vacuum}


def _max_neighbours(system: System, rcut: float) -> int:
    ext, _ = reference.extend(system.coord, system.cell, system.pbc, rcut)
    nlist = reference.full_nlist(ext, len(system.coord), rcut)
    return int((nlist >= 0).sum(axis=1).max())


_one_rank: dict[str, L.LammpsResult] = {}
_refs: dict[str, reference.Result] = {}


def _write(name, frames, path):
    """Write the data file of a system; returns (water System, pair_coeff, boundary)."""
    if name in NULL_SYSTEMS:
        s, extra, cell, boundary = NULL_SYSTEMS[name](frames)
        coord = np.concatenate([s.coord, extra])
        types = np.concatenate([s.lammps_types, np.full(len(extra), len(s.elements) + 1)])
        L.write_data(path, coord, types, [*s.elements, X_ELEMENT], cell)
        return s, "* * " + " ".join(s.elements) + " NULL", boundary
    s = SYSTEMS[name](frames)
    s.write(path)
    return s, "* * " + " ".join(s.elements), s.boundary


def _run(workdir, plugin, model_file, name, frames, nprocs, grid):
    workdir.mkdir(parents=True, exist_ok=True)
    system, coeff, boundary = _write(name, frames, workdir / "data.lmp")
    script = L.make_script(
        plugin, model_file, coeff, boundary=boundary, processors=grid, pair_extra="check on"
    )
    return system, L.run_lammps(workdir, script, nprocs=nprocs, timeout=TIMEOUT)


def _as_reference(res: L.LammpsResult, n: int) -> reference.Result:
    """A LAMMPS result (first n atoms) in the form assert_matches compares against."""
    virial = np.zeros(9)
    virial[[0, 4, 8, 3, 6, 7]] = res.virial
    return reference.Result(
        energy=res.energy,
        atom_energy=res.atom_energy[:n],
        force=res.force[:n],
        virial=virial,
        atom_virial=res.atom_virial[:n],
    )


def _case(name, nprocs, grid, min_swaps=0):
    return pytest.param(name, nprocs, grid, min_swaps, id=f"{name}-{grid.replace(' ', 'x')}")


CASES = [
    _case("water", 2, "1 2 1"),
    _case("water", 2, "1 1 2"),
    _case("water", 4, "2 2 1"),
    # sub-domains 3.1 Å wide, ghost cutoff 5.5 Å: two swaps each way along x
    _case("water", 4, "4 1 1", min_swaps=8),
    # sub-domains 0.7 Å wide: eight swaps each way along x
    _case("small_cell", 4, "4 1 1", min_swaps=24),
    _case("alloy", 2, "2 1 1"),
    _case("sheared_water", 2, "2 1 1"),
    _case("sheared_water", 4, "1 2 2"),
    _case("slab", 2, "1 1 2"),
    _case("slab", 4, "2 2 1"),
    _case("cluster", 2, "2 1 1"),
    _case("cluster", 4, "1 2 2"),
    _case("null_boundary", 2, "2 1 1"),
    _case("null_boundary", 4, "2 2 1"),
    _case("null_vacuum", 4, "1 1 4"),
]


@pytest.mark.mpi
@pytest.mark.parametrize("name,nprocs,grid,min_swaps", CASES)
def test_ranks_equal_one_rank(
    tmp_path, plugin, mpirun, real, frames, name, nprocs, grid, min_swaps
):
    model, path = real
    system, res = _run(tmp_path / f"np{nprocs}", plugin, path, name, frames, nprocs, grid)
    assert "dpa3: exchange check passed" in res.log, res.log[-3000:]
    nswap = exchange_swaps(res.log)
    print(f" [{nswap} swaps]", end="")
    assert nswap >= min_swaps, nswap
    n = len(system.coord)

    if name not in _one_rank:
        _, _one_rank[name] = _run(tmp_path / "np1", plugin, path, name, frames, 1, None)
    if name not in _refs:
        # the comparison is only well posed without neighbour truncation (design pitfall 13)
        assert _max_neighbours(system, model.get_rcut()) < 80
        assert _max_neighbours(system, 3.5) < 30
        _refs[name] = system.reference(model)
    one = _one_rank[name]

    assert_matches(res.first(n), _as_reference(one, n), atol=TOL)
    assert_matches(res.first(n), _refs[name], atol=TOL)
    assert_matches(one.first(n), _refs[name], atol=TOL)
    if len(res.force) > n:  # NULL atoms: no force, energy or virial from dpa3
        assert np.all(res.force[n:] == 0.0)
        assert np.all(res.atom_energy[n:] == 0.0)
        assert np.all(res.atom_virial[n:] == 0.0)
    if name == "null_vacuum":  # the top quarter (rank 3 of 1x1x4) holds only NULL atoms
        _, extra, cell, _ = NULL_SYSTEMS[name](frames)
        top = 0.75 * cell[2, 2]
        assert system.coord[:, 2].max() < top - 1.0 and (extra[:, 2] > top).sum() >= 10


# ------------------------------------------------------------------ MD across ranks

MD_STEPS = 200
MD_TRACK = 50  # steps over which 2 ranks must follow 1 rank within 1e-6 Å


def _read_frames(path) -> dict[int, np.ndarray]:
    """``{step: [N, 3] positions sorted by ID}`` from a dump with columns id x y z."""
    frames, lines = {}, path.read_text().splitlines()
    i = 0
    while i < len(lines):
        assert lines[i].startswith("ITEM: TIMESTEP"), lines[i]
        step, natoms = int(lines[i + 1]), int(lines[i + 3])
        rows = np.array([[float(x) for x in ln.split()] for ln in lines[i + 9 : i + 9 + natoms]])
        frames[step] = rows[np.argsort(rows[:, 0]), 1:4]
        i += 9 + natoms
    return frames


@pytest.mark.mpi
def test_md_two_ranks_track_one_rank(tmp_path, plugin, mpirun, md, frames):
    """1500 K, NVE, 0.5 fs, neigh_modify every 1 check yes: atoms cross the rank boundary;
    2 ranks follow 1 rank within 1e-6 Å over the first 50 steps and stay close after."""
    system = make_system(frames["water"])
    out = {}
    for nprocs in (1, 2):
        work = tmp_path / f"np{nprocs}"
        work.mkdir()
        system.write(work / "data.lmp")
        procs = "processors 2 1 1\n" if nprocs == 2 else ""
        script = f"""plugin unload pair dpa3
plugin load {plugin}
units metal
atom_style atomic
boundary p p p
newton on
{procs}read_data data.lmp
pair_style dpa3 {md[1]} check on
pair_coeff * * O H
neighbor 1.0 bin
neigh_modify every 1 delay 0 check yes
velocity all create 1500.0 4928459 mom yes rot no dist gaussian loop geom
fix nve all nve
timestep 0.0005
thermo_style custom step pe ke etotal
thermo_modify format float %.15g
thermo 10
dump d all custom 10 dump.pos id x y z
dump_modify d format float %.17g sort id
run {MD_STEPS}
"""
        proc = L.run_input(work, script, nprocs=nprocs, timeout=TIMEOUT)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
        out[nprocs] = (thermo_table(log)[1], _read_frames(work / "dump.pos"), log)

    (th1, pos1, _), (th2, pos2, log2) = out[1], out[2]
    builds = int(log2.split("Neighbor list builds =")[1].split()[0])
    assert builds > 10, builds
    length = system.cell[0, 0]

    def gap(step):  # largest minimum-image distance between the two runs' atoms
        d = pos2[step] - pos1[step]
        d -= length * np.round(d / length)
        return np.abs(d).max()

    gaps = {step: gap(step) for step in sorted(pos1)}
    for step in range(0, MD_TRACK + 1, 10):
        assert gaps[step] < 1e-6, gaps
    # atoms moved between the two sub-domains (x < L/2 and x >= L/2)
    side0 = np.floor(2.0 * np.mod(pos2[0][:, 0], length) / length)
    side1 = np.floor(2.0 * np.mod(pos2[MD_STEPS][:, 0], length) / length)
    migrated = int((side0 != side1).sum())
    assert migrated > 10, migrated
    # thermo energies agree while the trajectories agree, and neither run drifts
    np.testing.assert_allclose(th2[: MD_TRACK // 10 + 1], th1[: MD_TRACK // 10 + 1], rtol=1e-10)
    etot1, etot2 = th1[:, 3], th2[:, 3]
    natoms = len(system.coord)
    assert np.ptp(etot1) / natoms < 1e-3 and np.ptp(etot2) / natoms < 1e-3, (etot1, etot2)
    print(
        f"\nMD 1 vs 2 ranks: max position gap {gaps[MD_TRACK]:.2e} Å at step {MD_TRACK}, "
        f"{gaps[MD_STEPS]:.2e} Å at step {MD_STEPS}; {migrated} atoms changed sub-domain; "
        f"{builds} list builds; etotal spread {np.ptp(etot1) / natoms:.2e} / "
        f"{np.ptp(etot2) / natoms:.2e} eV/atom"
    )


# ------------------------------------------------------------------ input handling


@pytest.mark.mpi
def test_run_after_redefining_pair_style(tmp_path, plugin, mpirun, real, md, frames):
    """run 0 twice with one real model, then pair_style dpa3 with another real model whose
    cutoff (and so ghost shell and swap schedule) differs, and run again, on 2 ranks."""
    system = make_system(frames["water"])
    system.write(tmp_path / "data.lmp")
    post = f"""undump d
pair_style dpa3 {md[1]} check on
pair_coeff * * O H
dump d2 all custom 1 dump2.atoms id fx fy fz
dump_modify d2 format float %.17g sort id
run 0
print "RESULT2 $(pe:%.17g)" file result2.txt
run 3
print "RESULT3 $(pe:%.17g)" file result3.txt
"""
    script = L.make_script(
        plugin,
        real[1],
        "* * O H",
        processors="2 1 1",
        run="run 0\nrun 0",
        post=post,
        pair_extra="check on",
    )
    res = L.run_lammps(tmp_path, script, nprocs=2, timeout=TIMEOUT)
    assert_matches(res, system.reference(real[0]), atol=TOL)
    ref2 = system.reference(md[0])
    e2 = float((tmp_path / "result2.txt").read_text().split()[1])
    assert abs(e2 - ref2.energy) < TOL * abs(ref2.energy), (e2, ref2.energy)
    text = (tmp_path / "dump2.atoms").read_text().splitlines()
    rows = np.array([[float(x) for x in ln.split()] for ln in text[9 : 9 + len(system.coord)]])
    force = rows[np.argsort(rows[:, 0]), 1:4]
    np.testing.assert_allclose(force, ref2.force, rtol=0, atol=TOL)
    # no time integration: run 3 leaves the atoms and so the energy where they were
    e3 = float((tmp_path / "result3.txt").read_text().split()[1])
    assert abs(e3 - e2) < TOL * abs(e2), (e3, e2)


@pytest.mark.mpi
def test_comm_style_tiled_is_an_error(tmp_path, plugin, mpirun, real, frames):
    make_system(frames["water"]).write(tmp_path / "data.lmp")
    script = L.make_script(plugin, real[1], "* * O H", pre="comm_style tiled")
    proc = L.run_input(tmp_path, script, nprocs=2, timeout=TIMEOUT)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "requires comm_style brick" in out, out[-3000:]
    assert "Segmentation" not in out and "core dumped" not in out, out[-3000:]
