"""Neighbour search (``dpa3.data.neighbor``) against a brute-force all-images reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dpa3.data import neighbor
from dpa3.data.neighbor import (
    build_neighbor_batch,
    build_neighbor_data,
    neighbor_counts,
)

# ----------------------------------------------------------------------------------------
# Reference and helpers
# ----------------------------------------------------------------------------------------


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random proper rotation matrix ``[3, 3]``."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def triclinic_cell(
    rng: np.random.Generator, lengths: tuple[float, float, float], skew: float
) -> np.ndarray:
    """Cell rows: lower-triangular with off-diagonals up to ``skew * length``, then rotated."""
    cell = np.diag(lengths).astype(np.float64)
    cell[1, 0] = skew * lengths[1] * rng.uniform(-1, 1)
    cell[2, 0] = skew * lengths[2] * rng.uniform(-1, 1)
    cell[2, 1] = skew * lengths[2] * rng.uniform(-1, 1)
    return cell @ random_rotation(rng).T


def reference(
    coord: np.ndarray, cell: np.ndarray | None, rcut: float
) -> tuple[np.ndarray, list[list[tuple[int, tuple[int, int, int]]]], list[np.ndarray]]:
    """All images within one shell *more* than needed; returns wrapped coords, keys, dists.

    ``keys[i]`` lists ``(owner, shift)`` of every neighbour within ``rcut`` by ascending
    distance (stable order), ``dists[i]`` the distances.
    """
    n = coord.shape[0]
    if cell is None:
        wrapped = coord.copy()
        shifts = np.zeros((1, 3), dtype=np.int64)
    else:
        frac = np.linalg.solve(cell.T, coord.T).T
        frac = np.mod(frac, 1.0)
        wrapped = frac @ cell
        volume = abs(np.linalg.det(cell))
        areas = [np.linalg.norm(np.cross(cell[(d + 1) % 3], cell[(d + 2) % 3])) for d in range(3)]
        nsh = [math.ceil(rcut / (volume / a)) + 1 for a in areas]
        shifts = np.array(
            [
                (i, j, k)
                for i in range(-nsh[0], nsh[0] + 1)
                for j in range(-nsh[1], nsh[1] + 1)
                for k in range(-nsh[2], nsh[2] + 1)
            ],
            dtype=np.int64,
        )
    offsets = np.zeros((shifts.shape[0], 3)) if cell is None else shifts @ cell
    ext = (wrapped[None, :, :] + offsets[:, None, :]).reshape(-1, 3)
    owner = np.tile(np.arange(n), shifts.shape[0])
    shift_of = np.repeat(np.arange(shifts.shape[0]), n)
    keys, dists = [], []
    for i in range(n):
        d = np.linalg.norm(ext - wrapped[i], axis=1)
        is_self = (owner == i) & (np.abs(shifts[shift_of]).sum(axis=1) == 0)
        idx = np.nonzero((d <= rcut) & ~is_self)[0]
        idx = idx[np.argsort(d[idx], kind="stable")]
        keys.append([(int(owner[a]), tuple(int(v) for v in shifts[shift_of[a]])) for a in idx])
        dists.append(d[idx])
    return wrapped, keys, dists


def image_shifts(data: neighbor.NeighborData, cell: np.ndarray | None) -> np.ndarray:
    """Integer shift of every extended atom relative to its owner; asserts integrality."""
    if cell is None:
        np.testing.assert_array_equal(data.ext_coord, data.ext_coord[data.mapping])
        return np.zeros((data.ext_coord.shape[0], 3), dtype=np.int64)
    delta = data.ext_coord - data.ext_coord[data.mapping]
    frac = delta @ np.linalg.inv(cell)
    shifts = np.rint(frac)
    np.testing.assert_allclose(frac, shifts, atol=1e-9)
    return shifts.astype(np.int64)


def tie_groups(d: np.ndarray, tol: float = 1e-9) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of a sorted distance list that are equal within ``tol``."""
    groups, start = [], 0
    for k in range(1, len(d) + 1):
        if k == len(d) or d[k] - d[k - 1] > tol:
            groups.append((start, k))
            start = k
    return groups


