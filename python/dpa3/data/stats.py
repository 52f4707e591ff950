"""Data statistics: per-type energy bias (docs/dpa3-spec.md §4.2) and neighbour counts
(``e_sel: "auto"``).

The energy bias solves ``min_b sum_f (E_f - sum_t c_ft b_t)^2`` with ``numpy.linalg.lstsq``
(``rcond=None``), ``c_ft`` being the number of atoms of type ``t`` in frame ``f``; types absent
from the data get the minimum-norm value 0.  ``preset_out_bias`` entries are fixed and taken
out of the regression.  Results can be cached in ``training.stat_file``, in DeePMD-kit's
layout (:mod:`dpa3.data.stat_file`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .neighbor import neighbor_counts
from .stat_file import EnergyStat, load_stat, save_stat, sort_by_atomic_number
from .system import System

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# energy bias
# --------------------------------------------------------------------------------------
def fit_energy_bias(
    energy: np.ndarray, counts: np.ndarray, preset: Sequence[float | None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares per-type energy bias.

    Parameters
    ----------
    energy
        (nframes,) float64 total energies (or residuals).
    counts
        (nframes, ntypes) atoms of each type per frame.
    preset
        Per type a fixed value or ``None`` (fitted).

    Returns
    -------
    bias
        (ntypes,) float64.
    std
        (ntypes,) float64, the std over frames of the residual, broadcast to every type.
    """
    energy = np.asarray(energy, dtype=np.float64).reshape(-1)
    counts = np.asarray(counts, dtype=np.float64)
    nt = counts.shape[1]
    if energy.shape[0] != counts.shape[0]:
        raise ValueError("energy and counts have different numbers of frames")
    bias = np.zeros(nt, dtype=np.float64)
    fixed = np.zeros(nt, dtype=bool)
    if preset is not None:
        if len(preset) != nt:
            raise ValueError(f"preset_out_bias has {len(preset)} entries for {nt} types")
        for t, v in enumerate(preset):
            if v is not None:
                bias[t] = float(v)
                fixed[t] = True
    target = energy - counts[:, fixed] @ bias[fixed]
    free = ~fixed
    if free.any() and energy.size:
        sol, *_ = np.linalg.lstsq(counts[:, free], target, rcond=None)
        bias[free] = sol
    resid = energy - counts @ bias
    std = np.full(nt, float(np.std(resid)) if energy.size else 0.0)
    return bias, std


def stat_frames(batches: Sequence[Sequence], ntypes: int) -> tuple[np.ndarray, np.ndarray]:
    """Energies and type counts of the labelled frames of sampled batches.

    ``batches`` is a list (per system) of lists of :class:`dpa3.data.loader.Batch`.
    """
    es, cs = [], []
    for per_sys in batches:
        for b in per_sys:
            keep = b.find_energy.numpy() > 0
            if not keep.any():
                continue
            at = b.atype.numpy()[keep]
            c = np.stack([(at == t).sum(axis=1) for t in range(ntypes)], axis=1)
            es.append(b.energy.numpy()[keep, 0])
            cs.append(c)
    if not es:
        return np.zeros(0), np.zeros((0, ntypes))
    return np.concatenate(es), np.concatenate(cs).astype(np.float64)


def observed_types(batches: Sequence[Sequence], type_map: Sequence[str]) -> tuple[str, ...]:
    """The elements present in sampled batches (every frame, labelled or not), ordered by
    atomic number (DeePMD-kit's ``observed_type``)."""
    seen: set[int] = set()
    for per_sys in batches:
        for b in per_sys:
            seen.update(int(t) for t in np.unique(b.atype.numpy()) if 0 <= t < len(type_map))
    return tuple(sort_by_atomic_number([type_map[t] for t in sorted(seen)]))


def compute_or_load_energy_stat(
    batches: Sequence[Sequence],
    type_map: Sequence[str],
    preset: Sequence[float | None] | None = None,
    stat_file: str | os.PathLike | None = None,
) -> EnergyStat:
    """Energy statistics from sampled batches, or from ``stat_file`` if it has the group of
    ``type_map`` (:mod:`dpa3.data.stat_file`); computed statistics are written to it.

    A preset bias always overrides the cached value of its type.
    """
    if stat_file is not None:
        cached = load_stat(stat_file, type_map)
        if cached is not None:
            log.info("energy bias read from %s (group '%s')", stat_file, " ".join(type_map))
            for t, v in enumerate(preset or ()):
                if v is not None:
                    cached.bias[t] = float(v)
            return cached
    e, c = stat_frames(batches, len(type_map))
    if e.size == 0:
        log.warning("no energy labels in the statistics sample: the energy bias stays 0")
    bias, std = fit_energy_bias(e, c, preset)
    stat = EnergyStat(tuple(type_map), bias, std, observed_types(batches, type_map))
    if stat_file is not None:
        where = save_stat(stat_file, stat)
        log.info("energy bias written to %s", where)
    return stat


# --------------------------------------------------------------------------------------
# neighbour statistics
# --------------------------------------------------------------------------------------
@dataclass
class NeighborStat:
    """Result of :func:`neighbor_stat`."""

    min_nbor_dist: float
    max_nbor_size: int
    max_nbor_size_per_type: np.ndarray  # (ntypes,) max neighbours of each neighbour type


def neighbor_stat(
    systems: Sequence[System], rcut: float, ntypes: int | None = None
) -> NeighborStat:
    """Largest neighbour count within ``rcut`` and smallest distance within ``rcut`` over all
    frames (the search of :func:`dpa3.data.neighbor.neighbor_counts`)."""
    nt = ntypes if ntypes is not None else max(len(s.type_map) for s in systems)
    max_tot, max_pt, dmin = 0, np.zeros(nt, dtype=np.int64), np.inf
    for s in systems:
        for f in range(s.nframes):
            counts, d = neighbor_counts(
                s.coord[f], None if s.box is None else s.box[f], rcut, s.atype[f], nt
            )
            dmin = min(dmin, d)
            if counts.size:
                max_tot = max(max_tot, int(counts.sum(axis=1).max()))
                max_pt = np.maximum(max_pt, counts.max(axis=0))
    return NeighborStat(float(dmin), max_tot, max_pt)


def auto_sel(max_count: int, factor: float = 1.1) -> int:
    """DeePMD-kit's ``"auto:factor"``: ``max_count * factor`` rounded up to a multiple of 4."""
    return 4 * ((int(max_count * factor) + 3) // 4)


__all__ = [
    "NeighborStat",
    "auto_sel",
    "compute_or_load_energy_stat",
    "fit_energy_bias",
    "neighbor_stat",
    "observed_types",
    "stat_frames",
]
