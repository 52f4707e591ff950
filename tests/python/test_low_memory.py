"""The low-memory evaluation (layers recomputed one at a time in the backward pass).

Above ``EnergyModel.graph_budget_bytes`` (the estimated size of the layers' autograd graph),
evaluation keeps only each layer's inputs and runs the layers again, last first, while it
differentiates them (``docs/internals.md``, "Memory").  These tests force that path with a
budget of 0 and check it against DeePMD-kit's own numbers for every parity combination, through
the device-generic kernels, on the exchange-op path of a frozen model, and that the choice of the
path follows the budget (on every rank alike).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import alloy_frame, make_model, small_cell_frame

PARITY = Path(__file__).resolve().parents[1] / "data" / "parity"
COMBOS = sorted(p.name for p in PARITY.iterdir() if (p / "reference.npz").exists())
KEYS = ("energy", "force", "virial")


@contextlib.contextmanager
def count_recomputations(monkeypatch):
    """Count the calls of the low-memory backward pass (eager models)."""
    from dpa3.model.descriptor import DescrptDPA3

    calls = []
    original = DescrptDPA3.coord_grad

    def spy(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(DescrptDPA3, "coord_grad", spy)
    yield calls


def _check_against_deepmd(model, combo):
    ref = np.load(PARITY / combo / "reference.npz")
    f32 = "f32" in combo
    for frame in [str(f) for f in ref["frames"]]:
        coord = torch.tensor(ref[f"{frame}.coord"], dtype=torch.float64)
        atype = torch.tensor(ref[f"{frame}.atype"], dtype=torch.long)
        key = f"{frame}.box"
        box = torch.tensor(ref[key], dtype=torch.float64) if key in ref.files else None
        out = model(coord, atype, box)
        for k in KEYS:
            got = out[k].detach().numpy()
            want = ref[f"{frame}.{k}"].reshape(got.shape)
            tol = 1e-5 * max(np.abs(want).max(), 1.0) if f32 else 1e-10
            err = np.abs(got - want).max()
            assert err < tol, f"{combo}/{frame}/{k}: max |diff| {err:.3e} > {tol:.1e}"


@pytest.mark.parametrize("combo", COMBOS)
def test_low_memory_path_gives_deepmd_numbers(combo, monkeypatch):
    """Every parity combination; the layers run in blocks of about 3,000 angles (several
    blocks on the 192-atom water frame, one on the small frames)."""
    from dpa3.convert import load_deepmd_model

    model = load_deepmd_model(PARITY / combo / "model.ckpt.pt").eval()
    model.graph_budget_bytes = 0
    model.descriptor.chunk_angles = 3000
    with count_recomputations(monkeypatch) as calls:
        _check_against_deepmd(model, combo)
    assert len(calls) == 4, calls  # one per frame: the path under test really ran


@pytest.mark.parametrize(
    "combo", ["water_recipe_f32", "sequential", "no_angle_update", "multi_edge", "compress_linear"]
)
def test_low_memory_path_through_generic_kernels(combo, monkeypatch):
    """The same with the device-generic kernels (what a CUDA build runs)."""
    from dpa3 import _ops
    from dpa3.convert import load_deepmd_model

    model = load_deepmd_model(PARITY / combo / "model.ckpt.pt").eval()
    model.graph_budget_bytes = 0
    with count_recomputations(monkeypatch) as calls, _ops.generic_kernels():
        _check_against_deepmd(model, combo)
    assert calls


def _lower(model, frame):
    from dpa3.data.neighbor import build_neighbor_batch

    coord, atype, box = frame
    nb = build_neighbor_batch(
        coord[None], None if box is None else box[None], model.get_rcut(), model.get_sel()[0]
    )
    return nb.ext_coord, torch.tensor(atype)[nb.mapping], nb.nlist, nb.mapping, len(atype)


def _fold(x, mapping, nloc):
    return torch.zeros(1, nloc, x.shape[2], dtype=x.dtype).index_add(1, mapping[0], x)


@pytest.mark.parametrize(
    "combo", ["water_recipe_f32", "sequential", "no_angle_update", "concat_tebd_bias", "res_avg"]
)
def test_frozen_low_memory_model_on_the_exchange_path(combo, tmp_path):
    """A model frozen with a zero budget, through the border_exchange op (self swaps, as one
    LAMMPS rank runs it) and through the mapping path, equals the eager model's standard path:
    the exchange runs again inside each recomputed layer and its backward there."""
    from exchange_reference import self_swap_comm_dict

    from dpa3.convert import load_deepmd_model
    from dpa3.export.freeze import freeze, load_frozen

    eager = load_deepmd_model(PARITY / combo / "model.ckpt.pt").eval()
    eager.graph_budget_bytes = 0
    eager.descriptor.chunk_angles = 40  # blocks of one or a few centres
    frozen, _ = load_frozen(freeze(eager, tmp_path / "model.pth"))
    assert frozen.graph_budget_bytes == 0 and frozen.descriptor.chunk_angles == 40
    eager.graph_budget_bytes = 1 << 60  # the reference: the standard path
    atol = 1e-5 if "f32" in combo else 1e-12
    for frame in (small_cell_frame(), alloy_frame()):
        ext, ext_t, nlist, mapping, nloc = _lower(eager, frame)
        ref = eager.forward_lower(ext, ext_t, nlist, mapping, False, None)
        comm = self_swap_comm_dict(mapping, nloc, n_swaps=4)
        for got in (
            frozen.forward_lower(ext, ext_t, nlist, mapping, False, None),
            frozen.forward_lower(ext, ext_t, nlist, None, False, comm),
        ):
            for k in ("energy", "atom_energy", "virial"):
                assert (got[k] - ref[k]).abs().max().item() < atol, k
            f_got = _fold(got["extended_force"], mapping, nloc)
            f_ref = _fold(ref["extended_force"], mapping, nloc)
            assert f_ref.abs().max() > 1e-6
            assert (f_got - f_ref).abs().max().item() < atol


def test_the_budget_chooses_the_path(monkeypatch):
    """Standard path while the estimate fits the budget, recomputation above it; training
    (second derivatives) and per-atom virials always keep the graph."""
    from dpa3.model.model import GRAPH_BUDGET_BYTES

    model = make_model(seed=3)
    assert model.graph_budget_bytes == GRAPH_BUDGET_BYTES == 4 * 1024**3
    coord, atype, box = alloy_frame()
    args = (torch.tensor(coord)[None], torch.tensor(atype)[None], torch.tensor(box)[None])
    ext, ext_t, nlist, mapping, _ = _lower(model, alloy_frame())
    p = model.descriptor.prepare(ext, ext_t, nlist, mapping, None)
    nedge, nangle = p.sw.shape[0], p.a_weight.shape[0]
    rf = model.cfg.descriptor.repflow
    # the documented estimate: nlayers * (2 A a_dim + 12 E e_dim) numbers of 8 bytes (float64)
    est = rf.nlayers * (2 * nangle * rf.a_dim + 12 * nedge * rf.e_dim) * 8
    assert model._graph_bytes(p) == est
    with count_recomputations(monkeypatch) as calls:
        model.graph_budget_bytes = est
        model(*args)
        assert calls == []
        model.graph_budget_bytes = est - 1
        low = model(*args)
        assert len(calls) == 1
        model(*args, do_atomic_virial=True)
        assert len(calls) == 1
        model.train()
        model(*args)
        assert len(calls) == 1
    model.eval()
    model.graph_budget_bytes = 1 << 60
    std = model(*args)
    for k in KEYS:
        assert (low[k] - std[k]).abs().max().item() < 1e-12, k


def test_any_rank_over_the_budget_sends_every_rank_down_the_low_memory_path(monkeypatch):
    """Under LAMMPS every rank must run the same exchanges: the choice is the minimum over the
    ranks of "fits" (allreduce_min), so a rank whose own graph fits still recomputes when another
    rank's does not (here the other rank is played by a patched allreduce_min)."""
    from exchange_reference import self_swap_comm_dict

    from dpa3 import _ops

    model = make_model(seed=4)
    ext, ext_t, nlist, mapping, nloc = _lower(model, alloy_frame())
    comm = self_swap_comm_dict(mapping, nloc, n_swaps=2)
    seen = []

    def other_rank_does_not_fit(flag, comm_dict):
        seen.append(int(flag[0]))
        return torch.zeros_like(flag)

    monkeypatch.setattr(_ops, "allreduce_min", other_rank_does_not_fit)
    with count_recomputations(monkeypatch) as calls:
        model.forward_lower(ext, ext_t, nlist, None, False, comm)
    assert seen == [1] and len(calls) == 1  # this rank fitted, and recomputed all the same
    monkeypatch.undo()
    with count_recomputations(monkeypatch) as calls:
        model.forward_lower(ext, ext_t, nlist, None, False, comm)  # the real op, one process
    assert calls == []


