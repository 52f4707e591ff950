"""Report of ``lammps_vs_deepmd.py``: result records, the markdown tables and the results file.

Kept apart from the script that runs the cases; ``write_report`` takes the run's record (a
namespace with the attributes listed at its top) and writes ``results.json`` and the markdown.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "lammps" / "data.water"
CKPT6 = ROOT / "tests" / "data" / "parity" / "water_recipe_f32" / "model.ckpt.pt"
REL_TOL = 1e-5
GIB = 1024**3


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def meminfo() -> dict[str, int]:
    out = {}
    for ln in Path("/proc/meminfo").read_text().splitlines():
        k, v = ln.split(":", 1)
        out[k] = int(v.split()[0]) * 1024
    return out


def cpu_model() -> str:
    for ln in Path("/proc/cpuinfo").read_text().splitlines():
        if ln.startswith("model name"):
            return ln.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@dataclass
class Result:
    status: str = "ok"  # ok | timeout | out of memory | failed: ...
    e0: float | None = None  # potential energy at step 0, eV
    s_per_step: float | None = None
    steps: int = 0
    peak_rss: list[int] = field(default_factory=list)  # bytes per rank
    guard_peak: int = 0  # largest summed RSS seen by the poller, bytes
    cpu_use: str = ""  # LAMMPS's "% CPU use" of the timed run (low: machine busy)
    wall: float = 0.0
    load_before: str = ""
    command: str = ""
    log: str = ""

    @property
    def peak(self) -> int | None:
        return sum(self.peak_rss) if self.peak_rss else None


INPUT = """\
# {title}
units           metal
atom_style      atomic
boundary        p p p
newton          on
read_data       {data}
{replicate}plugin          load {plugin}
pair_style      {pair_style} {model}
pair_coeff      * * O H
neighbor        1.0 bin
neigh_modify    every 10 delay 0 check yes
timestep        0.0005
velocity        all create 300.0 2025 mom yes rot yes dist gaussian
fix             nvt all nvt temp 300.0 300.0 0.05
thermo_style    custom step pe ke etotal temp
thermo_modify   format float %.10f
thermo          0
run             {warmup}
run             {steps}
"""


@dataclass
class AseResult:
    status: str = "ok"  # ok | energy mismatch (...) | timeout | out of memory | ...
    energy: float | None = None  # energy of the warm-up call, eV
    rel: float | None = None  # its relative difference to the LAMMPS step-0 energy
    first: float | None = None  # seconds of the warm-up call
    times: list[float] = field(default_factory=list)  # seconds per timed call
    guard_peak: int = 0
    wall: float = 0.0
    load_before: str = ""
    command: str = ""

    @property
    def median(self) -> float | None:
        if not self.times:
            return None
        t = sorted(self.times)
        n = len(t)
        return t[n // 2] if n % 2 else 0.5 * (t[n // 2 - 1] + t[n // 2])

    @property
    def best(self) -> float | None:
        return min(self.times) if self.times else None


def fmt_gb(x: int | None) -> str:
    return "–" if x is None else f"{x / GIB:.2f}"


def write_report(run: SimpleNamespace) -> None:
    """Print the tables, write ``results.json`` into the work folder and (unless
    ``--no-output``) the markdown file ``args.output``."""
    args = run.args
    ase_rows = run.ase_rows
    checks = run.checks
    dp_plugin = run.dp_plugin
    ended = run.ended
    load_start = run.load_start
    mem = run.mem
    mm_end = run.mm_end
    mm_start = run.mm_start
    models = run.models
    our_plugin = run.our_plugin
    prep = run.prep
    rows = run.rows
    sides = run.sides
    started = run.started
    steps_of = run.steps_of
    versions = run.versions
    warmup_of = run.warmup_of
    work = run.work

    # ---- report
    peak_mm = max(mm_start[args.cores], mm_end[args.cores]) * 1e9
    md = []
    md.append(
        "| layers | atoms | ranks × threads | E(step 0) dpa3, eV | E(step 0) DeePMD-kit, eV"
        " | rel. diff |"
    )
    md.append("|---|---|---|---|---|---|")
    for nl, reps, ranks, threads, res in rows:
        a, b = res["dpa3"].e0, res["deepmd"].e0
        rel = f"{abs(a - b) / abs(b):.1e}" if a is not None and b is not None else "–"
        if a is not None and b is not None and abs(a - b) / abs(b) > REL_TOL:
            rel += " **MISMATCH**"
        md.append(
            f"| {nl} | {192 * reps**3:,} | {ranks} × {threads} | "
            f"{'–' if a is None else f'{a:.6f}'} | {'–' if b is None else f'{b:.6f}'} | "
            f"{rel} |"
        )
    energy_table = "\n".join(md)
    md = []
    md.append(
        "| layers | atoms | ranks × threads | dpa3 s/step | DeePMD-kit s/step | speed-up"
        " | dpa3 peak GB | DeePMD-kit peak GB | memory ratio | dpa3 % of mm | "
        "dpa3 % of mm by DeePMD-kit's FLOPs | DeePMD-kit % of mm | CPU use dpa3 / DeePMD-kit"
        " | load at start |"
    )
    md.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for nl, reps, ranks, threads, res in rows:
        o, d = res["dpa3"], res["deepmd"]
        nat = 192 * reps**3

        def t(r: Result) -> str:
            return f"{r.s_per_step:.4f}" if r.s_per_step else r.status.split(" (")[0]

        def frac(r: Result, flops: float, nat: int = nat) -> str:
            return f"{100 * flops * nat / r.s_per_step / peak_mm:.1f}" if r.s_per_step else "–"

        def pct(r: Result) -> str:
            return f"{r.cpu_use}%" if r.cpu_use else "–"

        speed = f"{d.s_per_step / o.s_per_step:.1f}×" if o.s_per_step and d.s_per_step else "–"
        memr = f"{d.peak / o.peak:.1f}×" if o.peak and d.peak and d.status == "ok" else "–"
        dpeak = (
            fmt_gb(d.peak)
            if d.status == "ok"
            else (f"> {d.guard_peak / GIB:.1f}" if d.guard_peak else "–")
        )
        opeak = (
            fmt_gb(o.peak)
            if o.status == "ok"
            else (f"> {o.guard_peak / GIB:.1f}" if o.guard_peak else "–")
        )
        md.append(
            f"| {nl} | {nat:,} | {ranks} × {threads} | {t(o)} | {t(d)} | {speed} | "
            f"{opeak} | {dpeak} | {memr} | {frac(o, models[nl]['flops'])} | "
            f"{frac(o, models[nl]['deepmd_flops'])} | "
            f"{frac(d, models[nl]['deepmd_flops'])} | {pct(o)} / {pct(d)} | "
            f"{o.load_before} |"
        )
    speed_table = "\n".join(md)

    def ase_t(a: AseResult) -> str:
        return f"{a.median:.4f} / {a.best:.4f}" if a.median is not None else a.status.split(" (")[0]

    def ase_ratio(a: AseResult, r: Result) -> str:
        return f"{a.median / r.s_per_step:.2f}" if a.median is not None and r.s_per_step else "–"

    def ase_rel(a: AseResult) -> str:
        return "–" if a.rel is None else f"{a.rel:.1e}"

    md = []
    md.append(
        "| layers | atoms | threads | dpa3 LAMMPS s/step | dpa3 ASE s/call (median / best)"
        " | **dpa3 ASE ÷ LAMMPS** | DeePMD-kit LAMMPS s/step | DeePMD-kit ASE s/call "
        "(median / best) | DeePMD-kit ASE ÷ LAMMPS | ASE vs LAMMPS E0, rel. diff "
        "dpa3 / DeePMD-kit | load at start |"
    )
    md.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for nl, reps, threads, res, ase in ase_rows:
        o, d = res["dpa3"], res["deepmd"]
        ao, ad = ase["dpa3"], ase["deepmd"]

        def lt(r: Result) -> str:
            return f"{r.s_per_step:.4f}" if r.s_per_step else r.status.split(" (")[0]

        md.append(
            f"| {nl} | {192 * reps**3:,} | {threads} | {lt(o)} | {ase_t(ao)} | "
            f"{ase_ratio(ao, o)} | {lt(d)} | {ase_t(ad)} | {ase_ratio(ad, d)} | "
            f"{ase_rel(ao)} / {ase_rel(ad)} | {ao.load_before or '–'} |"
        )
    ase_table = "\n".join(md)
    flops_lines = [
        f"- {nl} layers: dpa3 {m['flops'] / 1e6:.1f} MFLOP per atom-step, DeePMD-kit "
        f"{m['deepmd_flops'] / 1e6:.1f} MFLOP per atom-step"
        for nl, m in models.items()
    ]
    check_lines = [
        f"- {nl} layers: dpa3 {a:.10f} eV, DeePMD-kit {b:.10f} eV, relative difference {r:.1e}"
        for nl, (a, b, r) in checks.items()
    ]

    print()
    print(energy_table)
    print()
    print(speed_table)
    print()
    print(
        "speed-up = DeePMD-kit s/step / dpa3 s/step; memory ratio = DeePMD-kit / dpa3; "
        f"% of mm = matmul FLOPs per step / s per step / {peak_mm / 1e9:.1f} GFLOP/s"
    )
    if ase_rows:
        print()
        print(ase_table)
        print()
        print(
            f"ASE s/call: median / best of {args.ase_calls} atoms.get_forces() calls after one "
            "warm-up call, 1 process; ASE ÷ LAMMPS = median s/call / LAMMPS s/step of the "
            "same code (target for dpa3: <= 1.2)"
        )

    raw = [
        {
            "layers": nl,
            "atoms": 192 * reps**3,
            "ranks": ranks,
            "threads": threads,
            "code": k,
            "status": r.status,
            "e0": r.e0,
            "s_per_step": r.s_per_step,
            "steps": r.steps,
            "peak_rss_per_rank": r.peak_rss,
            "guard_peak": r.guard_peak,
            "cpu_use": r.cpu_use,
            "load_before": r.load_before,
            "command": r.command,
        }
        for nl, reps, ranks, threads, res in rows
        for k, r in res.items()
    ]
    raw_ase = [
        {
            "layers": nl,
            "atoms": 192 * reps**3,
            "threads": threads,
            "code": k,
            "status": a.status,
            "energy": a.energy,
            "rel_to_lammps_e0": a.rel,
            "warmup_s": a.first,
            "times_s": a.times,
            "median_s": a.median,
            "best_s": a.best,
            "lammps_s_per_step": res[k].s_per_step,
            "guard_peak": a.guard_peak,
            "load_before": a.load_before,
            "command": a.command,
        }
        for nl, reps, threads, res, ase in ase_rows
        for k, a in ase.items()
    ]
    (work / "results.json").write_text(
        json.dumps(
            {
                "mm_gflops": {"start": mm_start, "end": mm_end},
                "versions": versions,
                "flops_per_atom_step": {
                    nl: {"dpa3": m["flops"], "deepmd": m["deepmd_flops"]}
                    for nl, m in models.items()
                },
                "checks": checks,
                "runs": raw,
                "ase": raw_ase,
            },
            indent=1,
        )
    )
    if args.no_output:
        return

    def rel(p: Path) -> str:
        return os.path.relpath(p, ROOT)

    template = INPUT.format(
        title="template",
        data=rel(DATA),
        plugin="PLUGIN",
        pair_style="PAIR_STYLE",
        model="MODEL",
        warmup="WARMUP",
        steps="STEPS",
        replicate="replicate       2 2 2           # 1,536 atoms only\n",
    ).rstrip()
    best_of = (
        f"\n- Each case ran {args.repeat} times per code, alternating dpa3 and "
        "DeePMD-kit; the table shows the fastest run of each (a run stopped for memory or "
        "time is not repeated)."
        if args.repeat > 1
        else ""
    )
    all_cmds = [r.command for *_, res in rows for r in res.values()]
    stopped = [
        f"  - {nl} layers, {192 * reps**3:,} atoms, {ranks} × {threads}, {sides[k].name}: "
        f"{r.status}"
        for nl, reps, ranks, threads, res in rows
        for k, r in res.items()
        if r.status != "ok"
    ]
    failures = ("\n- Stopped runs:\n" + "\n".join(stopped)) if stopped else ""
    cmd_line = " ".join(shlex.quote(a) for a in sys.argv[1:])
    ase_section = ""
    ase_best_of = (
        " With `--repeat`, the ASE timing ran after each LAMMPS run; the table keeps "
        "the ASE run with the lowest median."
        if args.repeat > 1
        else ""
    )
    if ase_rows:
        ase_cmds = [a.command for *_, ase in ase_rows for a in ase.values() if a.command]
        ase_section = f"""## Python side: ASE calculator, time per force call

