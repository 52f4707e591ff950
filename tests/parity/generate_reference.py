"""Generate DeePMD-kit DPA3 parity fixtures (reference model files + reference outputs).

Needs the reference DeePMD-kit 3.2.0 with its PyTorch backend (scripts/install_deepmd.sh).
Deterministic: fixed DeePMD seeds, fixed perturbation seeds, fixed frames. Re-run with

    python tests/parity/generate_reference.py              # all combos
    python tests/parity/generate_reference.py poly_switch  # some combos
    python tests/parity/generate_reference.py --list

For every combo it writes ``tests/data/parity/<combo>/``:

* ``model.json``     -- the normalised ``model`` section (``deepmd.utils.argcheck.normalize``),
                        exactly what DeePMD-kit keeps as ``_extra_state.model_params``.
* ``model.ckpt.pt``  -- a DeePMD-kit training checkpoint, as ``Trainer.save_model`` writes it:
                        ``torch.save({"model": ModelWrapper.state_dict(), "optimizer": ...})``;
                        state keys ``model.Default.<EnergyModel key>`` plus ``_extra_state``
                        = ``{"model_params": <model.json>, "train_infos": {"lr", "step"}}``.
                        The optimizer entry is the state dict of a fresh (step-0, empty-state)
                        AdamW built like the trainer builds it (one param group over
                        ``ModelWrapper.parameters()``); converters should ignore it.
* ``frozen_model.pth`` (only combos with ``freeze=True``) -- written by DeePMD-kit's own
                        ``dp --pt freeze -c model.ckpt.pt -o frozen_model.pth`` (subprocess).
                        Freezing is attempted for every combo; failures go to the manifest.
* ``reference.npz``  -- per frame ``<frame>.coord [1,N,3]``, ``<frame>.atype [1,N]``,
                        ``<frame>.box [1,9]`` (absent for non-periodic frames) and the outputs of
                        ``model(coord, atype, box, do_atomic_virial=True)``:
                        ``<frame>.energy [1,1]``,
                        ``.force [1,N,3]``, ``.virial [1,9]``, ``.atom_energy [1,N,1]``,
                        ``.atom_virial [1,N,9]`` (all float64), plus ``frames`` and ``type_map``.

and ``tests/data/parity/manifest.json`` (versions, frames, neighbour counts per combo/frame).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

os.environ.setdefault("DEVICE", "cpu")
os.environ.pop("DP_TRITON_INFER", None)

import deepmd
import numpy as np
import torch
from deepmd.pt.loss import EnergyStdLoss
from deepmd.pt.model.model import get_model
from deepmd.pt.train.wrapper import ModelWrapper
from deepmd.pt.utils.nlist import extend_input_and_build_neighbor_list
from deepmd.utils.argcheck import normalize

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "examples" / "data"
OUT = REPO / "tests" / "data" / "parity"

TYPE_MAP = ["O", "H", "Cu", "Al", "Ni", "C"]

# smallest accepted gap (Angstrom) between the last kept and the first dropped neighbour
# wherever e_sel / a_sel truncates the sorted neighbour list (guards against ties; the
# neighbour list is built from float64 coordinates, and even a float32 re-implementation
# moves distances by ~1e-6 A only, so 5e-4 A is ample).
TIE_TOL = 5e-4

sys.path.insert(0, str(Path(__file__).resolve().parent))
from combos import COMBOS  # noqa: E402  (the option combinations: tests/parity/combos.py)


def _seed(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def model_config(name: str) -> dict:
    """Normalised `model` section of a combo (schema defaults filled in by argcheck)."""
    c = COMBOS[name]
    seed = _seed(name) % 100000
    model = {
        "type_map": list(TYPE_MAP),
        "descriptor": {
            "type": "dpa3",
            "repflow": copy.deepcopy(c["repflow"]),
            "precision": c["precision"],
            "seed": seed,
            **copy.deepcopy(c["desc"]),
        },
        "fitting_net": {
            "type": "ener",
            "precision": c["precision"],
            "seed": seed + 1,
            **copy.deepcopy(c["fit"]),
        },
    }
    return normalized_input(model)


def normalized_input(model: dict) -> dict:
    """A full DeePMD-kit input around ``model``, normalised by argcheck (schema defaults filled
    in); everything but the model section only satisfies the schema of a full input file."""
    cfg = {
        "model": model,
        "learning_rate": {"type": "exp", "start_lr": 1e-3, "stop_lr": 3e-5, "decay_steps": 5000},
        "loss": {
            "type": "ener",
            "start_pref_e": 0.2,
            "limit_pref_e": 20,
            "start_pref_f": 100,
            "limit_pref_f": 60,
            "start_pref_v": 0.02,
            "limit_pref_v": 1,
        },
        "optimizer": {
            "type": "AdamW",
            "adam_beta1": 0.9,
            "adam_beta2": 0.999,
            "weight_decay": 0.001,
        },
        "training": {
            "training_data": {"systems": ["unused"], "batch_size": 1},
            "numb_steps": 1,
            "seed": 10,
        },
    }
    return normalize(cfg)


# ----------------------------------------------------------------------------- frames


def _load_system(sysdir: str, frame: int, mixed: bool):
    d = DATA / sysdir
    names = (d / "type_map.raw").read_text().split()
    coord = np.load(d / "set.000" / "coord.npy")[frame].astype(np.float64).reshape(-1, 3)
    box_file = d / "set.000" / "box.npy"
    box = None if (d / "nopbc").exists() else np.load(box_file)[frame].astype(np.float64)
    if mixed:
        types = np.load(d / "set.000" / "real_atom_types.npy")[frame]
    else:
        types = np.loadtxt(d / "type.raw", dtype=np.int64).reshape(-1)
    atype = np.array([TYPE_MAP.index(names[t]) for t in types], dtype=np.int64)
    return coord, atype, box


def _small_cell():
    """3 atoms (Cu, Ni, C) in a strongly triclinic cell whose face distances (3.3-3.5 A) are
    below every cutoff; one atom lies outside the cell (exercises wrapping)."""
    cell = np.array([[3.3, 0.0, 0.0], [1.2, 3.5, 0.0], [-0.8, 0.9, 3.7]])
    frac = np.array([[0.1, 0.2, 0.3], [0.6, 0.45, 0.7], [1.25, -0.15, 0.95]])
    return frac @ cell, np.array([2, 4, 5], dtype=np.int64), cell.reshape(9)


def load_frames() -> dict[str, tuple]:
    frames = {
        # water/data_0 frame 0: 64 H2O, cubic 12.44 A
        "water": _load_system("water/data_0", 0, mixed=False),
        # natoms_32 frame 31: the most skewed cell of the 31/32-atom alloy systems
        # (angles off 90 deg by up to ~5 deg), has virial labels
        "alloy": _load_system("alloy-emt-CuAlNi/natoms_32", 31, mixed=True),
        "smallcell": _small_cell(),
        # C1H4O2 frame 0, no box
        "molecule": _load_system("molecules-nopbc/C1H4O2", 0, mixed=False),
    }
    b = frames["alloy"][2].reshape(3, 3)
    assert np.abs(b - np.diag(np.diag(b))).max() > 0.1, "alloy frame is not triclinic"
    return frames


def sorted_neighbor_distances(coord, atype, box, rcut):
    """Distances of all neighbours within rcut of every atom, ascending (DeePMD's own nlist)."""
    ext, _, _, nlist = extend_input_and_build_neighbor_list(
        torch.tensor(coord)[None],
        torch.tensor(atype)[None],
        rcut,
        [4000],
        mixed_types=True,
        box=None if box is None else torch.tensor(box)[None],
    )
    ext = ext[0].numpy()
    nlist = nlist[0].numpy()
    assert (nlist[:, -1] == -1).all(), "neighbour capacity of the count too small"
    out = []
    for i in range(len(coord)):
        j = nlist[i][nlist[i] >= 0]
        out.append(np.sort(np.linalg.norm(ext[j] - ext[i], axis=-1)))
    return out


def check_neighbors(name: str, frames: dict) -> dict:
    """Counts within e_rcut (<=) / a_rcut (<) and the truncation gaps of one combo."""
    rep = COMBOS[name]["repflow"]
    allow = COMBOS[name]["allow_truncation"]
    report = {}
    for fname, (coord, atype, box) in frames.items():
        d_all = sorted_neighbor_distances(coord, atype, box, rep["e_rcut"])
        ne = np.array([(d <= rep["e_rcut"]).sum() for d in d_all])
        na = np.array([(d < rep["a_rcut"]).sum() for d in d_all])
        info = {
            "max_e_count": int(ne.max()),
            "e_sel": rep["e_sel"],
            "max_a_count": int(na.max()),
            "a_sel": rep["a_sel"],
        }
        for key, cnt, sel in (("e", ne, rep["e_sel"]), ("a", na, rep["a_sel"])):
            trunc = np.nonzero(cnt > sel)[0]
            info[f"{key}_truncated_centres"] = len(trunc)
            if len(trunc):
                if not allow:
                    raise RuntimeError(
                        f"{name}/{fname}: {key}_sel={sel} truncates "
                        f"{len(trunc)} centres (max count {cnt.max()})"
                    )
                gaps = [d_all[i][sel] - d_all[i][sel - 1] for i in trunc]
                info[f"{key}_min_gap_at_cut"] = float(min(gaps))
                if min(gaps) < TIE_TOL:
                    raise RuntimeError(
                        f"{name}/{fname}: near tie at the {key}_sel cut (gap {min(gaps):.2e} A)"
                    )
        report[fname] = info
    return report


# ----------------------------------------------------------------------------- model


def build_model(name: str, model_params: dict) -> torch.nn.Module:
    model = get_model(copy.deepcopy(model_params))
    c = COMBOS[name]
    gen = torch.Generator().manual_seed(_seed(name))

    def randn(shape, dtype):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)

    am = model.atomic_model
    with torch.no_grad():
        for key, p in sorted(am.named_parameters(), key=lambda kv: kv[0]):
            leaf = key.split(".")[-2] if key.split(".")[-1].isdigit() else key.split(".")[-1]
            if leaf in ("n_residual", "e_residual", "a_residual"):
                # residual vectors: move away from the constant init, keep them O(0.1)
                p.copy_(p + 0.05 * randn(p.shape, p.dtype))
            elif leaf == "idt":
                p.copy_(0.1 + 0.1 * randn(p.shape, p.dtype))
        # per-type energy shift (normally from output statistics): random, non-zero
        ob = am.out_bias
        am.out_bias.copy_((2.0 * randn(ob.shape, ob.dtype) - 3.0).to(ob.dtype))
        if c["random_stddev"]:
            # what fix_stat_std = 0 + descriptor statistics produce: per centre type
            # [s_r, s_a, s_a, s_a], identical for every slot
            std = am.descriptor.repflows.stddev
            ntypes = std.shape[0]
            s = 0.05 + 0.4 * torch.rand((ntypes, 2), generator=gen, dtype=torch.float64)
            row = torch.stack([s[:, 0], s[:, 1], s[:, 1], s[:, 1]], dim=-1)
            std.copy_(row[:, None, :].expand_as(std).to(std.dtype))
    model.eval()
    return model


