"""Evaluate a checkpoint or frozen model on DeePMD-kit systems (``dpa3 test``).

Both kinds of model (loaded with :func:`dpa3.export.load.load_model`) are driven through
``forward_lower`` with neighbour data from :func:`dpa3.data.neighbor.build_neighbor_batch`,
so an eager checkpoint and a frozen TorchScript file follow one code path.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..atomic_file import fsync_dir, temporary_name
from ..data.system import System
from ..errors import DataError


def predict(
    model: torch.nn.Module, coord: np.ndarray, atype: np.ndarray, box: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Energy (nf,), force (nf,N,3), virial (nf,9) and atomic energy (nf,N) of frames with the
    same atom count."""
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
        "atom_energy": out["atom_energy"].detach().cpu().numpy().reshape(nf, nat),
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


#: error keys: energy, energy per atom, force, virial, virial per atom, stress (-virial/volume),
#: atomic energy (``dp test -a``; per system only, not in the weighted average)
ERROR_KEYS: tuple[str, ...] = ("e", "ea", "f", "v", "va", "s", "ae")
PER_SYSTEM_ONLY: tuple[str, ...] = ("ae",)


@dataclass
class SystemErrors:
    """Errors of one system (or a weighted sum of several).

    ``details`` holds, when asked for, the reference and predicted arrays of the tested frames
    (``energy`` (n,), ``force`` (n,N,3), ``virial`` (n,9), and ``stress`` (n,9) when the
    system is periodic and has virial labels), as the detail files record them.
    """

    nframes: int = 0
    stats: dict[str, ErrorStats] = field(
        default_factory=lambda: {k: ErrorStats() for k in ERROR_KEYS}
    )
    details: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    def merge(self, other: SystemErrors) -> None:
        """Accumulate ``other`` (weighted by the number of values, as ``dp test``'s weighted
        average; the atomic-energy errors stay per system)."""
        self.nframes += other.nframes
        for k, s in other.stats.items():
            if k not in PER_SYSTEM_ONLY:
                self.stats[k].merge(s)


