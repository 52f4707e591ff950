"""Training speed and accuracy: ``dp --pt train`` (DeePMD-kit) vs ``dpa3 train``, same input.json.

    python benchmarks/train_vs_deepmd.py [--configs small recipe] [--threads 1 2]
                                         [--recipe-steps 30] [--small-steps 200]
                                         [--recipe-disp 5] [--small-disp 20] [--test-frames K]
                                         [--timeout 900] [--workdir DIR] [--out FILE [--append]]
    python benchmarks/train_vs_deepmd.py --reparse DIR      # table from kept run folders

Needs deepmd-kit (``bash scripts/install_deepmd.sh``) in the same venv as dpa3.  For each thread
count and each config (``recipe``: examples/water/input.json, the DeePMD-kit DPA3 water recipe;
``small``: examples/quickstart/input.json), both tools train the *same* input.json (data paths
made absolute, ``numb_steps``/``disp_freq``/``save_freq`` set here, seeds unchanged) in separate
folders (a temporary one unless ``--workdir``), one right after the other (DeePMD-kit, then dpa3,
so that both see about the same background load), each as its own process with

* ``LD_PRELOAD`` = tcmalloc (``--preload``; '' for glibc malloc),
* ``OMP_NUM_THREADS`` = ``MKL_NUM_THREADS`` = ``DP_INTRA_OP_PARALLELISM_THREADS`` = threads
  (torch's intra-op threads in both; inter-op threads left at torch's default in both),
* ``NUM_WORKERS`` = 0 for DeePMD-kit (``--deepmd-workers``): no data-loader worker processes, so
  both tools run as one process (dpa3 loads data in the training process too).

Seconds per step come from each tool's own log and exclude start-up (imports, neighbour and
output statistics, the first step): DeePMD-kit logs ``Batch N: total wall time = T s`` for every
display interval, dpa3 writes a time stamp on each ``step N/M`` line of its log file (``-l``); both
tools display at step 1 and every ``disp_freq`` steps, so the s/step is (time from the step-1 line
to the step-N line) / (N - 1), the same span in both, validation on the display steps included.
The median over the display intervals is printed too: on a shared machine single intervals can be
many times slower than the rest (torch's OpenMP threads wait for a descheduled thread), and the
median is less sensitive to that.  A run that exceeds ``--timeout`` is killed and reported from
the part of its log written so far (marked "timeout" in the table).

The rmse columns are the validation columns (``rmse_e_val``: per atom, ``rmse_f_val``) of the last
``lcurve.out`` line (step N) of each tool: one validation frame each (``numb_btch`` 1, as in the
recipes), so they are noisy, and after a few steps they mostly reflect the random initial
per-atom energy offset of the fitting net (different random streams in the two tools);
``--test-frames K`` additionally runs ``dp test`` / ``dpa3 test`` on the first K frames of the
validation system with each tool's final checkpoint.

The peak RSS column is the peak resident memory of each training process (``wait4``'s
``ru_maxrss``: start-up, data and every training step included).  ``--dp`` names DeePMD-kit's
``dp`` when it lives in another virtual environment than dpa3 (same torch version assumed).

Prints (and writes to ``--out``) a markdown table with the exact command and the load average.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
CONFIGS = {
    "recipe": ROOT / "examples" / "water" / "input.json",
    "small": ROOT / "examples" / "quickstart" / "input.json",
}


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def absolute_systems(sets: dict, base: Path) -> None:
    s = sets["systems"]
    if isinstance(s, str):
        s = [s]
    sets["systems"] = [str((base / p).resolve()) for p in s]


def make_input(name: str, steps: int, disp: int) -> dict:
    src = CONFIGS[name]
    cfg = json.loads(src.read_text())
    cfg = copy.deepcopy(cfg)
    t = cfg["training"]
    absolute_systems(t["training_data"], src.parent)
    absolute_systems(t["validation_data"], src.parent)
    t["numb_steps"] = steps
    t["disp_freq"] = disp
    t["save_freq"] = steps  # one checkpoint, written after the last display line
    t["disp_file"] = "lcurve.out"
    return cfg


def env_for(threads: int, preload: str, workers: int) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "DP_INTRA_OP_PARALLELISM_THREADS"):
        env[k] = str(threads)
    env["DP_INTER_OP_PARALLELISM_THREADS"] = "0"  # 0: DeePMD-kit leaves torch's default
    env["NUM_WORKERS"] = str(workers)
    if preload:
        env["LD_PRELOAD"] = preload
    else:
        env.pop("LD_PRELOAD", None)
    return env


def read_lcurve(path: Path) -> tuple[list[str], list[list[float]]]:
    """Column names (from the header line naming 'step') and rows of an lcurve.out."""
    names: list[str] = []
    rows: list[list[float]] = []
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            words = s.lstrip("#").split()
            if words and words[0] == "step":
                names = words
            continue
        rows.append([float(x) for x in s.split()])
    return names, rows


def deepmd_intervals(log: str) -> list[tuple[int, int, float]]:
    """(from step, to step, seconds) of DeePMD-kit's 'Batch N: total wall time = T s' lines."""
    pts = [
        (int(m.group(1)), float(m.group(2)))
        for m in re.finditer(r"Batch\s+(\d+): total wall time = ([0-9.eE+-]+) s", log)
    ]
    return [(a, b, t) for (a, _), (b, t) in itertools.pairwise(pts)]


