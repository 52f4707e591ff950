"""Periodic-image extension and padded neighbour lists, in linear time.

This is the neighbour search used by the Python side (training data, the ASE calculator,
``dpa3 neighbor-stat``).  It follows ``docs/internals.md`` ("Neighbour data") and the
specification (docs/dpa3-spec.md §1.2-1.3), with one deliberate difference: instead of materialising
every periodic image of every atom (``n_shift * N`` extended atoms), only the images that
actually appear in some neighbour list are kept.  The model never needs the others.

Algorithm
---------
1. Periodic cells: wrap the local atoms into the cell (fractional coordinates mod 1).
2. Candidate images: for every integer shift with ``|n_d| <= ceil(rcut / h_d)``
   (``h_d`` = face-to-face distance of the cell along direction ``d``), keep an image only
   if its fractional coordinate lies within ``rcut / h_d`` of the span of the local atoms'
   fractional coordinates, in all three directions.  Any image within ``rcut`` of a local
   atom passes this test, and for large cells only a skin of thickness ``rcut`` survives.
3. Cell list: bin the candidates on a Cartesian grid of spacing ``rcut / 2``; the bins of
   one grid row along x are contiguous after sorting, so each local atom scans
   ``(2k+1)^2`` contiguous ranges (``k = 2``).  Pairs are produced in bounded chunks, so
   memory stays proportional to the chunk size, not to ``N^2``.
4. Keep pairs with ``r <= rcut`` (self excluded; images of an atom itself at a non-zero
   shift are valid neighbours), sort each row by distance and truncate to ``sel``.

Units are Å throughout; positions are float64.  Cell rows are the lattice vectors
``a, b, c`` (as in ASE), flattened row-major into ``box [9]``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..errors import DataError

__all__ = [
    "NeighborBatch",
    "NeighborData",
    "build_neighbor_batch",
    "build_neighbor_data",
    "face_distances",
    "neighbor_counts",
    "wrap_coord",
]

# Relative safety margin on every cutoff-derived bound (image range, bin reach), so that
# rounding in fractional / binned coordinates can never drop a pair with r <= rcut.
_MARGIN = 1e-9
# Upper bound on the number of candidate pairs held in memory at once (each costs ~80 bytes).
_MAX_PAIRS = 1 << 21
# Upper bound on bins per Cartesian direction (keeps linear bin ids well inside int64 even
# for very sparse non-periodic systems; bins simply get larger).
_MAX_BINS = 1 << 20
# Two atoms closer than this (Å) are an error, not an input: overlapping atoms (a wrong unit,
# a duplicated atom, an exploded trajectory) would otherwise give inf/NaN or absurd energies.
MIN_DISTANCE = 0.1
# Neighbours are ordered by (distance, dx, dy, dz), each rounded to this many Å, with
# (dx, dy, dz) = x_j - x_i: equidistant neighbours (a lattice shell cut by sel) are chosen by
# geometry, never by atom order or LAMMPS rank, and rounding noise far below this quantum
# (images built by different additions, other ranks) does not reorder them.  The model's
# format_nlist (dpa3.model.graph) sorts with the same key.
TIE_QUANTUM = 1e-8
# At most this many centres per chunk (row ids then fit int16, which numpy sorts stably in
# linear time with a radix sort).
_MAX_ROWS = (1 << 15) - 1


@dataclass(frozen=True)
class NeighborData:
    """Extended atoms and neighbour list of one frame.

    Attributes
    ----------
    ext_coord
        ``[nall, 3]`` float64, Å.  Rows ``0..N-1`` are the local atoms (wrapped into the
        cell when periodic); the remaining rows are periodic images that appear in ``nlist``.
    mapping
        ``[nall]`` int64, owner local index of every extended atom
        (``mapping[:N] == arange(N)``).
    nlist
        ``[N, sel]`` int64, indices into the extended atoms of the ``min(sel, n_neighbors)``
        nearest neighbours with ``r <= rcut`` (self excluded), by ascending distance,
        ``-1`` padded at the end.
    n_neighbors
        ``[N]`` int64, number of neighbours within ``rcut`` before truncation to ``sel``.
    """

    ext_coord: np.ndarray
    mapping: np.ndarray
    nlist: np.ndarray
    n_neighbors: np.ndarray


class NeighborBatch(NamedTuple):
    """Padded neighbour data of ``nf`` frames with the same number of local atoms ``N``.

    Attributes
    ----------
    ext_coord
        ``[nf, nall_max, 3]`` float64 tensor, Å.  Rows past a frame's own ``nall`` are
        padding: they sit more than ``2 * rcut`` away from every real atom of the frame.
    mapping
        ``[nf, nall_max]`` int64 tensor; padding rows map to local atom 0.
    nlist
        ``[nf, N, sel]`` int64 tensor, indices into the frame's extended atoms, ``-1`` padded;
        never refers to a padding row.
    n_neighbors
        ``[nf, N]`` int64 tensor, neighbours within ``rcut`` before truncation.
    """

    ext_coord: torch.Tensor
    mapping: torch.Tensor
    nlist: torch.Tensor
    n_neighbors: torch.Tensor


# ----------------------------------------------------------------------------------------
# Input checking and periodic geometry
# ----------------------------------------------------------------------------------------


def _check_coord(coord: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(coord, torch.Tensor):
        coord = coord.detach().cpu().numpy()
    coord = np.asarray(coord, dtype=np.float64)
    if coord.ndim != 2 or coord.shape[1] != 3:
        raise ValueError(f"coord must have shape [N, 3], got {list(coord.shape)}")
    if not np.isfinite(coord).all():
        raise DataError("coord contains non-finite values (NaN or inf positions)")
    return coord


def _check_cell(box: np.ndarray | torch.Tensor | None) -> np.ndarray | None:
    if box is None:
        return None
    if isinstance(box, torch.Tensor):
        box = box.detach().cpu().numpy()
    box = np.asarray(box, dtype=np.float64)
    if box.size != 9:
        raise ValueError(f"box must have 9 entries (cell rows a, b, c), got shape {box.shape}")
    cell = box.reshape(3, 3)
    if not np.isfinite(cell).all():
        raise DataError("box contains non-finite values")
    volume = abs(float(np.linalg.det(cell)))
    scale = float(np.prod(np.linalg.norm(cell, axis=1)))
    if not volume > 1e-10 * max(scale, 1e-300):
        raise DataError(f"box is singular or degenerate (volume {volume:.3g} Å^3)")
    return cell


def _check_cutoff(rcut: float, sel: int | None) -> None:
    if not (math.isfinite(rcut) and rcut > 0):
        raise ValueError(f"rcut must be a positive finite number, got {rcut}")
    if sel is not None and (isinstance(sel, bool) or not isinstance(sel, (int, np.integer))):
        raise TypeError(f"sel must be an int, got {type(sel).__name__}")
    if sel is not None and sel < 1:
        raise ValueError(f"sel must be >= 1, got {sel}")


def face_distances(cell: np.ndarray) -> np.ndarray:
    """Face-to-face distances ``h_a, h_b, h_c`` of a cell.

    Parameters
    ----------
    cell
        ``[3, 3]`` float64, rows are the lattice vectors ``a, b, c`` (Å).

    Returns
    -------
    np.ndarray
        ``[3]`` float64 (Å): ``h_a = V / |b x c|``, ``h_b = V / |c x a|``, ``h_c = V / |a x b|``.
    """
    a, b, c = cell
    volume = abs(float(np.dot(a, np.cross(b, c))))
    areas = np.linalg.norm([np.cross(b, c), np.cross(c, a), np.cross(a, b)], axis=1)
    return volume / areas


def wrap_coord(coord: np.ndarray, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wrap positions into the cell.

    Parameters
    ----------
    coord
        ``[N, 3]`` float64 positions (Å).
    cell
        ``[3, 3]`` float64 cell, rows are lattice vectors (Å).

    Returns
    -------
    wrapped
        ``[N, 3]`` float64, ``frac @ cell``.
    frac
        ``[N, 3]`` float64 fractional coordinates in ``[0, 1)``.
    """
    frac = coord @ np.linalg.inv(cell)
    frac -= np.floor(frac)
    # ``x - floor(x)`` rounds to exactly 1.0 for tiny negative x; fold it back.
    frac[frac >= 1.0] = 0.0
    return frac @ cell, frac


