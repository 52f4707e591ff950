"""The runs of ``lammps_vs_deepmd.py`` (also used by ``lammps_memory.py`` and ``lammps_ab.py``):
one LAMMPS case of either code under a memory and time guard, one ASE timing in a subprocess,
this CPU's float32 matmul throughput and dpa3's FLOP count.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lammps_helpers import count_flops, water_frame
from lammps_report import DATA, INPUT, AseResult, Result, loadavg
from proc_guard import run_guarded

#: the entry point that runs the ``--helper`` subcommands (in either code's venv)
SCRIPT = Path(__file__).resolve().parent / "lammps_vs_deepmd.py"

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


# --------------------------------------------------------------------------- machine facts


def mm_gflops(threads: int, n: int = 2048, seconds: float = 4.0) -> float:
    """Best float32 ``torch.mm`` throughput of an n x n product over ``seconds``, GFLOP/s
    (best, not mean: the machine may be shared)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)
    best = float("inf")
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(old)
    return 2.0 * n**3 / best / 1e9


def dpa3_flops(ckpt: Path, threads: int) -> tuple[float, int, float]:
    """Matmul FLOPs of dpa3's eager model (evaluation mode, as in LAMMPS) on 192 atoms,
    the matrix products inside the op library's fused kernels included
    (``dpa3._ops.register_flop_formulas``)."""
    import torch

    from dpa3._ops import register_flop_formulas
    from dpa3.convert import load_deepmd_model

    torch.set_num_threads(threads)
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    tmap = list(raw["_extra_state"]["model_params"]["type_map"])
    model = load_deepmd_model(str(ckpt))
    register_flop_formulas()  # the products inside the fused kernels (torch.ops.dpa3._*)
    model.eval()
    coord, names, cell = water_frame()
    atype = torch.tensor([tmap.index(n) for n in names])[None]
    c, b = torch.tensor(coord)[None], torch.tensor(cell.reshape(9))[None]
    model(c, atype, b)
    flops, out = count_flops(lambda: model(c, atype, b))
    return float(flops), len(names), float(out["energy"].detach().sum())


# --------------------------------------------------------------------------- running LAMMPS


@dataclass
class Side:
    """One code: its venv, LAMMPS plugin and pair style."""

    name: str
    venv: Path
    plugin: Path
    pair_style: str

    @property
    def lmp(self) -> Path:
        return self.venv / "bin" / "lmp"

    @property
    def mpirun(self) -> Path:
        return self.venv / "bin" / "mpirun"


def deepmd_side(venv: Path) -> Side:
    """DeePMD-kit's side of a comparison: its venv (``scripts/install_deepmd_lammps.sh``) and the
    LAMMPS plugin in it; exits with what to run where either is missing."""
    py = venv / "bin" / "python"
    if not py.exists():
        raise SystemExit(
            f"{venv} missing: run `bash scripts/install_deepmd_lammps.sh` (lammps_memory.py: or "
            "pass --deepmd-max-atoms 0)"
        )
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    plugin = Path(site) / "deepmd" / "lib" / "libdeepmd_lmpplugin.so"
    if not plugin.exists():
        raise SystemExit(f"DeePMD-kit's LAMMPS plugin missing: {plugin}")
    return Side("DeePMD-kit", venv, plugin, "deepmd")


def run_env(threads: int, tcmalloc: bool = True) -> tuple[dict[str, str], dict[str, str]]:
    """Environment of a timed run (LAMMPS or ASE): the full one, and the variables set;
    ``tcmalloc`` False: glibc's allocator (no preload). Exits when tcmalloc is asked for and
    not installed."""
    if tcmalloc and not Path(TCMALLOC).exists():
        raise SystemExit(f"{TCMALLOC} missing (apt-get install libtcmalloc-minimal4)")
    env = dict(os.environ)
    env.pop("LAMMPS_PLUGIN_PATH", None)
    env.pop("LD_PRELOAD", None)
    env_set = {"LD_PRELOAD": TCMALLOC} if tcmalloc else {}
    env_set |= {
        "OMP_NUM_THREADS": str(threads),
        "DP_INTRA_OP_PARALLELISM_THREADS": str(threads),
        "DP_INTER_OP_PARALLELISM_THREADS": "1",
    }
    env.update(env_set)
    return env, env_set


