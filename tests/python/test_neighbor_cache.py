"""The neighbour-data cache of training: same data as building it, built once per frame."""

from __future__ import annotations

import numpy as np
import torch
from test_train import tiny_input

from dpa3.data.neighbor import build_neighbor_batch
from dpa3.data.neighbor_cache import NeighborCache
from dpa3.train.trainer import Trainer

WATER = "examples/data/water/data_0/set.000"


def _frames(k: int) -> tuple[np.ndarray, np.ndarray]:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / WATER
    coord = np.load(root / "coord.npy")[:k].reshape(k, 1, -1, 3)
    box = np.load(root / "box.npy")[:k].reshape(k, 1, 9)
    return coord, box


def test_cache_returns_the_built_data_and_builds_each_frame_once() -> None:
    coord, box = _frames(2)
    cache = NeighborCache()
    for _ in range(3):
        for c, b in zip(coord, box, strict=True):
            got = cache.get(c, b, 5.0, 40)
            ref = build_neighbor_batch(c, b, 5.0, 40)
            for x, y in zip(got, ref, strict=True):
                assert torch.equal(x, y)
    assert (cache.misses, cache.hits) == (2, 4)
    # another cutoff, width or cell is another entry
    cache.get(coord[0], box[0], 4.0, 40)
    cache.get(coord[0], box[0], 5.0, 30)
    cache.get(coord[0], None, 5.0, 40)
    assert cache.misses == 5
    moved = coord[0].copy()
    moved[0, 0, 0] += 1e-6  # the key is the exact coordinates
    cache.get(moved, box[0], 5.0, 40)
    assert cache.misses == 6


def test_cache_over_budget_still_returns_the_data() -> None:
    coord, box = _frames(1)
    cache = NeighborCache(budget_bytes=0)
    a = cache.get(coord[0], box[0], 5.0, 40)
    b = cache.get(coord[0], box[0], 5.0, 40)
    assert cache.nbytes == 0 and cache.misses == 2
    assert torch.equal(a.nlist, b.nlist)


def test_training_with_the_cache_is_bit_identical(tmp_path, monkeypatch) -> None:
    """Losses and weights after a few steps equal those of a run that builds every list, and
    frames drawn again (the sampler rewound, as in a new pass) take their lists from the cache."""
    import copy

    monkeypatch.chdir(tmp_path)
    runs = []
    for cached in (True, False):
        t = Trainer(tiny_input(steps=8))
        if not cached:
            t.neighbors = None
        state = copy.deepcopy(t.train_data.state_dict())
        losses = [t.train_step(s)[0] for s in range(4)]
        runs.append((losses, {k: v.clone() for k, v in t.model.state_dict().items()}, t, state))
    (l1, w1, t1, state), (l2, w2, _, _) = runs
    assert l1 == l2
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert (t1.neighbors.misses, t1.neighbors.hits) == (4, 0)
    t1.train_data.load_state_dict(state)
    for s in range(4, 8):
        t1.train_step(s)
    assert (t1.neighbors.misses, t1.neighbors.hits) == (4, 4)
