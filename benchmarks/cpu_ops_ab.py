"""A/B timing of the compute ops on the CPU: two builds of libdpa3_ops.so on the same frozen model.

    .venv/bin/python benchmarks/cpu_ops_ab.py --lib A=path/to/libdpa3_ops.so --lib B=... \
        [--threads 1 2] [--calls 7] [--rounds 3]

Each round runs every (library, threads) case in a fresh subprocess, alternating the libraries, so
that machine-load drift hits both alike.  A case freezes nothing: the float32 water recipe
(``tests/data/parity/water_recipe_f32``, 6 layers, converted and frozen once by the parent) is
evaluated on the 192-atom box of ``examples/lammps/data.water`` through ``forward_lower`` with
forces and virial, as ``pair_style dpa3`` calls it on one rank: one warm-up call, then the median
of ``--calls`` calls.  Prints the median over rounds per case and the ratio B/A, and the energy
of each case (the two builds must agree to float32 rounding).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, torch
lib, model, threads, calls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.ops.load_library(lib)
torch._C._jit_set_profiling_executor(False)
from dpa3.export.freeze import load_frozen
m, _ = load_frozen(model)
d = torch.load(sys.argv[5])
args = (d["ext"], d["ext_t"], d["nlist"], d["mapping"], True, None)
e = float(m.forward_lower(*args)["energy"].sum())
ts = []
for _ in range(calls):
    t0 = time.perf_counter(); m.forward_lower(*args); ts.append(time.perf_counter() - t0)
ts.sort()
print(json.dumps({"energy": e, "median": ts[len(ts) // 2], "best": ts[0]}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", action="append", required=True, help="NAME=path (two or more)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--calls", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    libs = dict(x.split("=", 1) for x in args.lib)

    import ase.io
    import torch

    from dpa3.convert import load_deepmd_model
    from dpa3.data.neighbor import build_neighbor_batch
    from dpa3.export.freeze import freeze

    tmp = Path(tempfile.mkdtemp(prefix="dpa3_ab_"))
    model = load_deepmd_model(ROOT / "tests/data/parity/water_recipe_f32/model.ckpt.pt")
    model.eval()
    freeze(model, tmp / "model.pth")
    atoms = ase.io.read(
        ROOT / "examples/lammps/data.water", format="lammps-data", atom_style="atomic"
    )
    coord = torch.tensor(atoms.positions, dtype=torch.float64)
    box = torch.tensor(atoms.cell.array.reshape(9), dtype=torch.float64)
    nb = build_neighbor_batch(
        coord[None].numpy(), box[None].numpy(), model.get_rcut(), model.get_sel()[0]
    )
    # LAMMPS types 1, 2 = O, H; the model's type map starts O, H
    atype = torch.tensor(atoms.arrays["type"] - 1, dtype=torch.long)
    torch.save(
        {"ext": nb.ext_coord, "ext_t": atype[nb.mapping], "nlist": nb.nlist, "mapping": nb.mapping},
        tmp / "inputs.pt",
    )

    results: dict[tuple[str, int], list[dict]] = {}
    for r in range(args.rounds):
        order = list(libs) if r % 2 == 0 else list(reversed(list(libs)))
        for th in args.threads:
            for name in order:
                out = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        CHILD,
                        libs[name],
                        str(tmp / "model.pth"),
                        str(th),
                        str(args.calls),
                        str(tmp / "inputs.pt"),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                results.setdefault((name, th), []).append(json.loads(out.stdout.splitlines()[-1]))
    names = list(libs)
    print(f"{'threads':>7} " + " ".join(f"{n:>22}" for n in names) + "   ratio(last/first)")
    for th in args.threads:
        med = [statistics.median(x["median"] for x in results[(n, th)]) for n in names]
        energies = [results[(n, th)][0]["energy"] for n in names]
        cells = " ".join(f"{m:>9.4f} s ({e:.6f})" for m, e in zip(med, energies, strict=True))
        print(f"{th:>7} {cells}   {med[-1] / med[0]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