def run_lammps(
    side: Side,
    model: Path,
    case_dir: Path,
    *,
    reps: int | tuple[int, int, int],
    ranks: int,
    threads: int,
    warmup: int,
    steps: int,
    timeout: float,
    min_free: int,
    tcmalloc: bool = True,
) -> Result:
    """One LAMMPS run of the 192-atom water box replicated ``reps`` times along each axis
    (an int: the same along all three); ``tcmalloc`` as in :func:`run_env`."""
    case_dir.mkdir(parents=True, exist_ok=True)
    for old in case_dir.glob("maxrss.*"):
        old.unlink()
    grid = (reps, reps, reps) if isinstance(reps, int) else tuple(reps)
    copies = grid[0] * grid[1] * grid[2]
    inp = case_dir / "in.lmp"
    inp.write_text(
        INPUT.format(
            title=(
                f"{side.name}: {model.name}, water x{copies}, {ranks} rank(s) x {threads} thread(s)"
            ),
            data=DATA,
            replicate=f"replicate       {grid[0]} {grid[1]} {grid[2]}\n" if copies > 1 else "",
            plugin=side.plugin,
            pair_style=side.pair_style,
            model=model,
            warmup=warmup,
            steps=steps,
        )
    )
    env, env_set = run_env(threads, tcmalloc)
    # every rank under /usr/bin/time: its maximum resident set (the lmp binary started by the
    # wheel's `lmp` launcher is the largest process it waits for) lands in maxrss.<rank>
    wrap = 'o=$1; shift; exec /usr/bin/time -f %M -o "$o.${PMI_RANK:-0}" "$@"'
    cmd = [
        str(side.mpirun),
        "-np",
        str(ranks),
        "sh",
        "-c",
        wrap,
        "sh",
        str(case_dir / "maxrss"),
        str(side.lmp),
        "-in",
        str(inp),
        "-log",
        str(case_dir / "log.lammps"),
    ]
    res = Result(load_before=loadavg())
    res.command = (
        f"cd {case_dir} && "
        + " ".join(f"{k}={v}" for k, v in env_set.items())
        + f" {side.mpirun} -np {ranks} {side.lmp} -in in.lmp"
    )
    returncode, stop, res.guard_peak, res.wall = run_guarded(
        cmd, case_dir, env, timeout=timeout, min_free=min_free
    )
    text = (case_dir / "stdout").read_text(errors="replace")
    errtext = (case_dir / "stderr").read_text(errors="replace")
    res.log = text
    res.e0 = parse_e0(text)
    loops = re.findall(r"Loop time of (\S+) on \d+ procs for (\d+) steps", text)
    for f in sorted(case_dir.glob("maxrss.*")):
        try:
            res.peak_rss.append(int(f.read_text().split()[-1]) * 1024)
        except (IndexError, ValueError):
            pass
    if stop:
        res.status = stop
    elif returncode != 0 or len(loops) < 2:
        tail = [
            ln
            for ln in (text + "\n" + errtext).splitlines()
            if ln.strip() and not ln.startswith("Command being timed")
        ]
        killed = any(s in text + errtext for s in ("Killed", "signal 9", "KILLED BY SIGNAL: 9"))
        res.status = (
            "out of memory (killed by the kernel)"
            if killed
            else f"failed (exit {returncode}): " + " | ".join(tail[-3:])[:300]
        )
    else:
        cpu = re.findall(r"([\d.]+)% CPU use with", text)
        res.cpu_use = cpu[-1] if cpu else ""
        res.steps = int(loops[-1][1])
        res.s_per_step = float(loops[-1][0]) / res.steps if res.steps else None
    return res


def run_ase(
    code: str,
    python: Path,
    model: Path,
    case_dir: Path,
    *,
    reps: int,
    threads: int,
    calls: int,
    e_ref: float,
    perturb: float,
    timeout: float,
    min_free: int,
    pythonpath: Path | None = None,
) -> AseResult:
    """``helper_ase`` in a subprocess of ``python`` with the LAMMPS runs' environment."""
    case_dir.mkdir(parents=True, exist_ok=True)
    env, env_set = run_env(threads)
    if pythonpath is not None:
        env_set["PYTHONPATH"] = str(pythonpath)
        env["PYTHONPATH"] = str(pythonpath)
    args = [
        "--helper",
        "ase",
        code,
        str(model),
        str(reps),
        str(threads),
        str(calls),
        repr(e_ref),
        repr(perturb),
    ]
    cmd = [str(python), str(SCRIPT), *args]
    res = AseResult(load_before=loadavg())
    res.command = (
        f"cd {case_dir} && "
        + " ".join(f"{k}={v}" for k, v in env_set.items())
        + " "
        + " ".join(shlex.quote(c) for c in cmd)
    )
    returncode, stop, res.guard_peak, res.wall = run_guarded(
        cmd, case_dir, env, timeout=timeout, min_free=min_free
    )
    text = (case_dir / "stdout").read_text(errors="replace")
    errtext = (case_dir / "stderr").read_text(errors="replace")
    found = None
    for ln in reversed(text.splitlines()):
        if ln.startswith("{"):
            try:
                found = json.loads(ln)
            except json.JSONDecodeError:
                continue
            break
    if stop:
        res.status = stop
    elif returncode != 0 or found is None:
        tail = [ln for ln in (text + "\n" + errtext).splitlines() if ln.strip()]
        killed = returncode == -signal.SIGKILL or "Killed" in errtext
        res.status = (
            "out of memory (killed by the kernel)"
            if killed
            else f"failed (exit {returncode}): " + " | ".join(tail[-3:])[:300]
        )
    else:
        res.status = found["status"]
        res.energy, res.rel, res.first = found["energy"], found["rel"], found["first"]
        res.times = list(found["times"])
    return res


def parse_e0(text: str) -> float | None:
    lines = text.splitlines()
    for i, ln in enumerate(lines):
        if ln.split()[:2] == ["Step", "PotEng"]:
            for nxt in lines[i + 1 :]:
                parts = nxt.split()
                if parts and parts[0] == "0":
                    return float(parts[1])
                if parts and not parts[0].lstrip("-").isdigit():
                    break
            return None
    return None


# --------------------------------------------------------------------------- main


def sh(cmd: list[str], log: list[str], **kw) -> str:
    log.append(" ".join(shlex.quote(str(c)) for c in cmd))
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, **kw)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"command failed: {log[-1]}")
    return proc.stdout
