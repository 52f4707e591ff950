"""Generate DeePMD-kit ``dp test`` fixtures (tests/data/dp_test/), see NOTES.md there.

Needs DeePMD-kit 3.2.0 (PyTorch backend) in .venv-deepmd.  Run from anywhere with that
interpreter:

    .venv-deepmd/bin/python tests/dp_test/generate_reference.py

Deterministic (fixed frames, fixed label seed).  What it does:

1. freezes tests/data/model_devi/m0.ckpt.pt (a float64 DeePMD-kit DPA3 checkpoint, type map
   O H) with ``dp --pt freeze`` into a scratch folder (the frozen file is not kept);
2. writes two small labelled water systems (examples/data/water/data_3, 192 atoms):
   ``sys_a`` = frames 0-2 (set.000 = frames 0-1, set.001 = frame 2) with energies, forces,
   synthetic virials and synthetic atomic energies; ``sys_b`` = frames 3-4 (one set) with
   energies and forces only (no virial);
3. runs ``dp --pt test`` in a scratch folder holding copies of the systems (so that the system
   names in the files are ``sys_a``/``sys_b``), once per case of ``CASES``, and keeps every file
   it writes plus its log (stdout and stderr) under ``<case>/``;
4. runs ``dp --pt freeze -o NAME`` for the names of ``FREEZE_NAMES`` and records the file each
   one wrote (``freeze_names.txt``);
5. runs ``dp --pt train train_input.json`` (2 steps on ``sys_a``) and keeps its ``out.json``
   as ``dp_out.json``.
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
import numpy as np

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "data" / "dp_test"
SRC = REPO / "examples" / "data" / "water" / "data_3"
CKPT = REPO / "tests" / "data" / "model_devi" / "m0.ckpt.pt"
SEED = 2024

# case name -> dp test arguments after ``-m m0.pth`` (cwd = the scratch folder)
CASES = {
    "single_n2": ["-s", "sys_a", "-n", "2", "-d", "detail"],
    "datafile": ["-f", "systems.txt", "-d", "detail"],
    "atomic": ["-s", "sys_a", "-a", "-d", "detail"],
    "suffix": ["-s", "sys_a", "-n", "1", "-d", "out/res.txt"],
    "nodetail": ["-s", "sys_b"],
}


FREEZE_NAMES = ("frozen_noext", "model.v2", "kept.pth")

TRAIN_INPUT = {
    "model": {
        "type_map": ["O", "H"],
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
        "training_data": {"systems": ["sys_a"], "batch_size": 1},
        "numb_steps": 2,
        "seed": 10,
        "disp_freq": 1,
        "save_freq": 2,
    },
}


def write_systems(root: Path) -> None:
    """``sys_a`` and ``sys_b`` (see the module docstring) under ``root``."""
    rng = np.random.default_rng(SEED)
    arrays = {k: np.load(SRC / "set.000" / f"{k}.npy") for k in ("coord", "box", "energy", "force")}
    natoms = arrays["coord"].shape[1] // 3
    for name, sets, extra in (("sys_a", ((0, 2), (2, 3)), True), ("sys_b", ((3, 5),), False)):
        sdir = root / name
        sdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(SRC / "type.raw", sdir / "type.raw")
        shutil.copy(SRC / "type_map.raw", sdir / "type_map.raw")
        for i, (lo, hi) in enumerate(sets):
            setdir = sdir / f"set.{i:03d}"
            setdir.mkdir(exist_ok=True)
            for k, a in arrays.items():
                np.save(setdir / f"{k}.npy", a[lo:hi])
            if extra:
                nf = hi - lo
                vir = rng.normal(0.0, 2.0, size=(nf, 9))
                np.save(
                    setdir / "virial.npy",
                    ((vir + vir[:, [0, 3, 6, 1, 4, 7, 2, 5, 8]]) / 2).astype(np.float32),
                )
                ae = arrays["energy"][lo:hi, None] / natoms + rng.normal(0.0, 0.01, (nf, natoms))
                np.save(setdir / "atom_ener.npy", ae.astype(np.float32))


def run_dp(args: list[str], cwd: Path, log: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", DEVICE="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "deepmd", "--pt", *args],
        cwd=str(cwd),
        env=env,
        capture_output=True,
        text=True,
    )
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"dp {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    write_systems(OUT)
    # the cases travel with the fixtures: the test runs dpa3 test with the same arguments
    (OUT / "cases.json").write_text(json.dumps(CASES, indent=1) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shutil.copy(CKPT, tmp / "m0.ckpt.pt")
        run_dp(["freeze", "-c", "m0.ckpt.pt", "-o", "m0.pth"], tmp, tmp / "freeze.log")
        for case, args in CASES.items():
            work = tmp / case
            work.mkdir()
            for name in ("sys_a", "sys_b"):
                shutil.copytree(OUT / name, work / name)
            (work / "systems.txt").write_text("sys_a\nsys_b\n")
            (work / "out").mkdir()
            before = set(work.rglob("*"))
            run_dp(["test", "-m", "../m0.pth", *args], work, work / "dp_test.log")
            dest = OUT / case
            if dest.exists():
                shutil.rmtree(dest)
            dest.mkdir()
            for p in sorted(set(work.rglob("*")) - before):
                if p.is_file():
                    rel = p.relative_to(work)
                    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(p, dest / rel)
        names = []
        for name in FREEZE_NAMES:
            before = set(tmp.iterdir())
            run_dp(["freeze", "-c", "m0.ckpt.pt", "-o", name], tmp, tmp / "freeze.log")
            made = sorted(p.name for p in set(tmp.iterdir()) - before if p.suffix != ".log")
            names.append(f"{name} {' '.join(made) or '(existing file replaced)'}\n")
        (OUT / "freeze_names.txt").write_text("".join(names))
        train = tmp / "train"
        train.mkdir()
        shutil.copytree(OUT / "sys_a", train / "sys_a")
        text = json.dumps(TRAIN_INPUT, indent=4) + "\n"
        (OUT / "train_input.json").write_text(text)
        (train / "input.json").write_text(text)
        run_dp(["train", "input.json"], train, train / "train.log")
        shutil.copy(train / "out.json", OUT / "dp_out.json")
    torch_version = __import__("torch").__version__
    (OUT / "versions.txt").write_text(
        f"deepmd-kit {deepmd.__version__}\ntorch {torch_version}\nnumpy {np.__version__}\n"
    )


if __name__ == "__main__":
    main()
