"""Second derivatives of the fused angle block, and training through it.

``dpa3::angle_block`` is differentiable twice (its backward is an autograd Function whose
backward is the fused ``_angle_block_bwd2`` kernel), so training (forces by autograd with
``create_graph``, then the loss gradient) runs the fused kernel. Checked here against finite
differences (``gradcheck``/``gradgradcheck``, fused CPU kernel and generic ATen implementation)
and, for the whole model in training mode, against the composite PyTorch path (``act_code = -1``
on the layers, the path used for activations the kernel does not implement).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from conftest import make_model, small_model_dict
from test_ops_kernels import angle_graph, block_case

from dpa3 import _ops


@pytest.fixture(scope="module", autouse=True)
def ops() -> None:
    assert _ops.load_ops(), "libdpa3_ops.so not built (pip install --no-build-isolation -e .)"


KEYS = ["a", "wa", "pe", "vk", "w", "beta"]


def block_fn(eik, aptr, nptr, de, act, thr, alpha):
    def fn(a, wa, pe, vk, w, beta):
        out = torch.ops.dpa3.angle_block(
            a, wa, pe, vk, w, eik, aptr, nptr, de, act, thr, alpha, beta
        )
        return tuple(out)

    return fn


@pytest.mark.parametrize("generic", [False, True], ids=["fused", "generic"])
@pytest.mark.parametrize("act,thr", [(0, 0.0), (1, 0.5), (2, 0.0)])
@pytest.mark.parametrize("de,da", [(4, 3), (0, 3), (4, 0)])
def test_gradcheck_and_gradgradcheck(generic, act, thr, de, da) -> None:
    """First and second derivatives against finite differences (float64), with respect to every
    floating input and, for the second, the incoming gradients too."""
    t, eij, eik, aptr, nptr, _ = block_case(3, de, da, scale=1.5)
    if act == 1:  # both branches of silut
        pre = t["a"] @ t["wa"] + t["pe"][eij] + t["vk"][eik]
        assert (pre >= thr).any() and (pre < thr).any()
    fn = block_fn(eik, aptr, nptr, de, act, thr, 0.7)
    inputs = [t[k] for k in KEYS]
    with _ops.generic_kernels() if generic else contextlib.nullcontext():
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)


def test_gradgradcheck_with_alpha_zero_and_partial_inputs() -> None:
    """alpha = 0 and only some inputs requiring gradients (need_wa/need_beta off)."""
    t, _, eik, aptr, nptr, _ = block_case(8, 4, 3, scale=1.2)
    for k in ("wa", "beta"):
        t[k] = t[k].detach()
    fn = block_fn(eik, aptr, nptr, 4, 0, 0.0, 0.0)

    def partial(a, pe, vk, w):
        return fn(a, t["wa"], pe, vk, w, t["beta"])

    inputs = [t[k] for k in ("a", "pe", "vk", "w")]
    assert torch.autograd.gradcheck(partial, inputs)
    assert torch.autograd.gradgradcheck(partial, inputs)


def test_larger_graph_spans_several_blocks() -> None:
    """Enough angles for several kernel blocks (1024 angles each) and threads: second
    derivatives of the fused kernel equal those of the generic implementation."""
    gen = torch.Generator().manual_seed(0)
    eij, eik, aptr, nptr, nedge = angle_graph(11, ncenter=500)
    assert len(eij) > 2048
    de, da = 6, 5
    t = dict(
        a=torch.randn(len(eij), da, dtype=torch.float64, generator=gen),
        wa=torch.randn(da, de + da, dtype=torch.float64, generator=gen),
        pe=torch.randn(nedge, de + da, dtype=torch.float64, generator=gen),
        vk=torch.randn(nedge, de + da, dtype=torch.float64, generator=gen),
        w=torch.rand(len(eij), dtype=torch.float64, generator=gen),
        beta=torch.randn(da, dtype=torch.float64, generator=gen),
    )
    inputs = [t[k].requires_grad_(True) for k in KEYS]
    fn = block_fn(eik, aptr, nptr, de, 1, 0.8, 0.9)

    def second() -> list[torch.Tensor]:
        red, aout = fn(*inputs)
        s = (torch.sin(red) * 2).sum() + (torch.cos(aout) * aout).sum()
        g = torch.autograd.grad(s, inputs, create_graph=True)
        s2 = sum(
            (gi * torch.linspace(0.5, 1.5, gi.numel()).reshape(gi.shape)).square().sum() for gi in g
        )
        return [x.detach() for x in (*g, *torch.autograd.grad(s2, inputs))]

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        fused = second()
    finally:
        torch.set_num_threads(before)
    with _ops.generic_kernels():
        generic = second()
    for k, (x, y) in enumerate(zip(fused, generic, strict=True)):
        scale = max(float(y.abs().max()), 1.0)
        assert float((x - y).abs().max()) <= 1e-12 * scale, k


def test_third_derivatives_are_refused() -> None:
    t, _, eik, aptr, nptr, _ = block_case(5, 4, 3)
    red, _ = block_fn(eik, aptr, nptr, 4, 0, 0.0, 1.0)(*[t[k] for k in KEYS])
    (g,) = torch.autograd.grad(red.square().sum(), t["a"], create_graph=True)
    (gg,) = torch.autograd.grad(g.square().sum(), t["vk"], retain_graph=True)  # second: fine
    assert gg.abs().max() > 0
    with pytest.raises(RuntimeError, match="up to second order"):  # a graph for the third
        torch.autograd.grad(g.square().sum(), t["vk"], create_graph=True)


# ------------------------------------------------------------------ the model in training mode
def _model(seed: int, activation: str, **repflow):
    from dpa3.config import ModelConfig
    from dpa3.model import EnergyModel

    d = small_model_dict(**repflow)
    d["descriptor"]["activation_function"] = activation
    torch.manual_seed(seed)
    model = EnergyModel(ModelConfig.from_dict(d))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.train()
    return model


def _train_step(model, coord, atype, box, composite: bool):
    """Energy, forces and the parameter gradients of an energy + force loss, as training does."""
    layers = model.descriptor.layers
    codes = [layer.act_code for layer in layers]
    if composite:
        for layer in layers:
            layer.act_code = -1
    try:
        c = torch.tensor(coord, dtype=torch.float64).reshape(1, -1, 3)
        t = torch.tensor(atype, dtype=torch.long).reshape(1, -1)
        b = None if box is None else torch.tensor(box, dtype=torch.float64).reshape(1, 9)
        out = model(c, t, b)
        loss = out["energy"].square().sum() + (out["force"] * torch.cos(out["force"])).sum()
        params = [p for p in model.parameters() if p.requires_grad]
        # parameters that do not reach the loss get None in both paths (an optimizer such as
        # AdamW skips them, a zero gradient would decay them): compared below
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        for layer, code in zip(layers, codes, strict=True):
            layer.act_code = code
    res = {"energy": out["energy"].detach(), "force": out["force"].detach()}
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    res.update((n, torch.zeros(0) if g is None else g) for n, g in zip(names, grads, strict=True))
    return res


@pytest.mark.parametrize(
    "activation,repflow",
    [
        ("silut:3.0", {}),
        ("silut:0.3", {"update_style": "res_avg"}),
        ("silu", {"sequential_update": True}),
        ("tanh", {"smooth_edge_update": False, "update_style": "res_incr"}),
    ],
)
def test_training_fused_equals_composite(frames, activation, repflow):
    """Training mode through the fused kernel = the composite path: energy, forces and every
    parameter gradient of a loss of both (float64, 1e-10)."""
    model = _model(21, activation, **repflow)
    assert model.descriptor.layers[0].act_code >= 0
    for name in ("alloy", "molecule"):
        coord, atype, box = frames[name]
        fused = _train_step(model, coord, atype, box, composite=False)
        comp = _train_step(model, coord, atype, box, composite=True)
        assert fused.keys() == comp.keys()
        assert any("angle" in k for k in fused)  # the angle weights get gradients
        for k in fused:
            assert fused[k].shape == comp[k].shape, k  # None (shape (0,)) in both or neither
            if comp[k].numel() == 0:
                continue
            scale = max(float(comp[k].abs().max()), 1.0)
            err = float((fused[k] - comp[k]).abs().max())
            assert err <= 1e-10 * scale, f"{name}/{k}: {err:.3e}"


def test_training_uses_the_fused_kernel(frames):
    """The op runs in training mode (not silently the composite path)."""
    model = make_model(seed=4)
    model.train()
    coord, atype, box = frames["small_cell"]
    c = torch.tensor(coord, dtype=torch.float64).reshape(1, -1, 3)
    t = torch.tensor(atype, dtype=torch.long).reshape(1, -1)
    b = torch.tensor(box, dtype=torch.float64).reshape(1, 9)
    with torch.autograd.profiler.profile() as prof:
        out = model(c, t, b)
        out["force"].square().sum().backward()
    names = {e.name for e in prof.function_events}
    assert {"dpa3::angle_block", "dpa3::_angle_block_bwd", "dpa3::_angle_block_bwd2"} <= names
    assert np.isfinite(out["energy"].detach().numpy()).all()
