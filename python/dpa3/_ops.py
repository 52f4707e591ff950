"""Loading of the compiled op library ``dpa3/lib/libdpa3_ops.so``.

The library registers, in the ``torch.ops.dpa3`` namespace:

- ``border_exchange(g, send_idx, send_off, send_num, recv_num, send_proc, recv_proc, comm, rank)``
  and ``border_exchange_backward(...)``: the ghost-row exchange over a LAMMPS swap schedule
  (see ``docs/internals.md``), differentiable in eager mode and in TorchScript;
- ``enable_mpi() -> bool``: whether the library was built with MPI;
- ``allreduce_min(x, comm) -> Tensor``: element-wise minimum over the ranks of ``comm``;
- the compute ops of the RepFlow layers, differentiable (``gather_rows``, ``scatter_rows``,
  ``edge_sum``, ``center_outer``; ``angle_block`` and ``activation`` to second order;
  ``angle_block_replay`` and ``center_outer_replay``, their backward around outputs computed
  before; ``angle_block_into``, angle_block's forward without derivatives into a given
  tensor), each built on primitive operators (``_gather``, ``_segment_sum``, ``_edge_sum``,
  ``_outer_sum``, ``_outer_h``, ``_outer_g``, ``_angle_block_fwd``, ``_angle_block_bwd``,
  ``_angle_block_bwd2``, ``_activation``, ``_activation_bwd``, ``_activation_bwd2``) that have a
  CPU kernel (fused loops) and a CUDA kernel (hand-written CSR scatter-sums, ATen calls for the
  rest);
- ``workspace(like, numel) -> Tensor``: an uninitialised ``[numel]`` tensor of ``like``'s dtype
  and device for the low-memory path's buffer; on the CPU a mapping outside malloc that, when
  freed, the next request of the same size gets back (``src/ops/kernels/workspace.cpp``);
- ``set_generic_kernels(on) -> bool``: run the device-generic ATen implementations on the CPU
  too (see :func:`generic_kernels`);
- ``exchange_mode(comm, device) -> str``: how ``border_exchange`` moves features on ``device``
  between the ranks of ``comm``: ``"cpu"``, ``"cuda-aware"``, ``"staged"``, ``"host-routed
  (...)"`` or ``"local (...)"`` (``docs/internals.md``, "The exchange on GPUs");
- ``comm_keys() -> list[str]``: the ``comm_dict`` keys in the op's argument order, as the C++
  side (``src/ops/exchange/comm_keys.h``, used by the LAMMPS plugin) defines them; equal to
  :data:`dpa3.model.exchange.COMM_KEYS` (tested).

This module is the only place in the package that names ``torch.ops.dpa3``: it loads the library
and defines one TorchScript-able function per op that the model calls (:func:`gather_rows`,
:func:`scatter_rows`, :func:`edge_sum`, :func:`center_outer`, :func:`angle_block`,
:func:`activation`, :func:`activation_grad`, :func:`workspace`, :func:`border_exchange`,
:func:`allreduce_min`);
scripted models inline them, so a frozen model calls the registered ops directly.
:data:`COMM_KEYS` defines the exchange schedule (``comm_dict``) keys and their order.
:func:`register_flop_formulas` (explicit, idempotent) tells ``torch.utils.flop_counter`` how many
FLOPs the matrix products inside the primitives' kernels do, which it cannot see.
In a process where the LAMMPS plugin has already loaded the library (the plugin links it),
loading is skipped: registering the ``dpa3`` namespace twice aborts.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import torch

LIBRARY_NAME = "libdpa3_ops.so"
BUILD_INFO_NAME = "dpa3_ops_build.json"

_lock = threading.Lock()
_loaded_from: Path | None = None


def _registered() -> bool:
    """Whether the ``dpa3`` ops are registered in this process (by us or by the plugin)."""
    try:
        return hasattr(torch.ops.dpa3, "enable_mpi")
    except (AttributeError, RuntimeError):
        return False


def library_path() -> Path | None:
    """Path of the installed ``libdpa3_ops.so``, or None if it was not built.

    Searched in ``lib/`` of every folder of the ``dpa3`` package: with an editable install
    (scikit-build-core redirect mode) ``dpa3.__path__`` holds both the source folder and the
    folder in site-packages where the built library is installed.
    """
    import dpa3

    for folder in list(getattr(dpa3, "__path__", [])):
        candidate = Path(folder) / "lib" / LIBRARY_NAME
        if candidate.is_file():
            return candidate
    return None


def _build_info(path: Path) -> dict:
    try:
        return json.loads((path.parent / BUILD_INFO_NAME).read_text())
    except (OSError, ValueError):
        return {}


def _diagnose(path: Path, exc: BaseException) -> str:
    """Explain a failed ``torch.ops.load_library``."""
    msg = str(exc)
    info = _build_info(path)
    lines = [f"dpa3: cannot load the op library {path}:", f"  {msg}"]
    built_torch = info.get("torch_version")
    if built_torch and built_torch != torch.__version__:
        lines.append(
            f"  It was built against torch {built_torch} but torch {torch.__version__} is "
            "imported: rebuild with `pip install --no-build-isolation .` in this environment."
        )
    built_abi = info.get("cxx11_abi")
    if built_abi is not None and bool(built_abi) != torch.compiled_with_cxx11_abi():
        lines.append(
            f"  _GLIBCXX_USE_CXX11_ABI={int(built_abi)} at build time, but this torch uses "
            f"{int(torch.compiled_with_cxx11_abi())}: rebuild against this torch."
        )
    if "undefined symbol" in msg and len(lines) == 2:
        lines.append(
            "  An undefined symbol usually means a different torch (or C++ ABI) than the one "
            "the library was built with: rebuild with `pip install --no-build-isolation .`."
        )
    if "libmpi" in msg:
        lines.append(
            f"  The library was built with MPI ({info.get('mpi_library', '?')}); install the "
            "same MPI in this environment (`pip install mpich`) or rebuild with "
            "DPA3_ENABLE_MPI=OFF."
        )
    return "\n".join(lines)


def load_ops() -> bool:
    """Register the ``torch.ops.dpa3`` ops in this process (once).

    Returns
    -------
    bool
        True if the ops are registered (now or before, e.g. by the LAMMPS plugin), False if the
        library was not built (a source tree without an installed build).

    Raises
    ------
    RuntimeError
        If the library exists but cannot be loaded, with a diagnosis (torch version or C++ ABI
        mismatch, missing libmpi).
    """
    global _loaded_from
    if _registered():
        return True
    with _lock:
        if _registered():
            return True
        path = library_path()
        if path is None:
            return False
        try:
            torch.ops.load_library(str(path))
        except OSError as exc:
            raise RuntimeError(_diagnose(path, exc)) from exc
        if not _registered():
            raise RuntimeError(f"dpa3: loaded {path} but torch.ops.dpa3 has no ops")
        _loaded_from = path
        return True


def ops_available() -> bool:
    """Whether ``torch.ops.dpa3.border_exchange`` can be called (loads the library if needed)."""
    try:
        return load_ops()
    except RuntimeError:
        return False


@contextlib.contextmanager
def generic_kernels() -> Iterator[None]:
    """Run the device-generic implementation of every compute op on the CPU as well.

    The CUDA kernels of the op library are (mostly) the generic implementations written with
    ATen calls; inside this context the CPU kernels use them too instead of the fused loops, so
    the algorithm that runs on GPUs is exercised on a machine without one.  The switch is
    process-wide (the C++ library holds it); it is meant for tests and diagnostics, and the
    previous setting is restored on exit.  Results agree with the fused kernels up to rounding.
    """
    if not load_ops():
        raise RuntimeError("dpa3: the op library libdpa3_ops.so is not built")
    previous = torch.ops.dpa3.set_generic_kernels(True)
    try:
        yield
    finally:
        torch.ops.dpa3.set_generic_kernels(previous)


def mpi_enabled() -> bool:
    """Whether the loaded op library was built with MPI (call after :func:`load_ops`)."""
    return bool(torch.ops.dpa3.enable_mpi())


# ---------------------------------------------------------------------------------------------
# The exchange schedule.  ``comm_dict`` keys in the positional order of
# ``torch.ops.dpa3.border_exchange`` after the features; the LAMMPS plugin builds the same dict
# (src/lammps_plugin) and the op library reports its own list (``torch.ops.dpa3.comm_keys``).
COMM_KEYS: tuple[str, ...] = (
    "send_idx",  # (sum(send_num),) int32, feature device: send lists concatenated in swap order
    "send_off",  # (nswap + 1,) int64, CPU: prefix offsets into send_idx
    "send_num",  # (nswap,) int32, CPU: rows sent per swap
    "recv_num",  # (nswap,) int32, CPU: rows received per swap
    "send_proc",  # (nswap,) int32, CPU: rank sent to (== rank for a self swap)
    "recv_proc",  # (nswap,) int32, CPU: rank received from (== rank for a self swap)
    "comm",  # (1,) int64, CPU: MPI_Comm_c2f handle, 0 = no MPI
    "rank",  # (1,) int32, CPU: this rank
)


def comm_args(comm_dict: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The schedule tensors of ``comm_dict`` in the op's positional order (eager code only)."""
    return tuple(comm_dict[k] for k in COMM_KEYS)


