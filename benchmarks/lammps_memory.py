"""LAMMPS peak memory per atom at growing water boxes: ``pair_style dpa3`` vs DeePMD-kit.

    .venv/bin/python benchmarks/lammps_memory.py [--grids 1x1x1 2x2x2 4x4x4 4x4x8] [--ranks 2]
        [--cores 2] [--steps 1 [..]] [--warmup 0 [..]] [--deepmd-max-atoms 1536]
        [--memory-budget GIB] [--rounds 1] [--output F]

The float32 water recipe (6 layers, weights written by DeePMD-kit,
``tests/data/parity/water_recipe_f32/model.ckpt.pt``) on the 192-atom box of
``examples/lammps/data.water`` replicated ``NXxNYxNZ`` times, ``--ranks`` MPI ranks x ``--cores /
--ranks`` threads, NVT as in ``benchmarks/lammps_vs_deepmd.py`` (whose LAMMPS runner this uses:
peak resident set of every rank by ``/usr/bin/time``, summed over the ranks; a guard stops a run
before the machine runs out of memory). Each case runs ``--warmup`` untimed and ``--steps`` timed
MD steps (one number for all grids, or one per grid); the time per step is LAMMPS's loop time of
the timed run (on a busy machine, compare sizes, not absolute times). dpa3 runs with the frozen
model's default ``graph_budget_bytes`` (4 GiB per process: above it, evaluation recomputes the
layers block by block; see ``docs/internals.md``, "Memory") unless ``--memory-budget`` is given;
DeePMD-kit runs up to ``--deepmd-max-atoms`` (0: not at all, and it need not be installed).
``--rounds N`` runs the whole sequence of grids N times and reports, per round and as the median
over the rounds, each grid's dpa3 time per atom-step over the first grid's (issue #14's scaling
clause: ``--grids 2x2x2 4x4x8``); the runs of one round follow each other, so a round's ratio
sees the same machine state as far as a shared machine allows.
Writes a markdown report (default ``benchmarks/results_memory.md``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
from pathlib import Path

from lammps_report import CKPT6, GIB, ROOT, cpu_model, loadavg, meminfo
from lammps_runs import Side, deepmd_side, run_lammps

HERE = Path(__file__).resolve().parent


def grid(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"'{text}' is not NXxNYxNZ (e.g. 4x4x8)")
    return int(parts[0]), int(parts[1]), int(parts[2])


def atoms_of(g: tuple[int, int, int]) -> int:
    """Atoms in the 192-atom water box replicated ``g``."""
    return 192 * g[0] * g[1] * g[2]


def scaling_lines(
    per_atom: dict[tuple[int, tuple[int, int, int]], float],
    grids: list[tuple[int, int, int]],
    rounds: int,
) -> list[str]:
    """Markdown lines: per round, each later grid's dpa3 time per atom-step over the first
    grid's, and the median over the rounds (none with one grid; '-' where a run failed)."""
    if len(grids) < 2:
        return []
    first = grids[0]
    names = [f"{atoms_of(g):,}" for g in grids]
    head = " | ".join(f"{n} / {names[0]}" for n in names[1:])
    out = [
        "",
        f"dpa3 time per atom-step over the {names[0]}-atom box's, per round:",
        "",
        f"| round | {head} |",
        "|---|" + "---|" * (len(grids) - 1),
    ]
    ratios: dict[tuple[int, int, int], list[float]] = {g: [] for g in grids[1:]}
    for rnd in range(1, rounds + 1):
        base = per_atom.get((rnd, first))
        cells = []
        for g in grids[1:]:
            t = per_atom.get((rnd, g))
            if base and t:
                ratios[g].append(t / base)
                cells.append(f"{t / base:.3f}")
            else:
                cells.append("-")
        out.append(f"| {rnd} | " + " | ".join(cells) + " |")
    if rounds > 1:
        med = [f"{statistics.median(ratios[g]):.3f}" if ratios[g] else "-" for g in grids[1:]]
        out.append("| median | " + " | ".join(med) + " |")
    return out


