"""Helpers of ``lammps_vs_deepmd.py`` that run in a subprocess, possibly in DeePMD-kit's venv
(``python lammps_vs_deepmd.py --helper ...``): they import only torch, numpy, ASE and the code
being measured (dpa3 or deepmd), never the benchmark's own machinery.
"""

from __future__ import annotations

import json
import time

from lammps_report import DATA, REL_TOL


def helper_make_ckpt(src: str, dst: str, nlayers: int) -> None:
    """DeePMD-kit checkpoint of the model of ``src`` with ``nlayers`` repflow layers.

    Built by DeePMD-kit's ``get_model`` from ``src``'s own model parameters; all weights come
    from ``src`` (layers ``0..nlayers-1``, type embedding, fitting net, statistics, biases).
    Saved as DeePMD-kit's trainer saves: ``{"model": ModelWrapper.state_dict(), "optimizer"}``.
    """
    import copy

    import torch
    from deepmd.pt.model.model import get_model
    from deepmd.pt.train.wrapper import ModelWrapper

    raw = torch.load(src, map_location="cpu", weights_only=True)
    old = raw["model"]
    params = copy.deepcopy(old["_extra_state"]["model_params"])
    params["descriptor"]["repflow"]["nlayers"] = nlayers
    model = get_model(copy.deepcopy(params))
    wrapper = ModelWrapper(model, model_params=params)
    new = wrapper.state_dict()
    for key in new:
        if key == "_extra_state":
            continue
        if key not in old or old[key].shape != new[key].shape:
            raise RuntimeError(f"{src} has no weight {key} of shape {tuple(new[key].shape)}")
        new[key] = old[key]
    new["_extra_state"] = {
        "model_params": params,
        "train_infos": dict(old["_extra_state"].get("train_infos", {"lr": 1e-3, "step": 0})),
    }
    wrapper.load_state_dict(new)
    optimizer = torch.optim.AdamW(wrapper.parameters(), lr=1e-3, fused=False)
    torch.save({"model": wrapper.state_dict(), "optimizer": optimizer.state_dict()}, dst)
    print(
        json.dumps({"nlayers": nlayers, "parameters": sum(p.numel() for p in model.parameters())})
    )


class _NoModuleTracking:
    """Stands in for FlopCounterMode's ModuleTracker: its backward hooks make
    ``torch.autograd.grad`` with respect to a leaf input (the coordinates, for forces) fail
    ("A leaf node was passed to _will_engine_execute_node"), and only the total is needed."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def count_flops(fn) -> tuple[int, object]:
    """Matmul-type FLOPs of ``fn()`` by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracking()
    with counter:
        out = fn()
    return counter.get_total_flops(), out


def water_frame(reps: int = 1):
    """Coordinates, element names and cell (rows) of data.water, replicated reps^3 times."""
    import numpy as np

    lines = DATA.read_text().splitlines()
    box = np.zeros(3)
    for ln in lines:
        for k, ax in enumerate("xyz"):
            if ln.rstrip().endswith(f"{ax}lo {ax}hi"):
                lo, hi = map(float, ln.split()[:2])
                box[k] = hi - lo
    start = next(i for i, ln in enumerate(lines) if ln.startswith("Atoms")) + 2
    rows = [ln.split() for ln in lines[start:] if ln.strip()]
    rows = [r for r in rows if len(r) >= 5 and r[0].isdigit()]
    types = np.array([int(r[1]) for r in rows])
    coord = np.array([[float(x) for x in r[2:5]] for r in rows])
    shifts = (
        np.array(
            [[i, j, k] for i in range(reps) for j in range(reps) for k in range(reps)],
            dtype=np.float64,
        )
        * box
    )
    coord = (coord[None] + shifts[:, None]).reshape(-1, 3)
    names = np.array(["O", "H"])[np.tile(types, reps**3) - 1]
    return coord, names, np.diag(box * reps)


def helper_deepmd_flops(ckpt: str, threads: int) -> None:
    """Matmul FLOPs of DeePMD-kit's eager model for energy+forces+virial of 192 atoms."""
    import copy

    import torch
    from deepmd.pt.model.model import get_model

    torch.set_num_threads(threads)
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    params = raw["_extra_state"]["model_params"]
    model = get_model(copy.deepcopy(params))
    model.load_state_dict(
        {k[len("model.Default.") :]: v for k, v in raw.items() if k.startswith("model.Default.")}
    )
    model.eval()
    coord, names, cell = water_frame()
    tmap = list(params["type_map"])
    atype = torch.tensor([tmap.index(n) for n in names])[None]
    c, b = torch.tensor(coord)[None], torch.tensor(cell.reshape(9))[None]
    model(c, atype, b)
    flops, out = count_flops(lambda: model(c, atype, b))
    print(json.dumps({"flops": flops, "natoms": len(names), "energy": float(out["energy"].sum())}))


def helper_ase(
    code: str, model: str, reps: int, threads: int, calls: int, e_ref: float, perturb: float
) -> None:
    """Time ``atoms.get_forces()`` of an ASE calculator on the LAMMPS start configuration.

    ``code`` is ``dpa3`` (``dpa3.calculator.DPA3Calculator``, run in dpa3's venv) or ``deepmd``
    (``deepmd.calculator.DP``, run in DeePMD-kit's venv).  The first call (energy and forces
    of data.water replicated ``reps``^3 times) is the warm-up; its energy must equal the
    LAMMPS step-0 energy ``e_ref`` to a relative ``REL_TOL``, otherwise nothing is timed.  Then
    ``calls`` timed calls, each on the start positions displaced by a fresh normal random
    vector of standard deviation ``perturb`` Å per component (ASE would return its cached
    results for unchanged atoms).  Prints one JSON line.
    """
    import numpy as np
    import torch
    from ase import Atoms

    if code == "dpa3":
        from dpa3.calculator import DPA3Calculator

        calc = DPA3Calculator(model)
    else:
        from deepmd.calculator import DP

        calc = DP(model)
    torch.set_num_threads(threads)  # after the imports: DeePMD-kit sets it from DP_* too
    coord, names, cell = water_frame(reps)
    atoms = Atoms(list(names), positions=coord, cell=cell, pbc=True)
    atoms.calc = calc
    t0 = time.perf_counter()
    energy = float(atoms.get_potential_energy())
    first = time.perf_counter() - t0
    rel = abs(energy - e_ref) / abs(e_ref)
    out = {
        "status": "ok",
        "energy": energy,
        "e_ref": e_ref,
        "rel": rel,
        "first": first,
        "natoms": len(atoms),
        "threads": torch.get_num_threads(),
        "times": [],
    }
    if not rel <= REL_TOL:
        out["status"] = f"energy mismatch ({rel:.1e} > {REL_TOL:g})"
        print(json.dumps(out))
        return
    rng = np.random.default_rng(2025)
    for _ in range(calls):
        atoms.set_positions(coord + rng.normal(scale=perturb, size=coord.shape))
        t0 = time.perf_counter()
        atoms.get_forces()
        out["times"].append(time.perf_counter() - t0)
    print(json.dumps(out))