{ase_table}

- The 1-rank cases again, in one Python process with the same threads, `LD_PRELOAD` and
  `DP_*` settings: dpa3's `dpa3.calculator.DPA3Calculator` with the same `dpa3.pth`, and
  DeePMD-kit's `deepmd.calculator.DP` with the same `deepmd.pth` (in `.venv-deepmd`), each run
  right after the same code's LAMMPS run, on the configuration LAMMPS starts from
  (`{rel(DATA)}`, replicated as in LAMMPS).
- One warm-up call (its energy must equal the LAMMPS step-0 energy of the same case and code
  to a relative {REL_TOL:g}, column "ASE vs LAMMPS E0"; otherwise nothing is timed), then
  {args.ase_calls} timed `atoms.get_forces()` calls, each after displacing the start positions
  by a fresh random vector (normal, σ = {args.ase_perturb:g} Å per component) so that ASE does
  not return cached results. Each call builds the neighbour list and evaluates energy, forces
  and virial, as one LAMMPS step does.{ase_best_of}
- ASE ÷ LAMMPS = median ASE s/call ÷ LAMMPS s/step of the same code and case (target for
  dpa3: ≤ 1.2). LAMMPS s/step also includes the MD integration and LAMMPS's own neighbour
  lists, which take a negligible share here.