def assert_matches_reference(
    coord: np.ndarray, cell: np.ndarray | None, rcut: float, sel: int
) -> neighbor.NeighborData:
    """Compare set and order of every row with the brute force (ties compared as sets)."""
    box = None if cell is None else cell.ravel()
    data = build_neighbor_data(coord, box, rcut, sel)
    wrapped, ref_keys, ref_d = reference(coord, cell, rcut)
    n = coord.shape[0]
    assert data.ext_coord.dtype == np.float64 and data.ext_coord.shape[1] == 3
    assert data.mapping.dtype == np.int64 and data.nlist.dtype == np.int64
    assert data.nlist.shape == (n, sel) and data.n_neighbors.shape == (n,)
    np.testing.assert_allclose(data.ext_coord[:n], wrapped, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(data.mapping[:n], np.arange(n))
    shifts = image_shifts(data, cell)
    np.testing.assert_array_equal(data.n_neighbors, [len(k) for k in ref_keys])
    for i in range(n):
        row = data.nlist[i]
        kept = min(sel, len(ref_keys[i]))
        assert (row[:kept] >= 0).all() and (row[kept:] == -1).all(), f"row {i}: {row}"
        d = np.linalg.norm(data.ext_coord[row[:kept]] - data.ext_coord[i], axis=1)
        np.testing.assert_allclose(d, ref_d[i][:kept], rtol=0, atol=1e-10)
        keys = [(int(data.mapping[a]), tuple(int(v) for v in shifts[a])) for a in row[:kept]]
        assert len(set(keys)) == kept, f"row {i} has duplicate neighbours"
        for g0, g1 in tie_groups(ref_d[i]):
            if g0 >= kept:
                break
            mine = set(keys[g0 : min(g1, kept)])
            ref = set(ref_keys[i][g0:g1])
            if g1 <= kept:
                assert mine == ref, f"row {i} positions {g0}:{g1}"
            else:  # truncation inside a group of equal distances: any subset is valid
                assert mine <= ref, f"row {i} positions {g0}:{kept}"
    return data


def list_distances(data: neighbor.NeighborData, n: int) -> np.ndarray:
    """``[n, sel]`` distances of the nlist entries (0 where padded)."""
    r = np.linalg.norm(data.ext_coord[data.nlist] - data.ext_coord[:n, None], axis=-1)
    return np.where(data.nlist >= 0, r, 0.0)


def referenced_images_only(data: neighbor.NeighborData, n: int) -> None:
    """Every extended atom past the local ones is referenced by nlist."""
    used = np.zeros(data.ext_coord.shape[0], dtype=bool)
    used[data.nlist[data.nlist >= 0]] = True
    assert used[n:].all()
    assert data.nlist.max(initial=-1) < data.ext_coord.shape[0]


# ----------------------------------------------------------------------------------------
# Periodic cells vs brute force
# ----------------------------------------------------------------------------------------

CASES = {
    # name: (lengths, skew, natoms, rcut)
    "orthorhombic": ((9.0, 10.0, 11.0), 0.0, 60, 4.0),
    "triclinic": ((8.0, 9.5, 10.5), 0.4, 50, 4.5),
    "thin_slab": ((12.0, 11.0, 2.5), 0.3, 30, 4.0),
    "tiny": ((3.0, 3.5, 4.0), 0.3, 6, 5.0),
    "tiny_skewed": ((2.2, 2.0, 2.6), 0.9, 4, 4.0),
    "smaller_than_rcut_one_atom": ((1.7, 2.1, 1.9), 0.7, 1, 4.5),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_periodic_matches_bruteforce(name: str, seed: int) -> None:
    """Set, order, distances and counts equal the all-images brute force."""
    lengths, skew, natoms, rcut = CASES[name]
    rng = np.random.default_rng(seed)
    cell = triclinic_cell(rng, lengths, skew)
    # Atoms inside and outside the cell (wrapping is part of the test).
    coord = rng.uniform(-1.0, 2.0, size=(natoms, 3)) @ cell
    data = assert_matches_reference(coord, cell, rcut, sel=400)
    referenced_images_only(data, natoms)
    assert data.n_neighbors.max() > 0


def test_left_handed_cell() -> None:
    """A cell with negative determinant works like any other."""
    rng = np.random.default_rng(5)
    cell = triclinic_cell(rng, (3.0, 2.6, 3.3), 0.5)
    cell[[0, 1]] = cell[[1, 0]]  # swap two rows: det < 0
    assert np.linalg.det(cell) < 0
    coord = rng.uniform(0, 1, size=(5, 3)) @ cell
    assert_matches_reference(coord, cell, 4.0, sel=300)


@pytest.mark.parametrize(("name", "sel"), [("triclinic", 7), ("tiny", 10), ("tiny_skewed", 3)])
def test_truncation_by_sel(name: str, sel: int) -> None:
    """Only the ``sel`` nearest are kept; ``n_neighbors`` counts all of them."""
    lengths, skew, natoms, rcut = CASES[name]
    rng = np.random.default_rng(11)
    cell = triclinic_cell(rng, lengths, skew)
    coord = rng.uniform(0, 1, size=(natoms, 3)) @ cell
    data = assert_matches_reference(coord, cell, rcut, sel=sel)
    assert (data.n_neighbors > sel).any()  # truncation really happened
    assert (data.nlist >= 0).sum() == np.minimum(data.n_neighbors, sel).sum()
    referenced_images_only(data, natoms)


def test_simple_cubic_shells() -> None:
    """One atom in a cubic cell of side a: 6 images at a, 12 at a*sqrt(2), 8 at a*sqrt(3)."""
    a = 2.0
    coord = np.array([[0.3, 0.7, 1.1]])
    box = (np.eye(3) * a).ravel()
    for rcut, expected in [(1.9, 0), (2.0, 6), (2.9, 18), (3.5, 26), (4.0, 32)]:
        data = build_neighbor_data(coord, box, rcut, sel=40)
        assert data.n_neighbors.tolist() == [expected], rcut
        assert (data.mapping == 0).all()
        assert data.ext_coord.shape[0] == 1 + expected
        d = np.linalg.norm(data.ext_coord[data.nlist[0, :expected]] - data.ext_coord[0], axis=1)
        assert np.all(np.diff(d) >= -1e-12)
        assert neighbor_counts(coord, box, rcut)[0].tolist() == [expected]


def test_cutoff_is_inclusive() -> None:
    """A neighbour at exactly ``rcut`` is kept, one just beyond is not."""
    coord = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 3.0000000001]])
    data = build_neighbor_data(coord, None, 3.0, sel=4)
    assert data.nlist[0].tolist() == [1, -1, -1, -1]
    assert data.nlist[1].tolist() == [0, -1, -1, -1]
    assert data.n_neighbors.tolist() == [1, 1, 0]


