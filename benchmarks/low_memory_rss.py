"""Resident memory of the low-memory evaluation path over repeated evaluations, in one process.

    python benchmarks/low_memory_rss.py [--reps 4 4 2] [--calls 4] [--threads 1]

Preload tcmalloc to see what LAMMPS runs see (``LD_PRELOAD=.../libtcmalloc_minimal.so.4``; the
LAMMPS benchmarks preload it): without it glibc's allocator with the plugin's keep-freed-memory
settings (``dpa3.malloc.keep_freed_memory``) is measured.

One process evaluates energy and forces of the water recipe's float32 model (6 layers, DeePMD-kit's
own checkpoint ``tests/data/parity/water_recipe_f32``, converted) on the bundled 192-atom water
frame replicated ``--reps`` times, ``--calls`` times on the low-memory path
(``graph_budget_bytes = 0``, docs/internals.md "Memory"). Prints, per call, the resident set
(``/proc/self/statm``) when the first pass (``DescrptDPA3.stack_inputs``) starts and ends and
when the backward pass (``coord_grad``) ends, and the peak of the call (sampled every 50 ms), in
KB per atom; and the energy, which must not change from call to call. A peak that grows over the
calls is memory the allocator keeps but cannot reuse (MD runs showed it as growth over their first
~10 steps, benchmarks/results_memory.md).
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path


def rss_kb() -> int:
    """The process's resident set, KB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 // 1024


class Sampler:
    """The peak resident set since :meth:`reset`, sampled every 50 ms by a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, rss_kb())
            time.sleep(0.05)

    def reset(self) -> None:
        self.peak = rss_kb()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, nargs=3, default=[4, 4, 2])
    ap.add_argument("--calls", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from large_system import water_recipe_case

    from dpa3.model.descriptor import DescrptDPA3

    model, call, natoms = water_recipe_case(tuple(args.reps), args.threads)
    model.graph_budget_bytes = 0
    marks: dict[str, int] = {}

    def mark(cls: type, name: str) -> None:
        f = getattr(cls, name)

        def marked(obj, *a, **k):
            marks[f"{name} start"] = rss_kb()
            out = f(obj, *a, **k)
            marks[f"{name} end"] = rss_kb()
            return out

        setattr(cls, name, marked)

    mark(DescrptDPA3, "stack_inputs")
    mark(DescrptDPA3, "coord_grad")
    sampler = Sampler()
    base = rss_kb()
    print(f"# {natoms} atoms, 1 process x {args.threads} thread(s); resident KB per atom")
    print(f"# before the first call: {base / natoms:.0f}")
    print("| call | first pass starts | first pass ends | backward ends | peak | s | energy, eV |")
    print("|---|---|---|---|---|---|---|")
    for i in range(args.calls):
        sampler.reset()
        t0 = time.perf_counter()
        out = model.forward_extended(*call)
        dt = time.perf_counter() - t0
        energy = float(out["energy"].sum())
        peak = max(sampler.peak, *marks.values())
        cols = [marks["stack_inputs start"], marks["stack_inputs end"], marks["coord_grad end"]]
        row = " | ".join(f"{c / natoms:.0f}" for c in cols)
        print(f"| {i + 1} | {row} | {peak / natoms:.0f} | {dt:.1f} | {energy:.10f} |")
    sampler.stop = True


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
