"""LAMMPS runs of the GPU check: the 192-atom comparison case of (c)/(d) and the timing case
of (e), each an ``lmp`` (or ``mpirun -np N lmp``) subprocess of the venv's LAMMPS."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from gpu_common import ROOT, WATER, DeviceMemory, run, tail, tree_rss

sys.path.insert(0, str(ROOT / "tests" / "lammps"))  # lmp_driver: make_script, read_results


MD_POST = """undump d
velocity all create 300.0 2025 mom yes rot yes dist gaussian
fix md all nve
timestep 0.0005
neigh_modify every 5 delay 0 check no
thermo 5
run {steps}
write_dump all custom md.atoms id x y z fx fy fz modify sort id format float %.17g
print "MD $(pe:%.17g)" file md.txt
"""

TIMING_INPUT = """units           metal
atom_style      atomic
boundary        p p p
newton          on
read_data       {data}
replicate       {reps}
plugin          unload pair dpa3
plugin          load {plugin}
pair_style      dpa3 {model} device {device}
pair_coeff      * * O H
neighbor        1.0 bin
neigh_modify    every 10 delay 0 check yes
timestep        0.0005
velocity        all create 300.0 2025 mom yes rot yes dist gaussian
fix             nvt all nvt temp 300.0 300.0 0.05
thermo_style    custom step pe ke etotal temp
thermo_modify   format float %.12g
thermo          0
run             {warmup}
run             {steps}
"""


def lmp_cmd(nprocs: int, inp: str = "in.lmp") -> list:
    vbin = Path(sys.executable).parent
    cmd = [vbin / "lmp", "-nocite", "-in", inp, "-log", "log.lammps"]
    return cmd if nprocs == 1 else [vbin / "mpirun", "-np", str(nprocs), *cmd]


def lammps_case(
    work: Path,
    name: str,
    plugin: str,
    model: Path,
    device: str,
    nprocs: int,
    threads: int,
    env: dict,
    timeout: float,
    md_steps: int,
):
    """Static outputs at step 0 and state after ``md_steps`` NVE steps; or an error string."""
    import lmp_driver as L
    import numpy as np

    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "data.lmp").write_text(WATER.read_text())
    (d / "in.lmp").write_text(
        L.make_script(
            Path(plugin),
            model,
            "* * O H",
            pair_extra=f"device {device}",
            post=MD_POST.format(steps=md_steps),
        )
    )
    rc, text = run(
        lmp_cmd(nprocs), d / "stdout", timeout, env={"OMP_NUM_THREADS": str(threads), **env}, cwd=d
    )
    if rc != 0 or not (d / "md.txt").exists():
        return f"{name}: {'timeout' if rc == 124 else f'exit {rc}'}: {tail(text)}"
    res = L.read_results(d, log=text)
    rows = [ln.split() for ln in (d / "md.atoms").read_text().splitlines()]
    start = max(i for i, r in enumerate(rows) if r[:2] == ["ITEM:", "ATOMS"]) + 1
    md = np.array([[float(x) for x in r] for r in rows[start:]])
    # the plugin's start-up line on GPUs with several ranks (docs/lammps.md)
    mode = re.search(r"ghost-feature exchange between ranks: (.*)", text)
    return {
        "static": res,
        "md_pe": float((d / "md.txt").read_text().split()[1]),
        "md": md[np.argsort(md[:, 0])],
        "cell": res_cell(d / "data.lmp"),
        "exchange": mode.group(1).strip() if mode else "",
    }


def res_cell(data: Path):
    import numpy as np

    box = np.zeros(3)
    for ln in data.read_text().splitlines():
        for k, ax in enumerate("xyz"):
            if ln.rstrip().endswith(f"{ax}lo {ax}hi"):
                lo, hi = map(float, ln.split()[:2])
                box[k] = hi - lo
    return box


def compare(a: dict, b: dict) -> tuple[float, str]:
    """Largest difference between two lammps_case results, and what it is in."""
    import numpy as np

    sa, sb = a["static"], b["static"]
    scale = max(1.0, abs(sa.energy))
    dpos = a["md"][:, 1:4] - b["md"][:, 1:4]
    dpos -= a["cell"] * np.round(dpos / a["cell"])  # minimum image (orthogonal box)
    diffs = {
        "energy": abs(sa.energy - sb.energy) / scale,
        "virial": float(np.abs(sa.virial - sb.virial).max()) / scale,
        "force": float(np.abs(sa.force - sb.force).max()),
        "atom_energy": float(np.abs(sa.atom_energy - sb.atom_energy).max()),
        "atom_virial": float(np.abs(sa.atom_virial - sb.atom_virial).max()),
        "MD energy": abs(a["md_pe"] - b["md_pe"]) / scale,
        "MD positions": float(np.abs(dpos).max()),
        "MD forces": float(np.abs(a["md"][:, 4:7] - b["md"][:, 4:7]).max()),
    }
    key = max(diffs, key=diffs.get)
    return diffs[key], key


def timing_case(
    work: Path,
    reps: tuple,
    plugin: str,
    model: Path,
    device: str,
    threads: int,
    warmup: int,
    steps: int,
    timeout: float,
    mem: DeviceMemory,
) -> dict:
    natoms = 192 * reps[0] * reps[1] * reps[2]
    d = work / f"timing_{natoms}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "in.lmp").write_text(
        TIMING_INPUT.format(
            data=WATER,
            reps=" ".join(map(str, reps)),
            plugin=plugin,
            model=model,
            device=device,
            warmup=warmup,
            steps=steps,
        )
    )
    base = mem.used() if device == "cuda" else 0
    peak = [0]

    def poll(pid: int) -> None:
        now = (mem.used() or 0) - base if device == "cuda" else tree_rss(pid)
        peak[0] = max(peak[0], now)

    t0 = time.monotonic()
    rc, text = run(
        lmp_cmd(1), d / "stdout", timeout, env={"OMP_NUM_THREADS": str(threads)}, cwd=d, poll=poll
    )
    r = {
        "natoms": natoms,
        "reps": reps,
        "wall": time.monotonic() - t0,
        "rc": rc,
        "peak": peak[0] if (device != "cuda" or base is not None) else None,
    }
    loops = re.findall(r"Loop time of (\S+) on \d+ procs for (\d+) steps", text)
    if rc != 0 or len(loops) < 2:
        low = text.lower()
        r["status"] = (
            "out of memory"
            if any(k in low for k in ("out of memory", "cudaerrormemory", "alloc_failed"))
            else "timeout"
            if rc == 124
            else f"failed (exit {rc}): {tail(text)}"
        )
        return r
    r["status"] = "ok"
    r["s_per_step"] = float(loops[-1][0]) / int(loops[-1][1])
    r["loops"] = sum(float(x) for x, _ in loops)
    lines = text.splitlines()
    for i, ln in enumerate(lines):
        if ln.split()[:2] == ["Step", "PotEng"]:
            r["e0"] = float(lines[i + 1].split()[1])
            break
    return r
