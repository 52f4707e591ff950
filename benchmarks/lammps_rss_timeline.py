"""When a LAMMPS run reaches its peak memory: the resident sets of its processes over the run.

    python benchmarks/lammps_rss_timeline.py CASE_DIR [--ranks 2] [--every 20] [--malloc tcmalloc]

``CASE_DIR`` holds an ``in.lmp`` (a case folder of ``benchmarks/lammps_memory.py``; edit its
``run`` lines for a longer run). Runs it under ``mpirun -np RANKS`` with one thread per rank
(tcmalloc preloaded unless ``--malloc glibc``), samples the resident sets of the run's processes
(the ranks and their launchers, ``proc_guard.rss``) every 0.25 s, and prints the running maximum
of their sum every ``--every`` seconds and at the end, in GB (1e9
bytes) and MB per atom (the atoms from the LAMMPS log). A peak reached at the first evaluation
and flat afterwards is what point 1 of issue #14 needs over a whole MD run; one that grows over
the evaluations is allocator retention (benchmarks/results_memory.md).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from lammps_runs import run_env
from proc_guard import descendants, rss

VENV = Path(sys.prefix)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case", type=Path)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--every", type=float, default=20.0)
    ap.add_argument("--malloc", choices=("tcmalloc", "glibc"), default="tcmalloc")
    args = ap.parse_args()
    case = args.case.resolve()
    if not (case / "in.lmp").exists():
        raise SystemExit(f"{case / 'in.lmp'} missing (a case folder of lammps_memory.py)")
    env, _ = run_env(1, args.malloc == "tcmalloc")
    cmd = [VENV / "bin" / "mpirun", "-np", str(args.ranks), VENV / "bin" / "lmp", "-in", "in.lmp"]
    cmd += ["-log", "log.timeline"]
    with open(case / "stdout.timeline", "w") as out:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=case, env=env, stdout=out, stderr=out)
        t0 = time.monotonic()
        peak = 0
        marks: list[tuple[float, int]] = []
        next_mark = args.every
        while proc.poll() is None:
            peak = max(peak, rss(descendants(proc.pid)))
            t = time.monotonic() - t0
            if t >= next_mark:
                marks.append((t, peak))
                next_mark += args.every
            time.sleep(0.25)
    log = (case / "log.timeline").read_text(errors="replace")
    atoms = re.findall(r"with (\d+) atoms", log)
    natoms = int(atoms[-1]) if atoms else 0
    if proc.returncode != 0:
        raise SystemExit(f"LAMMPS failed ({proc.returncode}): see {case / 'stdout.timeline'}")
    loops = re.findall(r"Loop time of (\S+) on \d+ procs for (\d+) steps", log)
    print(f"# {case}: {natoms} atoms, {args.ranks} ranks, {args.malloc}; runs (s, steps): {loops}")
    print("| s since start | peak so far, GB | MB/atom |")
    print("|---|---|---|")
    for t, p in [*marks, (time.monotonic() - t0, peak)]:
        per_atom = f"{p / natoms / 1e6:.3f}" if natoms else "-"
        print(f"| {t:.0f} | {p / 1e9:.2f} | {per_atom} |")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