def evaluate_system(
    model: torch.nn.Module,
    system: System,
    numb_test: int = 0,
    max_atoms_per_batch: int = 1024,
    collect: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] | None = None,
    atom_ener: np.ndarray | None = None,
    details: bool = False,
) -> SystemErrors:
    """Errors of ``model`` on the first ``numb_test`` frames (0 = all) of ``system``.

    Virial and stress errors are taken over the frames with a virial label, and only for a
    periodic system (as ``dp test``).  ``atom_ener`` (nframes, natoms), the reference atomic
    energies of the system, adds the atomic-energy errors (``dp test -a``).  ``details`` keeps
    the arrays of the detail files in ``SystemErrors.details``.  If ``collect`` is given, the
    labelled predictions and references are appended to ``collect[key] = (preds, refs)`` for
    ``key`` in energy (per atom), force, virial (per atom), as
    :func:`dpa3.plot.parity_plot` takes them.
    """
    n = system.nframes if numb_test <= 0 else min(numb_test, system.nframes)
    nat = system.natoms
    bs = max(1, max_atoms_per_batch // nat)
    parts: dict[str, list[np.ndarray]] = {}
    for s in range(0, n, bs):
        idx = np.arange(s, min(n, s + bs))
        box = None if system.box is None else system.box[idx]
        p = predict(model, system.coord[idx], system.atype[idx], box)
        for k, v in p.items():
            parts.setdefault(k, []).append(v)
    pred = {k: np.concatenate(v) for k, v in parts.items()}
    ref = {k: system.labels[k][:n] for k in ("energy", "force", "virial")}
    fe, ff, fv = (system.find[k][:n] for k in ("energy", "force", "virial"))
    if system.box is None:
        fv = np.zeros_like(fv)
    res = SystemErrors(nframes=n)
    de = pred["energy"][fe] - ref["energy"][fe]
    res.stats["e"].add(de)
    res.stats["ea"].add(de / nat)
    res.stats["f"].add(pred["force"][ff] - ref["force"][ff])
    stress = None
    if fv.any():
        vol = np.abs(np.linalg.det(system.box[:n].reshape(n, 3, 3)))[:, None]
        stress = (-ref["virial"] / vol, -pred["virial"] / vol)
        dv = pred["virial"][fv] - ref["virial"][fv]
        res.stats["v"].add(dv)
        res.stats["va"].add(dv / nat)
        res.stats["s"].add(stress[1][fv] - stress[0][fv])
    if atom_ener is not None:
        res.stats["ae"].add(pred["atom_energy"] - atom_ener[:n])
    if details:
        res.details = {k: (ref[k], pred[k]) for k in ("energy", "force", "virial")}
        if stress is not None:
            res.details["stress"] = stress
    if collect is not None:
        for key, f, scale in (("energy", fe, nat), ("force", ff, 1), ("virial", fv, nat)):
            preds, refs = collect.setdefault(key, ([], []))
            preds.append(pred[key][f] / scale)
            refs.append(ref[key][f] / scale)
    return res


_VIRIAL_COLUMNS = " ".join(
    f"{w}_{q}{a}{b}" for w in ("data", "pred") for q in ("v",) for a in "xyz" for b in "xyz"
)
#: detail file suffix -> (details key, header columns, divide by the atom count)
DETAIL_FILES: tuple[tuple[str, str, str, bool], ...] = (
    (".e.out", "energy", "data_e pred_e", False),
    (".e_peratom.out", "energy", "data_e pred_e", True),
    (".f.out", "force", "data_fx data_fy data_fz pred_fx pred_fy pred_fz", False),
    (".v.out", "virial", _VIRIAL_COLUMNS, False),
    (".v_peratom.out", "virial", _VIRIAL_COLUMNS, True),
    (".s.out", "stress", _VIRIAL_COLUMNS.replace("_v", "_s"), False),
)


class DetailFiles:
    """``dp test -d PREFIX``'s detail files, written system by system and put in place at once.

    As DeePMD-kit: the file names are ``PREFIX`` with its suffix (if any) replaced by
    ``.e.out``, ``.e_peratom.out``, ``.f.out``, ``.v.out``, ``.v_peratom.out`` and, for a
    periodic system with virial labels, ``.s.out`` (stress = -virial/volume, eV/Å³); each row
    holds the reference columns then the predicted ones (``numpy.savetxt``, ``%.18e``); a file
    starts with the header ``# <system>: <columns>`` of the first system that writes it, later
    systems append their rows without a header.

    :meth:`add` appends to temporary files next to the targets (``.<name>.tmp-<pid>``,
    :func:`dpa3.atomic_file.temporary_name`); :meth:`commit` moves them into place, so a run
    that stops half-way (an error in a later system, a kill) leaves the files of an earlier
    run as they were; :meth:`discard` removes the temporary files.
    """

    def __init__(self, prefix: str | os.PathLike) -> None:
        self.base = Path(prefix)
        self.started: dict[Path, Path] = {}  # target -> temporary file

    def add(self, label: str, res: SystemErrors, natoms: int) -> list[str]:
        """Append one system's rows; returns the target files it wrote to."""
        if res.details is None:
            raise ValueError("DetailFiles.add: the errors were evaluated without details=True")
        written = []
        for suffix, key, columns, per_atom in DETAIL_FILES:
            if key not in res.details:
                continue
            ref, pred = res.details[key]
            width = 3 if key == "force" else (1 if key == "energy" else 9)
            table = np.concatenate((ref.reshape(-1, width), pred.reshape(-1, width)), axis=1)
            if per_atom:
                table = table / natoms
            path = self.base.with_suffix(suffix)
            header = f"{label}: {columns}" if key != "stress" else f"{label} (eV/Å³): {columns}"
            if path in self.started:
                header = ""
            tmp = self.started.setdefault(path, temporary_name(path))
            with tmp.open("a" if header == "" else "w", encoding="utf-8") as fh:
                np.savetxt(fh, table, header=header)
            written.append(str(path))
        return written

    def commit(self) -> None:
        """Move every temporary file into place (flushed to disk first)."""
        for path, tmp in self.started.items():
            with tmp.open("rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        for folder in {p.parent for p in self.started}:
            fsync_dir(folder)
        self.started.clear()

    def discard(self) -> None:
        """Remove the temporary files (the targets stay as they were)."""
        for tmp in self.started.values():
            tmp.unlink(missing_ok=True)
        self.started.clear()


def load_atom_ener(system: System, set_prefix: str = "set") -> np.ndarray:
    """The reference atomic energies ``set.*/atom_ener.npy`` of a system, (nframes, natoms).

    Raises :class:`dpa3.errors.DataError` when a set lacks the file (``dp test -a`` needs it).
    """
    sets = sorted(p for p in Path(system.path).glob(f"{set_prefix}.*") if p.is_dir())
    arrays = []
    for sdir in sets:
        f = sdir / "atom_ener.npy"
        if not f.is_file():
            raise DataError(f"'{f}' is missing (the atomic-energy test, -a, needs it)")
        arrays.append(np.load(f).astype(np.float64).reshape(-1, system.natoms))
    out = np.concatenate(arrays)
    if out.shape[0] != system.nframes:
        raise DataError(
            f"'{system.path}': atom_ener.npy has {out.shape[0]} frames, coord.npy {system.nframes}"
        )
    return out


__all__ = [
    "DETAIL_FILES",
    "ERROR_KEYS",
    "DetailFiles",
    "ErrorStats",
    "SystemErrors",
    "evaluate_system",
    "load_atom_ener",
    "predict",
]