def sh(cmd: list, **kw) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--grids",
        type=grid,
        nargs="+",
        default=[grid(g) for g in ("1x1x1", "2x2x2", "4x4x4", "4x4x8")],
    )
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=[1],
        help="timed MD steps: one number for every grid, or one per grid (small boxes need "
        "more steps for a stable time per step)",
    )
    ap.add_argument(
        "--warmup",
        type=int,
        nargs="+",
        default=[0],
        help="untimed MD steps before the timed run (time per step in steady "
        "state; the first steps include TorchScript's profiling runs)",
    )
    ap.add_argument("--deepmd-max-atoms", type=int, default=1536)
    ap.add_argument(
        "--memory-budget",
        type=float,
        default=None,
        metavar="GIB",
        help="dpa3 freeze --memory-budget (default: the model's default)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the sequence of grids this many times; report per round and the median of "
        "each grid's dpa3 time per atom-step over the first grid's",
    )
    ap.add_argument(
        "--malloc",
        choices=("tcmalloc", "glibc"),
        default="tcmalloc",
        help="the ranks' allocator: tcmalloc preloaded (default), or glibc's (with the "
        "plugin's keep-freed-memory settings)",
    )
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--min-free-gb", type=float, default=1.0)
    ap.add_argument("--deepmd-venv", type=Path, default=ROOT / ".venv-deepmd")
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "lammps_memory")
    ap.add_argument("--output", type=Path, default=HERE / "results_memory.md")
    args = ap.parse_args()
    for name in ("steps", "warmup"):
        per = getattr(args, name)
        if len(per) not in (1, len(args.grids)):
            ap.error(f"--{name}: one number, or one per grid ({len(args.grids)})")
        setattr(args, name, per * len(args.grids) if len(per) == 1 else per)
    if args.rounds < 1:
        ap.error(f"--rounds: at least 1, got {args.rounds}")

    import dpa3.lammps

    ours = Path(sys.prefix)
    dp_venv = args.deepmd_venv.resolve()
    # DeePMD-kit only where a box is at most --deepmd-max-atoms (0: dpa3 alone, no DeePMD-kit
    # installation needed)
    with_deepmd = any(atoms_of(g) <= args.deepmd_max_atoms for g in args.grids)
    sides = {"dpa3": Side("dpa3", ours, dpa3.lammps.plugin_path(), "dpa3")}
    if with_deepmd:
        sides["deepmd"] = deepmd_side(dp_venv)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    models = {"dpa3": work / "dpa3.pth", "deepmd": work / "deepmd.pth"}
    sh([ours / "bin" / "dpa3", "convert-deepmd", CKPT6, work / "dpa3.pt"])
    budget = [] if args.memory_budget is None else ["--memory-budget", str(args.memory_budget)]
    sh([ours / "bin" / "dpa3", "freeze", "-c", work / "dpa3.pt", "-o", models["dpa3"], *budget])
    if with_deepmd:
        sh(
            [dp_venv / "bin" / "dp", "--pt", "freeze", "-c", CKPT6, "-o", models["deepmd"]],
            cwd=work,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )

    mem = meminfo()
    start = dt.datetime.now(dt.timezone.utc)
    load_start = loadavg()
    threads = max(1, args.cores // args.ranks)
    rows = []
    with_round = args.rounds > 1  # a round column and one folder per round
    per_atom: dict[tuple[int, tuple[int, int, int]], float] = {}  # dpa3's s per atom-step
    plan = [
        (rnd, g, steps, warmup)
        for rnd in range(1, args.rounds + 1)
        for g, steps, warmup in zip(args.grids, args.steps, args.warmup, strict=True)
    ]
    for rnd, g, steps, warmup in plan:
        natoms = atoms_of(g)
        for key in ("dpa3", "deepmd"):
            if key == "deepmd" and natoms > args.deepmd_max_atoms:
                continue
            case = work / f"{key}_{g[0]}x{g[1]}x{g[2]}_np{args.ranks}"
            if with_round:
                case = case.with_name(f"{case.name}_r{rnd}")
            res = run_lammps(
                sides[key],
                models[key],
                case,
                reps=g,
                ranks=args.ranks,
                threads=threads,
                warmup=warmup,
                steps=steps,
                timeout=args.timeout,
                min_free=int(args.min_free_gb * GIB),
                tcmalloc=args.malloc == "tcmalloc",
            )
            peak = res.peak if res.status == "ok" else None
            mb = f"{peak / natoms / 1e6:.2f}" if peak else "-"
            e0 = f"{res.e0 / natoms:.6f}" if res.e0 is not None else "-"
            sps = f"{res.s_per_step:.2f}" if res.s_per_step else "-"
            # ms per atom-step: the time per atom, to compare sizes
            msa = f"{1e3 * res.s_per_step / natoms:.3f}" if res.s_per_step else "-"
            rows.append((natoms, g, key, res.status, mb, peak, sps, msa, e0, rnd, res.command))
            if key == "dpa3" and res.s_per_step:
                per_atom[rnd, g] = res.s_per_step / natoms
            print(
                f"round {rnd}: {natoms:6d} atoms {g} {key:6s}: {res.status}, {mb} MB/atom, "
                f"{sps} s/step ({msa} ms/atom-step), E0/atom {e0} (load {res.load_before})",
                flush=True,
            )

    end = dt.datetime.now(dt.timezone.utc)
    budget_text = (
        "the default budget"
        if args.memory_budget is None
        else f"--memory-budget {args.memory_budget}"
    )
    lines = [
        "# LAMMPS peak memory per atom: `pair_style dpa3` vs DeePMD-kit",
        "",
        f"Measured {start:%Y-%m-%d %H:%M} - {end:%H:%M} UTC by",
        "",
        "```bash",
        *(["bash scripts/install_deepmd_lammps.sh   # once"] if with_deepmd else []),
        ".venv/bin/python benchmarks/lammps_memory.py " + " ".join(sys.argv[1:]),
        "```",
        "",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores; memory {mem['MemTotal'] / GIB:.1f} GB "
        f"({mem['MemAvailable'] / GIB:.1f} GB available at the start).",
        f"- Load average (1, 5, 15 min) at the start {load_start}, at the end {loadavg()}; "
        "other jobs shared the machine when the load is above ~2: times are then slow, memory "
        "is not affected.",
        f"- {args.ranks} rank(s) x {threads} thread(s), {'/'.join(map(str, args.steps))} timed "
        f"MD step(s) (per grid) after setup and {'/'.join(map(str, args.warmup))} untimed "
        f"step(s); {args.rounds} round(s) of the grids in this order; "
        "peak = sum over ranks of each rank's maximum resident set (libtorch, LAMMPS and the "
        f"model included); allocator: {args.malloc}.",
        f'- dpa3 frozen with {budget_text} (docs/internals.md, "Memory").',
        "",
        ("| round " if with_round else "")
        + "| atoms | replicate | code | status | peak GB | MB/atom | s/step | ms/atom-step | "
        "E(step 0)/atom, eV |",
        ("|---" if with_round else "") + "|---|---|---|---|---|---|---|---|---|",
    ]
    for natoms, g, key, status, mb, peak, sps, msa, e0, rnd, _cmd in rows:
        gb = f"{peak / GIB:.2f}" if peak else "-"
        lines.append(
            (f"| {rnd} " if with_round else "")
            + f"| {natoms:,} | {g[0]}x{g[1]}x{g[2]} | {sides[key].name} | {status} | "
            f"{gb} | {mb} | {sps} | {msa} | {e0} |"
        )
    lines += scaling_lines(per_atom, args.grids, args.rounds)
    lines += ["", "Commands (first case of each code):", ""]
    seen = set()
    for row in rows:
        if row[2] not in seen:
            seen.add(row[2])
            lines.append(f"- `{row[10]}`")
    args.output.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
