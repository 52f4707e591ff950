"""A/B timing of frozen models in one process: evaluations alternate, so drift hits all alike.

    .venv/bin/python benchmarks/frozen_ab.py --freeze old=../other/python --freeze new=python \
        [--model NAME=path.pth] [--reps 2 2 2] [--rounds 14] [--warmup 3] [--memory-budget 0]

``--freeze NAME=PYTHONPATH`` freezes the float32 water recipe (6 layers, DeePMD-kit's own
checkpoint ``tests/data/parity/water_recipe_f32``, converted) with the ``dpa3`` package found on
that path (another checkout's ``python/`` folder: the code under test) into ``runs/frozen_ab/``,
with ``graph_budget_bytes`` set to ``--memory-budget`` GiB (default 0: always the low-memory
path); ``--model NAME=path.pth`` takes a model frozen before. This process loads every model
with the op library of the ``dpa3`` it imports (which must still load the older models) and
evaluates the bundled 192-atom water frame replicated ``--reps`` times (``forward_lower``, one
torch thread, the allocator settings of ``pair_style dpa3``): ``--warmup`` untimed calls per
model (TorchScript's profiling executor optimises during the first calls), then ``--rounds``
rounds of one call per model, the order reversed every other round.

Prints, per model against the first: the ratio of the median times, of the fastest times, and
the median over rounds of the per-round ratio; and each model's energy (they must agree to
rounding).  Under LAMMPS, ``lammps_ab.py`` does the same with two ranks; on a shared host one
process alternating call by call resolves smaller differences.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CKPT = ROOT / "tests" / "data" / "parity" / "water_recipe_f32" / "model.ckpt.pt"
FREEZE = """
import sys
from pathlib import Path
from dpa3.convert import load_deepmd_model
from dpa3.export.freeze import freeze
model = load_deepmd_model(Path(sys.argv[1])).eval()
model.graph_budget_bytes = int(float(sys.argv[3]) * 1024**3)
freeze(model, Path(sys.argv[2]))
"""


def pairs(values: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not name or not rest:
            raise SystemExit(f"{what} needs NAME=VALUE, got {v!r}")
        out.append((name, rest))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--freeze", action="append", default=[], metavar="NAME=PYTHONPATH")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--reps", type=int, nargs=3, default=[2, 2, 2])
    ap.add_argument("--rounds", type=int, default=14)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--memory-budget", type=float, default=0.0, metavar="GIB")
    args = ap.parse_args()
    if args.rounds < 1 or args.warmup < 1:
        raise SystemExit("--rounds and --warmup must be at least 1")
    models: dict[str, Path] = {}
    out_dir = ROOT / "runs" / "frozen_ab"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, pypath in pairs(args.freeze, "--freeze"):
        path = out_dir / f"{name}.pth"
        env = {**os.environ, "PYTHONPATH": str(Path(pypath).resolve())}
        cmd = [sys.executable, "-c", FREEZE, str(CKPT), str(path), str(args.memory_budget)]
        subprocess.run(cmd, check=True, env=env)
        models[name] = path
    for name, path in pairs(args.model, "--model"):
        models[name] = Path(path)
    if len(models) < 2:
        raise SystemExit("give at least two models (--freeze / --model)")

    import dpa3.malloc
    from dpa3 import _ops
    from dpa3.data.neighbor import build_neighbor_batch

    sys.path.insert(0, str(HERE))
    from large_system import water_box

    dpa3.malloc.keep_freed_memory()
    torch.set_num_threads(1)
    if not _ops.load_ops():
        raise SystemExit("the dpa3 op library does not load")
    loaded = {k: torch.jit.load(str(v)) for k, v in models.items()}
    first = next(iter(loaded.values()))
    coord, atype, box = water_box(tuple(args.reps))
    nb = build_neighbor_batch(
        coord[None], box.reshape(1, 9), float(first.get_rcut()), int(first.get_sel()[0])
    )
    at = torch.tensor(atype)[None]
    call = (nb.ext_coord, torch.gather(at, 1, nb.mapping), nb.nlist, nb.mapping)
    names = list(loaded)
    energy: dict[str, float] = {}
    for k in names:
        for _ in range(args.warmup):
            energy[k] = float(loaded[k].forward_lower(*call)["energy"].sum())
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            loaded[k].forward_lower(*call)
            times[k].append(time.perf_counter() - t0)
    base = times[names[0]]
    print(f"# {len(atype)} atoms, 1 thread, {args.rounds} rounds; ratios to {names[0]}")
    for k in names:
        t = times[k]
        med = statistics.median(t) / statistics.median(base)
        fast = min(t) / min(base)
        per_round = statistics.median(a / b for a, b in zip(t, base, strict=True))
        print(
            f"{k:10s} median {statistics.median(t):.3f} s  ratios: median {med:.3f}, fastest "
            f"{fast:.3f}, per round {per_round:.3f}  E {energy[k]:.10f} eV"
        )
        print(f"{'':10s} s: {' '.join(f'{x:.2f}' for x in t)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