```bash
{chr(10).join(ase_cmds)}
```

"""
    text = f"""# LAMMPS MD: `pair_style dpa3` vs DeePMD-kit's `pair_style deepmd`

Measured {started:%Y-%m-%d %H:%M %Z} – {ended:%H:%M %Z} by

```bash
bash scripts/install_deepmd_lammps.sh          # once: .venv-deepmd with DeePMD-kit's plugin
.venv/bin/python benchmarks/lammps_vs_deepmd.py {cmd_line}
```

## Machine and load

- CPU: {cpu_model()}, {os.cpu_count()} cores; memory {mem["MemTotal"] / GIB:.1f} GB
  ({mem["MemAvailable"] / GIB:.1f} GB available at the start).
- Load average (1, 5, 15 min) at the start {load_start}, at the end {loadavg()}; the column
  "load at start" gives it before each dpa3 run (the DeePMD-kit run of the same case followed
  right after). The benchmark itself keeps up to {args.cores} cores busy; a higher load means
  other work shared the machine, which slows both codes (1 rank × several threads most: each
  parallel region waits until all its threads have a core), so compare the codes within a row.
- float32 `torch.mm` (2048³, best over 4 s): {mm_start[1]:.1f} / {mm_end[1]:.1f} GFLOP/s on 1
  thread,
  {mm_start[args.cores]:.1f} / {mm_end[args.cores]:.1f} GFLOP/s on {args.cores} threads (start /
  end of the run). "% of mm" uses {peak_mm / 1e9:.1f} GFLOP/s.
