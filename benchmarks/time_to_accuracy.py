"""Time to accuracy: wall time of ``dp --pt train`` and ``dpa3 train`` to a force RMSE on data_3.

    python benchmarks/time_to_accuracy.py [--steps N] [--save-freq K] [--threads T]
                                          [--mode concurrent|sequential] [--timeout S]
                                          [--thresholds 0.30 0.20] [--workdir DIR]
                                          [--deepmd-venv DIR] [--out FILE] [--plot FILE]
    python benchmarks/time_to_accuracy.py --reparse --workdir DIR   # table/plot of a kept run

Both codes train the *same* input.json (examples/quickstart/input.json: data paths made absolute,
``save_freq`` = K, every checkpoint kept; ``--steps`` replaces ``numb_steps``, which also changes
the learning-rate schedule of both, since both reach ``stop_lr`` at the last step), each in its
own folder of ``--workdir``, with the environment of benchmarks/train_vs_deepmd.py (tcmalloc
preloaded, ``OMP_NUM_THREADS`` = ``DP_INTRA_OP_PARALLELISM_THREADS`` = T, DeePMD-kit
``NUM_WORKERS=0``).  DeePMD-kit runs from its own venv (``--deepmd-venv``, made by
scripts/install_deepmd_lammps.sh), dpa3 from this interpreter's venv.

``--mode concurrent`` (default) starts both trainings at the same moment, T threads each (T=1 on
a 2-core machine: the same load for both while both run; the one that finishes first leaves the
other a freer machine, which favours the slower code).  ``--mode sequential`` runs DeePMD-kit,
then dpa3.

**Accuracy.** The lcurve's ``rmse_f_val`` is one (random) validation frame per display step, and
each code draws its own frames with its own sampler, so it is not used for the thresholds.
Instead, after both trainings have ended, every checkpoint (every K steps) of both codes is
tested on the same frames: the first ``--test-frames`` (default 20, as the quickstart's
``dpa3 test -n 20``; all 80 cost ``dp test`` ~1 min per checkpoint on a loaded 2-core machine) of
examples/data/water/data_3 (192 atoms), with each code's own test command (``dp --pt test`` /
``dpa3 test``, both the RMSE over all force components).  The tests run after the trainings,
so they cost no training time.

**Wall time.** Time 0 is the launch of the training process (imports, data loading and
statistics included: what a user waits for); a checkpoint's time is its file's modification time
(written right after the display/validation of that step, in both codes).  The script also time
stamps every ``lcurve.out`` line as it appears (polling each 0.25 s), which gives the start-up
time (launch to the step-1 line) and the single-frame ``rmse_f_val`` curve of the figure, and
reads the process's CPU time (user + system, all threads, from /proc/PID/stat) at each line: on a
shared machine the CPU seconds to a threshold depend much less on the other jobs than the wall
time does (a second table; checkpoint steps are display steps, ``save_freq`` a multiple of
``disp_freq``).

**Time to accuracy.** For each threshold: the time of the first checkpoint whose force RMSE is at
or below it ("first checkpoint", the number used for the ratio) and the linear interpolation
between that checkpoint and the previous one ("interpolated").  A code that never reaches it
within its run gets "> T" (T = its last checkpoint's time).  Ratio = dpa3 / DeePMD-kit.

Writes ``--out`` (markdown: command, machine, load average, table) and ``--plot`` (force RMSE vs
wall time for both codes, checkpoints on data_3 and the lcurve's single validation frames).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_vs_deepmd as tvd

ROOT = tvd.ROOT
DATA3 = ROOT / "examples" / "data" / "water" / "data_3"
TOOLS = ("deepmd", "dpa3")
LABEL = {"deepmd": "DeePMD-kit", "dpa3": "dpa3"}


def crossing_time(
    times: list[float], values: list[float], threshold: float
) -> tuple[float, float] | None:
    """First time ``values`` reaches ``threshold`` or below.

    ``times`` ascending (s), ``values`` the RMSE at those times.  Returns (time of the first point
    at or below the threshold, time linearly interpolated between that point and the one before
    it; the point's own time when it is the first point), or None if no point reaches it.
    """
    for i, (t, v) in enumerate(zip(times, values, strict=True)):
        if v <= threshold:
            if i == 0:
                return t, t
            t0, v0 = times[i - 1], values[i - 1]
            return t, t0 + (t - t0) * (v0 - threshold) / (v0 - v)
        # v > threshold: keep looking
    return None


def make_input(steps: int | None, save_freq: int) -> dict:
    """examples/quickstart/input.json with absolute data paths, checkpoints every ``save_freq``
    steps (all kept) and ``numb_steps`` = ``steps`` (None: the file's)."""
    base = json.loads(tvd.CONFIGS["small"].read_text())["training"]
    cfg = tvd.make_input("small", steps or base["numb_steps"], base["disp_freq"])
    t = cfg["training"]
    t["save_freq"] = save_freq
    t["max_ckpt_keep"] = t["numb_steps"] // save_freq + 2  # keep every checkpoint (both codes)
    return cfg


def checkpoints(workdir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the numbered checkpoints ``model.ckpt-<step>.pt``, by step."""
    out = []
    for p in workdir.glob("model.ckpt-*.pt"):
        tail = p.name[len("model.ckpt-") : -len(".pt")]
        if tail.isdigit() and not p.is_symlink():
            out.append((int(tail), p))
    return sorted(out)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (all its threads); nan when it
    cannot be read (process gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    # after "pid (comm)": field 3 is the state, so utime (14) and stime (15) are at 11 and 12
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Run:
    """One training process, its launch time and the time stamps of its lcurve.out lines."""

    def __init__(self, tool: str, workdir: Path, cfg: dict, env: dict, bindir: Path):
        self.tool, self.workdir, self.env = tool, workdir, env
        workdir.mkdir(parents=True)
        (workdir / "input.json").write_text(json.dumps(cfg, indent=2))
        if tool == "deepmd":
            self.cmd = [str(bindir / "dp"), "--pt", "train", "input.json", "-l", "train.log"]
        else:
            self.cmd = [str(bindir / "dpa3"), "-l", "train.log", "train", "input.json"]
        self.proc: subprocess.Popen | None = None
        self.t0 = 0.0
        # (seconds since launch, CPU seconds of the process so far, lcurve line)
        self.lines: list[tuple[float, float, str]] = []
        self._pos = 0
        self.meta: dict = {"tool": tool, "cmd": self.cmd}

    def start(self) -> None:
        self.meta["load_before"] = tvd.loadavg()
        self._out = open(self.workdir / "out.log", "w")  # closed in finish()
        self.t0 = time.time()
        self.proc = subprocess.Popen(
            self.cmd, cwd=self.workdir, env=self.env, stdout=self._out, stderr=subprocess.STDOUT
        )

    def poll_lcurve(self) -> None:
        """Time-stamp the complete lines appended to lcurve.out since the last call."""
        path = self.workdir / "lcurve.out"
        if not path.exists():
            return
        with open(path) as fh:
            fh.seek(self._pos)
            chunk = fh.read()
        now = time.time() - self.t0
        cpu = process_cpu_seconds(self.proc.pid)
        end = chunk.rfind("\n") + 1
        for line in chunk[:end].splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                self.lines.append((now, cpu, line))
        self._pos += len(chunk[:end].encode())

    def finish(self, rc: int | str) -> None:
        self.poll_lcurve()
        self._out.close()
        self.meta.update(
            rc=rc,
            wall=time.time() - self.t0,
            load_after=tvd.loadavg(),
            t0=self.t0,
            lcurve_times=[t for t, _, _ in self.lines],
            lcurve_cpu=[c for _, c, _ in self.lines],
        )
        (self.workdir / "meta.json").write_text(json.dumps(self.meta, indent=1))


def train(runs: list[Run], timeout: float) -> None:
    """Start ``runs`` together and wait for all; a run past ``timeout`` s is stopped (SIGTERM)."""
    for r in runs:
        r.start()
    live = list(runs)
    while live:
        time.sleep(0.25)
        for r in list(live):
            r.poll_lcurve()
            rc = r.proc.poll()
            if rc is None and time.time() - r.t0 > timeout:
                r.proc.terminate()
                try:
                    r.proc.wait(30)
                except subprocess.TimeoutExpired:
                    r.proc.kill()
                    r.proc.wait()
                rc = f"stopped after {timeout:.0f} s"
            if rc is not None:
                r.finish(rc)
                live.remove(r)
                print(f"  {r.tool}: rc {rc}, {r.meta['wall']:.0f} s", flush=True)


def evaluate(tool: str, workdir: Path, frames: int, env: dict, bindir: Path) -> list[dict]:
    """Test every checkpoint of ``workdir`` on data_3; rows of step, time (s), e and f RMSE.
    Results are cached in ``workdir/curve.json`` (a rerun tests only new checkpoints)."""
    meta = json.loads((workdir / "meta.json").read_text())
    cache_path = workdir / "curve.json"
    cache = (
        {r["step"]: r for r in json.loads(cache_path.read_text())} if cache_path.exists() else {}
    )
    _, steps, _ = lcurve_points(workdir)
    cpu_at = dict(zip(steps, meta.get("lcurve_cpu", []), strict=False))  # display steps
    rows = []
    for step, ckpt in checkpoints(workdir):
        if step not in cache or cache[step]["frames"] != frames:
            res = tvd.run_test(
                tool,
                workdir,
                str(DATA3),
                frames,
                env,
                ckpt=ckpt,
                bindir=bindir,
                log_name=f"test-{step}.log",
            )
            cache[step] = {
                "step": step,
                "t": ckpt.stat().st_mtime - meta["t0"],
                "cpu": cpu_at.get(step, float("nan")),
                "e": res["e"],
                "f": res["f"],
                "frames": frames,
            }
            print(f"  {tool} step {step}: f {res['f']:.4f} e {res['e']:.2e}", flush=True)
            cache_path.write_text(json.dumps(sorted(cache.values(), key=lambda r: r["step"])))
        rows.append(cache[step])
    return rows


def lcurve_points(workdir: Path) -> tuple[list[float], list[int], list[float]]:
    """(seconds since launch, step, rmse_f_val) of the lcurve lines stamped during training."""
    meta = json.loads((workdir / "meta.json").read_text())
    names, rows = tvd.read_lcurve(workdir / "lcurve.out")
    times = meta["lcurve_times"]
    n = min(len(times), len(rows))
    i_f = names.index("rmse_f_val")
    return times[:n], [int(r[0]) for r in rows[:n]], [r[i_f] for r in rows[:n]]


def summarise(curves: dict, workdirs: dict, thresholds: list[float]) -> tuple[str, dict]:
    """The markdown table and the numbers behind it."""
    res: dict = {}
    for tool in TOOLS:
        rows = curves[tool]
        meta = json.loads((workdirs[tool] / "meta.json").read_text())
        times = [r["t"] for r in rows]
        vals = [r["f"] for r in rows]
        lt, ls, _ = lcurve_points(workdirs[tool])
        cpus = [r.get("cpu", float("nan")) for r in rows]
        has_cpu = bool(rows) and all(math.isfinite(c) for c in cpus)
        res[tool] = {
            "cross": {thr: crossing_time(times, vals, thr) for thr in thresholds},
            "cross_cpu": {
                thr: crossing_time(cpus, vals, thr) if has_cpu else None for thr in thresholds
            },
            "has_cpu": has_cpu,
            "last_t": times[-1] if times else float("nan"),
            "last_cpu": cpus[-1] if has_cpu else float("nan"),
            "final": rows[-1] if rows else None,
            "best": min(rows, key=lambda r: r["f"]) if rows else None,
            "startup": lt[0] if lt else float("nan"),
            "s_per_step": (lt[-1] - lt[0]) / (ls[-1] - ls[0]) if len(ls) > 1 else float("nan"),
            "meta": meta,
        }

    def table(key: str, last: str, what: str) -> list[str]:
        def cell(tool: str, thr: float) -> str:
            c = res[tool][key][thr]
            return f"> {res[tool][last]:.0f}" if c is None else f"{c[0]:.0f} ({c[1]:.0f})"

        out = [
            f"| force RMSE on data_3 reached | DeePMD-kit: {what} (interpolated) "
            f"| dpa3: {what} (interpolated) | dpa3 / DeePMD-kit (interpolated) |",
            "|---|---|---|---|",
        ]
        for thr in thresholds:
            d, o = res["deepmd"][key][thr], res["dpa3"][key][thr]
            if d and o:
                ratio = f"**{o[0] / d[0]:.2f}** ({o[1] / d[1]:.2f})"
            elif o and not d:
                ratio = f"< {o[0] / res['deepmd'][last]:.2f}"
            elif d and not o:
                ratio = f"> {res['dpa3'][last] / d[0]:.2f}"
            else:
                ratio = "-"
            out.append(
                f"| <= {thr:.2f} eV/Å | {cell('deepmd', thr)} | {cell('dpa3', thr)} | {ratio} |"
            )
        return out

    lines = table("cross", "last_t", "wall s since launch")
    if all(res[t]["has_cpu"] for t in TOOLS):
        lines += ["", *table("cross_cpu", "last_cpu", "CPU s of the process")]
    lines += [
        "",
        "| | DeePMD-kit | dpa3 |",
        "|---|---|---|",
    ]

    def row(name: str, fn) -> str:
        return f"| {name} | " + " | ".join(fn(res[t]) for t in TOOLS) + " |"

    lines += [
        row("steps trained", lambda r: str(r["final"]["step"]) if r["final"] else "-"),
        row("exit", lambda r: str(r["meta"]["rc"])),
        row("training wall time (launch to exit)", lambda r: f"{r['meta']['wall']:.0f} s"),
        row("start-up (launch to the step-1 lcurve line)", lambda r: f"{r['startup']:.1f} s"),
        row("s/step (step-1 line to last line)", lambda r: f"{r['s_per_step']:.3f}"),
        row("final force RMSE (last checkpoint)", lambda r: f"{r['final']['f']:.3f} eV/Å"),
        row("final energy RMSE/atom", lambda r: f"{r['final']['e'] * 1e3:.2f} meV"),
        row("lowest force RMSE (step)", lambda r: f"{r['best']['f']:.3f} ({r['best']['step']})"),
        row(
            "load average before ; after",
            lambda r: f"{r['meta']['load_before']} ; {r['meta']['load_after']}",
        ),
    ]
    return "\n".join(lines), res


def plot(curves: dict, workdirs: dict, thresholds: list[float], path: Path) -> None:
    """Force RMSE vs wall time: data_3 checkpoint tests (lines) and lcurve frames (dots)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    colours = {"deepmd": "tab:blue", "dpa3": "tab:red"}
    for tool in TOOLS:
        lt, _, lf = lcurve_points(workdirs[tool])
        ax.plot(
            lt,
            lf,
            ".",
            ms=2.5,
            alpha=0.35,
            color=colours[tool],
            label=f"{LABEL[tool]}: lcurve rmse_f_val (1 frame)",
        )
        rows = curves[tool]
        ax.plot(
            [r["t"] for r in rows],
            [r["f"] for r in rows],
            "o-",
            ms=3,
            color=colours[tool],
            label=f"{LABEL[tool]}: checkpoints on data_3 ({rows[0]['frames']} frames)"
            if rows
            else LABEL[tool],
        )
    for thr in thresholds:
        ax.axhline(thr, color="grey", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("wall time since launch (s)")
    ax.set_ylabel("force RMSE (eV/Å)")
    ax.set_ylim(0.1, 2.0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[8:]),
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="numb_steps for both (default: the input file's, 2,500)",
    )
    ap.add_argument(
        "--save-freq", type=int, default=100, help="checkpoint (and test) every K steps"
    )
    ap.add_argument("--threads", type=int, default=1, help="threads per training (default 1)")
    ap.add_argument("--mode", choices=["concurrent", "sequential"], default="concurrent")
    ap.add_argument(
        "--timeout",
        type=float,
        default=2700.0,
        help="stop a training after this many seconds (default 2,700)",
    )
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.30, 0.20])
    ap.add_argument(
        "--test-frames",
        type=int,
        default=20,
        help="first frames of data_3 tested per checkpoint (default 20, as the quickstart's "
        "dpa3 test -n 20; 80 = all, but dp test then takes ~1 min per checkpoint here)",
    )
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "time_to_accuracy"))
    ap.add_argument("--deepmd-venv", type=Path, default=ROOT / ".venv-deepmd")
    ap.add_argument(
        "--preload",
        default=tvd.TCMALLOC if Path(tvd.TCMALLOC).exists() else "",
        help="LD_PRELOAD for both ('' for none; default tcmalloc where installed)",
    )
    ap.add_argument("--out", default=None, help="write the markdown report here")
    ap.add_argument("--plot", default=None, help="write the figure (PNG) here")
    ap.add_argument(
        "--reparse",
        action="store_true",
        help="train nothing: test new checkpoints, table and plot from --workdir",
    )
    args = ap.parse_args()

    bindirs = {"deepmd": args.deepmd_venv.resolve() / "bin", "dpa3": Path(sys.executable).parent}
    if not (bindirs["deepmd"] / "dp").exists():
        sys.exit(f"{bindirs['deepmd'] / 'dp'} not found (bash scripts/install_deepmd_lammps.sh)")
    if args.preload and not Path(args.preload).exists():
        sys.exit(f"--preload {args.preload} not found")
    command = "python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *sys.argv[1:]]
    )
    base = Path(args.workdir).resolve()
    workdirs = {tool: base / tool for tool in TOOLS}
    env = tvd.env_for(args.threads, args.preload, 0)
    start_load = tvd.loadavg()
    t_start = time.time()
    if not args.reparse:
        cfg = make_input(args.steps, args.save_freq)
        for wd in workdirs.values():
            if wd.exists():
                sys.exit(f"{wd} exists: remove it or choose another --workdir")
        runs = [Run(t, workdirs[t], cfg, env, bindirs[t]) for t in TOOLS]
        print(
            f"training ({args.mode}, {args.threads} thread(s) each, load {start_load}) in {base}",
            flush=True,
        )
        if args.mode == "concurrent":
            train(runs, args.timeout)
        else:
            for r in runs:
                train([r], args.timeout)
    train_end_load = tvd.loadavg()
    print(f"testing the checkpoints on {DATA3} (load {train_end_load})", flush=True)
    test_env = tvd.env_for(1, args.preload, 0)
    with ThreadPoolExecutor(2) as pool:
        futs = {
            t: pool.submit(evaluate, t, workdirs[t], args.test_frames, test_env, bindirs[t])
            for t in TOOLS
        }
        curves = {t: f.result() for t, f in futs.items()}
    for t in TOOLS:
        if not curves[t] or not (workdirs[t] / "lcurve.out").exists():
            tail = (workdirs[t] / "out.log").read_text().splitlines()[-15:]
            sys.exit(f"{t}: no checkpoint or no lcurve.out; end of its output:\n" + "\n".join(tail))
    table, _ = summarise(curves, workdirs, args.thresholds)
    print()
    print(table)
    if args.plot:
        plot(curves, workdirs, args.thresholds, Path(args.plot))
        print(f"wrote {args.plot}")
    if args.out:
        text = (
            f"Command (from the repository root, {datetime.now():%Y-%m-%d %H:%M}):\n\n"
            f"```bash\n{command}\n```\n\n"
            f"Machine: {platform.node()}, {os.cpu_count()} cores; mode {args.mode}, "
            f"LD_PRELOAD {args.preload or '(none: glibc malloc)'}, "
            f"{args.threads} thread(s) per training; load average (1/5/15 min) at start "
            f"{start_load}, after training {train_end_load}; total "
            f"{time.time() - t_start:.0f} s with the tests.\n\n{table}\n"
        )
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