def test_freeze_memory_budget_option(tmp_path, capsys, monkeypatch):
    """``dpa3 freeze --memory-budget GIB`` stores the budget in the frozen model (0: always
    recompute); a negative or NaN budget is a one-line usage error."""
    import json

    from test_train import tiny_input

    from dpa3.cli.main import main
    from dpa3.export.freeze import load_frozen

    monkeypatch.chdir(tmp_path)
    (tmp_path / "input.json").write_text(json.dumps(tiny_input(steps=0)))
    assert main(["train", "input.json", "--skip-neighbor-stat"]) == 0
    assert main(["freeze", "model.ckpt.pt", "-o", "low.pth", "--memory-budget", "0"]) == 0
    assert main(["freeze", "model.ckpt.pt", "-o", "half.pth", "--memory-budget", "0.5"]) == 0
    assert main(["freeze", "model.ckpt.pt", "-o", "default.pth"]) == 0
    assert load_frozen(tmp_path / "low.pth")[0].graph_budget_bytes == 0
    assert load_frozen(tmp_path / "half.pth")[0].graph_budget_bytes == 512 * 1024**2
    assert load_frozen(tmp_path / "default.pth")[0].graph_budget_bytes == 4 * 1024**3
    capsys.readouterr()
    for bad in ("-1", "nan"):
        assert main(["freeze", "model.ckpt.pt", "-o", "bad.pth", "--memory-budget", bad]) == 1
        out = capsys.readouterr().out
        assert f"--memory-budget {float(bad)} must be a number of GiB >= 0" in out, out
        assert "Traceback" not in out
    assert not (tmp_path / "bad.pth").exists()