# ---------------------------------------------------------------------------------------------
# TorchScript-able calls of the ops (the model's only way to reach them).  Index rows: ``idx``
# maps output rows to input rows, ``perm``/``ptr`` its inverse as a CSR (``argsort(idx)`` and the
# prefix sums of the counts); see docs/internals.md for shapes and derivative orders.


def border_exchange(g: torch.Tensor, comm_dict: dict[str, torch.Tensor]) -> torch.Tensor:
    """``g [nall, d]`` with its ghost rows ``[nloc, nall)`` filled from their owners' ranks.

    Differentiable (ghost gradients go back to the owners).  The keys are written out because
    TorchScript cannot index a global tuple; their order is :data:`COMM_KEYS` (tested).
    """
    return torch.ops.dpa3.border_exchange(
        g,
        comm_dict["send_idx"],
        comm_dict["send_off"],
        comm_dict["send_num"],
        comm_dict["recv_num"],
        comm_dict["send_proc"],
        comm_dict["recv_proc"],
        comm_dict["comm"],
        comm_dict["rank"],
    )


def allreduce_min(x: torch.Tensor, comm_dict: dict[str, torch.Tensor]) -> torch.Tensor:
    """Element-wise minimum of ``x`` over the ranks of ``comm_dict["comm"]`` (a collective:
    every rank must call it; ``x`` itself without MPI)."""
    return torch.ops.dpa3.allreduce_min(x, comm_dict["comm"])


