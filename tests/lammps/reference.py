"""Brute-force Python reference for the LAMMPS tests.

Builds the extended system (all periodic images within ``rcut`` of an atom of the cell) and
the full neighbour list by plain distance checks, evaluates ``forward_lower`` through the
single-process ``mapping`` path, and folds the extended outputs back onto the atoms. This is
independent of LAMMPS's ghost construction and of the exchange op, so it checks both.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import exchange_reference
import numpy as np
import torch


@dataclass
class Result:
    """Energies in eV, forces eV/Å, virials eV (row-major 3x3, ``W[a][b] = sum F_a x_b``)."""

    energy: float
    atom_energy: np.ndarray  # [N]
    force: np.ndarray  # [N, 3]
    virial: np.ndarray  # [9]
    atom_virial: np.ndarray  # [N, 9]


def extend(
    coord: np.ndarray, cell: np.ndarray | None, pbc: tuple[bool, bool, bool], rcut: float
) -> tuple[np.ndarray, np.ndarray]:
    """Local atoms followed by every periodic image within ``rcut`` of some local atom.

    Returns ``ext_coord [nall, 3]`` and ``mapping [nall]`` (owner index).
    """
    n = len(coord)
    if cell is None or not any(pbc):
        return coord.copy(), np.arange(n)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    vol = abs(np.linalg.det(cell))
    reps = []
    for d in range(3):
        if not pbc[d]:
            reps.append(range(1))
            continue
        e, f = cell[(d + 1) % 3], cell[(d + 2) % 3]
        width = vol / np.linalg.norm(np.cross(e, f))
        k = int(np.ceil(rcut / width)) + 1
        reps.append(range(-k, k + 1))
    ext, owner = [coord], [np.arange(n)]
    for shift in itertools.product(*reps):
        if shift == (0, 0, 0):
            continue
        img = coord + np.asarray(shift, dtype=np.float64) @ cell
        dist = np.linalg.norm(img[:, None, :] - coord[None, :, :], axis=-1).min(axis=1)
        keep = dist < rcut
        ext.append(img[keep])
        owner.append(np.arange(n)[keep])
    return np.concatenate(ext), np.concatenate(owner)


def full_nlist(ext_coord: np.ndarray, nloc: int, rcut: float) -> np.ndarray:
    """All extended atoms within ``rcut`` of each local atom (self excluded), −1 padded."""
    d = np.linalg.norm(ext_coord[None, :, :] - ext_coord[:nloc, None, :], axis=-1)
    d[np.arange(nloc), np.arange(nloc)] = np.inf
    rows = [np.nonzero(d[i] < rcut)[0] for i in range(nloc)]
    width = max(1, max((len(r) for r in rows), default=1))
    out = -np.ones((nloc, width), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def evaluate(
    model: torch.nn.Module,
    coord: np.ndarray,
    atype: np.ndarray,
    cell: np.ndarray | None,
    pbc: tuple[bool, bool, bool] = (True, True, True),
) -> Result:
    """Energy, forces, virial and per-atom energy/virial of one frame (model types)."""
    coord = np.asarray(coord, dtype=np.float64).reshape(-1, 3)
    n = len(coord)
    rcut = float(model.get_rcut())
    ext, mapping = extend(coord, cell, pbc, rcut)
    nlist = full_nlist(ext, n, rcut)
    atype = np.asarray(atype, dtype=np.int64)
    out = model.forward_lower(
        torch.from_numpy(ext)[None],
        torch.from_numpy(atype[mapping])[None],
        torch.from_numpy(nlist)[None],
        torch.from_numpy(mapping)[None],
        True,
        None,
    )
    fext = out["extended_force"][0].detach().numpy()
    vext = out["extended_virial"][0].detach().numpy()
    force = np.zeros((n, 3))
    atom_virial = np.zeros((n, 9))
    np.add.at(force, mapping, fext)
    np.add.at(atom_virial, mapping, vext)
    return Result(
        energy=float(out["energy"].detach().sum()),
        atom_energy=out["atom_energy"][0, :, 0].detach().numpy().copy(),
        force=force,
        virial=out["virial"][0].detach().numpy().copy(),
        atom_virial=atom_virial,
    )


def self_swap_comm_dict(mapping: np.ndarray, nloc: int) -> dict[str, torch.Tensor]:
    """A one-swap, one-rank schedule that fills ghost rows from their owners (as on one
    LAMMPS rank with periodic images), for calling ``forward_lower`` on the exchange path."""
    return exchange_reference.self_swap_comm_dict(torch.from_numpy(mapping), nloc, 1, chain=False)


def extended_inputs(model, coord, atype, cell, pbc=(True, True, True)):
    """``(ext_coord [1,nall,3], ext_atype [1,nall], nlist [1,nloc,nnei], mapping [nall])``."""
    coord = np.asarray(coord, dtype=np.float64).reshape(-1, 3)
    ext, mapping = extend(coord, cell, pbc, float(model.get_rcut()))
    nlist = full_nlist(ext, len(coord), float(model.get_rcut()))
    atype = np.asarray(atype, dtype=np.int64)
    return (
        torch.from_numpy(ext)[None],
        torch.from_numpy(atype[mapping])[None],
        torch.from_numpy(nlist)[None],
        mapping,
    )