def _periodic_candidates(
    frac: np.ndarray, wrapped: np.ndarray, cell: np.ndarray, rcut: float
) -> tuple[np.ndarray, np.ndarray]:
    """Local atoms followed by the images that may lie within ``rcut`` of a local atom.

    Returns ``cand_coord [M, 3]`` float64 and ``cand_owner [M]`` int64; the first ``N``
    candidates are the local atoms themselves (zero shift), the images follow shift-major,
    shifts ordered by the norm of the integer triple.
    """
    n = frac.shape[0]
    # Fractional half-width of the cutoff sphere along each direction.
    reach = rcut / face_distances(cell) * (1.0 + _MARGIN) + _MARGIN
    lo = frac.min(axis=0) - reach
    hi = frac.max(axis=0) + reach
    nshell = np.ceil(reach).astype(np.int64)
    # ok[d][m + nshell[d], i]: image of atom i at shift m along d is inside the padded span.
    ok = []
    for d in range(3):
        m = np.arange(-nshell[d], nshell[d] + 1, dtype=np.float64)[:, None]
        t = frac[None, :, d] + m
        ok.append((t >= lo[d]) & (t <= hi[d]))
    grids = np.meshgrid(*[np.arange(-s, s + 1) for s in nshell], indexing="ij")
    shifts = np.stack([g.ravel() for g in grids], axis=1)
    shifts = shifts[np.argsort((shifts**2).sum(axis=1), kind="stable")][1:]  # drop (0,0,0)
    mask = ok[0][shifts[:, 0] + nshell[0]]
    mask &= ok[1][shifts[:, 1] + nshell[1]]
    mask &= ok[2][shifts[:, 2] + nshell[2]]
    s_idx, owner = np.nonzero(mask)
    images = wrapped[owner] + shifts[s_idx].astype(np.float64) @ cell
    cand_coord = np.concatenate([wrapped, images], axis=0)
    cand_owner = np.concatenate([np.arange(n, dtype=np.int64), owner.astype(np.int64)])
    return cand_coord, cand_owner


