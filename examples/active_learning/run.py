#!/usr/bin/env python
"""Concurrent learning on the bundled Cu-Al-Ni data: explore, select, label, retrain.

Every iteration:
  1. train (iteration 0: from scratch; later: ``--init-model`` from the previous iteration)
     a committee of small DPA3 models that differ only in their seeds, and freeze them;
  2. explore: LAMMPS NVT (default 600 K, the same start and velocities in every iteration:
     thermal configurations of the fcc alloy, which the strained, rattled training frames,
     equilibrated at no temperature, do not contain) with
     ``pair_style dpa3 m0.pth m1.pth ... out_freq N out_file model_devi.out`` (model 0 drives),
     the trajectory dumped at the same steps;
  3. select: ``dpa3 model-devi -m ... -s traj.lammpstrj -t Cu Al Ni --select LO HI -o candidates``
     (frames whose max force deviation lies in [LO, HI));
  4. label: the stand-in for DFT, ASE's EMT, gives energy, forces and virial of (at most
     ``--max-label``) candidates, written as a DeePMD-kit npy system that joins the training set;
     frames with an EMT force component above ``--max-force`` are dropped (and counted).

    python examples/active_learning/run.py                # everything in runs/active_learning/
    python examples/active_learning/run.py --quick -o DIR # a smoke run (tests/examples)

Needs ``dpa3`` and ``lmp`` on PATH (or next to this Python), ASE and the dpa3 LAMMPS plugin.
Per iteration it prints the fraction of candidate frames, the mean and max over frames of
``max_devi_f`` and the committee's force RMSE on its last training batches;
``summary.json`` in the run folder holds the same numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dpa3.atomic_file import write_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = ROOT / "examples" / "data" / "alloy-emt-CuAlNi"
RECIPE = ROOT / "examples" / "alloy" / "input.json"  # the full alloy recipe, shrunk below
START = ROOT / "examples" / "lammps" / "data.alloy"  # 72-atom fcc Cu-Al-Ni, LAMMPS types 1..3
TYPE_MAP = ["Cu", "Al", "Ni"]

LAMMPS_INPUT = """\
units           metal
atom_style      atomic
boundary        p p p
read_data       {data}
pair_style      dpa3 {models} out_freq {out_freq} out_file model_devi.out
pair_coeff      * * Cu Al Ni
neighbor        1.0 bin
timestep        0.001
velocity        all create {temp} {seed} mom yes rot yes dist gaussian
fix             nvt all nvt temp {temp} {temp} 0.1
dump            traj all custom {out_freq} traj.lammpstrj id type x y z
dump_modify     traj sort id format float %.10g
thermo          {thermo}
run             {steps}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--run-dir", default=str(ROOT / "runs" / "active_learning"))
    p.add_argument("--iterations", type=int, default=3, help="explorations (default 3)")
    p.add_argument("--models", type=int, default=4, help="committee size (default 4)")
    p.add_argument("--train-steps", type=int, default=3000, help="iteration 0 (default 3000)")
    p.add_argument("--lr", type=float, default=1e-2, help="iteration 0 start lr (default 1e-2)")
    p.add_argument("--retrain-steps", type=int, default=1500, help="later (default 1500)")
    p.add_argument(
        "--retrain-lr", type=float, default=1e-3, help="later iterations' start lr (default 1e-3)"
    )
    p.add_argument(
        "--lr-decay",
        type=float,
        default=1e-3,
        help="stop lr / start lr of every training (exponential decay; default 1e-3)",
    )
    p.add_argument(
        "--batch", default="auto:32", help="training batch_size (default auto:32: one frame)"
    )
    p.add_argument(
        "--old-ratio",
        type=float,
        default=0.5,
        help="later iterations: share of batches from the data before the last labels (0.5)",
    )
    p.add_argument(
        "--init-max-rms",
        type=float,
        default=None,
        help="initial training set: only the bundled frames with a force RMS below this (eV/A)",
    )
    p.add_argument("--md-steps", type=int, default=1000, help="per walker (default 1000)")
    p.add_argument("--walkers", type=int, default=2, help="MD runs per iteration (default 2)")
    p.add_argument("--out-freq", type=int, default=10, help="model-devi/dump every N steps")
    p.add_argument(
        "--temp",
        type=float,
        nargs="+",
        default=[600.0],
        help="MD temperature in K; several: one per iteration, the last repeated (default 600)",
    )
    p.add_argument("--lo", type=float, default=0.15, help="select max_devi_f >= LO (eV/A; 0.15)")
    p.add_argument("--hi", type=float, default=1.0, help="select max_devi_f < HI (eV/A; 1.0)")
    p.add_argument("--max-label", type=int, default=60, help="labelled frames per iteration")
    p.add_argument(
        "--max-force",
        type=float,
        default=20.0,
        help="drop labelled frames with an EMT force component above this (eV/A; default 20)",
    )
    p.add_argument("--jobs", type=int, default=2, help="trainings/walkers run at once")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep trained models and finished MD found in the run folder (knobs not checked)",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 1 iteration, 2 models, a few steps"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.iterations, args.models, args.walkers = 1, 2, 1
        args.train_steps, args.md_steps, args.out_freq = 10, 20, 2
    if args.models < 2:
        p.error("--models must be >= 2 (a deviation needs a committee)")
    if not 0 <= args.lo < args.hi:
        p.error("--lo/--hi: need 0 <= LO < HI")
    if not 0 < args.old_ratio < 1:
        p.error("--old-ratio must lie in (0, 1)")
    if min(args.temp) <= 0 or args.max_force <= 0 or min(args.lr, args.retrain_lr) <= 0:
        p.error("--temp, --max-force, --lr and --retrain-lr must be > 0")
    if not 0 < args.lr_decay <= 1:
        p.error("--lr-decay must lie in (0, 1]")
    return args


