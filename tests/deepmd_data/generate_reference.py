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
   virial of that frozen model on npy_multi water frames 0-1;
5. npy layouts (``layouts/``, ``layouts_reference.json``, ``layouts_dp.npz``): small systems
   written with numpy (``LAYOUTS``, fixed random numbers), one per layout a DeePMD-kit user
   may have (array shapes, dtypes, byte order, single-frame sets, several sets, nopbc,
   mixed type, ``atomic_*`` spellings, labels missing in some sets, extra files), each read
   by DeePMD-kit's ``DeepmdData`` with the label requirements of its energy loss, through
   both of its readers: ``get_test`` (whole sets, as ``dp test`` does) and
   ``get_item_torch`` frame by frame (as ``dp --pt train`` does).  What
   ``get_item_torch`` reads (else ``get_test``) is kept in ``layouts_dp.npz``
   (``<layout>/<key>``); which readers succeeded, whether they agree, and the message of a
   reader that failed are recorded in ``layouts_reference.json``.

``generate_reference.py layouts`` runs step 5 alone (the other fixtures stay as they are).
"""

from __future__ import annotations

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scandir_order import reversed_scandir

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "data" / "deepmd_data"
EXAMPLES = REPO / "examples" / "data"
CKPT = REPO / "tests" / "data" / "model_devi" / "m0.ckpt.pt"

# systems (folders holding type.raw) of the order tree, relative to its root "tree"
ORDER_TREE = [
    "a10",
    "a2",
    "B",
    "b",
    "b/inner",
    "c/x/sys1",
    "c/sys2",
    "sys3",
    "d.e/sys4",
    "d.e/sys4/deeper/sys5",
    "Z_sys",
]
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
            "type": "dpa3",
            "precision": "float64",
            "seed": 1,
            "repflow": {
                "n_dim": 16,
                "e_dim": 8,
                "a_dim": 8,
                "nlayers": 1,
                "e_rcut": 4.0,
                "e_rcut_smth": 3.5,
                "e_sel": 40,
                "a_rcut": 3.0,
                "a_rcut_smth": 2.5,
                "a_sel": 10,
            },
        },
        "fitting_net": {"neuron": [16, 16], "precision": "float64", "seed": 1},
    },
    "learning_rate": {"type": "exp", "start_lr": 2e-3, "stop_lr": 1e-4},
    "loss": {
        "type": "ener",
        "start_pref_e": 0.2,
        "limit_pref_e": 20,
        "start_pref_f": 100,
        "limit_pref_f": 60,
    },
    "training": {
        "training_data": {
            "systems": [
                f"{LONG}/O2H4C1",
                f"{LONG}/O64H128C0",
                "sets.hdf5#/top/water",
                "multi.hdf5",
            ],
            "batch_size": [1, 2, 3, 3, 2],
            "auto_prob": "prob_sys_size;0:2:0.3;2:5:0.7",
        },
        "validation_data": {"systems": "npy_sets", "batch_size": "auto:100"},
        "numb_steps": 1,
        "seed": 10,
        "disp_freq": 1,
        "save_freq": 1,
    },
}


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
            systems[s] = {
                "natoms": int(d.natoms),
                "nframes": int(d.nframes),
                "pbc": bool(d.pbc),
                "type_map": list(d.type_map),
                "nsets": len(d.dirs),
                "numb_batch_2": int(d.get_sys_numb_batch(2)),
            }
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
                    out[name] = {
                        "systems": systems,
                        "rglob_patterns": patterns,
                        "found": found,
                        "ordered": patterns is None,
                    }
        finally:
            os.chdir(cwd)
    return {"tree": ORDER_TREE, "scandir": "entries sorted by reversed name", "cases": out}


def run_dp(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", DEVICE="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "deepmd", "--pt", *args],
        cwd=str(cwd),
        env=env,
        capture_output=True,
        text=True,
    )
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


MODEL_TYPE_MAP = ["O", "H", "C"]
NATOMS = 4
#: the layouts of step 5 (files: see layout_files)
LAYOUTS = [
    "standard",
    "coord_3d",
    "labels_3d",
    "energy_column",
    "dtypes",
    "fortran_big_endian",
    "single_frame_1d",
    "energy_0d",
    "several_sets",
    "nopbc",
    "nopbc_with_box",
    "mixed",
    "mixed_no_type_map",
    "atomic_spelling",
    "labels_missing_per_set",
    "extra_files",
    "type_raw_one_line",
    "no_type_map",
    "energy_transposed",
    "force_3_by_natoms",
    "virtual_atoms",
]


def layout_files(name: str) -> dict:
    """The files of layout ``name``: relative path -> ndarray (``.npy``), str (text) or
    None (empty file).  4 atoms, ``type_map.raw`` = H O C (not the model's O H C), types
    ``0 1 1 0`` (H O O H), frames in sets of 2 and 1 where several."""
    rng = np.random.default_rng(abs(hash_name(name)))
    nf = 3
    coord = rng.uniform(0.0, 5.0, (nf, NATOMS, 3))
    box = np.tile(
        (np.diag([6.0, 7.0, 8.0]) + rng.uniform(-0.2, 0.2, (3, 3))).reshape(1, 9), (nf, 1)
    )
    energy = rng.normal(-10.0, 1.0, nf)
    force = rng.normal(0.0, 1.0, (nf, NATOMS, 3))
    virial = rng.normal(0.0, 1.0, (nf, 9))
    atom_ener = rng.normal(-2.0, 0.5, (nf, NATOMS))
    files: dict = {"type.raw": "0\n1\n1\n0\n", "type_map.raw": "H\nO\nC\n"}

    def sets(arrays: dict, sizes=(nf,)) -> None:
        start = 0
        for i, n in enumerate(sizes):
            for k, v in arrays.items():
                if v is not None:
                    files[f"set.{i:03d}/{k}.npy"] = v[start : start + n]
            start += n

    std = {
        "coord": coord.reshape(nf, -1),
        "box": box,
        "energy": energy,
        "force": force.reshape(nf, -1),
        "virial": virial,
    }
    if name == "standard":
        sets(std)
    elif name == "coord_3d":
        sets(dict(std, coord=coord))
    elif name == "labels_3d":
        sets(
            dict(
                std,
                box=box.reshape(nf, 3, 3),
                energy=energy[:, None],
                force=force,
                virial=virial.reshape(nf, 3, 3),
            )
        )
    elif name == "energy_column":
        sets(dict(std, energy=energy[:, None]))
    elif name == "dtypes":
        sets(
            dict(
                std,
                coord=coord.reshape(nf, -1).astype(np.float32),
                box=np.round(box).astype(np.int64),
                energy=energy.astype(np.float32),
                force=force.reshape(nf, -1).astype(np.float16),
                virial=virial.astype(np.float32),
            )
        )
    elif name == "fortran_big_endian":
        sets(
            dict(
                std,
                coord=np.asfortranarray(coord.reshape(nf, -1)),
                force=force.reshape(nf, -1).astype(">f8"),
                energy=energy.astype(">f4"),
            )
        )
    elif name == "single_frame_1d":
        for k, v in std.items():
            files[f"set.000/{k}.npy"] = v[0].reshape(-1)
    elif name == "energy_0d":
        for k, v in std.items():
            files[f"set.000/{k}.npy"] = v[0].reshape(-1)
        files["set.000/energy.npy"] = np.asarray(energy[0])
    elif name == "several_sets":  # string order: set.000 < set.01 < set.1
        sets(std, (1, 1, 1))
        for old, new in (("set.001", "set.01"), ("set.002", "set.1")):
            for k in std:
                files[f"{new}/{k}.npy"] = files.pop(f"{old}/{k}.npy")
    elif name == "nopbc":
        sets(dict(std, box=None))
        files["nopbc"] = None
    elif name == "nopbc_with_box":
        sets(std)
        files["nopbc"] = None
    elif name in ("mixed", "mixed_no_type_map", "virtual_atoms"):
        real = rng.integers(0, 3, (nf, NATOMS))
        if name == "virtual_atoms":
            real[1, 3] = -1
        sets(dict(std, real_atom_types=real), (2, 1))
        files["type.raw"] = "0\n0\n0\n0\n"
        if name == "mixed_no_type_map":
            del files["type_map.raw"]
    elif name == "atomic_spelling":
        sets(dict(std, atomic_ener=atom_ener))
    elif name == "labels_missing_per_set":
        sets(dict(std, atom_ener=atom_ener), (2, 1))
        del files["set.000/energy.npy"], files["set.001/force.npy"]
        del files["set.001/atom_ener.npy"]
    elif name == "extra_files":  # read only when the input asks for them
        sets(
            dict(
                std,
                atom_ener=atom_ener,
                atom_pref=np.ones((nf, NATOMS)),
                fparam=rng.normal(size=(nf, 2)),
                aparam=rng.normal(size=(nf, NATOMS, 1)),
                numb_copy=np.ones((nf, 1), dtype=np.int64),
            )
        )
    elif name == "type_raw_one_line":
        sets(std)
        files["type.raw"] = "0 1 1 0\n"
        files["type_map.raw"] = "H O C\n"
    elif name == "no_type_map":
        sets(std)
        del files["type_map.raw"]
    elif name == "energy_transposed":
        sets(dict(std, energy=energy[None, :]))
    elif name == "force_3_by_natoms":
        sets(dict(std, force=force.transpose(0, 2, 1)))
    else:
        raise KeyError(name)
    return files


def hash_name(name: str) -> int:
    """A stable seed from a layout name (``hash`` is salted per process)."""
    return int.from_bytes(name.encode()[:8].ljust(8, b"_"), "little") % (2**31)


def write_layout(root: Path, name: str) -> Path:
    d = root / name
    if d.exists():
        shutil.rmtree(d)
    for rel, v in layout_files(name).items():
        f = d / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        if v is None:
            f.write_text("")
        elif isinstance(v, str):
            f.write_text(v)
        else:
            np.save(f, v)
    return d


LABEL_REQUIREMENTS = [  # as deepmd/pt/loss/ener.py adds them (energy, force, virial, ae, pf)
    dict(key="energy", ndof=1, atomic=False, must=False, high_prec=True),
    dict(key="force", ndof=3, atomic=True, must=False, high_prec=False),
    dict(key="virial", ndof=9, atomic=False, must=False, high_prec=False),
    dict(key="atom_ener", ndof=1, atomic=True, must=False, high_prec=False),
    dict(key="atom_ener_coeff", ndof=1, atomic=True, must=False, high_prec=False, default=1.0),
]
KEYS = ["coord", "box", "type", "energy", "force", "virial", "atom_ener", "atom_ener_coeff"]


def dp_read(path: Path, whole: bool) -> dict:
    """DeePMD-kit's reading of one system: ``get_test`` (whole sets) or ``get_item_torch``
    (frame by frame); atoms in file order (``sort_atoms=False``), arrays (nframes, ...)."""
    d = DeepmdData(str(path), type_map=MODEL_TYPE_MAP, shuffle_test=False, sort_atoms=False)
    for req in LABEL_REQUIREMENTS:
        d.add(**req)
    if whole:
        t = d.get_test()
        frames = [
            {k: t[k][i] for k in t if not k.startswith("find_")}
            | {k: t[k] for k in t if k.startswith("find_")}
            for i in range(t["coord"].shape[0])
        ]
        # get_test keeps one find_* per system: per set below
        finds = []
        for s in d.dirs:
            one = d._load_set(s)
            n = one["coord"].shape[0]
            finds += [{k: float(one[k]) for k in one if k.startswith("find_")}] * n
        for f, g in zip(frames, finds, strict=True):
            f.update(g)
    else:
        frames = [d.get_item_torch(i, 1) for i in range(d.nframes)]
    out = {}
    nat = d.natoms
    for k in KEYS:
        vals = [f.get(k) for f in frames]
        if k == "box" and not d.pbc:
            continue
        out[k] = np.stack(
            [
                np.asarray(v, dtype=np.float64 if k != "type" else np.int64).reshape(nat, 3)
                if k in ("coord", "force")
                else np.asarray(v).reshape(-1)
                for v in vals
            ]
        )
        if k == "energy":
            out[k] = out[k].reshape(-1)
    for k in ("energy", "force", "virial", "atom_ener", "atom_ener_coeff"):
        out[f"find_{k}"] = np.array([bool(f[f"find_{k}"]) for f in frames])
    return out


def layouts_reference() -> None:
    root = OUT / "layouts"
    if root.exists():
        shutil.rmtree(root)
    ref, arrays = {}, {}
    for name in LAYOUTS:
        path = write_layout(root, name)
        got, errors = {}, {}
        for reader, whole in (("get_test", True), ("get_item_torch", False)):
            try:
                got[reader] = dp_read(path, whole)
            except Exception as err:  # recorded: the fixture says what dp does
                msg = f"{type(err).__name__}: {err}".replace(f"{root}/", "")
                errors[reader] = msg.splitlines()[0][:300]
        entry = {"read_by": sorted(got), "errors": errors, "readers_agree": None}
        if len(got) == 2:
            a, b = got["get_test"], got["get_item_torch"]
            entry["readers_agree"] = a.keys() == b.keys() and all(
                a[k].shape == b[k].shape and np.array_equal(a[k], b[k]) for k in a
            )
        if got:  # what dp --pt train reads where it can, else what dp test reads
            for k, v in got.get("get_item_torch", got.get("get_test")).items():
                arrays[f"{name}/{k}"] = v
        ref[name] = entry
    np.savez(OUT / "layouts_dp.npz", **arrays)
    (OUT / "layouts_reference.json").write_text(
        json.dumps({"model_type_map": MODEL_TYPE_MAP, "layouts": ref}, indent=1) + "\n"
    )


def main(argv: list[str]) -> None:
    if argv == ["layouts"]:
        layouts_reference()
        return
    if argv:
        raise SystemExit("usage: generate_reference.py [layouts]")
    OUT.mkdir(parents=True, exist_ok=True)
    for f in OUT.iterdir():
        if f.name != "NOTES.md":  # the layouts are written again below
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
        np.savez(
            OUT / "m0_eval.npz",
            coord=coord,
            box=box,
            atype=atype,
            energy=np.asarray(e).reshape(2),
            force=np.asarray(f).reshape(2, -1, 3),
            virial=np.asarray(v).reshape(2, 9),
        )
    (OUT / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    layouts_reference()
    (OUT / "train_input.json").write_text(json.dumps(TRAIN_INPUT, indent=1) + "\n")
    (OUT / "versions.txt").write_text(
        f"deepmd-kit {deepmd.__version__}\ndpdata {dpdata.__version__}\n"
        f"python {sys.version.split()[0]}\nnumpy {np.__version__}\n"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