def test_blocks_of_centres_cover_every_edge_and_angle_once():
    """The blocks of the low-memory path: consecutive whole centres, each block's edges and
    angles the contiguous ranges of its centres, its row indices those of the batch rebased
    to the block (checked against the batch's own indices), at most ``chunk_angles`` angles
    unless one centre has more."""
    from dpa3.model.graph import gather, make_rows

    model = make_model(seed=5)
    frame = alloy_frame()
    ext, ext_t, nlist, mapping, nloc = _lower(model, frame)
    p = model.descriptor.prepare(ext, ext_t, nlist, mapping, None)
    center = p.center.idx
    for limit in (1, 50, 400, 1 << 30):
        model.descriptor.chunk_angles = limit
        chunks = model.descriptor.chunks(p)
        assert chunks[0].c0 == 0 and chunks[-1].c1 == nloc
        assert [c.c1 for c in chunks[:-1]] == [c.c0 for c in chunks[1:]]
        assert chunks[-1].e1 == center.shape[0] and chunks[-1].a1 == p.a_weight.shape[0]
        for c in chunks:
            edges = torch.nonzero((center >= c.c0) & (center < c.c1)).squeeze(1)
            assert edges.tolist() == list(range(c.e0, c.e1))
            angles = torch.nonzero((p.a_eij.idx >= c.e0) & (p.a_eij.idx < c.e1)).squeeze(1)
            assert angles.tolist() == list(range(c.a0, c.a1))
            assert c.a1 - c.a0 <= limit or c.c1 - c.c0 == 1
            assert torch.equal(c.center.idx + c.c0, center[c.e0 : c.e1])
            # the neighbour index into the block's rows: the batch's, and no row unread
            nrows = p.nei.ptr.shape[0] - 1 if c.rows is not None else None
            if c.rows is None:
                assert torch.equal(c.nei.idx, p.nei.idx[c.e0 : c.e1])
            else:
                assert torch.equal(c.rows[c.nei.idx], p.nei.idx[c.e0 : c.e1])
                assert torch.equal(c.rows, torch.unique(p.nei.idx[c.e0 : c.e1]))
                assert int(c.rows.max()) < nrows and c.nei.ptr.shape[0] == c.rows.shape[0] + 1
                y = torch.randn(nrows, 2, dtype=torch.float64)
                assert torch.equal(gather(y[c.rows], c.nei), y[p.nei.idx[c.e0 : c.e1]])
            assert torch.equal(c.a_eij.idx + c.e0, p.a_eij.idx[c.a0 : c.a1])
            assert torch.equal(c.a_eik.idx + c.e0, p.a_eik.idx[c.a0 : c.a1])
            # the inverse indices gather the same rows as the plain index
            x = torch.randn(int(c.e1 - c.e0), 3, dtype=torch.float64)
            for rows in (c.a_eij, c.a_eik):
                assert torch.equal(gather(x, rows), x[rows.idx])
            # the ik edges' inverse index (a slice of the batch's): a stable sort's
            ref = make_rows(c.a_eik.idx, int(c.e1 - c.e0), True)
            assert torch.equal(c.a_eik.perm, ref.perm) and torch.equal(c.a_eik.ptr, ref.ptr)
        if limit == 1:
            assert len(chunks) == nloc
        if limit == 1 << 30:
            assert len(chunks) == 1


