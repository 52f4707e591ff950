"""The compute kernels of the op library against plain PyTorch formulas written here.

``dpa3::angle_block`` (the fused angle block, differentiable twice), ``dpa3::center_outer``
(the per-centre outer-product sums of the symmetrisation, any derivative order; its replay) and
``dpa3::activation`` (against the model's PyTorch activations, differentiable twice).
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from dpa3 import _ops


@pytest.fixture(scope="module", autouse=True)
def ops() -> None:
    assert _ops.load_ops(), "libdpa3_ops.so not built (pip install --no-build-isolation -e .)"


def csr(idx: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.argsort(idx, stable=True)
    ptr = torch.zeros(n + 1, dtype=torch.long)
    ptr[1:] = torch.cumsum(torch.bincount(idx, minlength=n), 0)
    return perm, ptr


# --------------------------------------------------------------------------- center_outer
def outer_reference(h: torch.Tensor, g: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    t = h.unsqueeze(-1) * g.unsqueeze(1)
    return torch.zeros(n, *t.shape[1:], dtype=g.dtype).index_add(0, idx, t)


def outer_case(dtype=torch.float64, seed=0, nedge=40, n=7, k=3, d=5):
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n - 1, (nedge,), generator=gen)  # unsorted; the last centre is empty
    h = torch.randn(nedge, k, dtype=dtype, generator=gen, requires_grad=True)
    g = torch.randn(nedge, d, dtype=dtype, generator=gen, requires_grad=True)
    perm, ptr = csr(idx, n)
    return h, g, idx, perm, ptr, n


def test_center_outer_matches_scatter_of_outer_products() -> None:
    h, g, idx, perm, ptr, n = outer_case()
    out = torch.ops.dpa3.center_outer(h, g, idx, perm, ptr)
    ref = outer_reference(h, g, idx, n)
    assert out.shape == (n, 3, 5)
    assert torch.allclose(out, ref, atol=1e-13)
    assert out[-1].abs().max() == 0  # a centre without edges


def test_center_outer_first_and_second_derivatives() -> None:
    h, g, idx, perm, ptr, _ = outer_case(nedge=12, n=4, k=2, d=3)

    def f(h_, g_):
        return torch.ops.dpa3.center_outer(h_, g_, idx, perm, ptr)

    assert torch.autograd.gradcheck(f, (h, g))
    assert torch.autograd.gradgradcheck(f, (h, g))


def test_center_outer_third_order_matches_reference() -> None:
    """Training differentiates forces: derivatives through a nonlinear loss, several orders."""
    h, g, idx, perm, ptr, n = outer_case(seed=3)

    def loss(fn):
        y = fn(h, g)
        (gh,) = torch.autograd.grad((y**2).sum(), h, create_graph=True)
        (ggh,) = torch.autograd.grad((gh**2).sum(), g, create_graph=True)
        return torch.autograd.grad(ggh.sum(), h)[0]

    ours = loss(lambda a, b: torch.ops.dpa3.center_outer(a, b, idx, perm, ptr))
    ref = loss(lambda a, b: outer_reference(a, b, idx, n))
    assert torch.allclose(ours, ref, atol=1e-10)


def test_center_outer_replay_has_center_outers_gradients() -> None:
    """center_outer_replay around outer sums computed before: returns them (a view), with
    center_outer's first and second derivatives for h and g (the reference formula's); the
    kept sums get none.  A kept tensor of another shape is refused."""
    h, g, idx, perm, ptr, n = outer_case(seed=5)
    ref = outer_reference(h, g, idx, n)
    kept = ref.detach().clone().requires_grad_(True)
    out = torch.ops.dpa3.center_outer_replay(h, g, idx, perm, ptr, kept)
    assert torch.equal(out, kept) and out.data_ptr() == kept.data_ptr()  # a view, no copy
    go = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(2))
    ours = torch.autograd.grad(out, [h, g, kept], go, allow_unused=True, create_graph=True)
    refs = torch.autograd.grad(ref, [h, g], go, create_graph=True)
    assert torch.allclose(ours[0], refs[0], atol=1e-12)
    assert torch.allclose(ours[1], refs[1], atol=1e-12)
    assert ours[2] is None
    second = torch.autograd.grad((ours[0] ** 2).sum(), g)[0]  # training's order
    assert torch.allclose(second, torch.autograd.grad((refs[0] ** 2).sum(), g)[0], atol=1e-11)
    with pytest.raises(RuntimeError, match="S must be"):
        torch.ops.dpa3.center_outer_replay(h, g, idx, perm, ptr, kept[:, :, :-1])


# --------------------------------------------------------------------------- angle_block
def angle_graph(seed: int, ncenter=5, sizes=None):
    """Edges grouped by centre (some without angles), angles (i, j, k) over each centre's
    first edges, grouped by ij (edges beyond them have no angles); returns eij, eik,
    aptr [E+1], nptr [N+1]. ``sizes``: (edges, angle edges) of every centre instead of random
    ones."""
    gen = torch.Generator().manual_seed(seed)
    nptr, eij, eik = [0], [], []
    for c in range(ncenter if sizes is None else len(sizes)):
        # centre 1 has no edges, every other one at least one angle
        ne = 0 if c == 1 else int(torch.randint(1, 6, (1,), generator=gen))
        na = 0 if c == 1 else int(torch.randint(1, ne + 1, (1,), generator=gen))
        if sizes is not None:
            ne, na = sizes[c]
        e0 = nptr[-1]
        for j in range(na):
            for k in range(na):
                eij.append(e0 + j)
                eik.append(e0 + k)
        nptr.append(e0 + ne)
    nedge = nptr[-1]
    eij_t = torch.tensor(eij, dtype=torch.long)
    aptr = torch.zeros(nedge + 1, dtype=torch.long)
    aptr[1:] = torch.cumsum(torch.bincount(eij_t, minlength=nedge), 0)
    return eij_t, torch.tensor(eik, dtype=torch.long), aptr, torch.tensor(nptr), nedge


def activation(x: torch.Tensor, act: int, thr: float) -> torch.Tensor:
    if act == 2:
        return torch.tanh(x)
    y = x * torch.sigmoid(x)
    if act == 1:  # silut: tanh tail above the threshold, continuous with slope silu'(thr)
        s = 1.0 / (1.0 + math.exp(-thr))
        slope = s * (1.0 + thr * (1.0 - s))
        y = torch.where(x >= thr, torch.tanh(slope * (x - thr)) + thr * s, y)
    return y


def block_reference(a, wa, pe, vk, w, eij, eik, de, act, thr, alpha, beta, nedge):
    y = activation(a @ wa + pe[eij] + vk[eik], act, thr)
    red = torch.zeros(nedge, de, dtype=a.dtype).index_add(0, eij, w.unsqueeze(-1) * y[:, :de])
    aout = alpha * a + beta * y[:, de:] if y.shape[1] > de else y[:, de:]
    return red, aout


def block_case(seed, de, da, dtype=torch.float64, scale=1.0, sizes=None):
    eij, eik, aptr, nptr, nedge = angle_graph(seed, sizes=sizes)
    gen = torch.Generator().manual_seed(seed + 100)
    width = de + da
    da_in = da if da > 0 else 3

    def rnd(*shape):
        return (scale * torch.randn(*shape, dtype=dtype, generator=gen)).requires_grad_(True)

    t = dict(
        a=rnd(len(eij), da_in),
        wa=rnd(da_in, width),
        pe=rnd(nedge, width),
        vk=rnd(nedge, width),
        w=torch.rand(len(eij), dtype=dtype, generator=gen).requires_grad_(True),
        beta=rnd(da),
    )
    return t, eij, eik, aptr, nptr, nedge


def run_block(t, eik, aptr, nptr, de, act, thr, alpha):
    return torch.ops.dpa3.angle_block(
        t["a"], t["wa"], t["pe"], t["vk"], t["w"], eik, aptr, nptr, de, act, thr, alpha, t["beta"]
    )


@pytest.mark.parametrize("act,thr", [(0, 0.0), (1, 0.5), (2, 0.0)])
# small widths, and the water recipe's (64, 32) and odd ones (13, 11): every register tile and
# column tail of the kernel's small GEMMs (small_gemm.h)
@pytest.mark.parametrize("de,da", [(4, 3), (0, 3), (4, 0), (64, 32), (13, 11)])
def test_angle_block_matches_formula_and_gradients(act, thr, de, da) -> None:
    t, eij, eik, aptr, nptr, nedge = block_case(1, de, da)
    alpha = 0.7
    red, aout = run_block(t, eik, aptr, nptr, de, act, thr, alpha)
    ref_red, ref_a = block_reference(
        t["a"], t["wa"], t["pe"], t["vk"], t["w"], eij, eik, de, act, thr, alpha, t["beta"], nedge
    )
    assert red.shape == ref_red.shape and aout.shape == (len(eij), da)
    assert torch.allclose(red, ref_red, atol=1e-12)
    if da:
        assert torch.allclose(aout, ref_a, atol=1e-12)
    # every first derivative, the weights and the residual scale included
    gen = torch.Generator().manual_seed(7)
    g_red = torch.randn(red.shape, dtype=red.dtype, generator=gen)
    g_a = torch.randn(aout.shape, dtype=aout.dtype, generator=gen)
    keys = ["a", "wa", "pe", "vk", "w"] + (["beta"] if da else [])
    outs = [red, aout] if da else [red]
    grads_out = [g_red, g_a] if da else [g_red]
    ours = torch.autograd.grad(outs, [t[k] for k in keys], grads_out)
    refs_out = [ref_red, ref_a] if da else [ref_red]
    refs = torch.autograd.grad(refs_out, [t[k] for k in keys], grads_out)
    for k, x, y in zip(keys, ours, refs, strict=True):
        assert torch.allclose(x, y, atol=1e-11), k


@pytest.mark.parametrize("de,da", [(4, 3), (64, 32), (64, 0)])
def test_angle_block_replay_has_angle_blocks_gradients(de, da) -> None:
    """angle_block_replay around messages computed before: returns them, and the same first
    derivatives as angle_block (the reference formula's) for every input; the messages get
    none.  Its angle output is only a gradient target."""
    t, eij, eik, aptr, nptr, nedge = block_case(4, de, da)
    ref_red, ref_a = block_reference(
        t["a"], t["wa"], t["pe"], t["vk"], t["w"], eij, eik, de, 1, 0.5, 0.7, t["beta"], nedge
    )
    kept = ref_red.detach().clone().requires_grad_(True)
    red, aout = torch.ops.dpa3.angle_block_replay(
        t["a"], t["wa"], t["pe"], t["vk"], t["w"], eik, aptr, nptr, de, 1, 0.5, 0.7, t["beta"], kept
    )
    assert torch.equal(red, kept) and aout.shape == (len(eij), da)
    gen = torch.Generator().manual_seed(9)
    gouts = [torch.randn(red.shape, dtype=red.dtype, generator=gen)]
    gouts += [torch.randn(aout.shape, dtype=aout.dtype, generator=gen)] if da else []
    keys = ["a", "wa", "pe", "vk", "w"] + (["beta"] if da else [])
    outs = [red, aout] if da else [red]
    ours = torch.autograd.grad(outs, [t[k] for k in keys] + [kept], gouts, allow_unused=True)
    refs = torch.autograd.grad([ref_red, ref_a] if da else [ref_red], [t[k] for k in keys], gouts)
    for k, x, y in zip(keys, ours[:-1], refs, strict=True):
        assert torch.allclose(x, y, atol=1e-11), k
    assert ours[-1] is None
    with pytest.raises(RuntimeError, match="red must be"):
        torch.ops.dpa3.angle_block_replay(
            t["a"],
            t["wa"],
            t["pe"],
            t["vk"],
            t["w"],
            eik,
            aptr,
            nptr,
            de,
            1,
            0.5,
            0.7,
            t["beta"],
            kept[:, :1],
        )


def test_angle_block_many_angles_per_centre() -> None:
    """Centres with 7 and 9 angle edges (49 and 81 angles; one block holds several centres and
    its tiles of angles end inside edges), the water recipe's widths, float32 as in inference."""
    sizes = [(9, 7), (0, 0), (3, 1), (12, 9), (2, 2), (1, 0), (8, 8)]
    t, eij, eik, aptr, nptr, nedge = block_case(3, 64, 32, dtype=torch.float32, sizes=sizes)
    red, aout = run_block(t, eik, aptr, nptr, 64, 1, 0.5, 1.0)
    ref = block_reference(
        t["a"], t["wa"], t["pe"], t["vk"], t["w"], eij, eik, 64, 1, 0.5, 1.0, t["beta"], nedge
    )
    assert torch.allclose(red, ref[0], rtol=1e-5, atol=1e-4)
    assert torch.allclose(aout, ref[1], rtol=1e-5, atol=1e-5)
    gen = torch.Generator().manual_seed(8)
    gouts = [torch.randn(red.shape, generator=gen), torch.randn(aout.shape, generator=gen)]
    keys = ["a", "wa", "pe", "vk", "w", "beta"]
    ours = torch.autograd.grad([red, aout], [t[k] for k in keys], gouts)
    refs = torch.autograd.grad(list(ref), [t[k] for k in keys], gouts)
    for k, x, y in zip(keys, ours, refs, strict=True):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-4), k


