"""Neighbour-list formatting and the flat edge/angle graph used by the RepFlow layers.

DPA3 is defined on padded ``[nf, nloc, e_sel]`` edge and ``[nf, nloc, a_sel, a_sel]`` angle
tensors, but padded entries never reach a physical output (every path into node features is
multiplied by a switch or mask).  We therefore keep only the valid entries, flattened:

- edges ``E``: every ``(frame, centre i, slot j)`` with a neighbour within ``e_rcut`` among the
  ``e_sel`` nearest (row-major order);
- angles ``A``: every ``(frame, i, j, k)`` where both ``j`` and ``k`` are among the first
  ``a_sel`` slots and within ``a_rcut`` (strict ``<``), the diagonal ``j == k`` included.

All functions are TorchScript-compatible.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from .. import _ops
from .prepared import Rows


def switch(r: torch.Tensor, rs: float, rc: float, use_exp: bool) -> torch.Tensor:
    """Smooth cutoff function ``s(r)`` (docs/dpa3-spec.md §1.5).

    Polynomial: ``u = (clamp(r, rs, rc) - rs)/(rc - rs)``, ``s = u^3(-6u^2 + 15u - 10) + 1``.
    Exponential: ``s = exp(-exp(20 (min(r, rc) - rs) / rs))`` (not exactly 0 at ``rc``).
    """
    if use_exp:
        rr = torch.clamp(r, 0.0, rc)
        return torch.exp(-torch.exp(20.0 * (rr - rs) / rs))
    u = (torch.clamp(r, rs, rc) - rs) / (rc - rs)
    u3 = u * u * u
    return u3 * (-6.0 * u * u + 15.0 * u - 10.0) + 1.0


def format_nlist(
    ext_coord: torch.Tensor, nlist: torch.Tensor, rcut: float, sel: int, quantum: float
) -> torch.Tensor:
    """Sort a raw neighbour list by distance, drop entries beyond ``rcut``, keep ``sel`` columns.

    Parameters
    ----------
    ext_coord
        ``[nf, nall, 3]`` extended coordinates (any float dtype; distances in this dtype).
    nlist
        ``[nf, nloc, nnei]`` int64 indices into the extended atoms, ``-1`` = empty; any order,
        may include neighbours beyond ``rcut`` (LAMMPS skin).
    quantum
        Rounding of the sort key (Å): :data:`dpa3.data.neighbor.TIE_QUANTUM`.

    Returns
    -------
    ``[nf, nloc, sel]`` int64: the ``min(sel, #within rcut)`` nearest, ascending, ``-1`` padded.

    Ties: neighbours are ordered by the key (distance, dx, dy, dz), every component rounded
    to ``quantum`` Å, ``(dx, dy, dz) = x_j - x_i``.  The key depends only on the geometry, so
    which of several equidistant neighbours (a lattice shell) is kept at ``sel`` or ``a_sel``
    is the same whatever the order of ``nlist``, the numbering of the atoms or the LAMMPS
    rank; :mod:`dpa3.data.neighbor` uses the same key.
    """
    nf, nloc, nnei = nlist.shape
    if nnei < sel:
        pad = torch.full((nf, nloc, sel - nnei), -1, dtype=nlist.dtype, device=nlist.device)
        nlist = torch.cat([nlist, pad], dim=-1)
        nnei = sel
    valid = nlist >= 0
    idx = torch.where(valid, nlist, torch.zeros_like(nlist))
    nall = ext_coord.shape[1]
    flat = ext_coord.reshape(nf * nall, 3)
    offs = (torch.arange(nf, device=nlist.device) * nall).view(nf, 1, 1)
    nei = flat[(idx + offs).reshape(-1)].view(nf, nloc, nnei, 3)
    cen = ext_coord[:, :nloc, :].unsqueeze(2)
    diff = nei - cen
    dist = torch.linalg.norm(diff, dim=-1)
    dist = torch.where(valid, dist, torch.full_like(dist, float("inf")))
    inv_q = 1.0 / quantum
    kd = torch.round(dist * inv_q)
    kd = torch.where(torch.isnan(kd), torch.full_like(kd, float("inf")), kd)
    kd_sorted, order = torch.sort(kd, dim=-1, stable=True)
    # the rounded distance alone orders every row without equal finite distances (the usual
    # case: one sort); only with ties, the lexicographic sort on the whole key, stable sorts
    # from the last key to the first
    tied = (kd_sorted[..., 1:] == kd_sorted[..., :-1]) & torch.isfinite(kd_sorted[..., 1:])
    if bool(tied.any()):
        keys = [diff[..., 2], diff[..., 1], diff[..., 0], dist]
        order = torch.arange(nnei, device=nlist.device).expand(nf, nloc, nnei)
        for key in keys:
            k = torch.gather(torch.round(key * inv_q), 2, order)
            k = torch.where(torch.isnan(k), torch.full_like(k, float("inf")), k)
            _, o = torch.sort(k, dim=-1, stable=True)
            order = torch.gather(order, 2, o)
    dist = torch.gather(dist, 2, order)
    out = torch.gather(nlist, 2, order)
    out = torch.where(dist <= rcut, out, torch.full_like(out, -1))
    return out[:, :, :sel]


class EdgeGraph(NamedTuple):
    """Flat edges and angles of one batch (index tensors are int64).

    ``center [E]`` row of the centre in the flattened local atoms ``[nf*nloc]``;
    ``nei_ext [E]`` row of the neighbour in the flattened extended atoms ``[nf*nall]``;
    ``diff [E, 3]`` ``x_j - x_i`` (descriptor precision, differentiable);
    ``dist [E]``; ``is_angle_edge [E]`` bool; ``a_center [A]``, ``a_eij [A]``, ``a_eik [A]``.
    """

    center: torch.Tensor
    nei_ext: torch.Tensor
    diff: torch.Tensor
    dist: torch.Tensor
    is_angle_edge: torch.Tensor
    a_center: torch.Tensor
    a_eij: torch.Tensor
    a_eik: torch.Tensor


def build_graph(
    ext_coord: torch.Tensor, nlist: torch.Tensor, a_rcut: float, a_sel: int
) -> EdgeGraph:
    """Flatten a formatted (sorted, cut, ``e_sel`` wide) neighbour list into edges and angles.

    ``ext_coord [nf, nall, 3]`` must already be in the descriptor precision (differences are
    formed after the cast, as DeePMD-kit does).
    """
    nf, nloc, nnei = nlist.shape
    nall = ext_coord.shape[1]
    dev = nlist.device
    flat_nlist = nlist.reshape(-1)
    eid = torch.nonzero(flat_nlist >= 0).squeeze(1)
    center = torch.div(eid, nnei, rounding_mode="floor")
    slot = eid - center * nnei
    frame = torch.div(center, nloc, rounding_mode="floor")
    nei_ext = flat_nlist[eid] + frame * nall
    diff, dist = edge_vectors(ext_coord, center, nei_ext, nloc)
    na = min(a_sel, nnei)
    is_a = (slot < na) & (dist < a_rcut)
    # dense [nf*nloc, na] table of angle-edge ids (-1 = none) to enumerate the (j, k) pairs
    a_eid = torch.nonzero(is_a).squeeze(1)
    table = torch.full((nf * nloc * na,), -1, dtype=torch.long, device=dev)
    table[center[a_eid] * na + slot[a_eid]] = a_eid
    table = table.view(nf * nloc, na)
    present = table >= 0
    pairs = torch.nonzero(present.unsqueeze(2) & present.unsqueeze(1))
    a_center = pairs[:, 0]
    a_eij = table[a_center, pairs[:, 1]]
    a_eik = table[a_center, pairs[:, 2]]
    return EdgeGraph(center, nei_ext, diff, dist, is_a, a_center, a_eij, a_eik)


def edge_vectors(
    ext_coord: torch.Tensor, center: torch.Tensor, nei_ext: torch.Tensor, nloc: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge vectors ``diff = x_j - x_i [E, 3]`` and lengths ``dist [E]`` of the edges
    ``center``/``nei_ext`` (as in :class:`EdgeGraph`), in the dtype of ``ext_coord
    [nf, nall, 3]``; differentiable in ``ext_coord``."""
    nf, nall = ext_coord.shape[0], ext_coord.shape[1]
    frame = torch.div(center, nloc, rounding_mode="floor")
    cen_ext = center - frame * nloc + frame * nall
    flat_coord = ext_coord.reshape(nf * nall, 3)
    diff = torch.index_select(flat_coord, 0, nei_ext) - torch.index_select(flat_coord, 0, cen_ext)
    return diff, torch.linalg.norm(diff, dim=-1)


def angle_cosine(diff: torch.Tensor, dist: torch.Tensor, eij: Rows, eik: Rows) -> torch.Tensor:
    """Angle input ``c_ijk / sqrt(pi)`` with DeePMD-kit's ``1e-6`` guards, ``[A, 1]``.

    ``u_ij = d_ij / (|d_ij| + 1e-6)``, ``c_ijk = (u_ij . u_ik) (1 - 1e-6)``; ``eij``/``eik``
    the two edges of every angle.
    """
    unit = diff / (dist.unsqueeze(-1) + 1e-6)
    cos = (gather(unit, eij) * gather(unit, eik)).sum(-1, keepdim=True) * (1.0 - 1e-6)
    return cos / math.sqrt(math.pi)


def make_rows(idx: torch.Tensor, n: int, use_ops: bool, ascending: bool = False) -> Rows:
    """Index ``idx`` into ``n`` rows (with the inverse index when the op library is used).

    ``ascending``: the caller guarantees ``idx`` is non-decreasing (edges grouped by centre,
    angles by edge, as :func:`build_graph` makes them), so the stable sort is the identity.
    """
    if not use_ops:
        return Rows(idx, None, None)
    if ascending:
        perm = torch.arange(idx.shape[0], dtype=idx.dtype, device=idx.device)
    else:
        perm = torch.argsort(idx, stable=True)
    counts = torch.bincount(idx, minlength=n)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long, device=idx.device), torch.cumsum(counts, 0)])
    return Rows(idx, perm, ptr)


