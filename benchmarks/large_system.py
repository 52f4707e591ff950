"""Run a small DPA3 on a large periodic water box (the bundled 192-atom frame replicated).

    python benchmarks/large_system.py [--reps 6 6 3] [--precision float32]

Prints the number of atoms, the wall time of one energy+forces+virial evaluation (after a warm
up), and the peak resident memory of the process (ru_maxrss), as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def water_box(reps: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replicate the first water frame ``reps`` times along the cell vectors."""
    d = ROOT / "examples" / "data" / "water" / "data_0"
    coord = np.load(d / "set.000" / "coord.npy")[0].reshape(-1, 3).astype(np.float64)
    cell = np.load(d / "set.000" / "box.npy")[0].reshape(3, 3).astype(np.float64)
    atype = np.loadtxt(d / "type.raw", dtype=np.int64)
    shifts = (
        np.array(
            [[i, j, k] for i in range(reps[0]) for j in range(reps[1]) for k in range(reps[2])],
            dtype=np.float64,
        )
        @ cell
    )
    big = (coord[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
    return big, np.tile(atype, len(shifts)), (cell * np.array(reps)[:, None]).reshape(9)


def water_recipe_case(reps: tuple[int, int, int], threads: int) -> tuple[object, tuple, int]:
    """``(model, args, natoms)``: the water recipe's float32 model (6 layers, DeePMD-kit's own
    checkpoint ``tests/data/parity/water_recipe_f32``, converted; eval mode) and the arguments of
    its ``forward_extended`` for the water frame replicated ``reps`` times, with the allocator
    settings of the dpa3 command and pair_style dpa3 and ``threads`` torch threads."""
    import dpa3.malloc
    from dpa3.convert import load_deepmd_model
    from dpa3.data.neighbor import build_neighbor_batch

    dpa3.malloc.keep_freed_memory()
    torch.set_num_threads(threads)
    ckpt = ROOT / "tests" / "data" / "parity" / "water_recipe_f32" / "model.ckpt.pt"
    model = load_deepmd_model(ckpt).eval()
    coord, atype, box = water_box(reps)
    nb = build_neighbor_batch(coord[None], box.reshape(1, 9), model.rcut, model.sel)
    args = (nb.ext_coord, torch.tensor(atype)[None], nb.mapping, nb.nlist, False)
    return model, args, len(atype)


def small_model(precision: str):
    from dpa3.config import ModelConfig
    from dpa3.model import EnergyModel

    cfg = {
        "type_map": ["O", "H"],
        "descriptor": {
            "type": "dpa3",
            "precision": precision,
            "activation_function": "silut:10.0",
            "repflow": {
                "n_dim": 16,
                "e_dim": 8,
                "a_dim": 8,
                "nlayers": 2,
                "e_rcut": 4.5,
                "e_rcut_smth": 4.0,
                "e_sel": 64,
                "a_rcut": 3.5,
                "a_rcut_smth": 3.0,
                "a_sel": 24,
                "smooth_edge_update": True,
                "a_compress_rate": 1,
                "a_compress_e_rate": 2,
                "a_compress_use_split": True,
                "edge_init_use_dist": True,
                "use_exp_switch": True,
            },
        },
        "fitting_net": {"neuron": [32, 32], "precision": precision},
    }
    model = EnergyModel(ModelConfig.from_dict(cfg))
    model.eval()
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, nargs=3, default=[6, 6, 3])
    ap.add_argument("--precision", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    coord, atype, box = water_box(tuple(args.reps))
    model = small_model(args.precision)
    c = torch.tensor(coord)[None]
    t = torch.tensor(atype)[None]
    b = torch.tensor(box)[None]
    model(c[:, :192], t[:, :192], torch.tensor(water_box((1, 1, 1))[2])[None])  # warm up
    t0 = time.perf_counter()
    out = model(c, t, b)
    dt = time.perf_counter() - t0
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(
        json.dumps(
            {
                "natoms": len(atype),
                "seconds": round(dt, 2),
                "peak_rss_gb": round(rss_gb, 2),
                "energy_per_atom": float(out["energy"].item()) / len(atype),
                "max_force": float(out["force"].abs().max()),
                "precision": args.precision,
            }
        )
    )


if __name__ == "__main__":
    main()