def test_kept_inputs_and_preactivations():
    """On the fused path the first pass keeps the pre-activation of the edge update's angle term
    (``x_ang = Lin_ea2(red)``) and the node update's outer sums of ``e`` and ``n_j`` of exactly
    the layers that update edges (levels 2 and 1: the last layer keeps none), block by block,
    and the inputs of layers 1 .. L-1; all of them equal
    what the layers compute on the whole graph.  The edges and angles a layer computed are its
    successor's own (the backward pass may write their gradients in their place); the angles
    that a level-1 layer passes on unchanged are not its successor's own, and they and every
    kept block are views of one buffer."""
    model = make_model(seed=6, nlayers=4)
    desc = model.descriptor
    desc.chunk_angles = 400  # several blocks
    frame = alloy_frame()
    ext, ext_t, nlist, mapping, _ = _lower(model, frame)
    p = desc.prepare(ext, ext_t, nlist, mapping, None)
    assert p.fused
    chunks = desc.chunks(p)
    assert len(chunks) > 1

    def whole(layer: int, n, e, a, level: int):
        # the layer writes x_ang, T_e, T_n and its new edges into these (the first pass's)
        nn, ne, dn, de = n.shape[0], e.shape[0], n.shape[1], e.shape[1]
        keep = [e.new_full((ne, de), math.nan), e.new_full((nn, 3, de), math.nan)]
        keep += [e.new_full((nn, 3, dn), math.nan), e.new_full((ne, de), math.nan)]
        out = desc.layers[layer](*_layer_args(p, n, e, a), True, level, keep)
        assert out[1] is keep[3]
        assert not any(t.isnan().any() for t in keep)
        return out, keep[:3]

    with torch.no_grad():
        kept = desc.stack_inputs(p, chunks, None)
        ns, es, as_, pres = kept.ns, kept.es, kept.as_, kept.pres
        n0, e0, a0 = desc.initial_features(p)
        (ref_n1, ref_e1, ref_a1), x0 = whole(0, n0, e0, a0, 2)
        (_, _, ref_a2), _ = whole(1, ref_n1, ref_e1, ref_a1, 2)
        _, x2 = whole(2, ns[1], torch.cat(es[1]), torch.cat(as_[1]), 1)
    assert [r is not None for r in pres] == [True, True, True, False]
    assert all(len(r) == len(chunks) for r in pres[:3])
    assert all(len(e) == len(chunks) for e in es)
    assert all(len(a) == len(chunks) for a in as_)
    assert torch.allclose(ns[0], ref_n1, atol=1e-12)
    assert torch.allclose(torch.cat(es[0]), ref_e1, atol=1e-12)
    assert torch.allclose(torch.cat(as_[0]), ref_a1, atol=1e-12)
    assert not torch.equal(torch.cat(as_[0]), a0)  # layer 0 did update the angles
    assert torch.allclose(torch.cat(as_[1]), ref_a2, atol=1e-12)
    for layer, whole_keep in ((0, x0), (2, x2)):
        assert all(len(blk) == 3 for blk in pres[layer])
        for q in range(3):  # x_ang [E, e_dim], then the outer sums [N, 3, d] of e and n_j
            got = torch.cat([blk[q] for blk in pres[layer]])
            assert torch.allclose(got, whole_keep[q], atol=1e-12), (layer, q)
    assert x0[1].shape[1:] == (3, e0.shape[1]) and x0[2].shape[1:] == (3, n0.shape[1])
    # layers 1, 2 read new edges and angles; layer 3 (after the level-1 layer 2) new edges
    # and layer 2's input angles, passed on
    assert kept.own_e == [True, True, True]
    assert kept.own_a == [True, True, False]
    assert all(x is y for x, y in zip(as_[2], as_[1], strict=True))
    base = es[0][0].untyped_storage().data_ptr()
    kept_blocks = [t for r in pres[:3] for blk in r for t in blk]
    for blocks in [*es, *as_, kept_blocks]:
        assert all(t.untyped_storage().data_ptr() == base for t in blocks)