def test_angle_block_silut_tail_is_exercised() -> None:
    """Large inputs push pre-activations above the silut threshold on both branches."""
    t, eij, eik, aptr, nptr, nedge = block_case(2, 4, 3, scale=3.0)
    red, aout = run_block(t, eik, aptr, nptr, 4, 1, 0.5, 1.0)
    pre = t["a"] @ t["wa"] + t["pe"][eij] + t["vk"][eik]
    assert (pre >= 0.5).any() and (pre < 0.5).any()
    ref_red, ref_a = block_reference(
        t["a"], t["wa"], t["pe"], t["vk"], t["w"], eij, eik, 4, 1, 0.5, 1.0, t["beta"], nedge
    )
    assert torch.allclose(red, ref_red, atol=1e-11) and torch.allclose(aout, ref_a, atol=1e-11)


def test_angle_block_same_result_for_any_thread_count() -> None:
    t, _eij, eik, aptr, nptr, _nedge = block_case(4, 8, 4, dtype=torch.float32)
    before = torch.get_num_threads()
    try:
        res = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            red, aout = run_block(t, eik, aptr, nptr, 8, 0, 0.0, 1.0)
            g = torch.autograd.grad([red.sum() + aout.square().sum()], [t["a"], t["vk"]])
            res.append([red, aout, *g])
    finally:
        torch.set_num_threads(before)
    for other in res[1:]:
        for x, y in zip(res[0], other, strict=True):
            assert torch.equal(x, y)


