"""Workers of the GPU check, each run in its own process by ``benchmarks/gpu_check.py`` (so a
crash or the device memory of one does not touch the others); each prints one JSON line.

    python benchmarks/gpu/gpu_workers.py parity --device cuda --models DIR
    python benchmarks/gpu/gpu_workers.py pytime --device cuda --model f32.pth --reps 2 2 2
    mpirun -np 1 python benchmarks/gpu/gpu_workers.py mpiquery
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from pathlib import Path

from gpu_common import KEYS, PARITY, ROOT


def water_replica(reps: list[int]):
    """data.water replicated reps[0] x reps[1] x reps[2] times: coordinates, names, cell."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from lammps_helpers import water_frame

    coord, names, cell = water_frame(1)
    box = np.diag(cell)
    shifts = (
        np.array(
            [[i, j, k] for i in range(reps[0]) for j in range(reps[1]) for k in range(reps[2])],
            dtype=np.float64,
        )
        * box
    )
    coord = (coord[None] + shifts[:, None]).reshape(-1, 3)
    return coord, np.tile(names, len(shifts)), np.diag(box * np.array(reps))


def cmd_parity(args: argparse.Namespace) -> int:
    """Worker of (b): prints one JSON line {"cases": [[name, err/tol], ...]}."""
    import numpy as np
    import torch

    from dpa3.convert import load_deepmd_model
    from dpa3.data.neighbor import build_neighbor_data
    from dpa3.export.freeze import load_frozen

    dev = torch.device(args.device)
    cases: list[list] = []

    def check(name: str, ref, frame: str, out: dict, f32: bool, keys=KEYS) -> None:
        worst = 0.0
        for k in keys:
            want = ref[f"{frame}.{k}"].reshape(out[k].shape)
            tol = (1e-5 if f32 else 1e-10) * max(float(np.abs(want).max()), 1.0)
            worst = max(worst, float(np.abs(out[k] - want).max()) / tol)
        cases.append([f"{name}/{frame}", worst])

    combos = sorted(p.name for p in PARITY.iterdir() if (p / "reference.npz").exists())
    for combo in combos:
        ref = np.load(PARITY / combo / "reference.npz")
        sources = [("ckpt", PARITY / combo / "model.ckpt.pt")]
        if (PARITY / combo / "frozen_model.pth").exists():
            sources.append(("deepmd-frozen", PARITY / combo / "frozen_model.pth"))
        # the low-memory path (layers recomputed in blocks, kept angle messages replayed by
        # angle_block_replay) once per combination: the same numbers, no per-atom virials
        for kind, path in [*sources, ("low-memory", sources[0][1])]:
            model = load_deepmd_model(path).to(dev).eval()
            low = kind == "low-memory"
            if low:
                model.graph_budget_bytes = 0
                model.descriptor.chunk_angles = 3000
            keys = ("energy", "force", "virial") if low else KEYS
            for frame in (str(f) for f in ref["frames"]):
                key = f"{frame}.box"
                box = (
                    torch.tensor(ref[key], dtype=torch.float64, device=dev)
                    if key in ref.files
                    else None
                )
                out = model(
                    torch.tensor(ref[f"{frame}.coord"], dtype=torch.float64, device=dev),
                    torch.tensor(ref[f"{frame}.atype"], dtype=torch.long, device=dev),
                    box,
                    do_atomic_virial=not low,
                )
                out = {k: out[k].detach().cpu().numpy() for k in keys}
                check(f"{combo}:{kind}", ref, frame, out, "f32" in combo, keys)
            del model
    # the models frozen on this machine, through forward_lower as the ASE calculator runs them
    for combo, frozen in (
        ("water_recipe", args.models / "f64.pth"),
        ("water_recipe_f32", args.models / "f32.pth"),
    ):
        if not frozen.is_file():
            cases.append([f"{combo}:frozen-here (not frozen)", float("inf")])
            continue
        ref = np.load(PARITY / combo / "reference.npz")
        module, _ = load_frozen(frozen, map_location=dev)
        rcut, sel = float(module.get_rcut()), int(module.get_sel()[0])
        for frame in (str(f) for f in ref["frames"]):
            coord = ref[f"{frame}.coord"].reshape(-1, 3)
            atype = ref[f"{frame}.atype"].reshape(-1).astype(np.int64)
            box = ref[f"{frame}.box"].reshape(9) if f"{frame}.box" in ref.files else None
            nd = build_neighbor_data(coord, box, rcut, sel)
            mapping = torch.as_tensor(nd.mapping, device=dev)[None]
            with torch.jit.optimized_execution(False):
                o = module.forward_lower(
                    torch.as_tensor(nd.ext_coord, device=dev)[None],
                    torch.as_tensor(atype, device=dev)[mapping],
                    torch.as_tensor(nd.nlist, device=dev)[None],
                    mapping,
                    True,
                    None,
                )
            n = len(atype)
            force = np.zeros((n, 3))
            np.add.at(force, nd.mapping, o["extended_force"][0].detach().cpu().numpy())
            av = np.zeros((n, 9))
            np.add.at(av, nd.mapping, o["extended_virial"][0].detach().cpu().numpy().reshape(-1, 9))
            out = {
                "energy": o["energy"].detach().cpu().numpy(),
                "force": force,
                "virial": o["virial"].detach().cpu().numpy(),
                "atom_energy": o["atom_energy"].detach().cpu().numpy(),
                "atom_virial": av,
            }
            check(f"{combo}:frozen-here", ref, frame, out, "f32" in combo)
    print(json.dumps({"cases": cases}))
    return 0