@pytest.mark.parametrize(
    "options",
    [{}, {"smooth_edge_update": False}, {"update_style": "res_avg"}, {"update_style": "res_incr"}],
)
def test_edge_update_gradient_from_kept_preactivations(options):
    """``replay`` + ``edge_tail_grad`` (the edge update's backward from its pre-activations,
    without the activations' and ``Lin_ea2``'s forward, the node update's outer sums kept) give
    the node output and the gradient that autograd takes
    through the layer's forward, for the edge output's gradient ``ge`` and the node output's
    ``gn``, to the node rows, the neighbour rows and the input edges; at level 2 and 1."""
    model = make_model(seed=3, nlayers=3, **options)
    desc = model.descriptor
    ext, ext_t, nlist, mapping, _ = _lower(model, alloy_frame())
    p = desc.prepare(ext, ext_t, nlist, mapping, None)
    assert p.fused
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        n, e, a = desc.layers[0](*_layer_args(p, *desc.initial_features(p)), True, 2)
    for level in (2, 1):
        layer = desc.layers[level - 1]
        leaves = [t.detach().clone().requires_grad_(True) for t in (n, n, e, a)]
        n2, e2, _ = layer(*_layer_args(p, *leaves[1:], n=leaves[0]), True, level)
        gn = torch.randn(n2.shape, generator=gen, dtype=n2.dtype)
        ge = torch.randn(e2.shape, generator=gen, dtype=e2.dtype)
        want = torch.autograd.grad([n2, e2], leaves[:3], [gn, ge])
        # what the first pass keeps: x_ang, T_e, T_n (and the new edges), written by the layer
        nn, ne, dn, de = n.shape[0], e.shape[0], n.shape[1], e.shape[1]
        keep = [e.new_empty(ne, de), e.new_empty(nn, 3, de), e.new_empty(nn, 3, dn)]
        keep.append(e.new_empty(ne, de))
        with torch.no_grad():
            _, e_first, _ = layer(*_layer_args(p, n, e, a), True, level, keep)
        assert e_first is keep[3] and torch.allclose(e_first, e2, atol=1e-12)
        kept = keep[:3]
        x_ang = kept[0]
        nl, xl, el, al = [t.detach().clone().requires_grad_(True) for t in (n, n, e, a)]
        n3, red, _, x_self = layer.replay(
            nl,
            xl,
            el,
            al,
            p.center,
            p.nei,
            p.h2sw,
            p.sw,
            p.a_weight,
            p.a_eij,
            p.a_eik,
            level,
            kept,
        )
        assert torch.allclose(n3, n2, atol=1e-12)  # the kept outer sums in their place
        g_self, t_e, t_red = layer.edge_tail_grad(ge, x_self.detach(), x_ang, p.is_a)
        got = torch.autograd.grad([n3, x_self, red, el], [nl, xl, el], [gn, g_self, t_red, t_e])
        for name, w, g in zip("n n_ext e".split(), want, got, strict=True):
            err = (g - w).abs().max().item()
            assert err < 1e-10 * max(w.abs().max().item(), 1.0), (options, level, name, err)


