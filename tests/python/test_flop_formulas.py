"""FLOP formulas of the fused primitives (``dpa3._ops.register_flop_formulas``).

``torch.utils.flop_counter.FlopCounterMode`` sees a primitive (``torch.ops.dpa3._outer_h`` ...)
as one opaque call: the ATen calls inside its kernel, fused or generic, run after the dispatch
mode has handled the primitive and are not counted.  Each registered formula must give what
FlopCounterMode counts for the composite ATen formulation of the same computation on the same
shapes (``aten.mm``/``aten.bmm``, as ``src/ops/kernels/generic.cpp`` writes it), and the whole
model with the fused angle kernel must count the composite model's products plus the one the
kernel recomputes in its backward pass.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import alloy_frame, make_model
from test_ops_kernels import block_case, block_reference, outer_case
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from dpa3 import _ops

PRIMS = ("_angle_block_fwd", "_angle_block_bwd", "_outer_sum", "_outer_h", "_outer_g")


@pytest.fixture(scope="module", autouse=True)
def formulas() -> None:
    assert _ops.load_ops(), "libdpa3_ops.so not built (pip install --no-build-isolation -e .)"
    _ops.register_flop_formulas()
    _ops.register_flop_formulas()  # idempotent: a second call neither raises nor replaces


class _NoModules:
    """FlopCounterMode's module tracker off (its hooks break autograd.grad w.r.t. leaves)."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def counts(fn) -> dict[str, int]:
    """FLOPs of ``fn()`` per op packet name, by FlopCounterMode."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModules()
    with counter:
        fn()
    return {str(k): int(v) for k, v in counter.get_flop_counts()["Global"].items()}


def total(fn) -> int:
    return sum(counts(fn).values())


def test_registration_is_explicit_and_idempotent() -> None:
    ops = torch.ops.dpa3
    for name in PRIMS:
        assert getattr(ops, name) in flop_registry, name
    before = {name: flop_registry[getattr(ops, name)] for name in PRIMS}
    _ops.register_flop_formulas()
    assert all(flop_registry[getattr(ops, n)] is before[n] for n in PRIMS)
    # additions only: no formula, 0 FLOPs (as element-wise ATen ops)
    for name in ("_edge_sum", "_gather", "_segment_sum"):
        assert getattr(ops, name) not in flop_registry, name


@pytest.mark.parametrize("generic", [False, True])
def test_outer_primitives_count_their_bmm_formulation(generic) -> None:
    nedge, n, k, d = 40, 7, 3, 5
    h, g, idx, perm, ptr, _ = outer_case(nedge=nedge, n=n, k=k, d=d)
    h, g = h.detach(), g.detach()
    G = torch.randn(n, k, d, dtype=h.dtype)
    ops = torch.ops.dpa3
    with _ops.generic_kernels() if generic else contextlib.nullcontext():
        fused = {
            "sum": counts(lambda: ops._outer_sum(h, g, idx, perm, ptr)),
            "h": counts(lambda: ops._outer_h(h, G, idx)),
            "g": counts(lambda: ops._outer_g(g, G, idx)),
        }
    # generic.cpp's formulations; _outer_sum there is h.unsqueeze(2) * g.unsqueeze(1) (an
    # element-wise product, counted 0), the same products as bmm([E, k, 1], [E, 1, d])
    composite = {
        "sum": counts(lambda: torch.bmm(h.unsqueeze(2), g.unsqueeze(1))),
        "h": counts(lambda: torch.bmm(h.unsqueeze(1), G.index_select(0, idx))),
        "g": counts(lambda: torch.bmm(G.index_select(0, idx), g.unsqueeze(2))),
    }
    for key, name in (("sum", "dpa3._outer_sum"), ("h", "dpa3._outer_h"), ("g", "dpa3._outer_g")):
        assert fused[key] == {name: 2 * nedge * k * d}, key
        assert composite[key] == {"aten.bmm": 2 * nedge * k * d}, key


def test_center_outer_derivatives_count_as_the_bmm_reference() -> None:
    h, g, idx, perm, ptr, n = outer_case(nedge=30, n=6, k=3, d=4)

    def run(fn):
        out = fn(h, g)
        gh, gg = torch.autograd.grad(torch.sin(out).sum(), [h, g], create_graph=True)
        torch.autograd.grad((gh**2).sum() + (gg**2).sum(), [h, g])

    def reference(h_, g_):  # [E, k, 1] x [E, 1, d] summed per centre
        t = torch.bmm(h_.unsqueeze(2), g_.unsqueeze(1))
        return torch.zeros(n, *t.shape[1:], dtype=t.dtype).index_add(0, idx, t)

    ours = total(lambda: run(lambda h_, g_: torch.ops.dpa3.center_outer(h_, g_, idx, perm, ptr)))
    ref = total(lambda: run(reference))
    assert ours == ref > 0


@pytest.mark.parametrize("generic", [False, True])
@pytest.mark.parametrize("need_wa", [True, False])
@pytest.mark.parametrize("de,da", [(4, 3), (0, 3), (4, 0)])
def test_angle_block_counts_the_composite_plus_its_recomputation(de, da, need_wa, generic):
    t, eij, eik, aptr, nptr, nedge = block_case(1, de, da)
    t["wa"].requires_grad_(need_wa)
    keys = ["a", "pe", "vk", "w"] + (["wa"] if need_wa else [])
    alpha, act, thr = 0.7, 1, 0.5

    def run(fn):
        red, aout = fn()
        loss = (torch.sin(red) ** 2).sum() + (torch.cos(aout) * 3).sum()
        torch.autograd.grad(loss, [t[k] for k in keys])

    def fused_block():
        return torch.ops.dpa3.angle_block(
            t["a"], t["wa"], t["pe"], t["vk"], t["w"], eik, aptr, nptr, de, act, thr, alpha,
            t["beta"],
        )  # fmt: skip

    def composite():
        return block_reference(
            t["a"], t["wa"], t["pe"], t["vk"], t["w"], eij, eik, de, act, thr, alpha, t["beta"],
            nedge,
        )  # fmt: skip

    with _ops.generic_kernels() if generic else contextlib.nullcontext():
        ours = counts(lambda: run(fused_block))
    ref = counts(lambda: run(composite))
    # the kernel's backward forms a wa again instead of keeping it: one more forward product
    recompute = total(lambda: t["a"].detach().mm(t["wa"].detach()))
    nangle, da_in = t["a"].shape
    assert recompute == 2 * nangle * da_in * (de + da)
    assert set(ref) == {"aten.mm"}
    assert ours["dpa3._angle_block_fwd"] == recompute
    assert sum(ours.values()) == sum(ref.values()) + recompute
    assert ours["dpa3._angle_block_bwd"] == (3 if need_wa else 2) * recompute


def _model_count(model, frame) -> dict[str, int]:
    coord, atype, box = frame
    c = torch.tensor(coord, dtype=torch.float64).reshape(1, -1, 3)
    a = torch.tensor(atype, dtype=torch.long).reshape(1, -1)
    b = torch.tensor(box, dtype=torch.float64).reshape(1, 9)
    return counts(lambda: model(c, a, b))


def test_whole_model_counts_the_composite_model_plus_the_recomputation() -> None:
    """Energy, forces and virial of the eager model: with the fused angle kernel (evaluation)
    the count is the composite path's (the angle block in ATen calls, as for an activation the
    kernel does not implement; the rest through the same primitives) plus one recomputed
    ``a W_a`` per layer."""
    model = make_model(seed=3)
    frame = alloy_frame()
    fused = _model_count(model, frame)
    with _ops.generic_kernels():
        generic = _model_count(model, frame)
    codes = [layer.act_code for layer in model.descriptor.layers]
    for layer in model.descriptor.layers:  # the composite angle block (as for activations the
        layer.act_code = -1  # kernel does not implement); the rest through the same primitives
    try:
        composite = _model_count(model, frame)
    finally:
        for layer, code in zip(model.descriptor.layers, codes, strict=True):
            layer.act_code = code
    assert fused == generic
    assert "dpa3._angle_block_fwd" not in composite and fused["dpa3._angle_block_fwd"] > 0
    assert fused["dpa3._angle_block_bwd"] == 2 * fused["dpa3._angle_block_fwd"]
    assert sum(fused.values()) == sum(composite.values()) + fused["dpa3._angle_block_fwd"]
    for name in ("dpa3._outer_sum", "dpa3._outer_h", "dpa3._outer_g"):
        assert fused[name] == composite[name] > 0, name
