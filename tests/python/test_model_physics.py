"""Physics of the DPA3 model: derivatives, invariances, smoothness, batching, state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import evaluate, make_model

FRAMES = ["alloy", "small_cell", "molecule"]


def _energy(model, coord, atype, box):
    return float(evaluate(model, coord, atype, box)["energy"][0])


@pytest.mark.parametrize("name", FRAMES)
def test_force_is_minus_energy_gradient(frames, name):
    model = make_model(seed=1)
    coord, atype, box = frames[name]
    out = evaluate(model, coord, atype, box)
    rng = np.random.default_rng(0)
    h = 1e-5
    for i in rng.choice(len(coord), size=min(4, len(coord)), replace=False):
        for k in range(3):
            cp, cm = coord.copy(), coord.copy()
            cp[i, k] += h
            cm[i, k] -= h
            fd = -(_energy(model, cp, atype, box) - _energy(model, cm, atype, box)) / (2 * h)
            assert abs(fd - out["force"][i, k]) < 1e-6, (i, k, fd, out["force"][i, k])


@pytest.mark.parametrize("name", ["alloy", "small_cell"])
def test_virial_is_minus_strain_derivative(frames, name):
    model = make_model(seed=2)
    coord, atype, box = frames[name]
    out = evaluate(model, coord, atype, box)
    cell = box.reshape(3, 3)
    h = 1e-5
    fd = np.zeros((3, 3))
    for k in range(3):
        for j in range(3):
            es = []
            for s in (h, -h):
                eps = np.zeros((3, 3))
                eps[k, j] = s
                deform = np.eye(3) + eps
                es.append(_energy(model, coord @ deform.T, atype, (cell @ deform.T).reshape(9)))
            fd[k, j] = -(es[0] - es[1]) / (2 * h)
    assert np.abs(fd - out["virial"].reshape(3, 3)).max() < 1e-6


@pytest.mark.parametrize("name", ["alloy", "small_cell", "molecule"])
def test_atomic_virial_and_energy_sum_to_totals(frames, name):
    model = make_model(seed=3)
    coord, atype, box = frames[name]
    out = evaluate(model, coord, atype, box, atomic=True)
    assert np.allclose(out["atom_virial"].sum(0), out["virial"], atol=1e-10)
    assert np.isclose(out["atom_energy"].sum(), out["energy"][0], atol=1e-10)
    assert np.abs(out["force"].sum(0)).max() < 1e-10  # no net force


def test_invariances(frames):
    model = make_model(seed=4)
    coord, atype, box = frames["alloy"]
    ref = evaluate(model, coord, atype, box)
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rot = evaluate(model, coord @ q.T, atype, (box.reshape(3, 3) @ q.T).reshape(9))
    assert abs(rot["energy"][0] - ref["energy"][0]) < 1e-10
    assert np.abs(rot["force"] - ref["force"] @ q.T).max() < 1e-10
    assert np.abs(rot["virial"].reshape(3, 3) - q @ ref["virial"].reshape(3, 3) @ q.T).max() < 1e-9
    tr = evaluate(model, coord + np.array([0.3, -1.7, 2.2]), atype, box)
    assert abs(tr["energy"][0] - ref["energy"][0]) < 1e-10
    perm = rng.permutation(len(coord))
    pe = evaluate(model, coord[perm], atype[perm], box)
    assert abs(pe["energy"][0] - ref["energy"][0]) < 1e-10
    assert np.abs(pe["force"] - ref["force"][perm]).max() < 1e-10
    img = coord.copy()
    img[0] += box.reshape(3, 3)[1] - 2 * box.reshape(3, 3)[2]
    im = evaluate(model, img, atype, box)
    assert abs(im["energy"][0] - ref["energy"][0]) < 1e-10
    assert np.abs(im["force"] - ref["force"]).max() < 1e-10


def test_types_matter_and_energy_is_not_trivial(frames):
    """Guards the other tests against a model that ignores its inputs."""
    model = make_model(seed=6)
    coord, atype, box = frames["alloy"]
    ref = evaluate(model, coord, atype, box)
    swapped = atype.copy()
    swapped[:3] = (swapped[:3] - 1) % 3 + 2
    assert abs(evaluate(model, coord, swapped, box)["energy"][0] - ref["energy"][0]) > 1e-6
    assert np.abs(ref["force"]).max() > 1e-4


@pytest.mark.parametrize("which", ["e_rcut", "a_rcut"])
def test_smooth_across_cutoffs(which):
    """With the polynomial switch and smooth_edge_update, E and F are continuous at cutoffs."""
    model = make_model(seed=7, use_exp_switch=False, smooth_edge_update=True)
    rc = 4.5 if which == "e_rcut" else 3.5
    base = np.array([[0.0, 0.0, 0.0], [1.6, 0.2, 0.1], [-0.3, 1.5, 0.4]])
    atype = np.array([2, 3, 4, 2])

    def at(r):
        c = np.vstack([base, [r, 0.0, 0.0]])
        return evaluate(model, c, atype, None)

    d = 1e-7
    lo, hi = at(rc - d), at(rc + d)
    assert abs(lo["energy"][0] - hi["energy"][0]) < 1e-9
    assert np.abs(lo["force"] - hi["force"]).max() < 1e-6
    # and the far atom does interact inside the cutoff
    assert abs(at(rc - 0.3)["energy"][0] - hi["energy"][0]) > 1e-8


def test_nonsmooth_edge_update_jumps_at_a_rcut():
    """The legacy default (smooth_edge_update false) is discontinuous at a_rcut, as upstream."""
    model = make_model(seed=8, use_exp_switch=False, smooth_edge_update=False)
    base = np.array([[0.0, 0.0, 0.0], [1.6, 0.2, 0.1], [-0.3, 1.5, 0.4]])
    atype = np.array([2, 3, 4, 2])
    e = [
        evaluate(model, np.vstack([base, [3.5 + s, 0, 0]]), atype, None)["energy"][0]
        for s in (-1e-7, 1e-7)
    ]
    assert abs(e[0] - e[1]) > 1e-6


def test_batch_equals_single_frames(frames):
    model = make_model(seed=9)
    coord, atype, box = frames["alloy"]
    rng = np.random.default_rng(1)
    c2 = coord + rng.normal(scale=0.05, size=coord.shape)
    b2 = box * 1.02
    cs = torch.tensor(np.stack([coord, c2]))
    bs = torch.tensor(np.stack([box, b2]))
    ts = torch.tensor(np.stack([atype, atype]))
    out = model(cs, ts, bs)
    for f, (c, b) in enumerate([(coord, box), (c2, b2)]):
        single = evaluate(model, c, atype, b)
        assert abs(out["energy"][f, 0].item() - single["energy"][0]) < 1e-10
        assert np.abs(out["force"][f].detach().numpy() - single["force"]).max() < 1e-10
        assert np.abs(out["virial"][f].detach().numpy() - single["virial"]).max() < 1e-9


def test_serialize_round_trip(frames):
    from dpa3.model import EnergyModel

    model = make_model(seed=10)
    clone = EnergyModel.deserialize(model.serialize())
    clone.eval()
    coord, atype, box = frames["small_cell"]
    a, b = evaluate(model, coord, atype, box), evaluate(clone, coord, atype, box)
    assert a["energy"][0] == b["energy"][0]
    assert np.array_equal(a["force"], b["force"])


def test_forward_lower_accepts_raw_unsorted_lists_with_skin(frames):
    """forward_lower re-sorts, cuts at rcut and truncates: a shuffled, wider list is the same."""
    from dpa3.data.neighbor import build_neighbor_batch

    model = make_model(seed=11)
    coord, atype, box = frames["alloy"]
    nb = build_neighbor_batch(coord[None], box[None], 4.5 + 1.0, 200)  # rcut + skin
    mapping = nb.mapping
    ext_atype = torch.tensor(atype)[mapping]
    nl = nb.nlist.clone()
    gen = torch.Generator().manual_seed(0)
    nl = nl[:, :, torch.randperm(nl.shape[2], generator=gen)]
    shuffled = model.forward_lower(nb.ext_coord, ext_atype, nl, mapping)
    ref = evaluate(model, coord, atype, box)
    assert abs(shuffled["energy"].item() - ref["energy"][0]) < 1e-10
    assert np.abs(shuffled["virial"][0].detach().numpy() - ref["virial"]).max() < 1e-9


def _composite(model, on: bool) -> None:
    """Force the composite PyTorch angle path (the one of activations without a kernel)."""
    for layer in model.descriptor.layers:
        layer.act_code = -1 if on else {"silu": 0, "silut": 1, "tanh": 2}[layer.act.name]


@pytest.mark.parametrize(
    "repflow", [{}, {"sequential_update": True}, {"smooth_edge_update": False}]
)
def test_fused_kernel_equals_composite_path(frames, repflow):
    """The fused C++ angle kernel (evaluation and training) = the composite PyTorch path."""
    model = make_model(seed=12, **repflow)
    coord, atype, box = frames["alloy"]
    ev = evaluate(model, coord, atype, box, atomic=True)
    model.train()
    tr = evaluate(model, coord, atype, box, atomic=True)
    _composite(model, True)
    comp = evaluate(model, coord, atype, box, atomic=True)
    _composite(model, False)
    for k in ("energy", "force", "virial", "atom_virial"):
        assert np.abs(ev[k] - comp[k]).max() < 1e-11, k
        assert np.abs(tr[k] - comp[k]).max() < 1e-11, k


def test_fused_kernel_second_derivatives_through_the_model(frames):
    """Forces with create_graph and their gradient (what a force loss needs) through the fused
    kernel equal the composite path's."""
    from dpa3.data.neighbor import build_neighbor_batch

    model = make_model(seed=13)  # eval mode; the angle path does not depend on the mode
    coord, atype, box = frames["small_cell"]
    nb = build_neighbor_batch(coord[None], box[None], 4.5, 80)
    res = []
    for composite in (False, True):
        _composite(model, composite)
        x = nb.ext_coord.clone().requires_grad_(True)
        t = torch.tensor(atype)[nb.mapping]
        e = model._atomic_energy(x, t, nb.nlist, nb.mapping, None).sum()
        (g,) = torch.autograd.grad(e, x, create_graph=True)
        (gg,) = torch.autograd.grad((g * torch.sin(g)).sum(), x)
        res.append((g.detach(), gg))
    _composite(model, False)
    assert res[0][1].abs().max() > 0
    for a, b in zip(res[0], res[1], strict=True):
        assert (a - b).abs().max() < 1e-10