def _prepare(
    coord: np.ndarray | torch.Tensor, box: np.ndarray | torch.Tensor | None, rcut: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``local [N,3]``, ``cand_coord [M,3]`` and ``cand_owner [M]`` (locals first)."""
    coord = _check_coord(coord)
    cell = _check_cell(box)
    if cell is None or coord.shape[0] == 0:
        return coord, coord, np.arange(coord.shape[0], dtype=np.int64)
    wrapped, frac = wrap_coord(coord, cell)
    cand_coord, cand_owner = _periodic_candidates(frac, wrapped, cell, rcut)
    return wrapped, cand_coord, cand_owner


# ----------------------------------------------------------------------------------------
# Cell list
# ----------------------------------------------------------------------------------------


def _iter_pairs(
    cand: np.ndarray, nloc: int, rcut: float
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield, chunk by chunk, all pairs ``i < nloc``, ``j != i`` with ``|r_j - r_i| <= rcut``.

    Parameters
    ----------
    cand
        ``[M, 3]`` float64 candidate positions; the first ``nloc`` are the centres.
    nloc
        Number of centres.
    rcut
        Cutoff radius (Å).

    Yields
    ------
    tuple
        ``(i0, i1, qi, cj, dist)``: the chunk covers centres ``i0 <= i < i1``; ``qi`` and
        ``cj`` (int64) are centre and candidate indices, ``dist`` (float64) the distances,
        all of the same length and grouped by ascending ``qi`` (unsorted within a centre).
        A chunk examines about ``_MAX_PAIRS`` candidate pairs (a centre is never split) and
        spans at most ``_MAX_ROWS`` centres.
    """
    origin = cand.min(axis=0)
    extent = cand.max(axis=0) - origin
    # Bins of width >= rcut/2 (slightly more, so rounding cannot push a pair at exactly
    # rcut two bins further apart than `kreach`).
    width = np.maximum(0.5 * rcut * (1.0 + _MARGIN), extent / (_MAX_BINS - 1))
    nbin = (np.floor(extent / width) + 1).astype(np.int64)
    kreach = np.ceil(rcut / width).astype(np.int64)
    ibin = np.floor((cand - origin) / width).astype(np.int64)
    np.clip(ibin, 0, nbin - 1, out=ibin)
    lin = ibin[:, 0] + nbin[0] * (ibin[:, 1] + nbin[1] * ibin[:, 2])
    order = np.argsort(lin, kind="stable")
    sorted_lin = lin[order]

    # One row per (centre, dy, dz): a contiguous range of sorted candidates spanning the
    # x-bins [bx - kx, bx + kx] of grid row (by + dy, bz + dz).
    qb = ibin[:nloc]
    dy, dz = np.meshgrid(
        np.arange(-kreach[1], kreach[1] + 1), np.arange(-kreach[2], kreach[2] + 1), indexing="ij"
    )
    ty = qb[:, 1:2] + dy.ravel()[None, :]
    tz = qb[:, 2:3] + dz.ravel()[None, :]
    valid = (ty >= 0) & (ty < nbin[1]) & (tz >= 0) & (tz < nbin[2])
    row_base = nbin[0] * (ty + nbin[1] * tz)
    xlo = np.maximum(qb[:, 0] - kreach[0], 0)[:, None]
    xhi = np.minimum(qb[:, 0] + kreach[0], nbin[0] - 1)[:, None]
    start = np.searchsorted(sorted_lin, row_base + xlo, side="left")
    stop = np.searchsorted(sorted_lin, row_base + xhi, side="right")
    length = np.where(valid, stop - start, 0)  # [nloc, nrange]

    # Chunk boundaries so that each chunk examines about _MAX_PAIRS candidate pairs.
    cum = np.cumsum(length.sum(axis=1))
    total_all = int(cum[-1]) if nloc else 0
    targets = np.arange(1, total_all // _MAX_PAIRS + 1, dtype=np.int64) * _MAX_PAIRS
    cuts = np.searchsorted(cum, targets, side="right")
    # At most _MAX_ROWS centres per chunk, so that row ids within a chunk fit in int16.
    rows = np.arange(0, nloc, _MAX_ROWS)
    bounds = np.unique(np.concatenate([rows, cuts, [nloc]])).tolist()

    # Per-coordinate columns: 1-D gathers are several times faster than row gathers.
    cols = np.ascontiguousarray(cand.T)
    rcut2 = rcut * rcut
    for i0, i1 in itertools.pairwise(bounds):
        ln = length[i0:i1].ravel()
        total = int(ln.sum())
        nrange = length.shape[1]
        qi = np.repeat(np.arange(i0, i1, dtype=np.int64), nrange).repeat(ln)
        offset = (start[i0:i1].ravel() - (np.cumsum(ln) - ln)).repeat(ln)
        cj = order.take(np.arange(total, dtype=np.int64) + offset)
        d2 = np.zeros(total, dtype=np.float64)
        for col in cols:
            t = col.take(cj)
            t -= col.take(qi)
            t *= t
            d2 += t
        # Cheap prefilter on the squared distance (slack covers its rounding), then the
        # exact test on the norm, which is what the model recomputes.
        keep = np.nonzero((d2 <= rcut2 * (1.0 + 1e-12)) & (cj != qi))[0]
        dist = np.sqrt(d2.take(keep))
        exact = dist <= rcut
        keep = keep[exact]
        yield i0, i1, qi.take(keep), cj.take(keep), dist[exact]


def _break_ties(
    srt: np.ndarray,
    row: np.ndarray,
    dq: np.ndarray,
    cand: np.ndarray,
    qi: np.ndarray,
    cj: np.ndarray,
) -> np.ndarray:
    """``srt`` (pairs sorted by row, then rounded distance ``dq``) with every run of equal
    (row, dq) ordered by the rounded displacement (dx, dy, dz) = x_j - x_i."""
    r, d = row.take(srt), dq.take(srt)
    same = (r[1:] == r[:-1]) & (d[1:] == d[:-1])
    if not same.any():
        return srt
    tied = np.zeros(srt.shape[0], dtype=bool)
    tied[1:] |= same
    tied[:-1] |= same
    pos = np.nonzero(tied)[0]
    sub = srt.take(pos)
    diff = cand[cj.take(sub)] - cand[qi.take(sub)]
    keys = [np.round(diff[:, k] / TIE_QUANTUM) for k in (2, 1, 0)]
    order = np.lexsort([*keys, dq.take(sub), row.take(sub)])
    srt = srt.copy()
    srt[pos] = sub.take(order)
    return srt


# ----------------------------------------------------------------------------------------
# Public builders
# ----------------------------------------------------------------------------------------


def build_neighbor_data(
    coord: np.ndarray | torch.Tensor,
    box: np.ndarray | torch.Tensor | None,
    rcut: float,
    sel: int,
) -> NeighborData:
    """Extend one frame with periodic images and build its sorted, padded neighbour list.

    Parameters
    ----------
    coord
        ``[N, 3]`` float64 positions (Å).
    box
        ``[9]`` float64 cell rows ``a, b, c`` flattened row-major (Å), or ``None`` for a
        non-periodic system (no images, no wrapping).  Any triclinic cell is accepted,
        including cells thinner than ``rcut`` (an atom then sees several images of every
        atom, itself included).
    rcut
        Cutoff radius (Å); neighbours with ``r <= rcut`` are kept.
    sel
        Width of the neighbour list; the ``sel`` nearest neighbours are kept.

    Raises
    ------
    DataError
        (a ValueError) Non-finite positions or cell, a degenerate cell, or two atoms (or an
        atom and an image)
        closer than :data:`MIN_DISTANCE` (the message names both atoms, 0-based).

    Returns
    -------
    NeighborData
        ``ext_coord [nall, 3]``, ``mapping [nall]``, ``nlist [N, sel]``, ``n_neighbors [N]``;
        see :class:`NeighborData`.  Extended atoms past the local ones are the images
        referenced by ``nlist``, in order of (shift norm, shift, owner).
    """
    rcut = float(rcut)
    _check_cutoff(rcut, sel)
    local, cand, owner = _prepare(coord, box, rcut)
    nloc = local.shape[0]
    nlist = np.full((nloc, sel), -1, dtype=np.int64)
    n_neighbors = np.zeros(nloc, dtype=np.int64)
    if nloc == 0:
        return NeighborData(local.copy(), owner[:0].copy(), nlist, n_neighbors)

    for i0, i1, qi, cj, dist in _iter_pairs(cand, nloc, rcut):
        if dist.size and dist.min() < MIN_DISTANCE:
            k = int(np.argmin(dist))
            i, j = int(qi[k]), int(owner[cj[k]])
            what = f"atom {j}" if cj[k] < nloc else f"a periodic image of atom {j}"
            raise DataError(
                f"atom {i} and {what} are {float(dist[k]):.3g} Å apart (less than "
                f"{MIN_DISTANCE} Å): overlapping atoms; check the positions and their units"
            )
        row = (qi - i0).astype(np.int16)
        counts = np.bincount(row, minlength=i1 - i0)
        n_neighbors[i0:i1] = counts
        # Rows by centre, then ascending (distance, dx, dy, dz), rounded to TIE_QUANTUM
        # (the tie rule of format_nlist): sort by distance, then stably by row; then
        # re-sort only the runs of equal (row, distance) by the whole key.
        dq = np.round(dist / TIE_QUANTUM)
        srt = np.argsort(dq)
        srt = srt.take(np.argsort(row.take(srt), kind="stable"))
        srt = _break_ties(srt, row, dq, cand, qi, cj)
        # Pairs are now grouped by centre: position within the group = rank by distance.
        rank = np.arange(srt.shape[0], dtype=np.int64) - np.repeat(
            np.cumsum(counts) - counts, counts
        )
        take = np.nonzero(rank < sel)[0]
        srt = srt.take(take)
        nlist[qi.take(srt), rank.take(take)] = cj.take(srt)

    # Keep only the images that are referenced, renumbered after the local atoms.
    used = np.zeros(cand.shape[0], dtype=bool)
    used[nlist[nlist >= 0]] = True
    ghost = np.nonzero(used[nloc:])[0] + nloc
    remap = np.full(cand.shape[0], -1, dtype=np.int64)
    remap[:nloc] = np.arange(nloc, dtype=np.int64)
    remap[ghost] = nloc + np.arange(ghost.shape[0], dtype=np.int64)
    nlist = np.where(nlist >= 0, remap[np.maximum(nlist, 0)], -1)
    ext_coord = np.concatenate([local, cand[ghost]], axis=0)
    mapping = np.concatenate([owner[:nloc], owner[ghost]])
    return NeighborData(ext_coord, mapping, nlist, n_neighbors)


def neighbor_counts(
    coord: np.ndarray | torch.Tensor,
    box: np.ndarray | torch.Tensor | None,
    rcut: float,
    atype: np.ndarray | None = None,
    ntypes: int = 0,
) -> tuple[np.ndarray, float]:
    """Count the neighbours within ``rcut`` of every atom (periodic images included).

    The same search as :func:`build_neighbor_data` (no sorting, no extended atoms built); it
    serves ``e_sel: "auto"`` and ``dpa3 neighbor-stat``.

    Parameters
    ----------
    coord
        ``[N, 3]`` float64 positions (Å).
    box
        ``[9]`` float64 cell rows (Å) or ``None`` (non-periodic).
    rcut
        Cutoff radius (Å); neighbours with ``r <= rcut`` are counted, self excluded (images
        of an atom itself at a non-zero shift count).
    atype
        ``[N]`` int types in ``[0, ntypes)``: count per neighbour type.
    ntypes
        Number of types (with ``atype``).

    Returns
    -------
    counts
        ``[N]`` int64, equal to ``build_neighbor_data(...).n_neighbors``; ``[N, ntypes]`` per
        neighbour type with ``atype``.
    min_dist
        The smallest distance within ``rcut`` (Å), ``inf`` if no atom has a neighbour.
    """
    rcut = float(rcut)
    _check_cutoff(rcut, None)
    local, cand, owner = _prepare(coord, box, rcut)
    nloc = local.shape[0]
    if atype is not None:
        atype = np.asarray(atype, dtype=np.int64).reshape(-1)
        if atype.shape[0] != nloc or (nloc and (atype.min() < 0 or atype.max() >= ntypes)):
            raise ValueError(f"atype must be {nloc} types in [0, {ntypes})")
        cand_type = atype[owner]
        counts = np.zeros((nloc, ntypes), dtype=np.int64)
    else:
        counts = np.zeros(nloc, dtype=np.int64)
    min_dist = math.inf
    for i0, i1, qi, cj, dist in _iter_pairs(cand, nloc, rcut) if nloc else ():
        if dist.size:
            min_dist = min(min_dist, float(dist.min()))
        if atype is None:
            counts[i0:i1] = np.bincount(qi - i0, minlength=i1 - i0)
        else:
            flat = (qi - i0) * ntypes + cand_type.take(cj)
            counts[i0:i1] = np.bincount(flat, minlength=(i1 - i0) * ntypes).reshape(-1, ntypes)
    return counts, min_dist


def build_neighbor_batch(
    coord: np.ndarray | torch.Tensor,
    box: np.ndarray | torch.Tensor | None,
    rcut: float,
    sel: int,
    device: torch.device | str | None = None,
) -> NeighborBatch:
    """Neighbour data of ``nf`` frames, padded to a common number of extended atoms.

    Parameters
    ----------
    coord
        ``[nf, N, 3]`` float64 positions (Å).
    box
        ``[nf, 9]`` float64 cell rows per frame (Å), or ``None`` (all frames non-periodic).
    rcut
        Cutoff radius (Å).
    sel
        Width of the neighbour list.
    device
        Device of the returned tensors (default CPU).

    Returns
    -------
    NeighborBatch
        ``ext_coord [nf, nall_max, 3]`` float64, ``mapping [nf, nall_max]`` int64,
        ``nlist [nf, N, sel]`` int64, ``n_neighbors [nf, N]`` int64.  Padding rows of
        ``ext_coord`` are placed at ``max(ext_coord) + 2 * rcut + 1`` (per component) and
        map to atom 0; ``nlist`` never refers to them.
    """
    if isinstance(coord, torch.Tensor):
        coord = coord.detach().cpu().numpy()
    coord = np.asarray(coord, dtype=np.float64)
    if coord.ndim != 3 or coord.shape[2] != 3:
        raise ValueError(f"coord must have shape [nf, N, 3], got {list(coord.shape)}")
    nf, nloc = coord.shape[:2]
    if box is not None:
        if isinstance(box, torch.Tensor):
            box = box.detach().cpu().numpy()
        box = np.asarray(box, dtype=np.float64).reshape(nf, -1)
        if box.shape[1] != 9:
            raise ValueError(f"box must have shape [nf, 9], got {list(box.shape)}")
    frames = [
        build_neighbor_data(coord[f], None if box is None else box[f], rcut, sel) for f in range(nf)
    ]
    nall_max = max((fr.ext_coord.shape[0] for fr in frames), default=0)
    ext_coord = np.zeros((nf, nall_max, 3), dtype=np.float64)
    mapping = np.zeros((nf, nall_max), dtype=np.int64)
    nlist = np.full((nf, nloc, sel), -1, dtype=np.int64)
    n_neighbors = np.zeros((nf, nloc), dtype=np.int64)
    for f, fr in enumerate(frames):
        nall = fr.ext_coord.shape[0]
        ext_coord[f, :nall] = fr.ext_coord
        if nall < nall_max:
            # Far from every real atom of the frame (> 2 rcut in each component).
            far = fr.ext_coord.max(axis=0) + 2.0 * float(rcut) + 1.0
            ext_coord[f, nall:] = far
        mapping[f, :nall] = fr.mapping
        nlist[f] = fr.nlist
        n_neighbors[f] = fr.n_neighbors
    dev = torch.device("cpu") if device is None else torch.device(device)
    return NeighborBatch(
        ext_coord=torch.from_numpy(ext_coord).to(dev),
        mapping=torch.from_numpy(mapping).to(dev),
        nlist=torch.from_numpy(nlist).to(dev),
        n_neighbors=torch.from_numpy(n_neighbors).to(dev),
    )
