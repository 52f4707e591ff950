"""examples/active_learning/run.py --quick: one explore-select-label round end to end.

Two models trained a few steps, 20 LAMMPS steps with ``pair_style dpa3 m0 m1 out_freq 2``,
``dpa3 model-devi --select``, EMT labels.  Checked against independent references: the selected
frames are those whose ``max_devi_f`` in the *plugin's* model_devi.out lies in [LO, HI), their
coordinates are the dumped frames (read with ASE), and the labels are ASE's EMT evaluated here
with DeePMD-kit's virial convention (virial = -stress x volume).  The full run (3 iterations,
4 models, the numbers in examples/active_learning/README.md) is measured, not run here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from lmp_helpers import ROOT, plugin  # noqa: F401

pytestmark = pytest.mark.lammps
SCRIPT = ROOT / "examples" / "active_learning" / "run.py"
LO, HI = 0.0, 1.0e3  # every frame of the quick run is a candidate (its deviations are ~5e-3)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("al")
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "-o",
            str(run),
            "--lo",
            str(LO),
            "--hi",
            str(HI),
            "--max-label",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=1500,  # ~1 minute on a quiet 2-core machine; generous for a loaded one
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return run, proc.stdout


def test_prints_fractions(plugin, quick_run):
    run, out = quick_run
    rows = [ln.split() for ln in out.splitlines() if ln.split() and ln.split()[0] == "0"]
    assert len(rows) == 1, out
    candidate, accurate, failed = map(float, rows[0][3:6])  # after iter, T K, frames
    for x in (candidate, accurate, failed):
        assert 0.0 <= x <= 1.0
    assert abs(candidate + accurate + failed - 1.0) < 2e-3
    summary = json.loads((run / "summary.json").read_text())
    (it,) = summary["iterations"]
    assert it["frames"] == 11 and it["candidate"] == pytest.approx(candidate, abs=1e-3)
    devi = np.loadtxt(run / "iter.000" / "md" / "walker_0" / "model_devi.out", ndmin=2)
    assert it["max_devi_f_max"] == pytest.approx(devi[:, 4].max())
    assert it["max_devi_f_mean"] == pytest.approx(devi[:, 4].mean())


def test_selected_frames_are_the_dumped_ones(plugin, quick_run):
    import ase.io

    run, _ = quick_run
    walker = run / "iter.000" / "md" / "walker_0"
    lmp = np.loadtxt(walker / "model_devi.out", ndmin=2)
    assert lmp.shape == (11, 7) and list(lmp[:, 0]) == list(range(0, 21, 2))
    expected = np.nonzero((lmp[:, 4] >= LO) & (lmp[:, 4] < HI))[0]
    assert len(expected) == 11
    # dpa3 model-devi re-evaluated the dumped frames: the plugin's force deviations (its file
    # has dp model-devi's extra devi_e column)
    ours = np.loadtxt(walker / "candidates" / "model_devi.out", ndmin=2)
    np.testing.assert_allclose(ours[:, 4:7], lmp[:, 4:7], rtol=1e-3, atol=1e-6)
    frames = ase.io.read(
        walker / "traj.lammpstrj",
        index=":",
        format="lammps-dump-text",
        specorder=["Cu", "Al", "Ni"],
    )
    cand = walker / "candidates"
    coord = np.load(cand / "set.000" / "coord.npy")
    box = np.load(cand / "set.000" / "box.npy")
    assert coord.shape == (len(expected), 72 * 3)
    names = (cand / "type_map.raw").read_text().split()
    atype = np.loadtxt(cand / "type.raw", dtype=int)
    assert [names[t] for t in atype] == frames[0].get_chemical_symbols()
    for k, f in enumerate(expected):
        np.testing.assert_allclose(coord[k].reshape(-1, 3), frames[f].get_positions(), atol=1e-8)
        np.testing.assert_allclose(box[k].reshape(3, 3), frames[f].cell[:], atol=1e-8)


def test_labels_are_emt(plugin, quick_run):
    from ase import Atoms
    from ase.calculators.emt import EMT

    run, _ = quick_run
    data = run / "iter.000" / "data" / "walker_0"
    cand = np.load(run / "iter.000" / "md" / "walker_0" / "candidates" / "set.000" / "coord.npy")
    s = data / "set.000"
    coord, box = np.load(s / "coord.npy"), np.load(s / "box.npy")
    energy, force, virial = (
        np.load(s / "energy.npy"),
        np.load(s / "force.npy"),
        np.load(s / "virial.npy"),
    )
    assert len(coord) == 4 and energy.shape == (4,) and force.shape == (4, 216)
    assert virial.shape == (4, 9)
    names = (data / "type_map.raw").read_text().split()
    atype = np.loadtxt(data / "type.raw", dtype=int)
    for k in range(len(coord)):
        assert np.any(np.all(cand == coord[k], axis=1))  # a candidate frame
        atoms = Atoms(
            [names[t] for t in atype],
            positions=coord[k].reshape(-1, 3),
            cell=box[k].reshape(3, 3),
            pbc=True,
        )
        atoms.calc = EMT()
        assert energy[k] == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(force[k].reshape(-1, 3), atoms.get_forces(), atol=1e-10)
        stress = atoms.get_stress(voigt=False)
        np.testing.assert_allclose(virial[k].reshape(3, 3), -stress * atoms.get_volume(), atol=1e-9)
    # distinct frames, spread over the candidates
    assert len({c.tobytes() for c in coord}) == 4


def test_labeller_drops_unphysical_frames(tmp_path):
    """label_emt leaves out a frame whose EMT forces exceed --max-force (two atoms 0.9 A
    apart) and keeps the fcc frame; the check uses EMT evaluated here."""
    import importlib.util

    import ase.io
    from ase.calculators.emt import EMT

    spec = importlib.util.spec_from_file_location("al_run", SCRIPT)
    al_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(al_run)
    atoms = ase.io.read(al_run.START, format="lammps-data", atom_style="atomic")
    names = al_run.TYPE_MAP
    atoms.set_chemical_symbols([names[t - 1] for t in atoms.get_array("type")])
    squeezed = atoms.copy()
    squeezed.positions[1] = squeezed.positions[0] + [0.9, 0.0, 0.0]
    forces = []
    for a in (atoms, squeezed):
        a.calc = EMT()
        forces.append(np.abs(a.get_forces()).max())
    max_force = 20.0
    assert forces[0] < max_force < forces[1]  # the test's premise, from EMT itself

    cand = tmp_path / "candidates"
    (cand / "set.000").mkdir(parents=True)
    (cand / "type_map.raw").write_text("\n".join(names) + "\n")
    np.savetxt(cand / "type.raw", [names.index(s) for s in atoms.get_chemical_symbols()], "%d")
    np.save(
        cand / "set.000" / "coord.npy", np.stack([a.positions.ravel() for a in (squeezed, atoms)])
    )
    np.save(cand / "set.000" / "box.npy", np.stack([a.cell[:].ravel() for a in (squeezed, atoms)]))
    out = tmp_path / "labelled"
    assert al_run.label_emt(cand, out, max_label=10, max_force=max_force) == (1, 1)
    np.testing.assert_allclose(np.load(out / "set.000" / "coord.npy"), [atoms.positions.ravel()])
    np.testing.assert_allclose(np.load(out / "set.000" / "force.npy"), [atoms.get_forces().ravel()])
    # nothing kept: no system written
    out2 = tmp_path / "none"
    assert al_run.label_emt(cand, out2, max_label=1, max_force=max_force) == (0, 1)
    assert not out2.exists()


def test_initial_subset_keeps_the_gentle_frames(tmp_path):
    """``--init-max-rms X``: the initial training set holds exactly the bundled frames whose
    force RMS is below X, every per-frame array sliced alike (checked against the bundled
    arrays read here)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("al_run", SCRIPT)
    al_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(al_run)
    max_rms = 0.6
    systems = al_run.initial_systems(tmp_path, max_rms)
    bundled = sorted(p for p in al_run.DATA.iterdir() if (p / "type.raw").is_file())
    kept_total = 0
    for src in bundled:
        force = np.load(src / "set.000" / "force.npy")
        rms = np.sqrt(np.mean(force**2, axis=1))
        expected = np.nonzero(rms < max_rms)[0]
        dst = tmp_path / "init_data" / src.name
        if len(expected) == 0:
            assert str(dst) not in systems
            continue
        assert str(dst) in systems
        for name in ("coord", "box", "energy", "force", "virial", "real_atom_types"):
            np.testing.assert_array_equal(
                np.load(dst / "set.000" / f"{name}.npy"),
                np.load(src / "set.000" / f"{name}.npy")[expected],
            )
        kept_total += len(expected)
    assert 0 < kept_total < sum(len(np.load(s / "set.000" / "energy.npy")) for s in bundled)
    assert al_run.initial_systems(tmp_path / "all", None) == [str(s) for s in bundled]


