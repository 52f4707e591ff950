"""Where the time of one force evaluation goes, stage by stage (the committee's cost model).

Eager stages of ``EnergyModel.forward_lower`` on the model-deviation fixture models (the
DeePMD-kit checkpoints of tests/data/model_devi, converted), data.water (192 atoms) or its
``replicate`` (``--reps 2``: 1,536 atoms), one frame, single-process path (``mapping``), a raw
neighbour list of radius ``rcut + skin`` in random column order as LAMMPS gives it:

- ``format_nlist``: distances and sort of the raw list;
- ``prepare``: ``DescrptDPA3.prepare`` (``build_graph``, the geometric factors, type embedding,
  the inverse indices of ``make_rows``), of which ``build_graph`` and ``make_rows`` alone;
- ``layers``: the RepFlow layers (``DescrptDPA3.run``); ``fitting``: the fitting net;
- ``backward``: ``autograd.grad`` of the energy for the forces;
- ``virial``: the outer product and sum of the extended virial.

Also the whole frozen (TorchScript) ``forward_lower`` and, if present, ``forward_prepared`` on
a graph from ``prepare_graph`` (the committee's shared-graph path), to give the TorchScript
overhead and what a non-driving model costs.  ``--comm``: the exchange path of the LAMMPS plugin
(``comm_dict`` of a one-rank schedule with 6 swaps, as LAMMPS's periodic images, and no
``mapping``): node features of all ``nall`` atoms, ghost exchange and its adjoint in each layer;
without it the single-process path (``mapping``: ghosts read their owners' rows).  CPU time of
the process (``time.process_time``:
the machine is shared, and wall time would count the other processes), best of ``--repeat``
interleaved rounds after one warm-up; graph executor optimisation off, as in the plugin.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_committee.py [--reps 2] [--comm]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_devi_lammps import FIX, cpu_model, loadavg


def read_water(reps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates ``[N, 3]``, model types ``[N]`` (O 0, H 1) and cell ``[3, 3]``."""
    lines = (FIX / "data.water").read_text().splitlines()
    box = np.array([float(ln.split()[1]) for ln in lines if ln.rstrip().endswith("hi")])
    start = next(i for i, ln in enumerate(lines) if ln.startswith("Atoms")) + 2
    rows = [ln.split() for ln in lines[start:] if len(ln.split()) >= 5]
    types = np.array([int(r[1]) - 1 for r in rows])
    coord = np.array([[float(x) for x in r[2:5]] for r in rows])
    shifts = np.array(
        [[i, j, k] for i in range(reps) for j in range(reps) for k in range(reps)], float
    )
    coord = (coord[None] + (shifts * box)[:, None]).reshape(-1, 3)
    return coord, np.tile(types, reps**3), np.diag(box * reps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skin", type=float, default=1.0)
    ap.add_argument("--comm", action="store_true", help="the exchange path (as in LAMMPS)")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))
    # as the LAMMPS plugin runs the frozen model (src/lammps_plugin/dpa3_model.cpp)
    torch._C._set_graph_executor_optimize(False)

    from dpa3.convert import convert_deepmd
    from dpa3.data.neighbor import build_neighbor_data
    from dpa3.export import freeze
    from dpa3.export.freeze import load_frozen
    from dpa3.model.graph import build_graph, format_nlist, make_rows

    work = Path(tempfile.mkdtemp(prefix="dpa3_prof_"))
    model = convert_deepmd(FIX / "m0.ckpt.pt", work / "m0.pt").eval()
    frozen, _ = load_frozen(freeze(model, work / "m0.pth"))

    coord, atype, cell = read_water(args.reps)
    nb = build_neighbor_data(coord, cell.reshape(9), model.rcut + args.skin, 512)
    raw = nb.nlist[:, : int(nb.n_neighbors.max())]
    rng = np.random.default_rng(0)
    raw = np.take_along_axis(
        raw, rng.permuted(np.tile(np.arange(raw.shape[1]), (raw.shape[0], 1)), axis=1), 1
    )
    x = torch.tensor(nb.ext_coord)[None]
    mapping = torch.tensor(nb.mapping)[None]
    ext_atype = torch.tensor(atype)[mapping]
    nlist = torch.tensor(raw)[None]
    nloc = nlist.shape[1]
    # the path of the frozen methods (the eager stages always use the mapping)
    fmap: torch.Tensor | None = mapping
    comm = None
    if args.comm:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from exchange_reference import self_swap_comm_dict

        fmap, comm = None, self_swap_comm_dict(mapping, nloc, n_swaps=6)
    print(
        f"# {nloc} atoms, {x.shape[1]} extended, raw list width {nlist.shape[2]}; "
        f"{cpu_model()}, {torch.get_num_threads()} thread(s); load {loadavg()}; frozen "
        f"methods on the {'exchange (comm_dict)' if args.comm else 'single-process (mapping)'} "
        "path"
    )

    desc = model.descriptor
    nl_f = format_nlist(x, nlist, model.rcut, model.sel, model.tie_quantum)
    xc = x.clone().requires_grad_(True)
    g = build_graph(xc, nl_f, desc.a_rcut, desc.a_sel)
    print(f"# edges {g.center.shape[0]}, angles {g.a_center.shape[0]}")
    rows = {}

    def stage_format():
        with torch.no_grad():
            format_nlist(x, nlist, model.rcut, model.sel, model.tie_quantum)

    def stage_graph():
        build_graph(xc, nl_f, desc.a_rcut, desc.a_sel)

    def stage_rows():
        n = nloc
        make_rows(g.center, n, True)
        make_rows(mapping.reshape(-1)[g.nei_ext], n, True)
        make_rows(g.a_eij, g.center.shape[0], True)
        make_rows(g.a_eik, g.center.shape[0], True)

    def stage_prepare():
        return desc.prepare(xc, ext_atype, nl_f, mapping, None)

    p = stage_prepare()

    def stage_layers():
        with torch.no_grad():
            desc.run(p, 1, nloc, None)

    def full_steps():
        out = {}
        t = time.process_time
        t0 = t()
        c = x.detach().requires_grad_(True)
        pp = desc.prepare(c, ext_atype, nl_f, mapping, None)
        t1 = t()
        d = desc.run(pp, 1, nloc, None)
        t2 = t()
        e = model._fit(d, ext_atype[:, :nloc])
        energy = e.sum(dim=1, keepdim=True)
        t3 = t()
        (gr,) = torch.autograd.grad([energy.sum()], [c])
        t4 = t()
        f = -gr
        (f.unsqueeze(-1) * c.unsqueeze(-2)).reshape(1, -1, 9).sum(dim=1)
        t5 = t()
        out.update(
            prepare=t1 - t0, layers=t2 - t1, fitting=t3 - t2, backward=t4 - t3, virial=t5 - t4
        )
        return out

    def eager_total():
        model.forward_lower(x, ext_atype, nlist, mapping, False, None)

    def frozen_total():
        frozen.forward_lower(x, ext_atype, nlist, fmap, False, comm)

    def frozen_atomic():
        frozen.forward_lower(x, ext_atype, nlist, fmap, True, comm)

    stages = {
        "format_nlist": stage_format,
        "  build_graph (part of prepare)": stage_graph,
        "  make_rows x4 (part of prepare)": stage_rows,
        "layers, forward only (no_grad)": stage_layers,
        "eager forward_lower (sum of the above + format)": eager_total,
        "frozen forward_lower": frozen_total,
        "frozen forward_lower, atomic virial": frozen_atomic,
    }
    if hasattr(desc, "geometry"):
        ig = desc.index_graph(x, nl_f, mapping, None)

        def stage_geometry():
            desc.geometry(x.detach().requires_grad_(True), dict(ig))

        stages["  geometric factors (part of prepare, shared since graph format 2)"] = (
            stage_geometry
        )
    if hasattr(frozen, "prepare_graph"):
        graph = frozen.prepare_graph(x, nlist, fmap, comm)
        stages["frozen prepare_graph"] = lambda: frozen.prepare_graph(x, nlist, fmap, comm)
        stages["frozen forward_prepared (a non-driving model)"] = lambda: frozen.forward_prepared(
            x, ext_atype, graph, False, comm
        )
    # interleaved rounds, best of each (the machine is shared)
    for fn in stages.values():
        fn()
    full_steps()
    split: dict[str, float] = {}
    for _ in range(args.repeat):
        for k, fn in stages.items():
            t0 = time.process_time()
            fn()
            dt = time.process_time() - t0
            rows[k] = min(rows.get(k, dt), dt)
        for k, v in full_steps().items():
            split[k] = min(split.get(k, v), v)
    for k, v in split.items():
        rows[f"{k} (eager, with autograd)"] = v
    ref = rows["frozen forward_lower"]
    print("| stage | CPU ms | % of frozen forward_lower |")
    print("|---|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {1e3 * v:.2f} | {100 * v / ref:.1f} |")
    print(f"# load at end {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