def test_angle_block_refuses_third_derivatives_and_bad_layout() -> None:
    t, eij, eik, aptr, nptr, _ = block_case(5, 4, 3)
    red, _ = run_block(t, eik, aptr, nptr, 4, 0, 0.0, 1.0)
    (g,) = torch.autograd.grad(red.square().sum(), t["a"], create_graph=True)
    with pytest.raises(RuntimeError, match="up to second order"):
        torch.autograd.grad(g.square().sum(), t["pe"], create_graph=True)
    # point the last angle's k-edge at an edge of another centre
    centre_of_edge = torch.repeat_interleave(torch.arange(len(nptr) - 1), nptr.diff())
    last_centre = int(centre_of_edge[eij[-1]])
    other = int(torch.nonzero(centre_of_edge != last_centre)[0])
    bad = eik.clone()
    bad[-1] = other
    with pytest.raises(RuntimeError, match="edge/centre layout"):
        run_block(t, bad, aptr, nptr, 4, 0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="beta needs one entry"):
        t2 = dict(t, beta=t["beta"][:1])
        run_block(t2, eik, aptr, nptr, 4, 0, 0.0, 1.0)


# --------------------------------------------------------------------------- edge_sum
@pytest.mark.parametrize("with_nei,with_bias", [(True, True), (False, True), (True, False)])
def test_edge_sum_matches_gathers_and_all_derivative_orders(with_nei, with_bias) -> None:
    gen = torch.Generator().manual_seed(11)
    nedge, n, m, k = 30, 6, 9, 4
    ic = torch.randint(0, n, (nedge,), generator=gen)
    inn = torch.randint(0, m, (nedge,), generator=gen)

    def rnd(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=gen).requires_grad_(True)

    xc, xn, xe, b = rnd(n, k), rnd(m, k), rnd(nedge, k), rnd(k)
    pc, rc = csr(ic, n)
    pn, rn = csr(inn, m)

    def ours(xc_, xn_, xe_, b_):
        return torch.ops.dpa3.edge_sum(
            xc_,
            xn_ if with_nei else None,
            xe_,
            b_ if with_bias else None,
            ic,
            pc,
            rc,
            inn if with_nei else None,
            pn if with_nei else None,
            rn if with_nei else None,
        )

    ref = xc[ic] + xe + (xn[inn] if with_nei else 0) + (b if with_bias else 0)
    assert torch.allclose(ours(xc, xn, xe, b), ref, atol=1e-14)
    args = [xc, xn, xe, b]
    assert torch.autograd.gradcheck(ours, args)
    # second derivatives through a nonlinearity (the linear op's own Hessian is zero)
    assert torch.autograd.gradgradcheck(lambda *t: torch.sin(ours(*t)), args)


