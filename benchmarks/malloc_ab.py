"""Time of a model evaluation in Python with glibc's malloc defaults, with
``dpa3.malloc.keep_freed_memory()`` and with tcmalloc preloaded (where installed).

    .venv/bin/python benchmarks/malloc_ab.py [--reps 2 2 2] [--threads 1] [--calls 3] [--rounds 2]

Each case runs in its own process (mallopt changes a process for good): the float32 water
recipe (``tests/data/parity/water_recipe_f32``, 6 layers, converted by dpa3) evaluates energy
and forces of the bundled 192-atom water frame replicated ``--reps`` times, one untimed call,
then ``--calls`` timed calls; the fastest counts, with the minor page faults of that call.
The rounds alternate the order of the cases.  Prints one line per run and a table with each
case's best time over the rounds and its ratio to glibc's defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from lammps_runs import TCMALLOC

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from large_system import water_box
from lammps_report import CKPT6
from dpa3.convert import load_deepmd_model
from dpa3.data.neighbor import build_neighbor_batch
from dpa3.malloc import keep_freed_memory
why = keep_freed_memory() if sys.argv[2] == "keep" else None
torch.set_num_threads(int(sys.argv[3]))
reps = tuple(int(x) for x in sys.argv[4].split("x"))
model = load_deepmd_model(CKPT6).eval()
coord, atype, box = water_box(reps)
nb = build_neighbor_batch(coord[None], box.reshape(1, 9), model.rcut, model.sel)
args = (nb.ext_coord, torch.tensor(atype)[None], nb.mapping, nb.nlist, False)
model.forward_extended(*args)
best = None
for _ in range(int(sys.argv[5])):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    model.forward_extended(*args)
    dt = time.perf_counter() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    if best is None or dt < best[0]:
        best = (dt, faults)
print(json.dumps({"s": best[0], "faults": best[1], "why": why, "atoms": len(atype)}))
"""


def run(case: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env["LD_PRELOAD"] = TCMALLOC if case == "tcmalloc" else ""
    mode = "keep" if case == "keep_freed_memory" else "default"
    reps = "x".join(str(r) for r in args.reps)
    cmd = [sys.executable, "-c", CHILD, str(HERE), mode, str(args.threads), reps, str(args.calls)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{case} failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["why"] is not None:
        raise SystemExit(f"keep_freed_memory() did nothing: {res['why']}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, nargs=3, default=[2, 2, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    cases = ["glibc defaults", "keep_freed_memory"]
    if Path(TCMALLOC).exists():
        cases.append("tcmalloc")
    print(f"load at start {os.getloadavg()}")
    best: dict[str, dict] = {}
    for r in range(args.rounds):
        for case in cases if r % 2 == 0 else list(reversed(cases)):
            res = run(case, args)
            print(f"round {r} {case}: {res['s']:.3f} s/call, {res['faults']} minor faults")
            if case not in best or res["s"] < best[case]["s"]:
                best[case] = res
    print(f"load at end {os.getloadavg()}")
    base = best[cases[0]]["s"]
    print(f"\n{best[cases[0]]['atoms']:,} atoms, {args.threads} thread(s), best over the rounds\n")
    print("| malloc | s/call | minor faults per call | time / glibc defaults |")
    print("|---|---|---|---|")
    for case in cases:
        b = best[case]
        print(f"| {case} | {b['s']:.3f} | {b['faults']:,} | {b['s'] / base:.2f} |")


if __name__ == "__main__":
    main()