def gather_rows(
    x: torch.Tensor, idx: torch.Tensor, perm: torch.Tensor, ptr: torch.Tensor
) -> torch.Tensor:
    """``x[idx]`` (``x [N, k]`` -> ``[len(idx), k]``), any order of derivatives."""
    return torch.ops.dpa3.gather_rows(x, idx, perm, ptr)


def scatter_rows(
    y: torch.Tensor, idx: torch.Tensor, perm: torch.Tensor, ptr: torch.Tensor
) -> torch.Tensor:
    """``out[r] = sum of y[q] with idx[q] == r`` (``y [Q, k]`` -> ``[len(ptr) - 1, k]``)."""
    return torch.ops.dpa3.scatter_rows(y, idx, perm, ptr)


def edge_sum(
    xc: torch.Tensor,
    xn: Optional[torch.Tensor],  # noqa: UP045 (TorchScript needs typing.Optional here)
    xe: torch.Tensor,
    b: Optional[torch.Tensor],  # noqa: UP045
    idx_c: torch.Tensor,
    perm_c: torch.Tensor,
    ptr_c: torch.Tensor,
    idx_n: Optional[torch.Tensor],  # noqa: UP045
    perm_n: Optional[torch.Tensor],  # noqa: UP045
    ptr_n: Optional[torch.Tensor],  # noqa: UP045
) -> torch.Tensor:
    """``xc[idx_c] + xn[idx_n] + xe + b`` over the edges ``[E, k]`` in one pass."""
    return torch.ops.dpa3.edge_sum(xc, xn, xe, b, idx_c, perm_c, ptr_c, idx_n, perm_n, ptr_n)


def center_outer(
    h: torch.Tensor,
    g: torch.Tensor,
    idx: torch.Tensor,
    perm: torch.Tensor,
    ptr: torch.Tensor,
    kept: Optional[torch.Tensor] = None,  # noqa: UP045 (TorchScript needs typing.Optional here)
) -> torch.Tensor:
    """``T[i] = sum over edges q of centre i of h[q] (x) g[q]``: ``h [E, 3]``, ``g [E, d]`` ->
    ``[N, 3, d]``.

    With ``kept [N, 3, d]``, ``T`` computed before, ``dpa3::center_outer_replay``: returns it
    (a view) with center_outer's backward (the low-memory path's second pass)."""
    if kept is not None:
        return torch.ops.dpa3.center_outer_replay(h, g, idx, perm, ptr, kept)
    return torch.ops.dpa3.center_outer(h, g, idx, perm, ptr)