def put_rows(graph: dict[str, torch.Tensor], name: str, rows: Rows) -> None:
    """Store ``rows`` in ``graph`` under ``name`` (and ``name_perm``/``name_ptr`` if set)."""
    graph[name] = rows.idx
    perm = rows.perm
    ptr = rows.ptr
    if perm is not None and ptr is not None:
        graph[name + "_perm"] = perm
        graph[name + "_ptr"] = ptr


def get_rows(graph: dict[str, torch.Tensor], name: str) -> Rows:
    """The :class:`Rows` that :func:`put_rows` stored under ``name``."""
    return Rows(graph[name], graph.get(name + "_perm"), graph.get(name + "_ptr"))


def gather(x: torch.Tensor, rows: Rows) -> torch.Tensor:
    """``x[idx]`` (any order of derivatives)."""
    perm = rows.perm
    ptr = rows.ptr
    if perm is None or ptr is None:
        return torch.index_select(x, 0, rows.idx)
    return _ops.gather_rows(x, rows.idx, perm, ptr)


def scatter(y: torch.Tensor, rows: Rows, n: int) -> torch.Tensor:
    """``out[r] = sum of y[q] with idx[q] == r``, ``out`` with ``n`` rows."""
    perm = rows.perm
    ptr = rows.ptr
    if perm is None or ptr is None:
        shape = [n] + list(y.shape[1:])
        return torch.zeros(shape, dtype=y.dtype, device=y.device).index_add(0, rows.idx, y)
    return _ops.scatter_rows(y, rows.idx, perm, ptr)


