"""Fine-tuning from a multi-task head versus training from scratch, on the no-PBC molecule.

1. Pre-train a small multi-task DPA3 (shared descriptor; heads ``water`` and ``alloy``) on
   the bundled water (data_0..2) and Cu-Al-Ni alloy data (skipped with ``--pretrained``).
2. Split ``examples/data/molecules-nopbc/C1H4O2`` (1562 frames) at random into 1200 training
   and 362 validation frames.
3. Train the same single-task model on the molecule for ``--steps`` steps (a) from scratch and
   (b) with ``--finetune <pretrained> --model-branch <head>``: identical input, schedule,
   data order and seed; only the starting weights differ.
4. Print the force RMSE (eV/Å) and energy RMSE per atom (eV) of both on every validation
   frame, before and after training.

Run from the repository root (small model, CPU, one thread by default)::

    python benchmarks/finetune_vs_scratch.py                       # 2000 pre-training steps
    python benchmarks/finetune_vs_scratch.py --pretrain-steps 500 --steps 100
    python benchmarks/finetune_vs_scratch.py --pretrained runs/mt/model.ckpt.pt --head water
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
WATER = [str(DATA / "water" / f"data_{i}") for i in range(4)]
ALLOY = DATA / "alloy-emt-CuAlNi"
ALLOY_TRAIN = [str(ALLOY / f"natoms_{n}") for n in (31, 32, 47, 48, 71)]
ALLOY_VALID = [str(ALLOY / "natoms_72")]
MOLECULE = DATA / "molecules-nopbc" / "C1H4O2"

DESCRIPTOR = {
    "type": "dpa3",
    "precision": "float64",
    "activation_function": "silut:10.0",
    "seed": 1,
    "repflow": {
        "n_dim": 16,
        "e_dim": 8,
        "a_dim": 8,
        "nlayers": 2,
        "e_rcut": 4.0,
        "e_rcut_smth": 3.5,
        "e_sel": 40,
        "a_rcut": 3.0,
        "a_rcut_smth": 2.5,
        "a_sel": 10,
        "a_compress_rate": 1,
        "a_compress_e_rate": 2,
        "a_compress_use_split": True,
        "smooth_edge_update": True,
        "edge_init_use_dist": True,
        "use_exp_switch": True,
    },
}
FITTING = {"neuron": [32, 32], "precision": "float64", "seed": 1}
LOSS = {
    "type": "ener",
    "start_pref_e": 0.2,
    "limit_pref_e": 20,
    "start_pref_f": 100,
    "limit_pref_f": 60,
}


def multitask_input(steps: int, seed: int) -> dict:
    """Water + alloy heads on one shared descriptor."""
    return {
        "model": {
            "shared_dict": {
                "type_map_all": ["O", "H", "Cu", "Al", "Ni"],
                "dpa3_descriptor": copy.deepcopy(DESCRIPTOR),
            },
            "model_dict": {
                name: {
                    "type_map": "type_map_all",
                    "descriptor": "dpa3_descriptor",
                    "fitting_net": dict(FITTING, seed=i + 1),
                    "data_stat_nbatch": 10,
                }
                for i, name in enumerate(("water", "alloy"))
            },
        },
        "learning_rate": {
            "type": "exp",
            "start_lr": 2e-3,
            "stop_lr": 1e-4,
            "decay_steps": max(1, steps // 20),
        },
        "loss_dict": {"water": dict(LOSS), "alloy": dict(LOSS)},
        "optimizer": {"type": "AdamW", "weight_decay": 0.001},
        "training": {
            "model_prob": {"water": 1.0, "alloy": 1.0},
            "data_dict": {
                "water": {
                    "training_data": {"systems": WATER[:3], "batch_size": 1},
                    "validation_data": {"systems": WATER[3:], "batch_size": 1},
                },
                "alloy": {
                    "training_data": {"systems": ALLOY_TRAIN, "batch_size": "auto:64"},
                    "validation_data": {"systems": ALLOY_VALID, "batch_size": 1},
                },
            },
            "numb_steps": steps,
            "seed": seed,
            "disp_freq": max(1, steps // 10),
            "save_freq": steps,
            "gradient_max_norm": 5.0,
        },
    }


def molecule_input(train: str, steps: int, seed: int) -> dict:
    """The single-task molecule model (same descriptor and fitting architecture)."""
    return {
        "model": {
            "type_map": ["C", "H", "O"],
            "descriptor": copy.deepcopy(DESCRIPTOR),
            "fitting_net": dict(FITTING),
            "data_stat_nbatch": 10,
        },
        "learning_rate": {
            "type": "exp",
            "start_lr": 2e-3,
            "stop_lr": 1e-4,
            "decay_steps": max(1, steps // 10),
        },
        "loss": dict(LOSS),
        "optimizer": {"type": "AdamW", "weight_decay": 0.001},
        "training": {
            "training_data": {"systems": [train], "batch_size": 4},
            "numb_steps": steps,
            "seed": seed,
            "disp_freq": max(1, steps // 4),
            "save_freq": steps,
            "gradient_max_norm": 5.0,
        },
    }


def split_molecule(dst: Path, n_train: int = 1200, seed: int = 0) -> tuple[str, str]:
    """Random train/validation split of the molecule's frames into two system folders."""
    n = len(np.load(MOLECULE / "set.000" / "energy.npy"))
    perm = np.random.default_rng(seed).permutation(n)
    out = []
    for name, idx in (("train", perm[:n_train]), ("valid", perm[n_train:])):
        d = dst / name
        (d / "set.000").mkdir(parents=True, exist_ok=True)
        for f in ("type.raw", "type_map.raw", "nopbc"):
            (d / f).write_bytes((MOLECULE / f).read_bytes())
        for f in ("coord", "energy", "force"):
            np.save(d / "set.000" / f"{f}.npy", np.load(MOLECULE / "set.000" / f"{f}.npy")[idx])
        out.append(str(d))
    return out[0], out[1]