# --------------------------------------------------------------------------- activation
@pytest.mark.parametrize("name,code,thr", [("silu", 0, 0.0), ("silut", 1, 0.5), ("tanh", 2, 0.0)])
def test_activation_matches_the_composite_activation_to_second_order(name, code, thr) -> None:
    """``dpa3::activation`` against the model's PyTorch ``Activation`` (silu, silut with the
    tanh tail above its threshold, tanh): values, first derivatives and the second derivatives
    of a force-like loss (``grad`` with ``create_graph``, then the gradient of its square)."""
    from dpa3.model.network import Activation

    gen = torch.Generator().manual_seed(3)
    x0 = 3.0 * torch.randn(60, 7, dtype=torch.float64, generator=gen)
    c = torch.randn(60, 7, dtype=torch.float64, generator=gen)
    if code == 1:
        assert int((x0 >= thr).sum()) > 20 and int((x0 < thr).sum()) > 20  # both branches

    def second(f):
        x = x0.clone().requires_grad_(True)
        y = f(x)
        (g,) = torch.autograd.grad((c * y).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad((g * g).sum() + (c * y).sum(), x)
        return y.detach(), g.detach(), gg

    ref = second(Activation(name, thr))
    ours = second(lambda x: _ops.activation(x, code, thr))
    for r, o, what in zip(ref, ours, ("value", "first", "second"), strict=True):
        assert torch.allclose(o, r, rtol=1e-12, atol=1e-12), what
    x = x0[:5, :3].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: _ops.activation(t, code, thr), (x,))
    assert torch.autograd.gradgradcheck(lambda t: _ops.activation(t, code, thr), (x,))


