"""Generate the DeePMD-kit data fixtures (tests/data/deepmd_data/), see NOTES.md there.

Needs DeePMD-kit 3.2.0 (PyTorch backend) and dpdata in .venv-deepmd:

    .venv-deepmd/bin/python tests/deepmd_data/generate_reference.py

Deterministic (fixed frames; the data summary has no random part).  What it does:

1. HDF5 systems written by dpdata from bundled systems: ``multi.hdf5`` (a MultiSystems of
   examples/data/water/data_0 frames 0-4, 192 atoms, and molecules-nopbc/C1H4O2 frames 0-3,
   7 atoms, no PBC: two groups) and ``sets.hdf5#/top/water`` (the water frames in sets of 2,
   nested one group down), each also written by dpdata as npy folders (``npy_*``) from the
   same dpdata systems; ``reference.json`` records DeePMD-kit's ``process_systems`` of
   several spellings and what ``DeepmdData`` reads for each HDF5 system;
2. the system order: a folder tree (``ORDER_TREE``) whose names sort differently under
   ``sorted()``, ``glob`` and ``rglob``, searched by DeePMD-kit's ``process_systems`` with
   ``os.scandir`` made to list entries in a fixed order (by reversed name, see
   ``reversed_scandir``) so that the recorded order does not depend on the file system;
3. the data summary: ``dp --pt train`` for one step on ``TRAIN_INPUT`` (5 training systems
   with a per-system batch_size list and an ``auto_prob`` with blocks, 1 validation system);
   the summary lines of its log go to ``dp_summary.txt``;
4. ``m0_frozen.pth`` = ``dp --pt freeze`` of tests/data/model_devi/m0.ckpt.pt (a DeePMD-kit
   DPA3 model, type map O H) and ``m0_eval.npz``: DeePMD-kit's ``DeepPot`` energy, force and
   virial of that frozen model on npy_multi water frames 0-1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("DEVICE", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import deepmd
import dpdata
import numpy as np
from deepmd.utils.data import DeepmdData
from deepmd.utils.data_system import process_systems

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "data" / "deepmd_data"
EXAMPLES = REPO / "examples" / "data"
CKPT = REPO / "tests" / "data" / "model_devi" / "m0.ckpt.pt"

# systems (folders holding type.raw) of the order tree, relative to its root "tree"
ORDER_TREE = ["a10", "a2", "B", "b", "b/inner", "c/x/sys1", "c/sys2", "sys3", "d.e/sys4",
              "d.e/sys4/deeper/sys5", "Z_sys"]
ORDER_CASES = {  # name -> (systems, rglob_patterns)
    "parent": ("tree", None),
    "list": (["tree/c", "tree/b", "tree/a2"], None),
    "system_with_subsystem": ("tree/b", None),
    "patterns": ("tree", ["sys*", "a1*"]),
}

LONG = "npy_systems_written_by_dpdata_multi"  # > 42 characters with a system name
TRAIN_INPUT = {
    "model": {
        "type_map": ["O", "H", "C"],
        "descriptor": {
            "type": "dpa3", "precision": "float64", "seed": 1,
            "repflow": {"n_dim": 16, "e_dim": 8, "a_dim": 8, "nlayers": 1, "e_rcut": 4.0,
                        "e_rcut_smth": 3.5, "e_sel": 40, "a_rcut": 3.0, "a_rcut_smth": 2.5,
                        "a_sel": 10},
        },
        "fitting_net": {"neuron": [16, 16], "precision": "float64", "seed": 1},
    },
    "learning_rate": {"type": "exp", "start_lr": 2e-3, "stop_lr": 1e-4},
    "loss": {"type": "ener", "start_pref_e": 0.2, "limit_pref_e": 20, "start_pref_f": 100,
             "limit_pref_f": 60},
    "training": {
        "training_data": {
            "systems": [f"{LONG}/O2H4C1", f"{LONG}/O64H128C0", "sets.hdf5#/top/water",
                        "multi.hdf5"],
            "batch_size": [1, 2, 3, 3, 2],
            "auto_prob": "prob_sys_size;0:2:0.3;2:5:0.7",
        },
        "validation_data": {"systems": "npy_sets", "batch_size": "auto:100"},
        "numb_steps": 1, "seed": 10, "disp_freq": 1, "save_freq": 1,
    },
}


class _Listing:
    def __init__(self, entries: list) -> None:
        self.entries = entries

    def __enter__(self) -> _Listing:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __iter__(self):
        return iter(self.entries)

    def close(self) -> None:
        pass


@contextlib.contextmanager
def reversed_scandir():
    """``os.scandir`` lists the entries of a folder by reversed name (``name[::-1]``)."""
    real = os.scandir

    def scandir(path="."):
        with real(path) as it:
            return _Listing(sorted(it, key=lambda e: e.name[::-1]))

    os.scandir = scandir
    try:
        yield
    finally:
        os.scandir = real


def write_data(root: Path) -> None:
    """The HDF5 files and their npy twins under ``root``."""
    water = dpdata.LabeledSystem(str(EXAMPLES / "water" / "data_0"), fmt="deepmd/npy")
    mol = dpdata.LabeledSystem(str(EXAMPLES / "molecules-nopbc" / "C1H4O2"), fmt="deepmd/npy")
    ms = dpdata.MultiSystems(water.sub_system(range(5)), mol.sub_system(range(4)))
    ms.to("deepmd/hdf5", str(root / "multi.hdf5"))
    ms.to("deepmd/npy", str(root / LONG))
    w5 = water.sub_system(range(5))
    w5.to("deepmd/hdf5", str(root / "sets.hdf5") + "#/top/water", set_size=2)
    w5.to("deepmd/npy", str(root / "npy_sets"), set_size=2)


def hdf5_reference(root: Path) -> dict:
    cwd = os.getcwd()
    os.chdir(root)
    try:
        found = {s: process_systems(s) for s in ("multi.hdf5", "sets.hdf5#/top", "sets.hdf5")}
        systems = {}
        for s in sorted({x for v in found.values() for x in v}):
            d = DeepmdData(s, type_map=["O", "H", "C"])
            systems[s] = {"natoms": int(d.natoms), "nframes": int(d.nframes), "pbc": bool(d.pbc),
                          "type_map": list(d.type_map), "nsets": len(d.dirs),
                          "numb_batch_2": int(d.get_sys_numb_batch(2))}
    finally:
        os.chdir(cwd)
    return {"process_systems": found, "systems": systems}


def order_reference() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        for rel in ORDER_TREE:
            d = Path(tmp) / "tree" / rel
            d.mkdir(parents=True, exist_ok=True)
            (d / "type.raw").write_text("0\n")
        (Path(tmp) / "tree" / "c" / "notes.txt").write_text("not a system\n")
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            with reversed_scandir():
                out = {}
                for name, (systems, patterns) in ORDER_CASES.items():
                    found = process_systems(systems, patterns=patterns)
                    if patterns is not None:  # DeePMD-kit returns a set's order: keep the set
                        found = sorted(found)
                    out[name] = {"systems": systems, "rglob_patterns": patterns,
                                 "found": found, "ordered": patterns is None}
        finally:
            os.chdir(cwd)
    return {"tree": ORDER_TREE, "scandir": "entries sorted by reversed name", "cases": out}


def run_dp(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", DEVICE="cpu")
    proc = subprocess.run([sys.executable, "-m", "deepmd", "--pt", *args], cwd=str(cwd),
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"dp {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout + proc.stderr


def summary_lines(log: str) -> list[str]:
    """The data-summary lines of a dp log, without the time stamp and level prefix."""
    out, inside = [], False
    for line in log.splitlines():
        msg = line.split("DEEPMD INFO    ", 1)[1] if "DEEPMD INFO    " in line else None
        if msg is None:
            continue
        if msg.startswith("---Summary of DataSystem"):
            inside = True
        if inside:
            out.append(msg)
            if msg.startswith("-----") and not msg.startswith("---Summary"):
                inside = False
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for f in OUT.iterdir():
        if f.name != "NOTES.md":
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    write_data(OUT)
    ref = {"hdf5": hdf5_reference(OUT), "order": order_reference()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_data(work)
        (work / "input.json").write_text(json.dumps(TRAIN_INPUT, indent=2))
        log = run_dp(["train", "input.json"], work)
        (OUT / "dp_summary.txt").write_text("\n".join(summary_lines(log)) + "\n")
        run_dp(["freeze", "-c", str(CKPT), "-o", "m0_frozen.pth"], work)
        shutil.copy(work / "m0_frozen.pth", OUT / "m0_frozen.pth")
        from deepmd.infer import DeepPot

        pot = DeepPot(str(work / "m0_frozen.pth"))
        sys_dir = OUT / LONG / "O64H128C0"
        coord = np.load(sys_dir / "set.000" / "coord.npy")[:2].astype(np.float64)
        box = np.load(sys_dir / "set.000" / "box.npy")[:2].astype(np.float64)
        names = (sys_dir / "type_map.raw").read_text().split()
        types = np.loadtxt(sys_dir / "type.raw", dtype=int)
        atype = np.array([["O", "H"].index(names[t]) for t in types])
        e, f, v = pot.eval(coord, box, atype)[:3]
        np.savez(OUT / "m0_eval.npz", coord=coord, box=box, atype=atype,
                 energy=np.asarray(e).reshape(2), force=np.asarray(f).reshape(2, -1, 3),
                 virial=np.asarray(v).reshape(2, 9))
    (OUT / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    (OUT / "train_input.json").write_text(json.dumps(TRAIN_INPUT, indent=1) + "\n")
    (OUT / "versions.txt").write_text(
        f"deepmd-kit {deepmd.__version__}\ndpdata {dpdata.__version__}\n"
        f"python {sys.version.split()[0]}\nnumpy {np.__version__}\n")


if __name__ == "__main__":
    main()