# ----------------------------------------------------------------------------------------
# Non-periodic
# ----------------------------------------------------------------------------------------


def test_non_periodic_matches_bruteforce() -> None:
    """Without a box: no wrapping, no images, plain pair search."""
    rng = np.random.default_rng(3)
    coord = rng.uniform(-5, 5, size=(70, 3))
    coord[-1] = [100.0, -50.0, 30.0]  # isolated atom: empty row
    data = assert_matches_reference(coord, None, 3.5, sel=30)
    np.testing.assert_array_equal(data.ext_coord, coord)  # no wrapping, no images
    np.testing.assert_array_equal(data.mapping, np.arange(70))
    assert (data.nlist[-1] == -1).all()
    data = assert_matches_reference(coord, None, 3.5, sel=4)  # truncated
    assert (data.n_neighbors > 4).any()


def test_non_periodic_sparse_extent() -> None:
    """Two clusters very far apart: the bin grid must not explode."""
    rng = np.random.default_rng(4)
    coord = np.concatenate([rng.uniform(0, 4, (20, 3)), rng.uniform(0, 4, (20, 3)) + 1e7])
    assert_matches_reference(coord, None, 2.5, sel=30)


# ----------------------------------------------------------------------------------------
# Invariances, consistency, chunking
# ----------------------------------------------------------------------------------------