def angle_block(
    a: torch.Tensor,
    wa: torch.Tensor,
    pe: torch.Tensor,
    vk: torch.Tensor,
    w: torch.Tensor,
    eik: torch.Tensor,
    aptr: torch.Tensor,
    nptr: torch.Tensor,
    de: int,
    act: int,
    thr: float,
    alpha: float,
    beta: torch.Tensor,
    red: Optional[torch.Tensor] = None,  # noqa: UP045 (TorchScript needs typing.Optional here)
    into: Optional[torch.Tensor] = None,  # noqa: UP045
) -> list[torch.Tensor]:
    """The fused angle block of a RepFlow layer (first and second derivatives):
    ``[edge messages [E, de], updated angles [A, a_dim]]`` (see ``RepFlowLayer._angle_fused``).

    With ``red [E, de]``, messages computed before, ``dpa3::angle_block_replay``: returns
    ``[red, an uninitialised angle output]`` at no cost, with angle_block's backward (first
    derivatives; the low-memory path's second pass needs the graph, not the values), which
    writes the gradient of ``a`` over the angle output's incoming gradient where that has
    ``a``'s shape (the low-memory path does not read it again).  With ``into [A, a_dim]``
    (no derivatives: under ``torch.no_grad()``), ``dpa3::angle_block_into``: the updated
    angles are written into it (``[messages, into]``; the low-memory path's first pass)."""
    if red is not None:
        return torch.ops.dpa3.angle_block_replay(
            a, wa, pe, vk, w, eik, aptr, nptr, de, act, thr, alpha, beta, red, True
        )
    if into is not None:
        red_new = torch.ops.dpa3.angle_block_into(
            a, wa, pe, vk, w, eik, aptr, nptr, de, act, thr, alpha, beta, into
        )
        return [red_new, into]
    return torch.ops.dpa3.angle_block(a, wa, pe, vk, w, eik, aptr, nptr, de, act, thr, alpha, beta)


def workspace(like: torch.Tensor, numel: int) -> torch.Tensor:
    """An uninitialised ``[numel]`` tensor of ``like``'s dtype and device; on the CPU its own
    mapping, reused by the next request of the same size once freed (see the module)."""
    return torch.ops.dpa3.workspace(like, numel)


def activation(x: torch.Tensor, act: int, thr: float) -> torch.Tensor:
    """``act(x)`` element-wise (any shape; ``act``: 0 silu, 1 silut with threshold ``thr``, 2 tanh),
    differentiable twice in fused passes (the composite formulation's double backward makes about
    twenty passes over ``x``)."""
    return torch.ops.dpa3.activation(x, act, thr)


def activation_grad(g: torch.Tensor, x: torch.Tensor, act: int, thr: float) -> torch.Tensor:
    """``g act'(x)`` element-wise (the backward of :func:`activation`; not differentiable)."""
    return torch.ops.dpa3._activation_bwd(g, x, act, thr)


# ---------------------------------------------------------------------------------------------
# FLOP formulas of the primitives for ``torch.utils.flop_counter.FlopCounterMode``.  A
# dispatch-mode counter sees a primitive (``torch.ops.dpa3._angle_block_fwd`` ...) as one call
# and not the ATen calls made inside its kernel, so without these formulas the matrix products
# done inside the fused kernels count 0.  Each formula counts 2 M N K per product
# (FlopCounterMode's convention for ``aten.mm``/``aten.bmm``), from the input shapes, as the CPU
# kernel does the work.  Primitives without matrix-product-like work have no formula (they
# count 0, as element-wise ATen ops do): ``_gather``, ``_segment_sum`` (copies and additions)
# and ``_edge_sum`` (``xc[idx_c] + xn[idx_n] + xe + b``: additions only).


def _angle_fwd_flops(a, wa, *_args, out_shape=None, **_kwargs) -> int:
    """``_angle_block_fwd(a [A, da_in], wa [da_in, D], ...)``: ``a wa`` once, 2 A da_in D.

    src/ops/kernels/angle_block.cpp, ``cpu::angle_block_fwd``: per block of ``nq`` angles
    ``gemm_rows(false, false, nq, width, da_in, a_blk, ..., wa, ...)``; the blocks cover every
    angle once (``for_each_block``), so the ``nq`` sum to ``A``.  (generic.cpp:
    ``pre_activation``, ``in.a.mm(in.wa)``.)
    """
    nangle, da_in = a
    return 2 * nangle * da_in * wa[1]