def test_activation_refuses_third_derivatives_and_unknown_codes() -> None:
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = _ops.activation(x, 0, 0.0)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    torch.autograd.grad(g.sum(), x, retain_graph=True)  # second derivatives: fine
    with pytest.raises(RuntimeError, match="second order"):  # a graph for a third: refused
        torch.autograd.grad(g.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="unknown activation code"):
        _ops.activation(x, 7, 0.0)


@pytest.mark.parametrize("generic", [False, True])
@pytest.mark.parametrize("de,da", [(4, 3), (64, 32)])
def test_angle_block_into_writes_the_angle_output_in_place(generic, de, da) -> None:
    """angle_block_into (no derivatives) writes angle_block's angle output into the given
    tensor (a view of a larger buffer, as the low-memory path's slots) and returns its
    messages, with the fused kernel and the generic one; it refuses a graph, a tensor of
    another shape and a layer without angle output."""
    t, eij, eik, aptr, nptr, nedge = block_case(6, de, da)
    args = (t["a"], t["wa"], t["pe"], t["vk"], t["w"], eik, aptr, nptr, de, 1, 0.5, 0.7, t["beta"])
    ref_red, ref_a = block_reference(*args[:5], eij, eik, de, 1, 0.5, 0.7, t["beta"], nedge)
    buf = torch.full((len(eij) + 2, da), float("nan"), dtype=t["a"].dtype)
    into = buf[1:-1]
    with torch.no_grad(), _ops.generic_kernels() if generic else contextlib.nullcontext():
        red = torch.ops.dpa3.angle_block_into(*args, into)
    assert torch.allclose(red, ref_red, atol=1e-12)
    assert torch.allclose(into, ref_a, atol=1e-12)
    assert buf[0].isnan().all() and buf[-1].isnan().all()  # nothing outside the slot
    with pytest.raises(RuntimeError, match="no derivatives"):
        torch.ops.dpa3.angle_block_into(*args, into)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="output tensor must be"):
            torch.ops.dpa3.angle_block_into(*args, buf[:-1])
        t0, _, eik0, aptr0, nptr0, _ = block_case(6, de, 0)
        args0 = (t0["a"], t0["wa"], t0["pe"], t0["vk"], t0["w"], eik0, aptr0, nptr0, de, 1, 0.5)
        with pytest.raises(RuntimeError, match="no angle output"):
            torch.ops.dpa3.angle_block_into(*args0, 0.7, t0["beta"], into)