def tool(name: str) -> str:
    """``dpa3``/``lmp``: next to this Python first (a venv that is not activated), else PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        sys.exit(f"run.py: '{name}' not found next to {sys.executable} nor on PATH")
    return found


def env() -> dict[str, str]:
    """One torch thread per process (the jobs share the cores); the plugin folder for lmp."""
    e = dict(os.environ, OMP_NUM_THREADS="1")
    plugin = subprocess.run(
        [sys.executable, "-m", "dpa3.lammps"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not plugin:
        sys.exit("run.py: the dpa3 LAMMPS plugin is not built (python -m dpa3.lammps is empty)")
    e["LAMMPS_PLUGIN_PATH"] = plugin
    return e


def run_all(
    cmds: list[tuple[list[str], Path]],
    jobs: int,
    environ: dict[str, str],
    may_fail: bool = False,
) -> dict[Path, str]:
    """Run the commands, ``jobs`` at a time, each in its folder, output in ``<command>.log``.
    A failed command ends the script, unless ``may_fail``: then the result maps the folder of
    every failed command to its last ``ERROR`` line (or last output line)."""
    pending, running, failed = list(cmds), [], {}
    while pending or running:
        while pending and len(running) < jobs:
            cmd, cwd = pending.pop(0)
            cwd.mkdir(parents=True, exist_ok=True)
            # train.log, freeze.log, model-devi.log (dpa3 subcommand) or lmp.log
            name = cmd[1] if Path(cmd[0]).name == "dpa3" else Path(cmd[0]).name
            log = open(cwd / f"{name}.log", "w")  # closed when the process ends
            running.append(
                (
                    subprocess.Popen(
                        cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=environ
                    ),
                    cmd,
                    cwd,
                    log,
                )
            )
        time.sleep(0.2)
        for item in list(running):
            proc, cmd, cwd, log = item
            if proc.poll() is None:
                continue
            log.close()
            running.remove(item)
            if proc.returncode:
                tail = Path(log.name).read_text(errors="replace")[-3000:]
                if not may_fail:
                    sys.exit(f"run.py: {' '.join(cmd)} failed in {cwd}:\n{tail}")
                lines = [ln.strip() for ln in tail.splitlines() if ln.strip()] or ["no output"]
                errors = [ln for ln in lines if ln.startswith("ERROR")]
                failed[cwd] = (errors or lines)[-1]
    return failed


def train_input(
    systems: list[str],
    seed: int,
    steps: int,
    start_lr: float,
    n_new: int,
    args: argparse.Namespace,
) -> dict:
    """examples/alloy/input.json made small: 2 layers, narrow, fixed sel, no validation.
    The last ``n_new`` systems (the latest labels) get ``1 - old_ratio`` of the batches."""
    cfg = json.loads(RECIPE.read_text())
    cfg.pop("_comment", None)
    rep = cfg["model"]["descriptor"]["repflow"]
    rep.update(
        n_dim=32,
        e_dim=16,
        a_dim=8,
        nlayers=2,
        e_rcut=5.0,
        e_rcut_smth=4.5,
        a_rcut=3.5,
        a_rcut_smth=3.0,
        e_sel=80,
        a_sel=30,
    )  # fixed sel: same in every round
    cfg["model"]["descriptor"]["seed"] = seed
    cfg["model"]["fitting_net"].update(neuron=[32, 32], seed=seed)
    # exponential decay to start_lr * lr_decay over the run
    cfg["learning_rate"].update(
        start_lr=start_lr, stop_lr=start_lr * args.lr_decay, decay_steps=max(1, steps // 50)
    )
    tr = cfg["training"]
    tr.pop("validation_data", None)
    tr.pop("stat_file", None)
    tr["training_data"].update(systems=systems, batch_size=args.batch)
    n_old = len(systems) - n_new
    if n_new and n_old:  # DeePMD-kit's "prob_sys_size;start:end:weight;..."
        tr["training_data"]["auto_prob"] = (
            f"prob_sys_size;0:{n_old}:{args.old_ratio};{n_old}:{len(systems)}:{1 - args.old_ratio}"
        )
    tr.update(numb_steps=steps, seed=seed, disp_freq=max(1, steps // 50), save_freq=steps)
    return cfg


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children: what the run
    costs independently of the machine's load (wall time on a quiet machine ~ CPU / jobs)."""
    import resource

    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def write_json(path: Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def label_emt(candidates: Path, out: Path, max_label: int, max_force: float) -> tuple[int, int]:
    """EMT energy, forces and virial of (at most ``max_label``, evenly spaced) candidate frames
    of the npy system ``candidates``, written as the labelled npy system ``out`` (not written
    if no frame is kept).  Frames with a force component above ``max_force`` eV/A are dropped
    (a collapsed structure the committee agreed on: a label far outside the training data
    that would destabilise the retraining).
    Returns (frames kept, frames dropped)."""
    from ase import Atoms
    from ase.calculators.emt import EMT

    atype = np.loadtxt(candidates / "type.raw", dtype=int, ndmin=1)
    names = (candidates / "type_map.raw").read_text().split()
    coord = np.load(candidates / "set.000" / "coord.npy")
    box = np.load(candidates / "set.000" / "box.npy")
    pick = np.unique(np.linspace(0, len(coord) - 1, min(max_label, len(coord))).round().astype(int))
    keep, energy, force, virial = [], [], [], []
    for k in pick:
        atoms = Atoms(
            [names[t] for t in atype],
            positions=coord[k].reshape(-1, 3),
            cell=box[k].reshape(3, 3),
            pbc=True,
        )
        atoms.calc = EMT()
        f = atoms.get_forces()
        if np.abs(f).max() > max_force:
            continue
        keep.append(k)
        energy.append(atoms.get_potential_energy())
        force.append(f.reshape(-1))
        # DeePMD-kit's virial: -stress x volume (ASE's stress is dE/d(strain) / volume)
        virial.append((-atoms.get_stress(voigt=False) * atoms.get_volume()).reshape(9))
    if not keep:
        return 0, len(pick)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "set.000").mkdir(parents=True)
    shutil.copy(candidates / "type.raw", tmp / "type.raw")
    shutil.copy(candidates / "type_map.raw", tmp / "type_map.raw")
    arrays = {
        "coord": coord[keep],
        "box": box[keep],
        "energy": np.array(energy),
        "force": np.array(force),
        "virial": np.array(virial),
    }
    for key, value in arrays.items():
        np.save(tmp / "set.000" / f"{key}.npy", value)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return len(keep), len(pick) - len(keep)