def _layer_args(p, n_ext, e, a, n=None):
    """Arguments of ``RepFlowLayer.forward`` up to ``fused`` on the whole graph (single
    process: the neighbour rows are the local nodes)."""
    n = n_ext if n is None else n
    return (n, n_ext, e, a, p.center, p.nei, p.h2sw, p.sw, p.a_weight, p.is_a, p.a_eij, p.a_eik)


@pytest.mark.parametrize("options", [{}, {"sequential_update": True}])
def test_neighbour_products_computed_once_for_all_rows(options):
    """A layer given ``proj = n_ext W_n`` (``RepFlowLayer.neighbour_matrix`` at its level, as the
    low-memory path computes it once for all rows) gives the outputs and, with ``proj`` a leaf
    whose gradient is taken to ``n_ext`` by ``W_n^T``, the gradients of its own products, at
    levels 2, 1 and 0; ``W_n`` holds the edge self-update's columns only where that runs."""
    model = make_model(seed=5, nlayers=3, **options)
    desc = model.descriptor
    ext, ext_t, nlist, mapping, _ = _lower(model, alloy_frame())
    p = desc.prepare(ext, ext_t, nlist, mapping, None)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        n, e, a = desc.layers[0](*_layer_args(p, *desc.initial_features(p)), True, 2)
    layer = desc.layers[1]
    for level in (2, 1, 0):
        w_n = layer.neighbour_matrix(level)
        with_self = level > 0 or layer.sequential
        assert w_n.shape == (layer.n_dim, layer.e_dim * with_self + layer.n_dim * layer.n_heads)
        leaves = [t.detach().clone().requires_grad_(True) for t in (n, n, e, a)]
        outs = layer(*_layer_args(p, *leaves[1:], n=leaves[0]), True, level)
        gouts = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs]
        want = torch.autograd.grad(outs, leaves[:3], gouts, allow_unused=True)
        nl, xl, el, al = [t.detach().clone().requires_grad_(True) for t in (n, n, e, a)]
        proj = torch.matmul(xl.detach(), w_n.detach()).requires_grad_(True)
        got_outs = layer(*_layer_args(p, xl, el, al, n=nl), True, level, None, proj)
        for o, g in zip(outs, got_outs, strict=True):
            assert torch.allclose(o, g, atol=1e-12, rtol=0), (options, level)
        g_n, g_x, g_e, g_p = torch.autograd.grad(
            got_outs, [nl, xl, el, proj], gouts, allow_unused=True
        )
        g_x = (torch.zeros_like(xl) if g_x is None else g_x) + torch.matmul(g_p, w_n.t())
        for name, w, g in zip("n n_ext e".split(), want, (g_n, g_x, g_e), strict=True):
            if w is None:
                assert g is None or not g.any(), (options, level, name)
                continue
            err = (g - w).abs().max().item()
            assert err < 1e-10 * max(w.abs().max().item(), 1.0), (options, level, name, err)


