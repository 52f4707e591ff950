"""Generate the DeePMD-kit training fixtures of tests/data/dp_train/ (see NOTES.md there):
the stat file ``dp --pt train`` writes, the TensorBoard scalars it logs, and the ``out.json``
of a multi-task input.

Needs DeePMD-kit 3.2.0 (PyTorch backend) and ``tensorboard`` in .venv-deepmd, and dpa3 in
.venv (step 4 runs dpa3 to write a stat file that DeePMD-kit then reads):

    .venv-deepmd/bin/python tests/dp_train/generate_reference.py

(``DPA3_PYTHON=/path/to/python`` picks another interpreter with dpa3's dependencies.)

Deterministic data (fixed frames).  What it does, each run in a scratch folder holding
copies of the systems:

1. writes two small systems: ``mol`` = frames 0-5 of examples/data/molecules-nopbc/C1H4O2
   (7 atoms, C H O, no PBC) and ``water`` = frames 0-2 of examples/data/water/data_3
   (192 atoms, O H);
2. ``dp --pt train input.json`` (``INPUT``: 2 steps, batch sizes = the systems' frame counts
   and ``data_stat_nbatch`` 1, so the statistics use every frame exactly once; ``stat_file``
   ``stat.hdf5``; TensorBoard every step): keeps ``dp_stat.hdf5``, the ``out_bias``/``out_std``
   of the checkpoint and the logged TensorBoard scalars (tags and steps);
3. the same with ``stat_file`` ``stat_dir`` (a folder): keeps ``dp_stat_dir/``;
4. ``dpa3`` (from .venv, this repository's python/) computes the statistics of the same input
   but on ``mol`` alone (so that they differ from DeePMD-kit's own) into ``dpa3_stat.hdf5``
   (0 steps), then ``dp --pt train`` on both systems with that file and ``stat_file_mode``
   ``read``: keeps the file and the ``out_bias``/``out_std`` DeePMD-kit loaded from it;
5. ``dp --pt train mt_input.json`` (``MT_INPUT``: two tasks sharing one DPA3 descriptor,
   2 steps): keeps its ``out.json`` as ``mt_out.json``;
6. ``dpa3 train mt_input.json`` (2 steps), then ``dp --pt train`` on the ``out.json`` dpa3
   wrote: keeps that file as ``mt_out_dpa3.json`` and the lines of dp's log that say it shared
   the descriptor and saved the model as ``mt_dp_from_dpa3.log``;
7. ``disp_avg`` (``DISP_INPUT``: ``mol`` alone, batch size 2, 7 steps, same seeds): three runs
   that train identically and differ only in what they display, ``disp_freq`` 1 (every
   step's own metrics), ``disp_freq`` 3 and ``disp_freq`` 3 with ``disp_avg``: keeps their
   ``lcurve.out`` as ``dp_lcurve_disp1.out``, ``dp_lcurve_disp3.out``,
   ``dp_lcurve_disp3_avg.out``;
8. ``max_ckpt_keep`` (``CKPT_INPUT``: ``DISP_INPUT`` with ``save_freq`` 2 and
   ``max_ckpt_keep`` 2): 7 steps (saves at 2, 4, 6, 7), then 3 steps in the same folder
   (saves at 2, 3; the longer run's later checkpoints are left over): keeps, after each run,
   the checkpoint files of the folder (name -> ``file`` or the symlink's target) and the
   text of ``checkpoint`` in ``ckpt_reference.json``;
9. ``save_ckpt`` in a sub-folder (``CKPT_INPUT`` with ``save_ckpt`` ``run/model.ckpt``,
   7 steps): keeps, in ``ckpt_dir_reference.json``, every file of the working folder and of
   ``run/`` (``file``, ``folder`` or the symlink's target) and the text of each ``checkpoint``.

``generate_reference.py [STEP ...]`` runs only the named steps (``stat`` = 2-4, ``mt`` = 5-6,
``disp`` = 7, ``ckpt`` = 8, ``ckptdir`` = 9; default all), so the other fixtures stay
byte-identical.
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
import torch
from listing import ckpt_listing, folder_listing  # this folder (the script's)

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "data" / "dp_train"
DATA = REPO / "examples" / "data"
DPA3_PYTHON = Path(os.environ.get("DPA3_PYTHON", REPO / ".venv" / "bin" / "python"))
SYSTEMS = {"mol": (DATA / "molecules-nopbc" / "C1H4O2", 6), "water": (DATA / "water" / "data_3", 3)}

DESCRIPTOR = {
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
}
FITTING = {"neuron": [16, 16], "precision": "float64", "seed": 1}
LOSS = {
    "type": "ener",
    "start_pref_e": 0.2,
    "limit_pref_e": 20,
    "start_pref_f": 100,
    "limit_pref_f": 60,
}
INPUT = {
    "model": {
        "type_map": ["C", "H", "O"],
        "descriptor": DESCRIPTOR,
        "fitting_net": FITTING,
        "data_stat_nbatch": 1,
    },
    "learning_rate": {"type": "exp", "start_lr": 2e-3, "stop_lr": 1e-4, "decay_steps": 1},
    "loss": LOSS,
    "training": {
        "training_data": {"systems": ["mol", "water"], "batch_size": [6, 3]},
        "numb_steps": 2,
        "seed": 10,
        "disp_freq": 1,
        "save_freq": 2,
        "gradient_max_norm": 5.0,
        "stat_file": "stat.hdf5",
        "tensorboard": True,
        "tensorboard_log_dir": "tb",
        "tensorboard_freq": 1,
    },
}
MT_INPUT = {
    "model": {
        "shared_dict": {"type_map_all": ["C", "H", "O"], "dpa3_descriptor": DESCRIPTOR},
        "model_dict": {
            name: {
                "type_map": "type_map_all",
                "descriptor": "dpa3_descriptor",
                "fitting_net": dict(FITTING, seed=i + 1),
                "data_stat_nbatch": 1,
            }
            for i, name in enumerate(SYSTEMS)
        },
    },
    "learning_rate": {"type": "exp", "start_lr": 2e-3, "stop_lr": 1e-4, "decay_steps": 1},
    "loss_dict": {name: dict(LOSS) for name in SYSTEMS},
    "optimizer": {"type": "AdamW", "weight_decay": 0.001},
    "training": {
        "model_prob": {"mol": 1.0, "water": 2.0},
        "data_dict": {
            name: {
                "training_data": {"systems": [name], "batch_size": 1},
                "stat_file": f"stat_{name}.hdf5",
            }
            for name in SYSTEMS
        },
        "numb_steps": 2,
        "seed": 10,
        "disp_freq": 1,
        "save_freq": 2,
    },
}

DISP_INPUT = {
    "model": INPUT["model"],
    "learning_rate": INPUT["learning_rate"],
    "loss": LOSS,
    "training": {
        "training_data": {"systems": ["mol"], "batch_size": 2},
        "numb_steps": 7,
        "seed": 10,
        "disp_freq": 1,
        "save_freq": 100,
        "gradient_max_norm": 5.0,
    },
}
CKPT_INPUT = dict(DISP_INPUT, training=dict(DISP_INPUT["training"], save_freq=2, max_ckpt_keep=2))


def write_systems(root: Path) -> None:
    """The first frames of each source system, every ``set.000`` array kept."""
    for name, (src, nf) in SYSTEMS.items():
        dst = root / name
        if dst.exists():
            shutil.rmtree(dst)
        (dst / "set.000").mkdir(parents=True)
        for f in src.iterdir():
            if f.is_file():
                shutil.copy(f, dst / f.name)
        for f in sorted((src / "set.000").glob("*.npy")):
            np.save(dst / "set.000" / f.name, np.load(f)[:nf])


def run(cmd: list[str], cwd: Path, log: Path, env: dict | None = None) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", DEVICE="cpu", **(env or {}))
    proc = subprocess.run(cmd, cwd=str(cwd), env=env, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")


def dp_train(work: Path, inp: dict) -> None:
    (work / "input.json").write_text(json.dumps(inp, indent=4) + "\n")
    run(
        [sys.executable, "-m", "deepmd", "--pt", "train", "input.json", "--skip-neighbor-stat"],
        work,
        work / "train.log",
    )


def bias_of(ckpt: Path) -> dict:
    """``out_bias``/``out_std`` of a single-task checkpoint, shape ``(ntypes,)``."""
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    pre = "model.Default.atomic_model."
    return {k: sd[pre + k].reshape(-1).tolist() for k in ("out_bias", "out_std")}


def scratch(tmp: Path, name: str) -> Path:
    work = tmp / name
    work.mkdir()
    for s in SYSTEMS:
        shutil.copytree(OUT / s, work / s)
    return work


def tensorboard_scalars(log_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    return {
        "scalars": {t: [e.step for e in acc.Scalars(t)] for t in sorted(tags["scalars"])},
        "histograms": sorted(tags["histograms"]),
    }


def step_disp(tmp: Path) -> None:
    """7. ``lcurve.out`` with ``disp_freq`` 1, 3, and 3 with ``disp_avg``."""
    runs = {
        "disp1": {},
        "disp3": {"disp_freq": 3},
        "disp3_avg": {"disp_freq": 3, "disp_avg": True},
    }
    for name, extra in runs.items():
        work = scratch(tmp, name)
        dp_train(work, dict(DISP_INPUT, training=dict(DISP_INPUT["training"], **extra)))
        shutil.copy(work / "lcurve.out", OUT / f"dp_lcurve_{name}.out")
    (OUT / "disp_input.json").write_text(json.dumps(DISP_INPUT, indent=4) + "\n")


def step_ckpt(tmp: Path) -> None:
    """8. ``max_ckpt_keep`` 2: 7 steps, then 3 steps in the same folder."""
    work = scratch(tmp, "ckpt")
    ref = {}
    dp_train(work, CKPT_INPUT)
    ref["steps7"] = ckpt_listing(work)
    dp_train(work, dict(CKPT_INPUT, training=dict(CKPT_INPUT["training"], numb_steps=3)))
    ref["steps7_then_3"] = ckpt_listing(work)
    (OUT / "ckpt_reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    (OUT / "ckpt_input.json").write_text(json.dumps(CKPT_INPUT, indent=4) + "\n")


def step_ckptdir(tmp: Path) -> None:
    """9. ``save_ckpt`` ``run/model.ckpt``: where the checkpoints and the pointer go."""
    work = scratch(tmp, "ckptdir")
    inp = dict(CKPT_INPUT, training=dict(CKPT_INPUT["training"], save_ckpt="run/model.ckpt"))
    dp_train(work, inp)
    skip = {*SYSTEMS, "input.json", "train.log", "lcurve.out", "out.json"}
    ref = {
        "input": inp,
        "work": folder_listing(work, skip),
        "run": folder_listing(work / "run", set()),
    }
    (OUT / "ckpt_dir_reference.json").write_text(json.dumps(ref, indent=1) + "\n")


def step_stat(tmp: Path) -> None:
    """2-4. Stat files (HDF5 and folder), TensorBoard, DeePMD-kit reading dpa3's file."""
    ref: dict = {}
    # 2. HDF5 stat file + tensorboard
    work = scratch(tmp, "h5")
    dp_train(work, INPUT)
    shutil.copy(work / "stat.hdf5", OUT / "dp_stat.hdf5")
    ref["dp"] = bias_of(work / "model.ckpt-2.pt")
    (OUT / "tensorboard.json").write_text(
        json.dumps(tensorboard_scalars(work / "tb"), indent=1) + "\n"
    )
    # 3. folder stat file
    work = scratch(tmp, "dir")
    dp_train(
        work,
        dict(INPUT, training=dict(INPUT["training"], stat_file="stat_dir", tensorboard=False)),
    )
    if (OUT / "dp_stat_dir").exists():
        shutil.rmtree(OUT / "dp_stat_dir")
    shutil.copytree(work / "stat_dir", OUT / "dp_stat_dir")
    # 4. DeePMD-kit reads the file dpa3 writes
    work = scratch(tmp, "dpa3")
    code = (
        "import json; from dpa3.train.trainer import Trainer; "
        "d = json.load(open('input.json')); d['training']['numb_steps'] = 0; "
        "d['training']['stat_file'] = 'dpa3_stat.hdf5'; d['training']['tensorboard'] = False; "
        "d['training']['training_data'] = {'systems': ['mol'], 'batch_size': 6}; "
        "Trainer(d)"
    )
    (work / "input.json").write_text(json.dumps(INPUT, indent=4) + "\n")
    run(
        [str(DPA3_PYTHON), "-c", code],
        work,
        work / "dpa3.log",
        env={"PYTHONPATH": str(REPO / "python")},
    )
    shutil.copy(work / "dpa3_stat.hdf5", OUT / "dpa3_stat.hdf5")
    (work / "model.ckpt-2.pt").unlink(missing_ok=True)
    dp_train(
        work,
        dict(
            INPUT,
            training=dict(
                INPUT["training"],
                stat_file="dpa3_stat.hdf5",
                stat_file_mode="read",
                tensorboard=False,
            ),
        ),
    )
    ref["dp_read_dpa3"] = bias_of(work / "model.ckpt-2.pt")
    (OUT / "stat_reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    (OUT / "input.json").write_text(json.dumps(INPUT, indent=4) + "\n")


def step_mt(tmp: Path) -> None:
    """5-6. Multi-task ``out.json`` both ways."""
    # 5. multi-task out.json
    work = scratch(tmp, "mt")
    dp_train(work, MT_INPUT)
    (OUT / "mt_input.json").write_text(json.dumps(MT_INPUT, indent=4) + "\n")
    shutil.copy(work / "out.json", OUT / "mt_out.json")
    # 6. DeePMD-kit trains from the multi-task out.json dpa3 writes
    work = scratch(tmp, "mt_dpa3")
    (work / "mt_input.json").write_text(json.dumps(MT_INPUT, indent=4) + "\n")
    run(
        [str(DPA3_PYTHON), "-m", "dpa3", "train", "mt_input.json", "--skip-neighbor-stat"],
        work,
        work / "dpa3.log",
        env={"PYTHONPATH": str(REPO / "python")},
    )
    shutil.copy(work / "out.json", OUT / "mt_out_dpa3.json")
    again = scratch(tmp, "mt_dp_again")
    dp_train(again, json.loads((work / "out.json").read_text()))
    keep = [
        ln.split("DEEPMD ", 1)[1]
        for ln in (again / "train.log").read_text().splitlines()
        if "Shared params" in ln or "Trained model has been saved" in ln
    ]
    (OUT / "mt_dp_from_dpa3.log").write_text("\n".join(keep) + "\n")


STEPS = {
    "stat": step_stat,
    "mt": step_mt,
    "disp": step_disp,
    "ckpt": step_ckpt,
    "ckptdir": step_ckptdir,
}


def main(argv: list[str]) -> None:
    names = argv or list(STEPS)
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise SystemExit(f"unknown step(s) {unknown}; choose from {list(STEPS)}")
    OUT.mkdir(parents=True, exist_ok=True)
    write_systems(OUT)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            STEPS[name](Path(tmp))
    (OUT / "versions.txt").write_text(
        f"deepmd-kit {deepmd.__version__}\ntorch {torch.__version__}\nnumpy {np.__version__}\n"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