def cmd_pytime(args: argparse.Namespace) -> int:
    """Worker of (e): Python-side forward_lower time and peak allocator memory; one JSON line."""
    import numpy as np
    import torch

    from dpa3.data.neighbor import build_neighbor_data
    from dpa3.export.freeze import load_frozen

    dev = torch.device(args.device)
    module, _ = load_frozen(args.model, map_location=dev)
    tmap = list(module.get_type_map())
    coord, names, cell = water_replica(args.reps)
    nd = build_neighbor_data(
        coord, cell.reshape(9), float(module.get_rcut()), int(module.get_sel()[0])
    )
    mapping = torch.as_tensor(nd.mapping, device=dev)[None]
    atype = torch.as_tensor(np.array([tmap.index(n) for n in names]), device=dev)[mapping]
    ext, nlist = (
        torch.as_tensor(nd.ext_coord, device=dev)[None],
        torch.as_tensor(nd.nlist, device=dev)[None],
    )

    def call():
        with torch.jit.optimized_execution(False):
            o = module.forward_lower(ext, atype, nlist, mapping, False, None)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return float(o["energy"].sum())

    energy = call()  # warm-up
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.calls):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None
    print(json.dumps({"natoms": len(names), "times": times, "peak": peak, "energy": energy}))
    return 0


def cmd_mpiquery(args: argparse.Namespace) -> int:
    """Worker (under mpirun -np 1): MPIX_Query_cuda_support() of the venv's libmpi."""
    lib = ctypes.CDLL(str(Path(sys.prefix) / "lib" / "libmpi.so.12"), mode=ctypes.RTLD_GLOBAL)
    lib.MPI_Init(None, None)
    try:
        fn = lib.MPIX_Query_cuda_support
    except AttributeError:
        print(json.dumps({"supported": None, "why": "libmpi has no MPIX_Query_cuda_support"}))
    else:
        fn.restype = ctypes.c_int
        print(json.dumps({"supported": int(fn())}))
    lib.MPI_Finalize()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("parity", help="(b): fixtures on the device vs DeePMD-kit's numbers")
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", type=Path, required=True)
    p.set_defaults(func=cmd_parity)
    p = sub.add_parser("pytime", help="(e): Python-side forward_lower time and memory")
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--reps", type=int, nargs=3, required=True)
    p.add_argument("--calls", type=int, default=3)
    p.set_defaults(func=cmd_pytime)
    p = sub.add_parser("mpiquery", help="MPIX_Query_cuda_support of the venv's libmpi")
    p.set_defaults(func=cmd_mpiquery)
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
