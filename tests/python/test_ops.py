"""The compiled ghost-exchange op ``torch.ops.dpa3.border_exchange`` in one process.

Needs the built package (``pip install --no-build-isolation -e .``); a missing op library is a
test failure, not a skip.
"""

from __future__ import annotations

import io

import pytest
import torch
from exchange_reference import (
    border_exchange_reference,
    comm_args,
    reference_backward,
    self_swap_comm_dict,
)

from dpa3 import _ops


@pytest.fixture(scope="module", autouse=True)
def ops() -> None:
    if _ops.library_path() is None and not _ops.ops_available():
        pytest.fail("libdpa3_ops.so not built (pip install --no-build-isolation -e .)")
    assert _ops.load_ops()


def op(g: torch.Tensor, cd: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.ops.dpa3.border_exchange(g, *comm_args(cd))


def op_t(gy: torch.Tensor, cd: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.ops.dpa3.border_exchange_backward(gy, *comm_args(cd))


def i32(*v: int) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.int32)


def schedule(lists: list[list[int]], rank: int = 0, procs: list[int] | None = None) -> dict:
    """A comm_dict from explicit per-swap send lists (all self swaps unless procs given)."""
    counts = [len(x) for x in lists]
    off = [0]
    for c in counts:
        off.append(off[-1] + c)
    procs = [rank] * len(lists) if procs is None else procs
    return {
        "send_idx": torch.tensor([i for x in lists for i in x], dtype=torch.int32),
        "send_off": torch.tensor(off, dtype=torch.int64),
        "send_num": torch.tensor(counts, dtype=torch.int32),
        "recv_num": torch.tensor(counts, dtype=torch.int32),
        "send_proc": torch.tensor(procs, dtype=torch.int32),
        "recv_proc": torch.tensor(procs, dtype=torch.int32),
        "comm": torch.zeros(1, dtype=torch.int64),
        "rank": torch.tensor([rank], dtype=torch.int32),
    }


# nloc = 3. Swap 0 fills rows 3, 4; swap 1 row 5; swap 2 forwards ghosts 4 and 5 (received in
# swaps 0 and 1) and repeats row 4; swap 3 is empty; swap 4 forwards ghosts of swap 2.
CHAIN = [[0, 2], [1], [4, 5, 0, 4], [], [9, 7]]
CHAIN_NLOC = 3
# owner (local row) of every row, resolved by hand
CHAIN_SOURCE = [0, 1, 2, 0, 2, 1, 2, 1, 0, 2, 2, 1]


def hand_gather(g: torch.Tensor) -> torch.Tensor:
    return g[torch.tensor(CHAIN_SOURCE)]


def hand_scatter(gy: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(gy)
    out.index_add_(0, torch.tensor(CHAIN_SOURCE), gy)
    out[CHAIN_NLOC:] = 0
    return out


def test_registered_ops() -> None:
    assert isinstance(torch.ops.dpa3.enable_mpi(), bool)
    assert _ops.library_path() is not None and _ops.library_path().is_file()
    assert _ops.load_ops()  # a second call is a no-op


def test_every_registered_op_is_listed_in_the_docs() -> None:
    """dpa3._ops's docstring and src/ops/CMakeLists.txt name every op the library registers."""
    import re
    from pathlib import Path

    assert _ops.load_ops()
    names = {
        n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("dpa3::")
    }
    assert {"border_exchange", "edge_sum", "_angle_block_bwd", "set_generic_kernels"} <= names
    cmake = (Path(__file__).resolve().parents[2] / "src" / "ops" / "CMakeLists.txt").read_text()
    for where, text in (("dpa3/_ops.py", _ops.__doc__), ("src/ops/CMakeLists.txt", cmake)):
        listed = set(re.findall(r"\b_?[a-z][a-z0-9_]*\b", text))
        # border_exchange_backward is written "border_exchange (+ _backward)" in CMakeLists.txt
        missing = sorted(n for n in names - listed if n != "border_exchange_backward")
        assert not missing, f"{where} does not name the op(s) {missing}"


def test_comm_keys_agree_between_python_and_cpp() -> None:
    """One comm_dict contract: Python's COMM_KEYS is, in order, the C++ list (comm_keys.h, which
    the LAMMPS plugin builds its dict from) and the schedule arguments of the exchange ops."""
    from dpa3._ops import COMM_KEYS

    assert list(torch.ops.dpa3.comm_keys()) == list(COMM_KEYS)
    for name in ("border_exchange", "border_exchange_backward"):
        schema = getattr(torch.ops.dpa3, name).default._schema
        assert [a.name for a in schema.arguments][1:] == list(COMM_KEYS), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chain_forward_and_backward(dtype: torch.dtype) -> None:
    cd = schedule(CHAIN)
    g = torch.randn(12, 5, dtype=dtype)
    g[CHAIN_NLOC:] = float("nan")  # ghost inputs must never be read
    g.requires_grad_(True)
    y = op(g, cd)
    assert y.dtype == dtype and y.shape == g.shape
    assert torch.equal(y, hand_gather(g.detach()))
    gy = torch.randn(12, 5, dtype=dtype)
    (g_grad,) = torch.autograd.grad(y, g, gy)
    torch.testing.assert_close(g_grad, hand_scatter(gy))
    torch.testing.assert_close(op_t(gy, cd), hand_scatter(gy))


def test_output_is_new_tensor_and_input_untouched() -> None:
    cd = schedule(CHAIN)
    g = torch.randn(12, 2, dtype=torch.float64)
    before = g.clone()
    y = op(g, cd)
    assert torch.equal(g, before)
    assert y.data_ptr() != g.data_ptr()
    none = schedule([])
    g3 = torch.randn(3, 2, dtype=torch.float64)
    y3 = op(g3, none)
    assert torch.equal(y3, g3) and y3.data_ptr() != g3.data_ptr()


def test_send_idx_int64_and_multidim_and_noncontiguous() -> None:
    cd = schedule(CHAIN)
    cd["send_idx"] = cd["send_idx"].long()
    g = torch.randn(3, 4, 12, dtype=torch.float64).permute(2, 0, 1)  # [12, 3, 4], strided
    assert not g.is_contiguous()
    y = op(g, cd)
    assert torch.equal(y, hand_gather(g)) and y.is_contiguous()


@pytest.mark.parametrize("chain", [True, False])
@pytest.mark.parametrize("n_swaps", [1, 3, 6])
def test_matches_python_reference(chain: bool, n_swaps: int) -> None:
    gen = torch.Generator().manual_seed(n_swaps)
    nloc, nghost = 7, 31
    mapping = torch.cat([torch.arange(nloc), torch.randint(0, nloc, (nghost,), generator=gen)])
    cd = self_swap_comm_dict(mapping, nloc, n_swaps=n_swaps, chain=chain)
    g = torch.randn(nloc + nghost, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    gr = g.detach().clone().requires_grad_(True)
    y, yr = op(g, cd), border_exchange_reference(gr, *comm_args(cd))
    assert torch.equal(y, yr)
    assert torch.equal(y, g.detach()[mapping])
    gy = torch.randn_like(y)
    y.backward(gy)
    yr.backward(gy)
    torch.testing.assert_close(g.grad, gr.grad, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(op_t(gy, cd), reference_backward(gy, *comm_args(cd)))


def test_adjoint_identity() -> None:
    cd = schedule(CHAIN)
    g, gy = torch.randn(12, 3, dtype=torch.float64), torch.randn(12, 3, dtype=torch.float64)
    lhs = (op(g, cd) * gy).sum()
    rhs = (g * op_t(gy, cd)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-13, atol=1e-13)


def test_gradcheck_and_gradgradcheck() -> None:
    cd = schedule(CHAIN)
    g = torch.randn(12, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: op(x, cd), (g,))
    # create_graph=True records border_exchange_backward, whose adjoint is border_exchange
    assert torch.autograd.gradgradcheck(lambda x: op(x, cd), (g,))
    gy = torch.randn(12, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: op_t(x, cd), (gy,))


def test_create_graph_second_derivative() -> None:
    cd = schedule(CHAIN)
    g = torch.randn(12, 2, dtype=torch.float64, requires_grad=True)
    e = (op(g, cd) ** 3).sum()
    (dg,) = torch.autograd.grad(e, g, create_graph=True)
    (d2,) = torch.autograd.grad(dg.sum(), g)
    gr = g.detach().clone().requires_grad_(True)
    er = (hand_gather(gr) ** 3).sum()
    (dgr,) = torch.autograd.grad(er, gr, create_graph=True)
    (d2r,) = torch.autograd.grad(dgr.sum(), gr)
    torch.testing.assert_close(dg, dgr)
    torch.testing.assert_close(d2, d2r)


def test_expanded_gradient() -> None:
    # y.sum().backward() hands the op an expanded (stride 0) cotangent
    cd = schedule(CHAIN)
    g = torch.randn(12, 2, dtype=torch.float64, requires_grad=True)
    op(g, cd).sum().backward()
    torch.testing.assert_close(g.grad, hand_scatter(torch.ones(12, 2, dtype=torch.float64)))


def test_zero_sizes() -> None:
    f64 = torch.float64
    # nswap = 0
    g = torch.randn(4, 3, dtype=f64, requires_grad=True)
    y = op(g, schedule([]))
    assert torch.equal(y, g.detach())
    y.sum().backward()
    assert torch.equal(g.grad, torch.ones(4, 3, dtype=f64))
    # only zero-count swaps
    cd = schedule([[], [], []])
    assert torch.equal(op(g.detach(), cd), g.detach())
    # nloc = 0 and nall = 0, with and without swaps
    for lists in ([], [[], []]):
        e = torch.zeros(0, 3, dtype=f64, requires_grad=True)
        y = op(e, schedule(lists))
        assert y.shape == (0, 3)
        y.sum().backward()
        assert e.grad.shape == (0, 3)
    # zero feature width
    z = torch.zeros(12, 0, dtype=f64, requires_grad=True)
    y = op(z, schedule(CHAIN))
    assert y.shape == (12, 0)
    y.sum().backward()
    # 1-D features
    v = torch.randn(12, dtype=f64)
    assert torch.equal(op(v, schedule(CHAIN)), v[torch.tensor(CHAIN_SOURCE)])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32, torch.complex64])
def test_rejects_other_dtypes(dtype: torch.dtype) -> None:
    g = torch.zeros(12, 2, dtype=dtype)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        op(g, schedule(CHAIN))


def test_schedule_errors() -> None:
    g = torch.randn(12, 2, dtype=torch.float64)
    # a row that has not been received yet (row 9 arrives in swap 2, sent in swap 1)
    bad = schedule([[0, 2], [9], [4, 5, 0, 4], [], [9, 7]])
    with pytest.raises(RuntimeError, match="must lie in"):
        op(g, bad)
    # self swap with different send/receive counts
    cd = schedule(CHAIN)
    cd["recv_num"] = i32(2, 1, 4, 1, 1)
    with pytest.raises(RuntimeError, match="self swap"):
        op(g, cd)
    # more ghosts than rows
    with pytest.raises(RuntimeError, match="ghost rows"):
        op(torch.randn(5, 2, dtype=torch.float64), schedule(CHAIN))
    # inconsistent offsets
    cd = schedule(CHAIN)
    cd["send_off"] = torch.tensor([0, 2, 3, 7, 7, 8])
    with pytest.raises(RuntimeError, match="send_off"):
        op(g, cd)
    # control tensors must be integers
    cd = schedule(CHAIN)
    cd["recv_num"] = cd["recv_num"].double()
    with pytest.raises(RuntimeError, match="integer"):
        op(g, cd)


def test_non_self_swap_without_mpi_is_an_error() -> None:
    # rank 0 exchanging with rank 1, but comm == 0 (and MPI is not initialised here)
    cd = schedule([[0, 1]], rank=0, procs=[1])
    g = torch.randn(5, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="only self swaps"):
        op(g, cd)
    with pytest.raises(RuntimeError, match="only self swaps"):
        op_t(g, cd)


def test_allreduce_min_without_mpi_is_identity() -> None:
    x = torch.tensor([3, -1, 7])
    y = torch.ops.dpa3.allreduce_min(x, torch.zeros(1, dtype=torch.int64))
    assert torch.equal(x, y) and y.data_ptr() != x.data_ptr()


def test_exchange_mode_without_mpi() -> None:
    no_mpi = torch.zeros(1, dtype=torch.int64)
    mode = torch.ops.dpa3.exchange_mode
    assert mode(no_mpi, torch.device("cpu")) == "cpu"
    assert mode(no_mpi, "cpu") == "cpu"
    # CUDA features without another rank: nothing crosses MPI (answered without a GPU)
    assert mode(no_mpi, torch.device("cuda", 0)).startswith("local (")
    with pytest.raises(RuntimeError, match="CPU and CUDA tensors, not meta"):
        mode(no_mpi, torch.device("meta"))
    with pytest.raises(RuntimeError, match="comm must have 1 entries"):
        mode(torch.zeros(2, dtype=torch.int64), torch.device("cuda"))


def test_meta_kernel() -> None:
    cd = schedule(CHAIN)
    g = torch.empty(12, 4, dtype=torch.float32, device="meta")
    cd = {k: (v.to("meta") if k == "send_idx" else v) for k, v in cd.items()}
    y = op(g, cd)
    assert y.device.type == "meta" and y.shape == (12, 4)


class ScriptedEnergy(torch.nn.Module):
    """Energy of local atoms after one exchange; forces via autograd.grad in TorchScript."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(0.5, 1.5, 3, dtype=torch.float64))

    def forward(
        self, coord: torch.Tensor, comm_dict: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        coord = coord.detach().requires_grad_(True)
        nloc = coord.shape[0] - int(comm_dict["recv_num"].sum())
        h = torch.tanh(coord * self.w)
        h_ext = _ops.border_exchange(h, comm_dict)
        # pair-like term between each local row and all rows (local + ghost)
        e = (h_ext[:nloc].unsqueeze(1) * h_ext.unsqueeze(0)).sum() + (h_ext**2).sum()
        grads = torch.autograd.grad([e], [coord], create_graph=False)
        force = grads[0]
        assert force is not None
        return e, -force


def test_torchscript_forces_through_op() -> None:
    cd = schedule(CHAIN)
    coord = torch.randn(12, 3, dtype=torch.float64)
    eager = ScriptedEnergy()
    scripted = torch.jit.script(eager)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)

    e_ref, f_ref = eager(coord, cd)
    for model in (scripted, loaded):
        e, f = model(coord, cd)
        torch.testing.assert_close(e, e_ref)
        torch.testing.assert_close(f, f_ref)

    # the same with the exchange spelled out as the hand-built gather
    c = coord.clone().requires_grad_(True)
    h = hand_gather(torch.tanh(c * eager.w.detach()))
    e = (h[:CHAIN_NLOC].unsqueeze(1) * h.unsqueeze(0)).sum() + (h**2).sum()
    (gc,) = torch.autograd.grad(e, c)
    torch.testing.assert_close(f_ref, -gc)
    assert torch.count_nonzero(f_ref[CHAIN_NLOC:]) == 0  # ghost coordinates are not inputs


def test_load_ops_skips_when_already_registered(tmp_path) -> None:
    """As in a process where the LAMMPS plugin already pulled in libdpa3_ops.so (possibly from
    another path): loading a second copy would register the namespace twice and abort."""
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "libdpa3_ops.so"
    shutil.copy(_ops.library_path(), copy)
    code = (
        "import ctypes, torch\n"
        f"ctypes.CDLL({str(copy)!r}, mode=ctypes.RTLD_GLOBAL)\n"
        "from dpa3 import _ops\n"
        "assert _ops.load_ops() and _ops._loaded_from is None\n"
        "assert _ops.ops_available()\n"
        "print('skipped', torch.ops.dpa3.enable_mpi() in (True, False))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "skipped True" in out.stdout


def test_load_error_diagnosis(tmp_path) -> None:
    (tmp_path / _ops.BUILD_INFO_NAME).write_text(
        '{"torch_version": "0.0.1", "cxx11_abi": 1, "mpi_library": "/x/libmpi.so"}'
    )
    lib = tmp_path / _ops.LIBRARY_NAME
    msg = _ops._diagnose(lib, OSError(f"{lib}: undefined symbol: _ZN3c104impl"))
    assert "built against torch 0.0.1" in msg and "--no-build-isolation" in msg
    msg = _ops._diagnose(lib, OSError("libmpi.so.12: cannot open shared object file"))
    assert "pip install mpich" in msg


def test_border_exchange_wrapper_reads_comm_keys_in_order():
    """The TorchScript-able wrapper spells the keys out; they must come in COMM_KEYS order."""
    seen: list[str] = []

    class Recording(dict):
        def __getitem__(self, key):
            seen.append(key)
            return super().__getitem__(key)

    mapping = torch.tensor([0, 1, 2, 0, 2])
    cd = self_swap_comm_dict(mapping, 3, n_swaps=2)
    g = torch.randn(5, 4, dtype=torch.float64)
    y = _ops.border_exchange(g, Recording(cd))
    assert seen == list(_ops.COMM_KEYS)
    torch.testing.assert_close(y, g[mapping])