@pytest.mark.parametrize("generic", [False, True])
def test_angle_block_replay_writes_the_angle_gradient_over_the_incoming_one(generic) -> None:
    """angle_block_replay's backward without a graph writes the gradient of ``a`` over the
    incoming gradient of the angle output (same tensor, as the low-memory path's buffer
    slots), equal to angle_block's gradient; every other gradient unchanged.  Not where that
    gradient is ``a``'s own memory (a new tensor then)."""
    de, da = 64, 32
    t, eij, eik, aptr, nptr, nedge = block_case(8, de, da)
    gen = torch.Generator().manual_seed(3)
    g_red = torch.randn(nedge, de, dtype=t["a"].dtype, generator=gen)
    g_a = torch.randn(len(eij), da, dtype=t["a"].dtype, generator=gen)
    keys = ["a", "wa", "pe", "vk", "w", "beta"]
    args = (t["a"], t["wa"], t["pe"], t["vk"], t["w"], eik, aptr, nptr, de, 1, 0.5, 0.7, t["beta"])
    with _ops.generic_kernels() if generic else contextlib.nullcontext():
        red, aout = torch.ops.dpa3.angle_block(*args)
        want = torch.autograd.grad([red, aout], [t[k] for k in keys], [g_red, g_a])
        buf = torch.cat([g_a.clone(), g_a.clone()])  # two slots of one buffer
        incoming = buf[len(eij) :]
        red2, aout2 = torch.ops.dpa3.angle_block_replay(*args, red.detach(), True)
        got = torch.autograd.grad([red2, aout2], [t[k] for k in keys], [g_red, incoming])
        assert got[0].is_set_to(incoming)  # written over the incoming gradient
        assert torch.equal(buf[: len(eij)], g_a)  # the other slot untouched
        for k, x, y in zip(keys, got, want, strict=True):
            assert torch.allclose(x, y, atol=1e-11), k
        # an incoming gradient in a's own memory: not overwritten (a new tensor)
        a_buf = t["a"].detach().clone()
        a_view = a_buf.view_as(a_buf).requires_grad_(True)
        red3, aout3 = torch.ops.dpa3.angle_block_replay(a_view, *args[1:], red.detach(), True)
        g3 = torch.autograd.grad([red3, aout3], [a_view], [g_red, a_buf])[0]
        assert not g3.is_set_to(a_buf) and torch.equal(a_buf, t["a"])
        red_again, aout_again = torch.ops.dpa3.angle_block(*args)
        want3 = torch.autograd.grad([red_again, aout_again], [t["a"]], [g_red, t["a"].detach()])[0]
        assert torch.allclose(g3, want3, atol=1e-11)


# --------------------------------------------------------------------------- workspace
def test_workspace_hands_a_freed_buffer_back_and_never_one_in_use() -> None:
    """``dpa3::workspace`` (the low-memory path's buffer): the requested size and dtype; while a
    buffer is alive a second request gets other memory (no two evaluations share one); once
    freed, the next request of the same size gets the same memory back with what was written
    there (the pages stay resident: what the next MD step needs), one of another size does not;
    usable from TorchScript."""
    like = torch.zeros(1, dtype=torch.float32)
    n = 1_000_003  # not a page multiple
    a = _ops.workspace(like, n)
    assert a.shape == (n,) and a.dtype == torch.float32 and a.device.type == "cpu"
    a.fill_(3.0)
    first = a.data_ptr()
    b = _ops.workspace(like, n)
    assert b.data_ptr() != first
    b.fill_(-1.0)
    assert bool((a == 3.0).all())  # the live buffer is untouched by the other one
    del a, b  # the first one freed goes to the pool, the second is unmapped
    c = _ops.workspace(like, n)
    assert c.data_ptr() == first and bool((c == 3.0).all())
    c[0] = 7.0
    del c
    again = torch.jit.script(_ops.workspace)(like, n)
    assert again.data_ptr() == first and float(again[0]) == 7.0
    del again
    other = _ops.workspace(like.double(), 2 * n)  # another size: a new mapping
    assert other.dtype == torch.float64 and other.shape == (2 * n,)
    other.fill_(1.0)
    assert float(other.sum()) == 2 * n
    assert _ops.workspace(like, 0).shape == (0,)
    with pytest.raises(RuntimeError, match="numel must be >= 0"):
        _ops.workspace(like, -1)
