"""Generate DeePMD-kit model-deviation fixtures (tests/data/model_devi/), see NOTES.md there.

Needs DeePMD-kit 3.2.0 with its C++ API and LAMMPS plugin in .venv-deepmd
(scripts/install_deepmd_lammps.sh). Run from anywhere with that interpreter:

    .venv-deepmd/bin/python tests/model_devi/generate_reference.py

Deterministic (fixed DeePMD seeds, fixed perturbation seeds, fixed frames, fixed LAMMPS
velocity seed).  What it does:

1. builds three small float64 DeePMD-kit DPA3 energy models with the same type map (O, H),
   cutoffs and sel but different init seeds and perturbations (as tests/parity does: residual
   vectors, fitting ``idt`` and ``out_bias`` randomised so every parameter matters), saves
   their training checkpoints ``m{0,1,2}.ckpt.pt`` (format of tests/data/parity) and freezes
   them with ``dp --pt freeze`` (frozen files only in a scratch folder, not kept);
2. writes ``water_sys/`` (examples/data/water/data_0 frames 0-5: set.000 = frames 0-3,
   set.001 = frames 4-5, coordinates and cells only) and runs ``dp --pt model-devi`` on it
   (plain, ``-f 5``, ``--atomic``, ``--relative 1.0``), cwd = the fixture folder and
   ``-s water_sys`` so that the header line is ``# water_sys``; ``--relative 1.0 --relative_v 1.0``
   on ``water_sys_1f`` (frames 0-2, one frame per set: 3.2.0 crashes on larger sets);
3. runs DeePMD-kit's LAMMPS (``pair_style deepmd m0.pth m1.pth m2.pth out_freq 5 out_file F``)
   on the 192-atom water box ``data.water`` (examples/lammps/data.water), 20 steps of
   ``fix nve`` from seeded velocities, on 1, 2 and 4 MPI ranks, and on 1 rank with ``atomic``
   and with ``relative 1.0 relative_v 1.0``; the 1-rank plain run also dumps the trajectory
   (``traj.lammpstrj``, every 5 steps, ``%20.15g``) for comparisons on the same frames.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("DEVICE", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import deepmd
import numpy as np
import torch
from deepmd.pt.model.model import get_model

REPO = Path(__file__).resolve().parents[2]

# the checkpoint writer and the freeze runner of the parity fixtures (same formats)
_spec = importlib.util.spec_from_file_location(
    "parity_generate_reference", REPO / "tests" / "parity" / "generate_reference.py"
)
_parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_parity)
dp_freeze, normalized_input, save_checkpoint, wrapper_for = (
    _parity.dp_freeze,
    _parity.normalized_input,
    _parity.save_checkpoint,
    _parity.wrapper_for,
)

OUT = REPO / "tests" / "data" / "model_devi"
VENV = Path(sys.executable).parent
TYPE_MAP = ["O", "H"]
SEEDS = (11, 23, 37)  # DeePMD init seeds (fitting seed = seed + 1); perturbation seed = seed
FRAMES = (4, 2)  # frames of water/data_0 in set.000, set.001
OUT_FREQ = 5
NSTEPS = 20

REPFLOW = {
    "n_dim": 16,
    "e_dim": 8,
    "a_dim": 8,
    "nlayers": 2,
    "axis_neuron": 4,
    "e_rcut": 5.0,
    "e_rcut_smth": 4.0,
    "e_sel": 96,
    "a_rcut": 3.5,
    "a_rcut_smth": 3.0,
    "a_sel": 40,
    "use_exp_switch": True,
    "smooth_edge_update": True,
}

LAMMPS_INPUT = """\
# DeePMD-kit pair_style deepmd model deviation, 3 models (tests/model_devi/generate_reference.py)
units           metal
atom_style      atomic
boundary        p p p
read_data       data.water
plugin load     {plugin}
pair_style      deepmd m0.pth m1.pth m2.pth out_freq {out_freq} out_file {out_file}{extra}
pair_coeff      * * O H
neighbor        1.0 bin
neigh_modify    every 10 delay 0 check yes
timestep        0.0005
velocity        all create 330.0 4928459 mom yes rot yes dist gaussian
fix             1 all nve
thermo          5
thermo_style    custom step pe ke etotal press
thermo_modify   format float %20.12g
{dump}run             {nsteps}
"""
DUMP = (
    "dump            traj all custom {out_freq} traj.lammpstrj id type x y z\n"
    "dump_modify     traj sort id format float %20.15g\n"
)


def model_config(seed: int) -> dict:
    model = {
        "type_map": list(TYPE_MAP),
        "descriptor": {
            "type": "dpa3",
            "repflow": copy.deepcopy(REPFLOW),
            "precision": "float64",
            "seed": seed,
        },
        "fitting_net": {
            "type": "ener",
            "precision": "float64",
            "seed": seed + 1,
            "neuron": [24, 24],
        },
    }
    return normalized_input(model)


def build_model(seed: int, params: dict) -> torch.nn.Module:
    """DeePMD's seeded init, then residuals += N(0, 0.05^2), idt ~ N(0.1, 0.1^2),
    out_bias ~ N(-3, 2^2)."""
    model = get_model(copy.deepcopy(params))
    gen = torch.Generator().manual_seed(seed)
    am = model.atomic_model
    with torch.no_grad():
        for key, p in sorted(am.named_parameters(), key=lambda kv: kv[0]):
            parts = key.split(".")
            leaf = parts[-2] if parts[-1].isdigit() else parts[-1]
            if leaf in ("n_residual", "e_residual", "a_residual"):
                p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            elif leaf == "idt":
                p.copy_(0.1 + 0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        ob = am.out_bias
        ob.copy_(2.0 * torch.randn(ob.shape, generator=gen, dtype=ob.dtype) - 3.0)
    model.eval()
    return model


def write_system(dst: Path, frames: tuple[int, ...] = FRAMES) -> None:
    src = REPO / "examples" / "data" / "water" / "data_0"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    shutil.copy(src / "type.raw", dst / "type.raw")
    shutil.copy(src / "type_map.raw", dst / "type_map.raw")
    coord = np.load(src / "set.000" / "coord.npy")
    box = np.load(src / "set.000" / "box.npy")
    start = 0
    for k, n in enumerate(frames):
        d = dst / f"set.{k:03d}"
        d.mkdir()
        np.save(d / "coord.npy", coord[start : start + n])
        np.save(d / "box.npy", box[start : start + n])
        start += n


def run(cmd: list[str], cwd: Path) -> None:
    print("+", " ".join(cmd), flush=True)
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        DP_INTRA_OP_PARALLELISM_THREADS="1",
        DP_INTER_OP_PARALLELISM_THREADS="1",
    )
    env.pop("LAMMPS_PLUGIN_PATH", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")


def main() -> int:
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    plugin = Path(deepmd.__file__).parent / "lib" / "libdeepmd_lmpplugin.so"
    if not plugin.is_file():
        raise SystemExit(f"no LAMMPS plugin at {plugin}: run scripts/install_deepmd_lammps.sh")
    write_system(OUT / "water_sys")
    write_system(OUT / "water_sys_1f", (1, 1, 1))  # for --relative_v, see NOTES.md
    shutil.copy(REPO / "examples" / "lammps" / "data.water", OUT / "data.water")
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        for i, seed in enumerate(SEEDS):
            cfg = model_config(seed)
            model = build_model(seed, cfg["model"])
            ckpt = OUT / f"m{i}.ckpt.pt"
            save_checkpoint(wrapper_for(model, cfg), cfg, ckpt)
            err = dp_freeze(ckpt, tmp / f"m{i}.pth")
            if err:
                raise SystemExit(f"dp freeze m{i}: {err}")
        # dp model-devi, run in the fixture folder on the relative path water_sys
        for src in ("water_sys", "water_sys_1f"):
            shutil.copytree(OUT / src, tmp / src)
        dp = [
            str(VENV / "dp"),
            "--pt",
            "model-devi",
            "-m",
            "m0.pth",
            "m1.pth",
            "m2.pth",
            "-s",
            "water_sys",
        ]
        variants = {
            "dp_model_devi.out": [],
            "dp_model_devi_f5.out": ["-f", "5"],
            "dp_model_devi_atomic.out": ["--atomic"],
            "dp_model_devi_relative.out": ["--relative", "1.0"],
            # dp model-devi 3.2.0 --relative_v fails on sets of more than one frame (it divides
            # (nf, 9) by (nf,)): one frame per set
            "dp_model_devi_relative_v.out": ["--relative", "1.0", "--relative_v", "1.0"],
        }
        for name, extra in variants.items():
            (tmp / name).unlink(missing_ok=True)  # dp model-devi appends
            cmd = dp + ["-o", name] + extra
            if name == "dp_model_devi_relative_v.out":
                cmd[cmd.index("water_sys")] = "water_sys_1f"
            run(cmd, tmp)
            shutil.copy(tmp / name, OUT / name)
        # LAMMPS with DeePMD-kit's plugin
        shutil.copy(OUT / "data.water", tmp / "data.water")
        lmp_runs = {
            "lmp_np1.out": (1, "", True),
            "lmp_np2.out": (2, "", False),
            "lmp_np4.out": (4, "", False),
            "lmp_np1_atomic.out": (1, " atomic", False),
            "lmp_np1_relative.out": (1, " relative 1.0 relative_v 1.0", False),
        }
        for name, (ranks, extra, dump) in lmp_runs.items():
            inp = LAMMPS_INPUT.format(
                plugin=plugin,
                out_freq=OUT_FREQ,
                out_file=name,
                extra=extra,
                nsteps=NSTEPS,
                dump=DUMP.format(out_freq=OUT_FREQ) if dump else "",
            )
            stem = name.removesuffix(".out")
            (tmp / f"in.{stem}").write_text(inp)
            (tmp / name).unlink(missing_ok=True)
            run(
                [
                    str(VENV / "mpirun"),
                    "-np",
                    str(ranks),
                    str(VENV / "lmp"),
                    "-in",
                    f"in.{stem}",
                    "-log",
                    f"log.{stem}",
                ],
                tmp,
            )
            shutil.copy(tmp / name, OUT / name)
            # the input with the machine-specific plugin path replaced
            (OUT / f"in.{stem}").write_text(
                inp.replace(str(plugin), "<site-packages>/deepmd/lib/libdeepmd_lmpplugin.so")
            )
            if dump:
                shutil.copy(tmp / "traj.lammpstrj", OUT / "traj.lammpstrj")
    (OUT / "versions.txt").write_text(
        f"deepmd-kit {deepmd.__version__}\ntorch {torch.__version__.split('+')[0]}\n"
        f"generator tests/model_devi/generate_reference.py\n"
    )
    print("fixtures in", OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
