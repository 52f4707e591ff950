"""Evaluate a checkpoint or frozen model on DeePMD-kit systems (``dpa3 test``).

Both kinds of model (loaded with :func:`dpa3.export.load.load_model`) are driven through
``forward_lower`` with neighbour data from :func:`dpa3.data.neighbor.build_neighbor_batch`,
so an eager checkpoint and a frozen TorchScript file follow one code path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.system import System


def predict(
    model: torch.nn.Module, coord: np.ndarray, atype: np.ndarray, box: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Energy (nf,), force (nf,N,3) and virial (nf,9) of frames with the same atom count."""
    from ..data.neighbor import build_neighbor_batch

    nf, nat = atype.shape
    nb = build_neighbor_batch(coord, box, float(model.get_rcut()), int(model.get_sel()[0]))
    bufs = list(model.buffers())
    dev = bufs[0].device if bufs else torch.device("cpu")
    mapping = nb.mapping.to(dev)
    at = torch.as_tensor(atype, dtype=torch.long, device=dev)
    ext_atype = torch.gather(at, 1, mapping)
    out = model.forward_lower(
        nb.ext_coord.to(dev), ext_atype, nb.nlist.to(dev), mapping, False, None
    )
    ef = out["extended_force"].detach()
    force = torch.zeros(nf, nat, 3, dtype=ef.dtype, device=dev)
    force.scatter_add_(1, mapping.unsqueeze(-1).expand(-1, -1, 3), ef)
    return {
        "energy": out["energy"].detach().cpu().numpy().reshape(nf),
        "force": force.cpu().numpy(),
        "virial": out["virial"].detach().cpu().numpy().reshape(nf, 9),
    }


@dataclass
class ErrorStats:
    """Sums of absolute and squared errors with their counts."""

    abs_sum: float = 0.0
    sq_sum: float = 0.0
    count: int = 0

    def add(self, err: np.ndarray) -> None:
        """Accumulate the entries of ``err``."""
        self.abs_sum += float(np.abs(err).sum())
        self.sq_sum += float((err * err).sum())
        self.count += int(err.size)

    def merge(self, other: ErrorStats) -> None:
        """Accumulate another set of sums."""
        self.abs_sum += other.abs_sum
        self.sq_sum += other.sq_sum
        self.count += other.count

    @property
    def mae(self) -> float:
        """Mean absolute error (nan if empty)."""
        return self.abs_sum / self.count if self.count else math.nan

    @property
    def rmse(self) -> float:
        """Root mean squared error (nan if empty)."""
        return math.sqrt(self.sq_sum / self.count) if self.count else math.nan


@dataclass
class SystemErrors:
    """Errors of one system (or a weighted sum of several)."""

    nframes: int = 0
    stats: dict[str, ErrorStats] = field(
        default_factory=lambda: {k: ErrorStats() for k in ("e", "ea", "f", "v", "va")}
    )

    def merge(self, other: SystemErrors) -> None:
        """Accumulate ``other`` (frame-weighted, as ``dp test``'s weighted average)."""
        self.nframes += other.nframes
        for k, s in other.stats.items():
            self.stats[k].merge(s)


def evaluate_system(
    model: torch.nn.Module,
    system: System,
    numb_test: int = 0,
    max_atoms_per_batch: int = 1024,
    collect: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] | None = None,
) -> SystemErrors:
    """Errors of ``model`` on the first ``numb_test`` frames (0 = all) of ``system``.

    If ``collect`` is given, the labelled predictions and references are appended to
    ``collect[key] = (preds, refs)`` for ``key`` in energy (per atom), force, virial (per
    atom), as :func:`dpa3.plot.parity_plot` takes them.
    """
    n = system.nframes if numb_test <= 0 else min(numb_test, system.nframes)
    bs = max(1, max_atoms_per_batch // system.natoms)
    res = SystemErrors(nframes=n)
    for s in range(0, n, bs):
        idx = np.arange(s, min(n, s + bs))
        p = predict(
            model,
            system.coord[idx],
            system.atype[idx],
            None if system.box is None else system.box[idx],
        )
        fe, ff, fv = (system.find[k][idx] for k in ("energy", "force", "virial"))
        de = p["energy"][fe] - system.labels["energy"][idx][fe]
        res.stats["e"].add(de)
        res.stats["ea"].add(de / system.natoms)
        res.stats["f"].add(p["force"][ff] - system.labels["force"][idx][ff])
        dv = p["virial"][fv] - system.labels["virial"][idx][fv]
        res.stats["v"].add(dv)
        res.stats["va"].add(dv / system.natoms)
        if collect is not None:
            for key, f, scale in (
                ("energy", fe, system.natoms),
                ("force", ff, 1),
                ("virial", fv, system.natoms),
            ):
                pred, ref = collect.setdefault(key, ([], []))
                pred.append(p[key][f] / scale)
                ref.append(system.labels[key][idx][f] / scale)
    return res


__all__ = ["ErrorStats", "SystemErrors", "evaluate_system", "predict"]