- dpa3 at commit {versions["dpa3 source"]}.
- {versions["dpa3 venv"]} (`.venv`); {versions["DeePMD-kit venv"]} (`.venv-deepmd`, DeePMD-kit
  built from source with its C++ API, plugin from its 3.2.0 wheel). tcmalloc preloaded for both.

## Model

The float32 DPA3 water recipe (n_dim 128, e_dim 64, a_dim 32, e_rcut 6 Å, a_rcut 4 Å,
e_sel 120, a_sel 30, fitting 240×3), weights written by DeePMD-kit:
`{rel(CKPT6)}` (6 layers); the 3-layer model takes its first three layers and everything else
(DeePMD-kit's `get_model` with `nlayers` 3, saved as a DeePMD-kit checkpoint). Matmul-type
floating-point operations per atom and MD step (energy, forces and virial of the eager model,
192 atoms, `torch.utils.flop_counter.FlopCounterMode`; element-wise work is not counted; the
matrix products inside dpa3's fused C++ kernels are counted by the formulas that
`dpa3._ops.register_flop_formulas()` registers, 2 M N K per product as the kernels compute them,
recomputations in the backward pass included):

{chr(10).join(flops_lines)}

## Energy at step 0 (checked before timing, then in every case)

Before any timing, 192 atoms on 1 rank:

{chr(10).join(check_lines)}

{energy_table}

## Time per MD step and peak memory

{speed_table}

- s/step: LAMMPS's "Loop time" of a run of {
        ", ".join(f"{steps_of[r]} steps ({192 * r**3:,} atoms)" for r in args.reps)
    } after a warm-up run of {
        ", ".join(str(warmup_of[r]) for r in args.reps)
    } steps; NVT, 0.5 fs, neighbour skin 1 Å.{best_of}