def errors(model: torch.nn.Module, system) -> tuple[float, float]:
    """(force RMSE, energy RMSE per atom) on every frame of ``system``."""
    from dpa3.train.evaluate import evaluate_system

    was = model.training
    model.eval()
    try:
        res = evaluate_system(model, system)
    finally:
        model.train(was)
    return res.stats["f"].rmse, res.stats["ea"].rmse


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print both validation errors."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=100, help="molecule training steps (100)")
    p.add_argument("--pretrain-steps", type=int, default=2000, help="multi-task steps (2000)")
    p.add_argument("--pretrained", default=None, help="use this multi-task checkpoint instead")
    p.add_argument("--head", default="water", help="head to fine-tune from (water)")
    p.add_argument("--seed", type=int, default=10, help="seed of both molecule runs (10)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    p.add_argument("--workdir", default=None, help="keep the runs here (default: a temp dir)")
    args = p.parse_args(argv)

    from dpa3.data.system import load_system
    from dpa3.train.multitask_trainer import MultiTaskTrainer
    from dpa3.train.trainer import Trainer

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="dpa3-ft-")
        work = Path(tmp.name)
    else:
        work = Path(args.workdir).resolve()
        work.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    try:
        train, valid = split_molecule(work / "molecule")
        vsys = load_system(valid, ("C", "H", "O"))
        if args.pretrained is None:
            (work / "pretrain").mkdir(exist_ok=True)
            os.chdir(work / "pretrain")
            t0 = time.perf_counter()
            ckpt = MultiTaskTrainer(multitask_input(args.pretrain_steps, args.seed)).run()
            pretrained = str((work / "pretrain" / ckpt).resolve())
            print(
                f"pre-trained {args.pretrain_steps} multi-task steps in "
                f"{time.perf_counter() - t0:.0f} s"
            )
        else:
            pretrained = str(Path(cwd, args.pretrained).resolve())
        rows = []
        for name, kw in (
            ("scratch", {}),
            ("finetune", {"finetune": pretrained, "model_branch": args.head}),
        ):
            (work / name).mkdir(exist_ok=True)
            os.chdir(work / name)
            t0 = time.perf_counter()
            t = Trainer(molecule_input(train, args.steps, args.seed), **kw)
            before = errors(t.model, vsys)
            t.run()
            after = errors(t.model, vsys)
            rows.append((name, before, after, time.perf_counter() - t0))
    finally:
        os.chdir(cwd)
        if tmp is not None:
            tmp.cleanup()
    print(f"molecule validation ({len(vsys.coord)} frames), {args.steps} training steps:")
    print(f"{'':10s} {'force RMSE (eV/A)':>28s} {'energy RMSE/atom (eV)':>28s}")
    print(f"{'':10s} {'start':>13s} {'end':>14s} {'start':>13s} {'end':>14s}")
    for name, (f0, e0), (f1, e1), dt in rows:
        print(f"{name:10s} {f0:13.4f} {f1:14.4f} {e0:13.4f} {e1:14.4f}   ({dt:.0f} s)")
    (_, _, (fs, _), _), (_, _, (ff, _), _) = rows
    print(f"force RMSE after {args.steps} steps: scratch {fs:.4f}, fine-tuned {ff:.4f} eV/A")
    return 0


if __name__ == "__main__":
    sys.exit(main())
