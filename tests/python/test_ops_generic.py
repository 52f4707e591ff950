"""The device-generic implementation of every compute op against the fused CPU kernels.

On a GPU the compute ops run their generic implementation (ATen calls; hand-written CUDA
kernels only for the CSR scatter-sums). ``dpa3._ops.generic_kernels()`` makes the CPU run the
same generic code, so this file checks on a machine without a GPU that it computes what the
fused CPU kernels compute: forward, first and second derivatives, float64 within 1e-12 and
float32 within 1e-5 relative. The whole model through it is checked against DeePMD-kit's
references in ``test_parity_deepmd.py``.
"""

from __future__ import annotations

import pytest
import torch
from test_ops_kernels import block_case, csr, outer_case, run_block

from dpa3 import _ops


@pytest.fixture(scope="module", autouse=True)
def ops() -> None:
    assert _ops.load_ops(), "libdpa3_ops.so not built (pip install --no-build-isolation -e .)"


TOL = {torch.float64: 1e-12, torch.float32: 1e-5}  # relative to the largest |value|, at least 1


def assert_close(x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert x.shape == y.shape, what
    scale = max(float(y.abs().max()) if y.numel() else 0.0, 1.0)
    err = float((x - y).abs().max()) if x.numel() else 0.0
    assert err <= TOL[dtype] * scale, f"{what}: max |diff| {err:.3e} (scale {scale:.2e})"


def both(fn):
    """``fn()`` with the fused CPU kernels and with the generic implementation."""
    fused = fn()
    with _ops.generic_kernels():
        generic = fn()
    return fused, generic


def derivatives(fn, inputs, orders: int):
    """Outputs of ``fn`` and the derivatives of a nonlinear scalar of them up to ``orders``."""
    out = fn(*inputs)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    res = [o.detach() for o in outs]
    scalar = sum((torch.sin(o) * (k + 1)).sum() for k, o in enumerate(outs) if o.numel())
    grads = torch.autograd.grad(scalar, inputs, create_graph=orders > 1, allow_unused=True)
    res += [g.detach() for g in grads if g is not None]
    if orders > 1:
        second = sum((g**2).sum() for g in grads if g is not None)
        gg = torch.autograd.grad(second, inputs, allow_unused=True)
        res += [g.detach() for g in gg if g is not None]
    return res


def compare(fn, inputs, orders, dtype, name):
    fused, generic = both(lambda: derivatives(fn, inputs, orders))
    assert len(fused) == len(generic)
    for k, (x, y) in enumerate(zip(generic, fused, strict=True)):
        assert_close(x, y, dtype, f"{name}[{k}]")


DTYPES = [torch.float64, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_and_scatter_rows(dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    n, m, d = 9, 40, 5
    idx = torch.randint(0, n - 1, (m,), generator=gen)  # the last row receives nothing
    perm, ptr = csr(idx, n)
    x = torch.randn(n, d, dtype=dtype, generator=gen, requires_grad=True)
    y = torch.randn(m, d, dtype=dtype, generator=gen, requires_grad=True)
    compare(lambda x_: torch.ops.dpa3.gather_rows(x_, idx, perm, ptr), [x], 2, dtype, "gather")
    compare(lambda y_: torch.ops.dpa3.scatter_rows(y_, idx, perm, ptr), [y], 2, dtype, "scatter")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_nei,with_bias", [(True, True), (False, True), (True, False)])
def test_edge_sum(dtype, with_nei, with_bias) -> None:
    gen = torch.Generator().manual_seed(2)
    nedge, n, m, k = 30, 6, 9, 4
    ic = torch.randint(0, n, (nedge,), generator=gen)
    inn = torch.randint(0, m, (nedge,), generator=gen)
    pc, rc = csr(ic, n)
    pn, rn = csr(inn, m)
    xs = [
        torch.randn(*s, dtype=dtype, generator=gen).requires_grad_(True)
        for s in [(n, k), (m, k), (nedge, k), (k,)]
    ]

    def fn(xc, xn, xe, b):
        return torch.ops.dpa3.edge_sum(
            xc,
            xn if with_nei else None,
            xe,
            b if with_bias else None,
            ic,
            pc,
            rc,
            inn if with_nei else None,
            pn if with_nei else None,
            rn if with_nei else None,
        )

    compare(fn, xs, 2, dtype, "edge_sum")


@pytest.mark.parametrize("dtype", DTYPES)
def test_center_outer(dtype) -> None:
    h, g, idx, perm, ptr, _ = outer_case(dtype=dtype, seed=4)
    compare(
        lambda h_, g_: torch.ops.dpa3.center_outer(h_, g_, idx, perm, ptr),
        [h, g],
        2,
        dtype,
        "center_outer",
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,thr", [(0, 0.0), (1, 0.5), (2, 0.0)])
@pytest.mark.parametrize("de,da", [(4, 3), (0, 3), (4, 0)])
def test_angle_block(dtype, act, thr, de, da) -> None:
    """Forward, every first and every second derivative (the op is differentiable twice on
    every device: the fused _angle_block_bwd2 kernel vs its generic implementation)."""
    # float32: inputs of scale 1 (at scale 2 the pre-activations reach |x| ~ 8, where 1 - tanh^2
    # and the silu derivatives lose digits: both implementations then differ from the float64
    # values by ~4e-5 relative in the second derivatives, the rounding of the formula itself)
    scale = 2.0 if dtype == torch.float64 else 1.0
    t, _, eik, aptr, nptr, _ = block_case(6, de, da, dtype=dtype, scale=scale)
    keys = ["a", "wa", "pe", "vk", "w"] + (["beta"] if da else [])

    def fn(*xs):
        tt = dict(t, **dict(zip(keys, xs, strict=True)))
        red, aout = run_block(tt, eik, aptr, nptr, de, act, thr, 0.7)
        return [red, aout] if da else [red]

    compare(fn, [t[k] for k in keys], 2, dtype, f"angle_block act={act}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,thr", [(0, 0.0), (1, 0.5), (2, 0.0)])
def test_activation(dtype, act, thr) -> None:
    """``activation`` forward, first and second derivatives (silut: both branches)."""
    gen = torch.Generator().manual_seed(5)
    x = (2.0 * torch.randn(50, 6, generator=gen, dtype=torch.float64)).to(dtype)
    x.requires_grad_(True)
    compare(lambda t: _ops.activation(t, act, thr), [x], 2, dtype, f"activation act={act}")


def test_switch_selects_the_generic_aten_implementation() -> None:
    """The comparisons above are not of a kernel with itself: inside the context the ops run
    ATen's index_add (the generic scatter), outside they run the fused loops."""
    h, g, idx, perm, ptr, _ = outer_case(seed=5)

    def aten_ops() -> set[str]:
        with torch.autograd.profiler.profile() as prof:
            torch.ops.dpa3.center_outer(h, g, idx, perm, ptr)
            torch.ops.dpa3.scatter_rows(g, idx, perm, ptr)
        return {e.name for e in prof.function_events}

    fused = aten_ops()
    with _ops.generic_kernels():
        generic = aten_ops()
    assert {"dpa3::_outer_sum", "dpa3::_segment_sum"} <= fused & generic
    assert "aten::index_add_" in generic and "aten::index_add_" not in fused
    assert torch.ops.dpa3.set_generic_kernels(False) is False  # restored on exit


def test_ops_refuse_mixed_devices() -> None:
    """No op checks for CPU tensors any more, but every input must be on one device."""
    h, g, idx, perm, ptr, _ = outer_case(seed=6)
    with pytest.raises(RuntimeError, match="one device"):
        torch.ops.dpa3.center_outer(h, g.to("meta"), idx, perm, ptr)