def _load_run_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("al_run", SCRIPT)
    al_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(al_run)
    return al_run


def _frame(step: int, xyz: list[list[str]]) -> str:
    atoms = "".join(f"{i + 1} 1 {' '.join(p)}\n" for i, p in enumerate(xyz))
    return (
        f"ITEM: TIMESTEP\n{step}\nITEM: NUMBER OF ATOMS\n{len(xyz)}\n"
        "ITEM: BOX BOUNDS pp pp pp\n0 5\n0 5\n0 5\nITEM: ATOMS id type x y z\n" + atoms
    )


def test_stopped_walker_keeps_its_whole_finite_frames(tmp_path):
    """A LAMMPS run that stopped early (non-finite positions, a frame cut short): the
    trajectory keeps the whole finite frames that have a model_devi.out row, model_devi.out
    only their rows, the originals stay as *.stopped, and ASE reads the result."""
    import ase.io

    al_run = _load_run_module()
    good = [["0.5", "0.5", "0.5"], ["1.5", "1.5", "1.5"]]
    bad = [["0.5", "nan", "0.5"], ["1.5", "1.5", "1.5"]]
    frames = [_frame(0, good), _frame(10, good), _frame(20, good), _frame(30, bad)]
    cut = _frame(40, good)[:-12]  # the stop cut the last frame short
    # step 20 has no row (model_devi.out is written by another code path): dropped as well
    (tmp_path / "traj.lammpstrj").write_text("".join(frames) + cut)
    header = "#       step         max_devi_v         min_devi_v\n"
    rows = [f"{s:>12d} 1.0 2.0\n" for s in (0, 10, 30, 40)]
    (tmp_path / "model_devi.out").write_text(header + "".join(rows))

    assert al_run.keep_complete_frames(tmp_path) == [0, 10]
    assert (tmp_path / "model_devi.out").read_text() == header + rows[0] + rows[1]
    assert (tmp_path / "model_devi.out.stopped").read_text() == header + "".join(rows)
    assert (tmp_path / "traj.lammpstrj").read_text() == frames[0] + frames[1]
    read = ase.io.read(tmp_path / "traj.lammpstrj", index=":", format="lammps-dump-text")
    assert len(read) == 2
    np.testing.assert_allclose(read[1].positions, [[0.5, 0.5, 0.5], [1.5, 1.5, 1.5]])

    # nothing usable: both files end up empty (header only), the caller skips the walker
    (tmp_path / "traj.lammpstrj").write_text(_frame(0, bad))
    assert al_run.keep_complete_frames(tmp_path) == []
    assert (tmp_path / "traj.lammpstrj").read_text() == ""


def test_failed_walker_is_reported_not_fatal(tmp_path):
    """run_all with may_fail returns the failed command's ERROR line; without it the script
    stops with the command's output."""
    al_run = _load_run_module()
    fail = [
        sys.executable,
        "-c",
        "print('step 5'); print('ERROR: Non-numeric atom coords'); "
        "print('Last command: run 1000'); raise SystemExit(1)",
    ]
    ok = [sys.executable, "-c", "print('fine')"]
    env = dict(os.environ)
    got = al_run.run_all([(fail, tmp_path / "a"), (ok, tmp_path / "b")], 2, env, may_fail=True)
    assert got == {tmp_path / "a": "ERROR: Non-numeric atom coords"}
    with pytest.raises(SystemExit, match="Non-numeric atom coords"):
        al_run.run_all([(fail, tmp_path / "c")], 1, env)