def test_workspace_sizes_are_steps_that_repeat():
    """The buffer of what the first pass keeps is sized in steps of 2^(1/8) (~9 %): never
    smaller than asked, at most one step larger, and the same for sizes within a step (the
    next evaluation of a slightly different graph gets the same size, so the allocator can
    hand back the freed buffer); slots are consecutive views, and asking past the end fails."""
    from dpa3.model.blocks import Workspace, workspace_numel

    assert [workspace_numel(n) for n in (0, 1, 2, 3)] == [0, 1, 2, 4]
    for n in (5, 100, 12_345, 10**6 + 5, 3 * 10**9 + 7):
        m = workspace_numel(n)
        assert n <= m <= 2 ** (1 / 8) * n + 1
    assert workspace_numel(1_000_001) == workspace_numel(1_040_000) == 1 << 20
    assert workspace_numel((1 << 20) + 1) > 1 << 20
    ws = Workspace(torch.zeros(1, dtype=torch.float32), 10)
    x = ws.slot(2, 3)
    y = ws.slot(1, 4)
    assert x.shape == (2, 3) and y.shape == (1, 4) and x.dtype == torch.float32
    assert y.data_ptr() == x.data_ptr() + 6 * 4  # consecutive in one buffer
    left = workspace_numel(10) - 10
    ws.slot(left, 1)  # the rounding's room
    with pytest.raises(AssertionError, match="capacity"):
        ws.slot(1, 1)


def test_last_layer_runs_once_with_the_fitting_net_block_by_block(monkeypatch):
    """The last layer runs once, block by block with its graph (not in the first pass, not
    again), the fitting net on each block's rows; a virtual atom (type -1) has energy 0, and
    everything equals the standard path."""
    from dpa3.model.network import FittingNet
    from dpa3.model.repflow import RepFlowLayer

    model = make_model(seed=7, nlayers=3)
    desc = model.descriptor
    desc.chunk_angles = 400  # several blocks
    coord, atype, box = alloy_frame()
    atype = atype.copy()
    atype[3] = -1
    args = (torch.tensor(coord)[None], torch.tensor(atype)[None], torch.tensor(box)[None])
    model.graph_budget_bytes = 1 << 60
    std = model(*args)
    last = desc.layers[-1]
    runs: list[bool] = []  # grad mode of the last layer's calls
    rows: list[int] = []  # rows of the fitting net's calls
    forward, energies = RepFlowLayer.forward, FittingNet.atom_energies

    def spy_forward(layer, *a, **k):
        if layer is last:
            runs.append(torch.is_grad_enabled())
        return forward(layer, *a, **k)

    def spy_energies(net, d):
        rows.append(d.shape[0])
        return energies(net, d)

    monkeypatch.setattr(RepFlowLayer, "forward", spy_forward)
    monkeypatch.setattr(FittingNet, "atom_energies", spy_energies)
    model.graph_budget_bytes = 0
    low = model(*args)
    ext, ext_t, nlist, mapping, _ = _lower(model, (coord, atype, box))
    nblocks = len(desc.chunks(desc.prepare(ext, ext_t, nlist, mapping, None)))
    assert nblocks > 1
    assert runs == [True] * nblocks
    assert len(rows) == nblocks and sum(rows) == len(atype)
    assert low["atom_energy"][0, 3].item() == 0.0
    for k in (*KEYS, "atom_energy"):
        assert (low[k] - std[k]).abs().max().item() < 1e-12, k