def fit_force_rmse(folders: list[Path]) -> float:
    """Mean over the models of ``rmse_f_trn`` (eV/A) in the last fifth of ``lcurve.out``: how
    well the committee fits its training batches at the end of the training (free, but noisy:
    each row is one batch)."""
    values = []
    for folder in folders:
        lines = (folder / "lcurve.out").read_text().splitlines()
        col = lines[0].lstrip("#").split().index("rmse_f_trn")
        rows = np.loadtxt(lines, ndmin=2)
        values.append(rows[rows[:, 0] >= 0.8 * rows[-1, 0], col].mean())
    return float(np.mean(values))


def initial_systems(run: Path, max_rms: float | None) -> list[str]:
    """The bundled systems, or (``max_rms``) copies under ``run/init_data`` that keep only the
    frames whose force RMS is below ``max_rms`` eV/A (the gentler distortions)."""
    bundled = sorted(p for p in DATA.iterdir() if (p / "type.raw").is_file())
    if max_rms is None:
        return [str(p) for p in bundled]
    systems = []
    for src in bundled:
        sets = src / "set.000"
        force = np.load(sets / "force.npy")
        keep = np.sqrt((force**2).mean(axis=1)) < max_rms
        if not keep.any():
            continue
        dst = run / "init_data" / src.name
        (dst / "set.000").mkdir(parents=True, exist_ok=True)
        for name in ("type.raw", "type_map.raw"):
            shutil.copy(src / name, dst / name)
        for array in sets.glob("*.npy"):  # every array has the frames first
            np.save(dst / "set.000" / array.name, np.load(array)[keep])
        systems.append(str(dst))
    if not systems:
        sys.exit(f"run.py: no bundled frame has a force RMS below --init-max-rms {max_rms}")
    return systems