def wrapper_for(model, config) -> ModelWrapper:
    loss = EnergyStdLoss(
        starter_learning_rate=config["learning_rate"]["start_lr"],
        **{k: v for k, v in config["loss"].items() if k != "type"},
    )
    return ModelWrapper(model, loss, model_params=config["model"])


def save_checkpoint(wrapper: ModelWrapper, config: dict, path: Path) -> None:
    # mirrors deepmd.pt.train.training.Trainer.save_model (single task, no EMA, no sharding)
    wrapper.train_infos["lr"] = float(config["learning_rate"]["start_lr"])
    wrapper.train_infos["step"] = 0
    opt = config["optimizer"]
    optimizer = torch.optim.AdamW(
        wrapper.parameters(),
        lr=config["learning_rate"]["start_lr"],
        betas=(opt["adam_beta1"], opt["adam_beta2"]),
        weight_decay=opt["weight_decay"],
        fused=False,
    )
    optim_state = optimizer.state_dict()
    for item in optim_state["param_groups"]:
        item["lr"] = float(item["lr"])
    torch.save({"model": wrapper.state_dict(), "optimizer": optim_state}, path)


OUTPUT_KEYS = ("energy", "force", "virial", "atom_energy", "atom_virial")


def evaluate(model, frames: dict) -> dict[str, np.ndarray]:
    out = {}
    for fname, (coord, atype, box) in frames.items():
        c = torch.tensor(coord, dtype=torch.float64)[None]
        a = torch.tensor(atype, dtype=torch.int64)[None]
        b = None if box is None else torch.tensor(box, dtype=torch.float64)[None]
        ret = model(c, a, b, do_atomic_virial=True)
        out[f"{fname}.coord"] = c.numpy()
        out[f"{fname}.atype"] = a.numpy()
        if b is not None:
            out[f"{fname}.box"] = b.numpy()
        for k in OUTPUT_KEYS:
            out[f"{fname}.{k}"] = ret[k].detach().to(torch.float64).numpy()
    return out


