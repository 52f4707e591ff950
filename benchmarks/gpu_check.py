"""Checks and timing of ``benchmarks/gpu_check.sh`` once dpa3 is built (run by it, in its venv).

    python benchmarks/gpu_check.py run --device cuda|cpu --out DIR [--quick] [--deadline T]
    python benchmarks/gpu_check.py report --out DIR [--not-run WHY]

``run``, in order (each subprocess under a timeout, the correctness runs side by side):

* ``info``: the op library loads, the plugin is built, CUDA is compiled in (device cuda);
* ``freeze``: ``dpa3 convert-deepmd`` + ``dpa3 freeze`` of the float64 and float32 water
  recipes of ``tests/data/parity`` with this torch;
* (b) ``parity``: every DeePMD-kit fixture of ``tests/data/parity`` (checkpoint, and DeePMD-kit's
  own frozen model where there is one) evaluated on the device, each checkpoint also on the
  low-memory path (budget 0, blocks of 3,000 angles: the kept angle messages replayed on the
  device), and the two models frozen here
  through ``forward_lower`` (as the ASE calculator calls them), against DeePMD-kit's numbers:
  max |diff| <= 1e-10 (float64) / 1e-5 (float32) times max(1, max |reference|);
* (c) ``lammps device``: ``pair_style dpa3 f64.pth device cuda`` on one rank vs ``device cpu``
  (energy, forces, virial, per-atom energy and virial at step 0; energy, positions and forces
  after 20 NVE steps) on the 192-atom water: max |diff| <= 1e-8 (energies and virials relative
  to max(1, |E|));
* (d) ``2 ranks``: the same on 2 ranks (sharing the GPU if there is one) vs 1 rank: routed
  through host memory (MPI_THREAD_SINGLE, as the wheel's lmp starts MPI), staging the packed
  rows (MPI_THREAD_MULTIPLE, ``DPA3_CUDA_AWARE=0``) and CUDA-aware (``DPA3_CUDA_AWARE=1``) if the
  MPI says it supports it (``MPIX_Query_cuda_support``), else SKIP;
* (e) ``timing``: the float32 water recipe (6 layers) in LAMMPS (NVT, 1 rank) on 1,536 and
  12,288 atoms and then ever larger replicas of the 192-atom box until one does not fit (or
  the time budget ends): s/step, atom-steps/s, peak device memory (NVML: memory in use on the
  GPU during the run minus before it; on the CPU: resident set of the run), and the step-0
  energy per atom, which must equal the 1,536-atom one (relative 1e-5: a replicated box has
  the same energy per atom); for the two fixed sizes also a Python-side ``forward_lower``
  call (s/call, ``torch.cuda.max_memory_allocated``).

Writes ``results.json``, ``summary.txt`` and ``results_gpu.md`` (the table) into ``--out``;
exit status 1 if any row is FAIL.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "gpu"))
from gpu_common import ROOT, Deadline, DeviceMemory, fmt_mem, last_json, run, tail
from gpu_lammps import compare, lammps_case, timing_case

PARITY = ROOT / "tests" / "data" / "parity"
WORKERS = Path(__file__).resolve().parent / "gpu" / "gpu_workers.py"
CHECKS = (
    "info",
    "freeze",
    "(b) parity",
    "(c) lammps device",
    "(d) 2 ranks host-routed",
    "(d) 2 ranks staging",
    "(d) 2 ranks CUDA-aware",
    "(e) timing",
)
# MPI's thread level decides how the exchange moves device features (docs/internals.md): the
# wheel's lmp initialises MPI_THREAD_SINGLE (host-routed); MPICH raises it on request.
MULTIPLE = {"MPIR_CVAR_DEFAULT_THREAD_LEVEL": "MPI_THREAD_MULTIPLE"}
MD_STEPS = 20


# --------------------------------------------------------------------------- results table


class Table:
    """Rows (check, result PASS/FAIL/SKIP, details), saved after every change."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.rows: list[dict] = []

    def add(self, name: str, result: str, detail: str, **data) -> None:
        self.rows.append({"check": name, "result": result, "detail": detail, **data})
        print(f"  {result:4s} {name}: {detail}", flush=True)
        (self.out / "results.json").write_text(json.dumps(self.rows, indent=1, default=str))

    def setup_rows(self) -> None:
        steps = self.out / "steps.tsv"
        if steps.exists():
            for line in steps.read_text().splitlines():
                name, result, detail = (line.split("\t") + ["", ""])[:3]
                self.rows.append({"check": f"setup: {name}", "result": result, "detail": detail})

    def render(self, header: str = "") -> int:
        w = max(len(r["check"]) for r in self.rows) if self.rows else 10
        lines = [
            header,
            "",
            f"| {'check':{w}s} | result | details |",
            f"|{'-' * (w + 2)}|--------|---------|",
        ]
        lines += [f"| {r['check']:{w}s} | {r['result']:6s} | {r['detail']} |" for r in self.rows]
        nfail = sum(r["result"] == "FAIL" for r in self.rows)
        lines += [
            "",
            (
                f"{nfail} FAIL, {sum(r['result'] == 'PASS' for r in self.rows)} PASS, "
                f"{sum(r['result'] == 'SKIP' for r in self.rows)} SKIP"
            ),
        ]
        text = "\n".join(lines) + "\n"
        print("\n" + text, flush=True)
        (self.out / "summary.txt").write_text(text)
        (self.out / "results.json").write_text(json.dumps(self.rows, indent=1, default=str))
        (self.out / "results_gpu.md").write_text(text)
        return 1 if nfail else 0