def keep_complete_frames(folder: Path) -> list[int]:
    """After a LAMMPS run that stopped early (e.g. non-finite positions): keep in
    ``traj.lammpstrj`` the whole frames with finite coordinates whose step has a row in
    ``model_devi.out``, and only those rows there, so that selection and the statistics see
    the same frames (both files rewritten; the originals kept as ``*.stopped``).  Returns the
    steps kept."""
    traj, devi = folder / "traj.lammpstrj", folder / "model_devi.out"
    text = traj.read_text() if traj.is_file() else ""
    rows = devi.read_text().splitlines() if devi.is_file() else []
    row_step = {r: int(r.split()[0]) for r in rows if r.strip() and not r.startswith("#")}
    frames, steps = [], []
    for block in text.split("ITEM: TIMESTEP\n")[1:]:
        lines = block.splitlines()
        try:
            step, natoms = int(lines[0]), int(lines[2])
            atoms = lines[8 : 8 + natoms]
            xyz = np.array([ln.split()[2:5] for ln in atoms], dtype=float)
        except (IndexError, ValueError):  # a frame cut short by the stop
            break
        if len(atoms) < natoms or xyz.shape != (natoms, 3) or not np.isfinite(xyz).all():
            break
        if step in row_step.values():
            frames.append("ITEM: TIMESTEP\n" + "\n".join(lines[: 8 + natoms]) + "\n")
            steps.append(step)
    kept_rows = [r for r in rows if r.startswith("#") or row_step.get(r) in steps]
    for path, new in ((traj, "".join(frames)), (devi, "".join(r + "\n" for r in kept_rows))):
        if path.is_file():
            path.replace(path.with_name(path.name + ".stopped"))
        write_text(path, new)
    return steps