def dpa3_intervals(log: str) -> list[tuple[int, int, float]]:
    """(from step, to step, seconds) between the time stamps of dpa3's 'step N/M' lines."""
    pts = []
    for m in re.finditer(
        r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) DPA3 INFO\s+step (\d+)/\d+", log, re.MULTILINE
    ):
        ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        pts.append((int(m.group(2)), ts))
    return [(a, b, tb - ta) for (a, ta), (b, tb) in itertools.pairwise(pts)]


def seconds_per_step(intervals: list[tuple[int, int, float]]) -> dict:
    """Mean s/step from the first to the last display line, and the median over intervals."""
    if not intervals:
        raise RuntimeError("fewer than two timed display lines in the log")
    first, last = intervals[0][0], intervals[-1][1]
    per = sorted(t / (b - a) for a, b, t in intervals)
    n = len(per)
    med = per[n // 2] if n % 2 else 0.5 * (per[n // 2 - 1] + per[n // 2])
    return {
        "s_per_step": sum(t for *_, t in intervals) / (last - first),
        "median": med,
        "span": (first, last),
    }


def collect(tool: str, workdir: Path, res: dict) -> dict:
    """Add the timing and the final lcurve.out line of a finished (or timed-out) run to res."""
    rc = res["rc"]
    timed_out = isinstance(rc, str)
    if rc != 0 and not timed_out:
        tail = (workdir / "out.log").read_text().splitlines()[-15:]
        res["error"] = "\n".join(tail)
        return res
    try:  # after a timeout: s/step over the lines logged so far, rmse of the last lcurve line
        log = (workdir / "train.log").read_text()
        res.update(
            seconds_per_step((deepmd_intervals if tool == "deepmd" else dpa3_intervals)(log))
        )
        names, rows = read_lcurve(workdir / "lcurve.out")
        final = dict(zip(names, rows[-1], strict=True))
    except (OSError, RuntimeError, IndexError) as err:
        tail = (workdir / "out.log").read_text().splitlines()[-15:]
        res["error"] = f"{rc}: {err}\n" + "\n".join(tail)
        return res
    res["partial"] = timed_out
    res.update(
        step=int(final["step"]),
        columns=names,
        **{
            k: final.get(k, float("nan"))
            for k in ("rmse_e_val", "rmse_f_val", "rmse_e_trn", "rmse_f_trn")
        },
    )
    return res


def run_with_peak_rss(cmd: list[str], cwd: Path, env: dict, out, timeout: float):
    """Run ``cmd``; returns (return code or a timeout message, peak RSS of the process in MiB).

    The peak resident set size comes from ``wait4`` (``ru_maxrss`` of this child alone, its
    own waited-for children included): the whole training process, start-up and data included.
    """
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return p.returncode, ru.ru_maxrss / 1024.0
        if time.monotonic() > deadline:
            p.kill()
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            return f"timeout after {timeout:.0f} s", ru.ru_maxrss / 1024.0
        time.sleep(0.2)


def run_tool(tool: str, cfg: dict, workdir: Path, env: dict, timeout: float, dp: str) -> dict:
    workdir.mkdir(parents=True)
    (workdir / "input.json").write_text(json.dumps(cfg, indent=2))
    bindir = Path(sys.executable).parent
    if tool == "deepmd":
        cmd = [dp, "--pt", "train", "input.json", "-l", "train.log"]
    else:
        cmd = [str(bindir / "dpa3"), "-l", "train.log", "train", "input.json"]
    load0 = loadavg()
    t0 = time.perf_counter()
    with open(workdir / "out.log", "w") as out:
        rc, peak = run_with_peak_rss(cmd, workdir, env, out, timeout)
    wall = time.perf_counter() - t0
    res = {
        "tool": tool,
        "wall": wall,
        "load_before": load0,
        "load_after": loadavg(),
        "rc": rc,
        "dir": str(workdir),
        "peak_rss_mib": peak,
    }
    (workdir / "meta.json").write_text(json.dumps(res))
    return collect(tool, workdir, res)


def run_test(
    tool: str,
    workdir: Path,
    system: str,
    frames: int,
    env: dict,
    dp: str | None = None,
    ckpt: Path | None = None,
    bindir: Path | None = None,
    log_name: str = "test.log",
) -> dict:
    """rmse of energy/atom (``e``) and force (``f``) over the first ``frames`` frames of
    ``system`` with checkpoint ``ckpt`` (default: the tool's final checkpoint in ``workdir``),
    by ``dp --pt test`` (``dp``, default ``bindir/dp``) / ``dpa3 test`` from ``bindir``
    (default: this interpreter's bin); the tool's output goes to ``workdir/log_name``."""
    bindir = Path(sys.executable).parent if bindir is None else bindir
    if ckpt is None and tool == "deepmd":
        ckpt = (workdir / "model.ckpt.pt").resolve()
    elif ckpt is None:
        ckpts = sorted(workdir.glob("model.ckpt-*.pt"), key=lambda p: int(p.stem.split("-")[-1]))
        ckpt = ckpts[-1]
    if tool == "deepmd":
        cmd = [
            dp or str(bindir / "dp"),
            "--pt",
            "test",
            "-m",
            str(ckpt),
            "-s",
            system,
            "-n",
            str(frames),
        ]
    else:
        cmd = [str(bindir / "dpa3"), "test", "-m", str(ckpt), "-s", system, "-n", str(frames)]
    p = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, check=False)
    text = p.stdout + p.stderr
    (workdir / log_name).write_text(text)
    out = {}
    for key, pat in (
        ("e", r"Energy RMSE/Natoms\s*:\s*([0-9.eE+-]+)"),
        ("f", r"Force\s+RMSE\s*:\s*([0-9.eE+-]+)"),
    ):
        m = re.findall(pat, text, re.IGNORECASE)
        out[key] = float(m[-1]) if m else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["small", "recipe"], choices=list(CONFIGS))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--recipe-steps", type=int, default=30)
    ap.add_argument("--small-steps", type=int, default=200)
    ap.add_argument("--recipe-disp", type=int, default=5)
    ap.add_argument("--small-disp", type=int, default=20)
    ap.add_argument("--preload", default=TCMALLOC, help="LD_PRELOAD for both ('' for none)")
    ap.add_argument("--deepmd-workers", type=int, default=0, help="DeePMD-kit NUM_WORKERS")
    ap.add_argument(
        "--dp",
        default=str(Path(sys.executable).parent / "dp"),
        help="DeePMD-kit's dp executable (default: the one next to this Python); "
        "dpa3 is always the one next to this Python",
    )
    ap.add_argument(
        "--test-frames",
        type=int,
        default=0,
        help="also dp test / dpa3 test on this many validation frames (0: no)",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="per training run, seconds; a run that times out is reported from "
        "the part of its log written so far",
    )
    ap.add_argument(
        "--workdir",
        default=None,
        help="keep the run folders here (default: a temporary folder, deleted at the end)",
    )
    ap.add_argument("--out", default=None, help="write the markdown table (and command) here")
    ap.add_argument("--append", action="store_true", help="append to --out instead of replacing")
    ap.add_argument(
        "--reparse",
        metavar="DIR",
        default=None,
        help="train nothing: rebuild the table from the run folders kept in DIR "
        "(--workdir of an earlier run; --configs/--threads select the rows)",
    )
    args = ap.parse_args()
    if args.preload and not Path(args.preload).exists():
        sys.exit(f"--preload {args.preload} not found")

    command = "python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *sys.argv[1:]]
    )
    tmp = None
    if args.workdir:
        base = Path(args.workdir).resolve()
        base.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="train_vs_deepmd_")
        base = Path(tmp)
    start_load = loadavg()
    t_start = time.perf_counter()
    rows = []
    if args.reparse:
        for nt in args.threads:
            for name in args.configs:
                r = {"config": name, "threads": nt}
                for tool in ("deepmd", "dpa3"):
                    wd = Path(args.reparse) / f"{name}_t{nt}_{tool}"
                    if not wd.is_dir():
                        break
                    meta = wd / "meta.json"
                    res = (
                        json.loads(meta.read_text())
                        if meta.exists()
                        else {"rc": 0, "load_before": "n/a"}
                    )
                    if isinstance(res["rc"], str) and not (wd / "train.log").exists():
                        res["rc"] = 1
                    r[tool] = collect(tool, wd, res)
                    r["steps"] = json.loads((wd / "input.json").read_text())["training"][
                        "numb_steps"
                    ]
                else:
                    rows.append(r)
        args.test_frames = 0
    try:
        for nt in args.threads if not args.reparse else []:
            for name in args.configs:
                steps = args.recipe_steps if name == "recipe" else args.small_steps
                disp = args.recipe_disp if name == "recipe" else args.small_disp
                cfg = make_input(name, steps, disp)
                env = env_for(nt, args.preload, args.deepmd_workers)
                r = {"config": name, "threads": nt, "steps": steps}
                for tool in ("deepmd", "dpa3"):
                    wd = base / f"{name}_t{nt}_{tool}"
                    if wd.exists():
                        shutil.rmtree(wd)
                    print(
                        f"[{time.perf_counter() - t_start:7.1f} s] {name}, {nt} thread(s), "
                        f"{tool}: {steps} steps in {wd} (load {loadavg()})",
                        flush=True,
                    )
                    res = run_tool(tool, cfg, wd, env, args.timeout, args.dp)
                    if "error" in res:
                        print(f"  FAILED (rc {res['rc']}):\n{res['error']}", flush=True)
                    else:
                        if res["partial"]:
                            print(f"  {res['rc']}: partial result from the log so far", flush=True)
                        print(
                            f"  {res['s_per_step']:.3f} s/step (steps {res['span'][0]}.."
                            f"{res['span'][1]}; median interval {res['median']:.3f}), "
                            f"total {res['wall']:.0f} s, step "
                            f"{res['step']}: rmse_e_val {res['rmse_e_val']:.3e} rmse_f_val "
                            f"{res['rmse_f_val']:.3e}; lcurve columns {res['columns']}",
                            flush=True,
                        )
                        if args.test_frames > 0 and not res["partial"]:
                            sysd = cfg["training"]["validation_data"]["systems"][0]
                            res["test"] = run_test(tool, wd, sysd, args.test_frames, env, args.dp)
                            print(f"  test on {args.test_frames} frames: {res['test']}", flush=True)
                    r[tool] = res
                rows.append(r)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - t_start

    def f(res, key, fmt):
        if "error" in res:
            return "failed"
        v = format(res[key], fmt)
        if res["partial"]:  # timed out: over the logged span / at the last logged step
            v += (
                f" (steps {res['span'][0]}..{res['span'][1]}, timeout)"
                if key == "s_per_step"
                else f" (step {res['step']})"
            )
        return v

    def rss(res):
        v = res.get("peak_rss_mib")
        return "n/a" if v is None else f"{v:.0f}"

    lines = [
        (
            "| config | steps | threads | DeePMD-kit s/step | dpa3 s/step | dpa3 / DeePMD-kit "
            "| same, median interval | rmse_e_val DeePMD-kit | rmse_e_val dpa3 "
            "| rmse_f_val DeePMD-kit | rmse_f_val dpa3 | peak RSS MiB DeePMD-kit ; dpa3 "
            "| load (1/5/15 min) before DeePMD-kit ; dpa3 |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d, o = r["deepmd"], r["dpa3"]
        ok = "error" not in d and "error" not in o
        ratio = f"{o['s_per_step'] / d['s_per_step']:.2f}" if ok else "-"
        ratio_med = (
            f"{o['median']:.3f} / {d['median']:.3f} = {o['median'] / d['median']:.2f}"
            if ok
            else "-"
        )
        lines.append(
            f"| {r['config']} | {r['steps']} | {r['threads']} | {f(d, 's_per_step', '.3f')} "
            f"| {f(o, 's_per_step', '.3f')} | {ratio} | {ratio_med} | {f(d, 'rmse_e_val', '.2e')} "
            f"| {f(o, 'rmse_e_val', '.2e')} | {f(d, 'rmse_f_val', '.2e')} "
            f"| {f(o, 'rmse_f_val', '.2e')} | {rss(d)} ; {rss(o)} "
            f"| {d['load_before']} ; {o['load_before']} |"
        )
    if args.test_frames > 0:
        lines += [
            "",
            (
                f"`dp test` / `dpa3 test` on the first {args.test_frames} frames of the "
                "validation system (final checkpoints):"
            ),
            "",
            (
                "| config | threads | rmse_e/atom DeePMD-kit | rmse_e/atom dpa3 "
                "| rmse_f DeePMD-kit | rmse_f dpa3 |"
            ),
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            d, o = r["deepmd"].get("test", {}), r["dpa3"].get("test", {})
            lines.append(
                f"| {r['config']} | {r['threads']} | {d.get('e', float('nan')):.2e} "
                f"| {o.get('e', float('nan')):.2e} | {d.get('f', float('nan')):.2e} "
                f"| {o.get('f', float('nan')):.2e} |"
            )
    table = "\n".join(lines)
    print()
    print(table)
    print(f"\ntotal {total:.0f} s; load average at start {start_load}, at end {loadavg()}")
    if args.out:
        out = Path(args.out)
        head = (
            ""
            if args.append and out.exists()
            else "# Training: DeePMD-kit (`dp --pt train`) vs dpa3 (`dpa3 train`)\n\n"
        )
        with open(out, "a" if args.append else "w") as fh:
            fh.write(
                head + f"Command (from the repository root, {datetime.now():%Y-%m-%d %H:%M}):\n\n"
                f"```bash\n{command}\n```\n\n"
                f"{table}\n\n"
                f"Total {total:.0f} s; load average (1/5/15 min) at start {start_load}, "
                f"at end {loadavg()}; {os.cpu_count()} cores.\n\n"
            )
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