def cmd_report(args: argparse.Namespace) -> int:
    """The table of a run whose setup failed: setup rows, then every check as not run."""
    t = Table(args.out)
    t.setup_rows()
    for name in CHECKS:
        t.rows.append({"check": name, "result": "SKIP", "detail": f"not run: {args.not_run}"})
    return t.render(f"# dpa3 GPU check ({time.strftime('%Y-%m-%d %H:%M %Z')}): setup failed")


# --------------------------------------------------------------------------- the run

INFO = (
    "import json; from dpa3.export.info import environment_report as r; rep = r(); "
    "[print(f'{k:26s} {v}') for k, v in rep.items()]; print(json.dumps(rep, default=str))"
)


def cmd_run(args: argparse.Namespace) -> int:
    out: Path = args.out
    logs, work = out / "logs", out / "work"
    models = work / "models"
    for p in (logs, models):
        p.mkdir(parents=True, exist_ok=True)
    t = Table(out)
    t.setup_rows()
    dl = Deadline(args.deadline or time.time() + 400)
    py, vbin = sys.executable, Path(sys.executable).parent
    dev, cuda = args.device, args.device == "cuda"
    ncores = os.cpu_count() or 1
    half = str(max(1, ncores // 2))

    # ---- info
    rc, text = run([py, "-c", INFO], logs / "info.log", 120, cwd=work)
    rep = last_json(text) if rc == 0 else None
    plugin = rep.get("LAMMPS plugin", "") if rep else ""
    if rep is None:
        t.add("info", "FAIL", f"exit {rc}: {tail(text)}")
    else:
        bad = [
            w
            for w, ok in (
                ("op library not loaded", rep.get("op library loaded") == "yes"),
                ("no LAMMPS plugin", Path(plugin).is_file()),
                ("MPI not compiled in", str(rep.get("MPI compiled in", "")).startswith("yes")),
                ("CUDA not compiled in", not cuda or rep.get("CUDA compiled in") == "yes"),
            )
            if not ok
        ]
        t.add(
            "info",
            "FAIL" if bad else "PASS",
            "; ".join(bad)
            if bad
            else f"torch {rep['torch']} (CUDA {rep['torch CUDA']}), "
            f"CUDA compiled in: {rep.get('CUDA compiled in', '?')}, lammps "
            f"{rep.get('lammps Python module')}, mpich {rep.get('mpich')}",
        )

    # ---- freeze the two water recipes with this torch
    def freeze(tag: str, combo: str) -> tuple[str, float, str]:
        t0 = time.monotonic()
        env = {"OMP_NUM_THREADS": half}
        for step, cmd in (
            (
                "convert",
                [
                    vbin / "dpa3",
                    "convert-deepmd",
                    PARITY / combo / "model.ckpt.pt",
                    models / f"{tag}.pt",
                ],
            ),
            (
                "freeze",
                [vbin / "dpa3", "freeze", "-c", models / f"{tag}.pt", "-o", models / f"{tag}.pth"],
            ),
        ):
            rc, text = run(cmd, logs / f"{step}_{tag}.log", dl.limit(180), env=env, cwd=work)
            if rc != 0:
                return tag, time.monotonic() - t0, f"{step} {tag}: exit {rc}: {tail(text)}"
        return tag, time.monotonic() - t0, ""

    with ThreadPoolExecutor(2) as ex:
        frozen = list(
            ex.map(lambda a: freeze(*a), (("f64", "water_recipe"), ("f32", "water_recipe_f32")))
        )
    errs = [e for _, _, e in frozen if e]
    t.add(
        "freeze",
        "FAIL" if errs else "PASS",
        "; ".join(errs)
        if errs
        else ", ".join(f"{tag}.pth {s:.0f} s" for tag, s, _ in frozen)
        + " (convert-deepmd + freeze of tests/data/parity/water_recipe[_f32])",
    )
    have_models = not errs and bool(plugin)

    # ---- is the MPI CUDA-aware?
    rc, text = run(
        [vbin / "mpirun", "-np", "1", py, WORKERS, "mpiquery"], logs / "mpiquery.log", 60, cwd=work
    )
    q = last_json(text) or {"supported": None, "why": f"query failed (exit {rc}): {tail(text)}"}
    aware = q.get("supported") == 1

    # ---- (b), (c), (d) side by side
    reserve = 0 if args.no_timing else args.reserve
    # correctness first: these get at least 2 minutes even if the build ate into the budget
    limit = max(120.0, dl.left() - reserve)
    jobs: dict = {}
    with ThreadPoolExecutor(args.jobs) as ex:
        if rep is not None:  # (the models frozen here are skipped by it if freeze failed)
            jobs["parity"] = ex.submit(
                run,
                [py, WORKERS, "parity", "--device", dev, "--models", models],
                logs / "parity.log",
                limit,
                {"OMP_NUM_THREADS": half},
                work,
            )
        if have_models:
            f64 = models / "f64.pth"
            # the reference on the CPU: half the cores next to the GPU runs; in a CPU rehearsal
            # all of them, against 1 thread for the "device" run
            cases = {
                "ref_cpu_1rank": ("cpu", 1, max(1, ncores // 2) if cuda else ncores, {}),
                f"{dev}_1rank": (dev, 1, 1 if not cuda else 2, {}),
                f"{dev}_2ranks_routed": (dev, 2, 1, {"DPA3_CUDA_AWARE": "0"}),
                f"{dev}_2ranks_staging": (dev, 2, 1, {"DPA3_CUDA_AWARE": "0", **MULTIPLE}),
            }
            if aware or args.force_cuda_aware:
                cases[f"{dev}_2ranks_aware"] = (dev, 2, 1, {"DPA3_CUDA_AWARE": "1", **MULTIPLE})
            for name, (d, n, th, env) in cases.items():
                jobs[name] = ex.submit(
                    lammps_case, work, name, plugin, f64, d, n, th, env, limit, args.md_steps
                )
        done = {k: f.result() for k, f in jobs.items()}

    # (b)
    if "parity" not in done:
        t.add("(b) parity", "SKIP", "dpa3 info failed")
    else:
        rc, text = done["parity"]
        res = last_json(text) if rc == 0 else None
        if res is None:
            t.add("(b) parity", "FAIL", f"{'timeout' if rc == 124 else f'exit {rc}'}: {tail(text)}")
        else:
            cases_b = res["cases"]
            worst = max(cases_b, key=lambda c: c[1])
            nbad = sum(c[1] > 1.0 for c in cases_b)
            (out / "parity.json").write_text(json.dumps(cases_b, indent=1))
            t.add(
                "(b) parity",
                "FAIL" if nbad else "PASS",
                f"{len(cases_b)} model/frame cases on {dev}, {nbad} over tolerance; worst "
                f"{worst[0]} at {worst[1]:.2g} x tolerance (1e-10 f64 / 1e-5 f32, relative)",
                cases=len(cases_b),
            )

    # (c), (d)
    def verdict(name: str, a, b, label: str, tol: float = 1e-8, mode: str = "") -> None:
        """``mode``: the exchange the plugin must report (on cuda with several ranks)."""
        for x in (a, b):
            if isinstance(x, str) or x is None:
                t.add(name, "FAIL", x or "not run")
                return
        diff, key = compare(a, b)
        ok = diff <= tol
        if cuda and mode:
            ok = ok and a["exchange"].startswith(mode)
            label += f", exchange '{a['exchange'] or 'not printed'}'"
        t.add(
            name,
            "PASS" if ok else "FAIL",
            f"{label}: max diff {diff:.2e} (in {key}; tolerance {tol:g}), 192 atoms, step 0 + "
            f"{args.md_steps} NVE steps",
            max_diff=diff,
        )

    if not have_models:
        for name in CHECKS[3:7]:
            t.add(name, "SKIP", "no frozen model or no plugin")
    else:
        label_c = (
            "device cuda 1 rank vs device cpu 1 rank"
            if cuda
            else f"rehearsal on cpu: 1 thread vs {ncores} thread(s)"
        )
        verdict("(c) lammps device", done[f"{dev}_1rank"], done["ref_cpu_1rank"], label_c + ", f64")
        verdict(
            "(d) 2 ranks host-routed",
            done[f"{dev}_2ranks_routed"],
            done[f"{dev}_1rank"],
            f"device {dev}, 2 ranks (MPI_THREAD_SINGLE) vs 1 rank",
            mode="host-routed",
        )
        verdict(
            "(d) 2 ranks staging",
            done[f"{dev}_2ranks_staging"],
            done[f"{dev}_1rank"],
            f"device {dev}, 2 ranks (MPI_THREAD_MULTIPLE, DPA3_CUDA_AWARE=0) vs 1 rank",
            mode="staged",
        )
        if f"{dev}_2ranks_aware" in done:
            verdict(
                "(d) 2 ranks CUDA-aware",
                done[f"{dev}_2ranks_aware"],
                done[f"{dev}_1rank"],
                f"device {dev}, 2 ranks (MPI_THREAD_MULTIPLE, DPA3_CUDA_AWARE=1) vs 1 rank",
                mode="cuda-aware",
            )
        else:
            why = (
                f"CUDA-aware: not supported by this MPI (MPIX_Query_cuda_support() = "
                f"{q['supported']})"
                if "why" not in q
                else f"CUDA-aware: {q['why']}"
            )
            t.add("(d) 2 ranks CUDA-aware", "SKIP", why)

    # ---- (e) timing
    if args.no_timing:
        t.add("(e) timing", "SKIP", "--no-timing")
    elif not have_models:
        t.add("(e) timing", "SKIP", "no frozen model or no plugin")
    else:
        timing(args, t, dl, work, logs, plugin, models / "f32.pth")

    total = time.time() - (args.started or time.time())
    name = "cpu"
    if cuda:
        import torch

        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda (none)"
    return t.render(
        f"# dpa3 GPU check, device {dev} ({name}, {ncores} cores), "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {total:.0f} s in all"
    )


def parse_boxes(text: str) -> list[tuple[int, int, int]]:
    return [tuple(int(x) for x in b.split("x")) for b in text.split(",") if b]


def timing(args, t: Table, dl: Deadline, work: Path, logs: Path, plugin: str, model: Path) -> None:
    """(e): the fixed boxes, then larger ones until one does not fit or time runs out."""
    mem = DeviceMemory()
    cuda = args.device == "cuda"
    memkind = (
        ("GPU memory in use (NVML)" if mem.handle is not None else "GPU memory n/a (no NVML)")
        if cuda
        else "resident set"
    )
    threads = min(4, os.cpu_count() or 1) if cuda else max(1, (os.cpu_count() or 1))
    e_ref = None

    def one(reps: tuple, fixed: bool) -> dict:
        nonlocal e_ref
        n = 192 * math.prod(reps)
        big = n > 20000
        w, s = (1, 2) if args.quick else ((1, 3) if big else (2, 5))
        r = timing_case(
            work, reps, plugin, model, args.device, threads, w, s, dl.limit(args.box_timeout), mem
        )
        label = f"(e) timing {n:,} atoms" if fixed else f"(e) grow {n:,} atoms"
        if r["status"] != "ok":
            # a larger box that does not fit, or does not finish in the budget left, ends the
            # growing; anything else is a failure
            if fixed or r["status"] not in ("out of memory", "timeout"):
                t.add(label, "FAIL", f"replicate {'x'.join(map(str, reps))}: {r['status']}")
            return r
        e_atom = r["e0"] / n
        e_ref = e_atom if e_ref is None else e_ref
        rel = abs(e_atom - e_ref) / abs(e_ref)
        detail = (
            f"{r['s_per_step']:.4g} s/step, {n / r['s_per_step']:.3g} atom-steps/s, peak "
            f"{fmt_mem(r['peak'])} ({memkind}); E0/atom {e_atom:.8f} eV (rel. diff to the "
            f"first box {rel:.1e})"
        )
        ok = rel <= 1e-5
        if fixed:
            rc, text = run(
                [
                    sys.executable,
                    WORKERS,
                    "pytime",
                    "--device",
                    args.device,
                    "--model",
                    model,
                    "--reps",
                    *map(str, reps),
                ],
                logs / f"pytime_{n}.log",
                dl.limit(args.box_timeout),
                {"OMP_NUM_THREADS": str(threads)},
                work,
            )
            p = last_json(text) if rc == 0 else None
            if p is None:
                ok = False
                detail += f"; python call failed: {tail(text)}"
            else:
                med = sorted(p["times"])[len(p["times"]) // 2]
                prel = abs(p["energy"] - r["e0"]) / abs(r["e0"])
                ok = ok and prel <= 1e-5
                detail += (
                    f"; python forward_lower {med:.4g} s/call, max_memory_allocated "
                    f"{fmt_mem(p['peak'])}, energy vs LAMMPS rel. {prel:.1e}"
                )
        if fixed or not ok:
            t.add(
                label,
                "PASS" if ok else "FAIL",
                detail,
                **{k: r.get(k) for k in ("natoms", "s_per_step", "peak")},
            )
        r["detail"] = detail
        return r

    fixed = parse_boxes(args.boxes)
    grow = parse_boxes(args.grow)
    last = None
    for reps in fixed:
        r = one(reps, True)
        if r["status"] == "ok":
            last = r
    if last is None:
        return
    best, why = None, "no larger box in --grow"
    for reps in grow:
        n = 192 * math.prod(reps)
        if n <= last["natoms"]:
            continue
        steps = 3 if args.quick else (4 if n > 20000 else 7)
        startup = max(0.0, last["wall"] - last["loops"])
        guess = startup + 1.5 * steps * last["s_per_step"] * n / last["natoms"] + 10
        if guess > dl.left() - 5:
            why = f"{n:,} atoms not tried: ~{guess:.0f} s needed, {dl.left():.0f} s left"
            break
        r = one(reps, False)
        if r["status"] != "ok":
            why = f"{n:,} atoms: {r['status']}"
            break
        best, last = r, r
    if best is None:
        t.add("(e) largest box", "SKIP", f"no box beyond the fixed ones ran ({why})")
    else:
        t.add(
            f"(e) largest box {best['natoms']:,} atoms",
            "PASS",
            f"replicate {'x'.join(map(str, best['reps']))}: {best['detail']}; next: {why}",
            natoms=best["natoms"],
            s_per_step=best["s_per_step"],
            peak=best["peak"],
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="all checks and the timing (gpu_check.sh calls this)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check")
    p.add_argument("--deadline", type=float, default=None, help="epoch seconds to finish by")
    p.add_argument("--started", type=float, default=None, help="epoch seconds of the start")
    p.add_argument(
        "--quick",
        action="store_true",
        help="CPU rehearsal sizes: boxes 1x1x1,2x2x2, grow to 2x2x4, 10 MD steps",
    )
    p.add_argument("--boxes", default=None, help="fixed timing boxes (default 2x2x2,4x4x4)")
    p.add_argument(
        "--grow",
        default=None,
        help="larger boxes tried in order until one does not fit (default 4x4x8,"
        "4x6x8,4x8x8,8x8x8,8x8x12,8x8x16,8x16x16)",
    )
    p.add_argument("--md-steps", type=int, default=None, help="NVE steps of (c)/(d) (20)")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="(b)/(c)/(d) processes at once (default: cores // 3, at most 5)",
    )
    p.add_argument(
        "--reserve",
        type=float,
        default=None,
        help="seconds kept for (e) when (b)-(d) run (default 200; 0 with --no-timing)",
    )
    p.add_argument("--box-timeout", type=float, default=150.0, help="seconds per timing run")
    p.add_argument("--no-timing", action="store_true")
    p.add_argument(
        "--force-cuda-aware",
        action="store_true",
        help="run DPA3_CUDA_AWARE=1 even if the MPI does not report CUDA support",
    )
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("report", help="the table of a run whose setup failed")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--not-run", default="setup failed")
    p.set_defaults(func=cmd_report)
    args = ap.parse_args()
    if args.cmd == "run":
        q = args.quick
        args.boxes = args.boxes or ("1x1x1,2x2x2" if q else "2x2x2,4x4x4")
        args.grow = (
            args.grow
            if args.grow is not None
            else ("2x2x4" if q else "4x4x8,4x6x8,4x8x8,8x8x8,8x8x12,8x8x16,8x16x16")
        )
        args.md_steps = args.md_steps or (10 if q else MD_STEPS)
        args.jobs = args.jobs or max(1, min(5, (os.cpu_count() or 1) // 3))
        args.reserve = 200.0 if args.reserve is None else args.reserve
        args.out.mkdir(parents=True, exist_ok=True)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