def md_finished(devi_file: Path, args: argparse.Namespace) -> bool:
    """Whether a walker's model_devi.out has all its rows (``--resume``)."""
    if not devi_file.is_file():
        return False
    return len(np.loadtxt(devi_file, ndmin=2)) == args.md_steps // args.out_freq + 1


def iteration(
    it: int,
    args: argparse.Namespace,
    systems: list[str],
    n_new: int,
    run: Path,
    environ: dict[str, str],
) -> dict:
    dpa3, lmp = tool("dpa3"), tool("lmp")
    here = run / f"iter.{it:03d}"
    times, cpu = {}, {}
    temp = args.temp[min(it, len(args.temp) - 1)]

    # 1. train the committee (seeds 1..M), then freeze
    t0, c0 = time.time(), cpu_seconds()
    steps, lr = (args.train_steps, args.lr) if it == 0 else (args.retrain_steps, args.retrain_lr)
    models = [here / "train" / f"model_{m}" / "model.pth" for m in range(args.models)]
    cmds = []
    for m in range(args.models):
        folder = here / "train" / f"model_{m}"
        if args.resume and models[m].is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        cfg = train_input(systems, m + 1, steps, lr, n_new, args)
        write_json(folder / "input.json", cfg)
        cmd = [dpa3, "train", "input.json", "--skip-neighbor-stat"]
        if it > 0:
            prev = run / f"iter.{it - 1:03d}" / "train" / f"model_{m}" / "model.ckpt.pt"
            cmd += ["--init-model", str(prev)]
        cmds.append((cmd, folder))
    run_all(cmds, args.jobs, environ)
    run_all(
        [([dpa3, "freeze", "-c", ".", "-o", "model.pth"], cwd) for _, cwd in cmds],
        args.jobs,
        environ,
    )
    times["train"], cpu["train"] = time.time() - t0, cpu_seconds() - c0
    fit = fit_force_rmse([m.parent for m in models])

    # 2. explore: one LAMMPS run per walker (different initial velocities)
    t0, c0 = time.time(), cpu_seconds()
    cmds = []
    for w in range(args.walkers):
        folder = here / "md" / f"walker_{w}"
        if args.resume and md_finished(folder / "model_devi.out", args):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "in.lammps").write_text(
            LAMMPS_INPUT.format(
                data=START,
                models=" ".join(map(str, models)),
                out_freq=args.out_freq,
                temp=temp,
                seed=1000 + w,  # the same start in every iteration: only the models change
                steps=args.md_steps,
                thermo=max(args.out_freq, args.md_steps // 10),
            )
        )
        cmds.append(([lmp, "-in", "in.lammps", "-log", "log.lammps"], folder))
    stopped, empty = run_all(cmds, args.jobs, environ, may_fail=True), set()
    for folder, why in sorted(stopped.items()):
        # a walker that blew up: its frames up to the stop are the interesting ones
        steps = keep_complete_frames(folder)
        if not steps:
            empty.add(folder)
        last = f"its {len(steps)} frames up to step {steps[-1]} are used" if steps else "no frame"
        print(f"  {folder.name} (iteration {it}): LAMMPS stopped: {why}; {last}", flush=True)
    if len(empty) == args.walkers:
        sys.exit(f"run.py: every walker of iteration {it} stopped before its first frame")
    times["md"], cpu["md"] = time.time() - t0, cpu_seconds() - c0

    # 3. select with dpa3 model-devi;  4. label with EMT
    t0, c0 = time.time(), cpu_seconds()
    cmds = []
    walkers = [here / "md" / f"walker_{w}" for w in range(args.walkers)]
    walkers = [f for f in walkers if f not in empty]
    for folder in walkers:
        shutil.rmtree(folder / "candidates", ignore_errors=True)
        cmds.append(
            (
                [
                    dpa3,
                    "model-devi",
                    "-m",
                    *map(str, models),
                    "-s",
                    "traj.lammpstrj",
                    "-t",
                    *TYPE_MAP,
                    "-f",
                    str(args.out_freq),
                    "--select",
                    str(args.lo),
                    str(args.hi),
                    "-o",
                    "candidates",
                ],
                folder,
            )
        )
    run_all(cmds, args.jobs, environ)
    times["select"], cpu["select"] = time.time() - t0, cpu_seconds() - c0

    t0, c0 = time.time(), cpu_seconds()
    devi, labelled, dropped, new = [], 0, 0, []
    for folder in walkers:
        devi.append(np.loadtxt(folder / "model_devi.out", ndmin=2)[:, 4])  # LAMMPS's max_devi_f
        cand = folder / "candidates"
        if (cand / "type.raw").is_file():
            budget = max(1, args.max_label // len(walkers))
            out = here / "data" / folder.name
            out.parent.mkdir(parents=True, exist_ok=True)
            kept, lost = label_emt(cand, out, budget, args.max_force)
            labelled, dropped = labelled + kept, dropped + lost
            if kept:
                new.append(str(out))
    times["label"], cpu["label"] = time.time() - t0, cpu_seconds() - c0
    d = np.concatenate(devi)
    return {
        "iteration": it,
        "temp": temp,
        "frames": int(d.size),
        "candidate": float(np.mean((d >= args.lo) & (d < args.hi))),
        "accurate": float(np.mean(d < args.lo)),
        "failed": float(np.mean(d >= args.hi)),
        "max_devi_f_mean": float(d.mean()),
        "max_devi_f_max": float(d.max()),
        "fit_rmse_f": fit,  # lcurve's rmse_f_trn, last fifth of the training, model mean
        "labelled": labelled,
        "dropped": dropped,  # labelled frames left out: an EMT force above --max-force
        "new_systems": new,
        "stopped_walkers": {f.name: why for f, why in stopped.items()},  # LAMMPS ended early
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "cpu_seconds": {k: round(v, 1) for k, v in cpu.items()},
        "load_average": os.getloadavg()[0],  # 1-minute load at the end (2 cores: quiet < 2)
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Path(args.run_dir).resolve()
    run.mkdir(parents=True, exist_ok=True)
    environ = env()
    systems = initial_systems(run, args.init_max_rms)
    print(
        f"active learning in {run}: {args.models} models, {args.walkers} walker(s) of "
        f"{args.md_steps} steps at {'/'.join(f'{t:g}' for t in args.temp)} K, select "
        f"{args.lo:g} <= max_devi_f < {args.hi:g} eV/A, label at most {args.max_label} frames "
        f"(dropped: EMT force > {args.max_force:g} eV/A)",
        flush=True,
    )
    print(
        f"{'iter':>4} {'T K':>5} {'frames':>6} {'candidate':>9} {'accurate':>8} {'failed':>6} "
        f"{'mean max_devi_f':>15} {'max max_devi_f':>14} {'fit rmse_f':>10} {'labelled':>8} "
        f"{'dropped':>7} {'train+md s':>10}",
        flush=True,
    )
    t_start, rows, n_new = time.time(), [], 0
    for it in range(args.iterations):
        row = iteration(it, args, systems, n_new, run, environ)
        systems += row["new_systems"]
        n_new = len(row["new_systems"])
        rows.append(row)
        s = row["seconds"]
        print(
            f"{it:>4} {row['temp']:>5g} {row['frames']:>6} {row['candidate']:>9.3f} "
            f"{row['accurate']:>8.3f} {row['failed']:>6.3f} {row['max_devi_f_mean']:>15.4f} "
            f"{row['max_devi_f_max']:>14.4f} {row['fit_rmse_f']:>10.3f} {row['labelled']:>8} "
            f"{row['dropped']:>7} "
            f"{s['train']:>5.0f}+{s['md']:<4.0f}",
            flush=True,
        )
        write_json(
            run / "summary.json",
            {"args": vars(args), "iterations": rows, "seconds": round(time.time() - t_start, 1)},
        )
    print(
        f"done in {time.time() - t_start:.0f} s ({cpu_seconds():.0f} CPU s); numbers in "
        f"{run / 'summary.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