def weighted_scatter(w: torch.Tensor, y: torch.Tensor, rows: Rows, n: int) -> torch.Tensor:
    """``out[r] = sum of w[q] y[q] with idx[q] == r``: ``w [Q]``, ``y [Q, d]`` -> ``[n, d]``.

    With the op library the weighted rows are summed in one pass (``center_outer`` with one
    weight column), without the ``[Q, d]`` product and its chain of derivatives.
    """
    perm = rows.perm
    ptr = rows.ptr
    if perm is None or ptr is None:
        return scatter(w.unsqueeze(-1) * y, rows, n)
    return _ops.center_outer(w.unsqueeze(-1), y, rows.idx, perm, ptr).view(n, y.shape[1])


def edge_sum(
    xc: torch.Tensor,
    xn: Optional[torch.Tensor],  # noqa: UP045
    xe: torch.Tensor,
    b: Optional[torch.Tensor],  # noqa: UP045
    center: Rows,
    nei: Rows,
) -> torch.Tensor:
    """``xc[center] + xn[nei] + xe + b`` over the edges ``[E, k]`` (``xn``/``b`` optional).

    ``xc [N, k]`` per centre, ``xn [M, k]`` per neighbour row, ``xe [E, k]``, ``b [k]``; ``nei``
    is ignored without ``xn``.  With the op library one pass without intermediates (any
    derivative order).
    """
    perm = center.perm
    ptr = center.ptr
    if perm is not None and ptr is not None:
        if xn is None:
            return _ops.edge_sum(xc, None, xe, b, center.idx, perm, ptr, None, None, None)
        return _ops.edge_sum(xc, xn, xe, b, center.idx, perm, ptr, nei.idx, nei.perm, nei.ptr)
    out = gather(xc, center)
    if xn is not None:
        out = out + gather(xn, nei)
    out = out + xe
    if b is not None:
        out = out + b
    return out