def _max_diff(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def dp_freeze(ckpt: Path, output: Path) -> str | None:
    """Run ``dp --pt freeze -c ckpt -o output`` in a fresh process; return None or the error.

    A separate process both mirrors the real CLI and keeps a failed TorchScript compilation
    from polluting later ones (torch then reports "Can't redefine method")."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(
        [sys.executable, "-m", "deepmd", "--pt", "freeze", "-c", str(ckpt), "-o", str(output)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(output.parent),
    )
    if proc.returncode == 0 and output.exists():
        return None
    lines = [
        re.sub(r"\S*site-packages/", "", ln)  # no machine-specific paths
        for ln in proc.stderr.splitlines() + proc.stdout.splitlines()
        if ln.strip()
    ]
    for i, ln in enumerate(lines):  # the TorchScript error and the source line it points at
        if ln.startswith("RuntimeError"):
            return " | ".join(x.strip() for x in lines[i : i + 6] if x.strip().strip("~"))
    return " | ".join(lines[-4:])


def generate(name: str, frames: dict) -> dict:
    c = COMBOS[name]
    outdir = OUT / name
    outdir.mkdir(parents=True, exist_ok=True)
    nbr = check_neighbors(name, frames)
    config = model_config(name)
    model = build_model(name, config["model"])
    ref = evaluate(model, frames)

    (outdir / "model.json").write_text(json.dumps(config["model"], indent=2) + "\n")
    ckpt = outdir / "model.ckpt.pt"
    save_checkpoint(wrapper_for(model, config), config, ckpt)

    # round trip: rebuild from the checkpoint alone, as DeePMD-kit's Tester does
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    m2 = get_model(copy.deepcopy(sd["_extra_state"]["model_params"]))
    w2 = ModelWrapper(m2)
    w2.load_state_dict(sd)
    m2.eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), f"{name}: checkpoint round trip: {k}"
    small = {"molecule": frames["molecule"]}
    ckpt_diff = _max_diff(evaluate(model, small), evaluate(m2, small))
    assert ckpt_diff == 0.0, f"{name}: checkpoint round trip differs by {ckpt_diff}"

    # TorchScript via DeePMD-kit's own freeze; the file is kept only for some combos
    frozen = outdir / "frozen_model.pth"
    frozen_diff = None
    with tempfile.TemporaryDirectory() as tmp:
        target = frozen if c["freeze"] else Path(tmp) / "frozen_model.pth"
        script_err = dp_freeze(ckpt, target)
        if script_err is None and c["freeze"]:
            fm = torch.jit.load(str(target), map_location="cpu")
            fref = evaluate(fm, frames)
            frozen_diff = {}
            for k in fref:
                what = k.split(".")[1]
                if what in OUTPUT_KEYS:
                    d = float(np.abs(fref[k] - ref[k]).max())
                    frozen_diff[what] = max(frozen_diff.get(what, 0.0), d)
    if not c["freeze"] and frozen.exists():
        frozen.unlink()

    npz = dict(ref)
    npz["frames"] = np.array(list(frames))
    npz["type_map"] = np.array(TYPE_MAP)
    np.savez_compressed(outdir / "reference.npz", **npz)

    nparams = sum(p.numel() for p in model.parameters())
    info = {
        "doc": c["doc"],
        "precision": c["precision"],
        "n_parameters": int(nparams),
        "neighbors": nbr,
        "scriptable": script_err is None,
        "script_error": script_err,
        "frozen_model": bool(c["freeze"] and script_err is None),
        "frozen_vs_eager_max_abs_diff": frozen_diff,
        "energy": {f: float(ref[f"{f}.energy"][0, 0]) for f in frames},
    }
    print(
        f"{name}: params {nparams}, scriptable {script_err is None}, "
        f"frozen diff {frozen_diff}, E = {info['energy']}",
        flush=True,
    )
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("combos", nargs="*", help="combos to (re)generate (default: all)")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        for k, v in COMBOS.items():
            print(f"{k:18s} {v['doc']}")
        return 0
    names = args.combos or list(COMBOS)
    unknown = set(names) - set(COMBOS)
    if unknown:
        ap.error(f"unknown combos {sorted(unknown)}")
    torch.manual_seed(0)
    frames = load_frames()
    OUT.mkdir(parents=True, exist_ok=True)
    manifest_path = OUT / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest.update(
        {
            "generator": "tests/parity/generate_reference.py",
            "deepmd_kit": deepmd.__version__,
            "torch": torch.__version__.split("+")[0],
            "type_map": TYPE_MAP,
            "frames": {
                "water": "examples/data/water/data_0 set.000 frame 0 (192 atoms)",
                "alloy": "examples/data/alloy-emt-CuAlNi/natoms_32 set.000 frame 31 (triclinic)",
                "smallcell": "3 atoms (Cu, Ni, C) in a 3.3-3.7 A triclinic cell, built in the "
                "generator (one atom outside the cell)",
                "molecule": "examples/data/molecules-nopbc/C1H4O2 set.000 frame 0, box None",
            },
            "call": "model(coord[1,N,3] f64, atype[1,N] i64, box[1,9] f64 | None, "
            "do_atomic_virial=True); model.eval()",
        }
    )
    manifest.setdefault("combos", {})
    for name in names:
        manifest["combos"][name] = generate(name, frames)
    manifest["combos"] = {k: manifest["combos"][k] for k in COMBOS if k in manifest["combos"]}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
