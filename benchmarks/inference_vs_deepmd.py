"""Time one energy+forces+virial evaluation: DeePMD-kit's DPA3 vs dpa3 with identical weights.

    python benchmarks/inference_vs_deepmd.py \
        [--ckpt tests/data/parity/water_recipe_f32/model.ckpt.pt]
                                             [--reps 1 1 1] [--threads 2] [--repeat 5]

Needs deepmd-kit (``bash scripts/install_deepmd.sh``).  For fair CPU numbers preload the same
allocator for both (``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4``), since
both run in this one process.  The DeePMD-kit checkpoint is converted with dpa3's converter, the
two models are checked to give the same energy and forces, then each is timed (best of
``--repeat`` after one warm-up call) on the bundled water frame replicated ``--reps`` times.
Prints a markdown table row and the ratio dpa3 / DeePMD-kit.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def water(reps):
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
    big = (coord[None] + shifts[:, None]).reshape(-1, 3)
    return big, np.tile(atype, len(shifts)), (cell * np.array(reps)[:, None]).reshape(9)


def best_time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_ckpt = ROOT / "tests/data/parity/water_recipe_f32/model.ckpt.pt"
    ap.add_argument("--ckpt", default=str(default_ckpt))
    ap.add_argument("--reps", type=int, nargs=3, default=[1, 1, 1])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from deepmd.pt.model.model import get_model

    from dpa3.convert import load_deepmd_model

    raw = torch.load(args.ckpt, map_location="cpu", weights_only=False)["model"]
    params = raw["_extra_state"]["model_params"]
    ref = get_model(json.loads(json.dumps(params)))
    ref.load_state_dict(
        {k[len("model.Default.") :]: v for k, v in raw.items() if k.startswith("model.Default.")}
    )
    ref.eval()
    ours = load_deepmd_model(args.ckpt)
    ours.eval()

    coord, atype, box = water(args.reps)
    type_map = list(params["type_map"])
    atype = np.array([type_map.index(n) for n in np.array(["O", "H"])[atype]])
    c = torch.tensor(coord)[None]
    t = torch.tensor(atype)[None]
    b = torch.tensor(box)[None]

    def run_ref():
        return ref(c, t, b)

    def run_ours():
        return ours(c, t, b)

    r, o = run_ref(), run_ours()
    de = abs(r["energy"].item() - o["energy"].item()) / abs(r["energy"].item())
    df = (r["force"].double() - o["force"]).abs().max().item()
    print(f"check: relative energy difference {de:.2e}, max force difference {df:.2e} eV/A")
    assert de < 1e-5 and df < 1e-3 * max(1.0, r["force"].abs().max().item())
    t_ref = best_time(run_ref, args.repeat)
    t_ours = best_time(run_ours, args.repeat)
    n = len(atype)
    print("| atoms | threads | DeePMD-kit s/call | dpa3 s/call | dpa3 / DeePMD-kit |")
    print("|---|---|---|---|---|")
    print(f"| {n} | {args.threads} | {t_ref:.3f} | {t_ours:.3f} | {t_ours / t_ref:.2f} |")


if __name__ == "__main__":
    main()