def _angle_bwd_flops(
    a, wa, pe, vk, w, eik, aptr, nptr, de, act, thr, alpha, beta, gred, gaout, need_wa,
    need_beta, out_shape=None, **_kwargs,
) -> int:  # fmt: skip
    """``_angle_block_bwd``: 2 A da_in D for each of ``a wa`` (recomputed), ``g_pre wa^T``
    and, if ``need_wa``, ``a^T g_pre``.

    src/ops/kernels/angle_block.cpp, ``cpu::angle_block_bwd``, per block of ``nq`` angles:
    ``gemm_rows(false, false, nq, width, da_in, a_blk, ..., wa, ...)`` (the forward product,
    recomputed instead of kept), ``gemm_rows(false, true, nq, da_in, width, buf, ..., wa, ...)``
    (``g_a``) and, when ``need_wa``, ``gemm_rows(true, false, da_in, width, nq, a_blk, ...)``
    (``g_wa``).  (generic.cpp: ``pre_activation``, ``gpre.mm(in.wa.t())``,
    ``in.a.t().mm(gpre)``.)
    """
    nangle, da_in = a
    return 2 * nangle * da_in * wa[1] * (3 if need_wa else 2)


def _outer_sum_flops(h, g, *_args, out_shape=None, **_kwargs) -> int:
    """``_outer_sum(h [E, k], g [E, d], ...) -> [N, k, d]``: one multiply-add per edge and
    output element of its centre, 2 E k d.

    src/ops/kernels/center_outer.cpp, ``outer_sum_body``: ``oc[j] += hc * ge[j]`` for every
    edge ``e``, ``c < k``, ``j < d``.  (generic.cpp forms ``h.unsqueeze(2) * g.unsqueeze(1)``
    and ``index_add_``: element-wise ATen ops, which FlopCounterMode counts 0; as a matrix
    product it is ``bmm([E, k, 1], [E, 1, d])``, 2 E k d.)
    """
    nedge, k = h
    return 2 * nedge * k * g[1]


def _outer_h_flops(h, G, *_args, out_shape=None, **_kwargs) -> int:
    """``_outer_h(h [E, k], G [N, k, d], idx) -> [E, d]``: 2 E k d.

    center_outer.cpp, ``outer_h_body``: ``o[j] += hc * Gc[j]`` for ``c < k``, ``j < d``.
    (generic.cpp: ``bmm(h.unsqueeze(1) [E, 1, k], G[idx] [E, k, d])``.)
    """
    nedge, k = h
    return 2 * nedge * k * G[2]


def _outer_g_flops(g, G, *_args, out_shape=None, **_kwargs) -> int:
    """``_outer_g(g [E, d], G [N, k, d], idx) -> [E, k]``: 2 E k d.

    center_outer.cpp, ``outer_g_body``: ``acc += ge[j] * Gc[j]`` for ``c < k``, ``j < d``.
    (generic.cpp: ``bmm(G[idx] [E, k, d], g.unsqueeze(2) [E, d, 1])``.)
    """
    nedge, d = g
    return 2 * nedge * G[1] * d


def flop_formulas() -> dict:
    """``{torch.ops.dpa3._primitive: formula}`` for every primitive that does matrix-product
    work (usable as ``FlopCounterMode(custom_mapping=flop_formulas())``).

    Raises RuntimeError if the op library is not built.
    """
    if not load_ops():
        raise RuntimeError("dpa3: the op library libdpa3_ops.so is not built")
    ops = torch.ops.dpa3
    return {
        ops._angle_block_fwd: _angle_fwd_flops,
        ops._angle_block_bwd: _angle_bwd_flops,
        ops._outer_sum: _outer_sum_flops,
        ops._outer_h: _outer_h_flops,
        ops._outer_g: _outer_g_flops,
    }


def register_flop_formulas() -> None:
    """Register :func:`flop_formulas` with ``torch.utils.flop_counter`` (idempotent).

    Every ``FlopCounterMode`` created afterwards in this process counts the matrix products
    done inside the fused kernels (it copies the registry when it is created).  Explicit, never
    done on import; a primitive that already has a formula keeps it.
    """
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    for op, formula in flop_formulas().items():
        if op not in flop_registry:
            register_flop_formula(op)(formula)
