"""Neighbour data of frames seen before: training visits the same frames once per pass.

Building the extended atoms and the sorted neighbour list of a frame
(:func:`dpa3.data.neighbor.build_neighbor_batch`, NumPy) takes about as long as a tenth of a
training step of a small model on ~200 atoms; the result depends only on the coordinates, the
cell, ``rcut`` and ``sel``, so it is kept, keyed by exactly those (the raw bytes of the float64
arrays: equal keys give bit-identical neighbour data).
"""

from __future__ import annotations

import numpy as np

from .neighbor import NeighborBatch, build_neighbor_batch

# Default memory budget of a cache: ~140 kB per 192-atom frame with sel 72 (nlist int64 plus the
# extended coordinates), so a few thousand such frames.
CACHE_BYTES = 512 * 1024**2


class NeighborCache:
    """Memoised :func:`~dpa3.data.neighbor.build_neighbor_batch` within a memory budget.

    Entries are added until they hold ``budget_bytes``; later frames are built every time (no
    eviction: a training pass visits every frame equally often).
    """

    def __init__(self, budget_bytes: int = CACHE_BYTES) -> None:
        self.budget_bytes = budget_bytes
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._store: dict[tuple, NeighborBatch] = {}

    def get(
        self, coord: np.ndarray, box: np.ndarray | None, rcut: float, sel: int
    ) -> NeighborBatch:
        """Neighbour data of ``coord [nf, N, 3]`` and ``box [nf, 9]`` (or None), float64."""
        coord = np.ascontiguousarray(coord, dtype=np.float64)
        if box is not None:
            box = np.ascontiguousarray(box, dtype=np.float64)
        key = (
            float(rcut),
            int(sel),
            coord.shape,
            coord.tobytes(),
            None if box is None else box.tobytes(),
        )
        nb = self._store.get(key)
        if nb is not None:
            self.hits += 1
            return nb
        self.misses += 1
        nb = build_neighbor_batch(coord, box, rcut, sel)
        size = sum(t.numel() * t.element_size() for t in nb) + len(key[3]) + len(key[4] or b"")
        if self.nbytes + size <= self.budget_bytes:
            self._store[key] = nb
            self.nbytes += size
        return nb


__all__ = ["CACHE_BYTES", "NeighborCache"]