def test_lattice_translation_invariance() -> None:
    """Moving every atom by a lattice vector changes nothing but rounding."""
    rng = np.random.default_rng(7)
    cell = triclinic_cell(rng, (7.0, 8.0, 6.5), 0.5)
    coord = rng.uniform(0, 1, size=(40, 3)) @ cell
    moved = coord + np.array([3, -2, 5]) @ cell
    rcut, sel = 4.0, 50
    d0 = build_neighbor_data(coord, cell.ravel(), rcut, sel)
    d1 = build_neighbor_data(moved, cell.ravel(), rcut, sel)
    np.testing.assert_allclose(d1.ext_coord[:40], d0.ext_coord[:40], atol=1e-9)
    np.testing.assert_array_equal(d1.n_neighbors, d0.n_neighbors)
    np.testing.assert_array_equal(d1.nlist >= 0, d0.nlist >= 0)
    for d in (d0, d1):
        assert d.n_neighbors.min() > 0
    r0, r1 = (list_distances(d, 40) for d in (d0, d1))
    np.testing.assert_allclose(r1, r0, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(d1.mapping[d1.nlist], d0.mapping[d0.nlist])


def test_only_a_skin_of_images_is_considered() -> None:
    """Large cell: candidate images stay within the rcut skin, far below 26 * N."""
    rng = np.random.default_rng(8)
    side, rcut, n = 20.0, 3.0, 800
    # a jittered 10 x 10 x 8 lattice: spread over the cell, no two atoms closer than 1.2 Å
    grid = np.stack(np.meshgrid(np.arange(10), np.arange(10), np.arange(8), indexing="ij"), -1)
    coord = (grid.reshape(-1, 3) + 0.5) * [2.0, 2.0, 2.5] + rng.uniform(-0.4, 0.4, size=(n, 3))
    _local, cand, owner = neighbor._prepare(coord, (np.eye(3) * side).ravel(), rcut)
    skin = ((side + 2 * rcut) ** 3 - side**3) / side**3 * n
    assert cand.shape[0] - n < 1.3 * skin
    np.testing.assert_array_equal(owner[:n], np.arange(n))
    data = build_neighbor_data(coord, (np.eye(3) * side).ravel(), rcut, sel=40)
    assert data.ext_coord.shape[0] - n < 1.3 * skin
    referenced_images_only(data, n)


def test_small_chunks_give_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny chunk limits (many chunks) give bit-identical results."""
    rng = np.random.default_rng(9)
    cell = triclinic_cell(rng, (8.0, 9.0, 10.0), 0.3)
    coord = rng.uniform(0, 1, size=(60, 3)) @ cell
    ref = build_neighbor_data(coord, cell.ravel(), 4.0, 20)
    monkeypatch.setattr(neighbor, "_MAX_PAIRS", 97)
    monkeypatch.setattr(neighbor, "_MAX_ROWS", 7)
    small = build_neighbor_data(coord, cell.ravel(), 4.0, 20)
    for field in ("ext_coord", "mapping", "nlist", "n_neighbors"):
        np.testing.assert_array_equal(getattr(small, field), getattr(ref, field), err_msg=field)
    np.testing.assert_array_equal(neighbor_counts(coord, cell.ravel(), 4.0)[0], ref.n_neighbors)


def test_neighbor_counts_matches_reference() -> None:
    """``neighbor_counts`` equals the brute-force counts, periodic or not."""
    rng = np.random.default_rng(10)
    cell = triclinic_cell(rng, (3.0, 4.0, 3.5), 0.6)
    coord = rng.uniform(0, 1, size=(7, 3)) @ cell
    _, keys, _ = reference(coord, cell, 5.0)
    counts = neighbor_counts(coord, cell.ravel(), 5.0)[0]
    np.testing.assert_array_equal(counts, [len(k) for k in keys])
    _, keys, _ = reference(coord, None, 2.0)
    np.testing.assert_array_equal(neighbor_counts(coord, None, 2.0)[0], [len(k) for k in keys])


def test_empty_and_invalid_inputs() -> None:
    """Zero atoms give empty arrays; bad inputs raise clear errors."""
    data = build_neighbor_data(np.zeros((0, 3)), (np.eye(3) * 5).ravel(), 3.0, 4)
    assert data.ext_coord.shape == (0, 3) and data.nlist.shape == (0, 4)
    with pytest.raises(ValueError, match="singular"):
        build_neighbor_data(np.zeros((2, 3)), np.zeros(9), 3.0, 4)
    with pytest.raises(ValueError, match="shape"):
        build_neighbor_data(np.zeros((2, 2)), None, 3.0, 4)
    with pytest.raises(ValueError, match="rcut"):
        build_neighbor_data(np.zeros((2, 3)), None, 0.0, 4)
    with pytest.raises(ValueError, match="sel"):
        build_neighbor_data(np.zeros((2, 3)), None, 3.0, 0)


# ----------------------------------------------------------------------------------------
# Batch
# ----------------------------------------------------------------------------------------


def test_batch_padding_and_frames() -> None:
    """Batched frames equal single frames; padding rows are far, map to 0, unused."""
    rng = np.random.default_rng(12)
    nf, n, rcut, sel = 3, 12, 4.0, 30
    cells = [
        triclinic_cell(rng, (3.0, 3.2, 3.4), 0.5),  # tiny: many images
        triclinic_cell(rng, (8.0, 8.0, 8.0), 0.1),
        triclinic_cell(rng, (5.0, 6.0, 5.5), 0.3),
    ]
    coord = np.stack([rng.uniform(0, 1, size=(n, 3)) @ c for c in cells])
    box = np.stack([c.ravel() for c in cells])
    batch = build_neighbor_batch(torch.from_numpy(coord), torch.from_numpy(box), rcut, sel)
    ext, mapping, nlist, nnei = batch  # also unpacks as a tuple
    frames = [build_neighbor_data(coord[f], box[f], rcut, sel) for f in range(nf)]
    nall = [fr.ext_coord.shape[0] for fr in frames]
    assert len(set(nall)) == nf  # frames really differ in nall, so padding is exercised
    assert ext.dtype == torch.float64 and mapping.dtype == torch.int64
    assert nlist.dtype == torch.int64 and nnei.dtype == torch.int64
    assert ext.shape == (nf, max(nall), 3) and mapping.shape == (nf, max(nall))
    assert nlist.shape == (nf, n, sel) and nnei.shape == (nf, n)
    for f, fr in enumerate(frames):
        np.testing.assert_array_equal(ext[f, : nall[f]].numpy(), fr.ext_coord)
        np.testing.assert_array_equal(mapping[f, : nall[f]].numpy(), fr.mapping)
        np.testing.assert_array_equal(nlist[f].numpy(), fr.nlist)
        np.testing.assert_array_equal(nnei[f].numpy(), fr.n_neighbors)
        assert int(nlist[f].max()) < nall[f]
        pad = ext[f, nall[f] :].numpy()
        assert (mapping[f, nall[f] :] == 0).all()
        if pad.shape[0]:
            gap = np.linalg.norm(pad[:, None, :] - fr.ext_coord[None, :, :], axis=-1).min()
            assert gap > 2 * rcut


def test_batch_non_periodic() -> None:
    """Non-periodic batch: extended atoms are the local atoms."""
    rng = np.random.default_rng(13)
    coord = rng.uniform(0, 6, size=(2, 15, 3))
    batch = build_neighbor_batch(coord, None, 3.0, 10)
    assert batch.ext_coord.shape == (2, 15, 3)
    np.testing.assert_array_equal(batch.ext_coord.numpy(), coord)
    np.testing.assert_array_equal(batch.mapping.numpy(), np.tile(np.arange(15), (2, 1)))
    for f in range(2):
        np.testing.assert_array_equal(
            batch.nlist[f].numpy(), build_neighbor_data(coord[f], None, 3.0, 10).nlist
        )


def test_overlapping_atoms_are_an_error() -> None:
    """Two atoms (or an atom and a periodic image of another) closer than MIN_DISTANCE: a
    ValueError naming both, instead of inf/NaN features downstream."""
    from dpa3.data.neighbor import MIN_DISTANCE

    coord = np.array([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [1.5 + 0.5 * MIN_DISTANCE, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"atom 1 and atom 2 are 0\.05 Å apart"):
        build_neighbor_data(coord, None, 3.0, 8)
    # across the periodic boundary: atom 0 at x = 0.02, atom 1 at x = 9.99 in a 10 Å cube
    box = np.diag([10.0, 10.0, 10.0]).ravel()
    wrap = np.array([[0.02, 5.0, 5.0], [9.99, 5.0, 5.0]])
    with pytest.raises(ValueError, match="a periodic image of atom"):
        build_neighbor_data(wrap, box, 3.0, 8)
    # exactly at the limit is accepted
    ok = np.array([[0.0, 0.0, 0.0], [MIN_DISTANCE, 0.0, 0.0]])
    assert build_neighbor_data(ok, None, 3.0, 8).n_neighbors.tolist() == [1, 1]