- speed-up = DeePMD-kit s/step ÷ dpa3 s/step; memory ratio = DeePMD-kit ÷ dpa3.
- peak GB: the maximum resident set of each rank (`/usr/bin/time -f %M`), summed over ranks.
  "out of memory" = stopped by the benchmark when the machine had less than
  {args.min_free_gb:g} GB available (the summed resident set then is shown as "> X"; the rest
  of the machine's memory was in use by other work); "timeout" = stopped after
  {args.timeout:g} s.{failures}
- % of mm: (matmul FLOPs per atom-step × atoms ÷ s/step) ÷ the measured {args.cores}-thread
  `torch.mm` throughput (the better of start and end), each code with its own FLOP count;
  "dpa3 % of mm by DeePMD-kit's FLOPs" counts dpa3's time with DeePMD-kit's count (the same
  function, so the same work).
- CPU use: LAMMPS's own "% CPU use" of the timed run, per rank (100% × threads per rank = the
  rank's threads ran all the time); lower values mean that other work on the machine had the
  cores for that part of the time.

{ase_section}## Exact commands

Models (in `{rel(work)}/layers<N>/`):

```bash
{chr(10).join(prep)}
```

Each case, in its folder `{rel(work)}/layers<N>/x<reps>_np<ranks>_<code>/` (every rank
wrapped as `sh -c 'o=$1; shift; exec /usr/bin/time -f %M -o "$o.$PMI_RANK" "$@"' sh maxrss lmp
...` for its peak memory):

```bash
{chr(10).join(all_cmds)}
```

with the input (`in.lmp`; `plugin load` and `pair_style` per code:
`dpa3 .../dpa3.pth` with `{rel(our_plugin)}`, `deepmd .../deepmd.pth` with
`{rel(dp_plugin)}`):

```
{template}
```
"""
    args.output.write_text(text)
    print(f"\nwrote {rel(args.output)}")
