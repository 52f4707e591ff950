"""Model deviation of an ensemble of models (``dpa3 model-devi``), as DeePMD-kit's
``dp model-devi``.

Several models trained with different seeds are evaluated on the same frames; where their
forces disagree the frame is a candidate for labelling (concurrent learning, DP-GEN).
Definitions (DeePMD-kit 3.2, ``deepmd.infer.model_devi``), with M models and N atoms:

* per-atom force deviation ``d_i = |std_m F_m,i|`` (the norm of the 3-vector of standard
  deviations over models, population std ``1/M``), eV/Å; with ``relative = L`` it is divided
  by ``|mean_m F_m,i| + L``.  Columns ``max/min/avg_devi_f`` = max, min, mean of ``d_i`` over atoms.
* virial deviation per component ``s_k = std_m (W_m,k / N)``, k = 1..9, eV; with
  ``relative_v = L`` divided by ``|mean_m W_m / N| + L`` (norm of the 9-vector; DeePMD-kit's
  LAMMPS plugin divides each component by its own ``|mean_m W_m,k / N| + L`` instead).
  ``max/min_devi_v`` = max, min over k; ``avg_devi_v`` = ``|s| / 3`` (the norm over the 9
  components divided by 3, i.e. the root mean square, *not* the arithmetic mean).
* ``devi_e`` = ``std_m (E_m / N)``, eV/atom.

The file is byte-compatible with ``dp model-devi``'s (see tests/data/model_devi/NOTES.md):
per system a header ``# <system>`` then ``# step`` and the column names, rows
``%12d`` + ``%19.6e`` per value; ``--atomic`` appends the N per-atom force deviations.

Frames come from a DeePMD-kit npy system or from any trajectory ASE reads (a LAMMPS dump
needs the element of each LAMMPS type, ``type_map``); a frame with a cell is periodic.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic_file import atomic_open, write_text
from .errors import DataError

COLUMNS: tuple[str, ...] = (
    "max_devi_v",
    "min_devi_v",
    "avg_devi_v",
    "max_devi_f",
    "min_devi_f",
    "avg_devi_f",
    "devi_e",
)


@dataclass
class Frames:
    """Frames to evaluate, all with the same atoms.

    Attributes
    ----------
    source
        Where they come from (written as the file's first header line).
    coord
        (nframes, natoms, 3) float64, Å.
    box
        (nframes, 9) float64 cell rows, Å, or ``None`` (not periodic).
    atype
        (nframes, natoms) int64 indices into ``type_map``.
    type_map
        Element names of the models.
    """

    source: str
    coord: np.ndarray
    box: np.ndarray | None
    atype: np.ndarray
    type_map: tuple[str, ...]

    @property
    def nframes(self) -> int:
        """Number of frames."""
        return int(self.coord.shape[0])


# ----------------------------------------------------------------------------- models


def load_models(
    paths: Sequence[str | os.PathLike], device: str | torch.device = "cpu"
) -> tuple[list[torch.nn.Module], tuple[str, ...]]:
    """Load >= 2 models (checkpoints or frozen ``.pth``) that share one type map."""
    from .export.load import load_model

    if len(paths) < 2:
        raise DataError(f"model deviation needs at least 2 models, got {len(paths)}")
    for p in paths:
        if not Path(p).exists():
            raise DataError(f"model file '{p}' does not exist")
    models = [load_model(p, device) for p in paths]
    maps = [tuple(str(t) for t in m.get_type_map()) for m in models]
    if any(tm != maps[0] for tm in maps[1:]):
        desc = "; ".join(f"{p}: {' '.join(tm)}" for p, tm in zip(paths, maps, strict=True))
        raise DataError(f"the models have different type maps ({desc})")
    return models, maps[0]


def evaluate_ensemble(
    models: Sequence[torch.nn.Module], frames: Frames, batch: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Energies (M, nf) eV, forces (M, nf, N, 3) eV/Å and virials (M, nf, 9) eV of every model."""
    from .train.evaluate import predict

    es, fs, vs = [], [], []
    for model in models:
        e, f, v = [], [], []
        for i in range(0, frames.nframes, batch):
            sl = slice(i, i + batch)
            box = None if frames.box is None else frames.box[sl]
            out = predict(model, frames.coord[sl], frames.atype[sl], box)
            e.append(out["energy"])
            f.append(out["force"])
            v.append(out["virial"])
        es.append(np.concatenate(e))
        fs.append(np.concatenate(f))
        vs.append(np.concatenate(v))
    return np.stack(es), np.stack(fs), np.stack(vs)


# ----------------------------------------------------------------------------- deviations


def force_deviation(forces: np.ndarray, relative: float | None = None) -> np.ndarray:
    """Per-atom force deviation (nf, N), eV/Å (dimensionless if ``relative``), from forces
    (M, nf, N, 3)."""
    devi = np.linalg.norm(np.std(forces, axis=0), axis=-1)
    if relative is not None:
        devi = devi / (np.linalg.norm(np.mean(forces, axis=0), axis=-1) + relative)
    return devi


def virial_deviation(
    virials_per_atom: np.ndarray, relative: float | None = None, per_component: bool = False
) -> np.ndarray:
    """Per-component virial deviation (nf, 9) from virials divided by N, (M, nf, 9) eV.

    ``relative``: divide by ``|mean W / N| + relative``, the norm of the 9-vector as
    ``dp model-devi`` does, or, with ``per_component``, by ``|mean W_k / N| + relative`` per
    component as DeePMD-kit's LAMMPS ``pair_style deepmd ... relative_v`` does (3.2.0).
    """
    devi = np.std(virials_per_atom, axis=0)
    if relative is not None:
        mean = np.mean(virials_per_atom, axis=0)
        norm = np.abs(mean) if per_component else np.linalg.norm(mean, axis=-1)[:, None]
        devi = devi / (norm + relative)
    return devi


def deviation_table(
    energies: np.ndarray,
    forces: np.ndarray,
    virials: np.ndarray,
    frequency: int = 1,
    relative: float | None = None,
    relative_v: float | None = None,
    atomic: bool = False,
    relative_v_per_component: bool = False,
) -> np.ndarray:
    """The rows of the file: (nf, 8 [+ N]) = step, the 7 :data:`COLUMNS` [, per-atom d_i].

    ``energies`` (M, nf) eV, ``forces`` (M, nf, N, 3) eV/Å, ``virials`` (M, nf, 9) eV;
    ``relative_v_per_component``: see :func:`virial_deviation` (False = ``dp model-devi``).
    """
    nat = forces.shape[2]
    nf = forces.shape[1]
    dv = virial_deviation(virials / nat, relative_v, relative_v_per_component)
    df = force_deviation(forces, relative)
    cols = [
        np.arange(nf, dtype=np.float64) * frequency,
        dv.max(axis=-1),
        dv.min(axis=-1),
        np.linalg.norm(dv, axis=-1) / 3,
        df.max(axis=-1),
        df.min(axis=-1),
        df.mean(axis=-1),
        np.std(energies / nat, axis=0),
    ]
    table = np.stack(cols, axis=1)
    return np.concatenate([table, df], axis=1) if atomic else table


def format_block(table: np.ndarray, source: str, atomic: bool = False) -> str:
    """One system's block of the file, exactly as ``dp model-devi`` writes it."""
    head = f"# {source}\n# {'step':10s}"
    for item in "vf":
        head += f"{'max_devi_' + item:19s}{'min_devi_' + item:19s}{'avg_devi_' + item:19s}"
    head += f"{'devi_e':19s}"
    if atomic:
        head += f"{'atm_devi_f(N)':19s}"
    lines = [head]
    for row in table:
        lines.append(f"{round(row[0]):12d}" + "".join(f"{x:19.6e}" for x in row[1:]))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- frames


def read_frames(
    path: str | os.PathLike,
    type_map: Sequence[str],
    set_prefix: str = "set",
    lammps_types: Sequence[str] | None = None,
    fmt: str | None = None,
) -> Frames:
    """Frames of a DeePMD-kit system (a folder with ``type.raw``, an HDF5 ``file#/group``) or
    an ASE trajectory.

    ``lammps_types`` names the element of LAMMPS type 1, 2, ... (needed for a LAMMPS dump
    without an ``element`` column); ``fmt`` is an ASE format name (default: guessed).
    """
    from .data.storage import is_hdf5_system_path
    from .data.system import load_system

    p = Path(path)
    if is_hdf5_system_path(str(path)):
        s = load_system(str(path), type_map, set_prefix)
        return Frames(str(path), s.coord, s.box, s.atype, tuple(type_map))
    if not p.exists():
        raise DataError(f"system '{path}' does not exist")
    if p.is_dir():
        if not (p / "type.raw").is_file():
            raise DataError(f"'{path}' is a folder but not a DeePMD-kit system (no type.raw)")
        s = load_system(p, type_map, set_prefix)
        return Frames(str(path), s.coord, s.box, s.atype, tuple(type_map))
    return _read_ase(p, str(path), type_map, lammps_types, fmt)


def _read_ase(
    p: Path,
    source: str,
    type_map: Sequence[str],
    lammps_types: Sequence[str] | None,
    fmt: str | None,
) -> Frames:
    import ase.io
    from ase.io.formats import filetype

    try:
        fmt = fmt or filetype(str(p), read=True)
    except Exception as err:  # ASE raises several kinds for unknown files
        raise DataError(f"cannot tell the format of '{p}' ({err}); give --format") from None
    kwargs = {}
    if fmt.startswith("lammps-dump"):
        if not lammps_types:
            raise DataError(
                f"'{p}' is a LAMMPS dump: give the element of each LAMMPS type with "
                f"-t/--type-map (e.g. -t {' '.join(type_map)})"
            )
        kwargs["specorder"] = list(lammps_types)
    try:
        images = ase.io.read(str(p), index=":", format=fmt, **kwargs)
    except (IndexError, KeyError) as err:
        raise DataError(
            f"cannot read '{p}' as {fmt}: LAMMPS type without an element in "
            f"-t/--type-map? ({err!r})"
        ) from None
    except Exception as err:  # any reader failure becomes one message
        raise DataError(f"cannot read '{p}' as {fmt}: {err}") from None
    if not images:
        raise DataError(f"'{p}' holds no frames")
    symbols = images[0].get_chemical_symbols()
    unknown = sorted(set(symbols) - set(type_map))
    if unknown:
        raise DataError(
            f"'{p}': element(s) {unknown} are not in the models' type map {list(type_map)}"
        )
    for k, a in enumerate(images):
        if a.get_chemical_symbols() != symbols:
            raise DataError(
                f"'{p}': frame {k} has other atoms than frame 0 (all frames "
                "must have the same atoms in the same order)"
            )
    periodic = [bool(a.pbc.any()) and a.cell.rank == 3 for a in images]
    if any(periodic) and not all(periodic):
        raise DataError(f"'{p}': some frames have a cell and some do not")
    coord = np.stack([a.get_positions() for a in images]).astype(np.float64)
    box = (
        np.stack([np.asarray(a.cell[:], dtype=np.float64).reshape(9) for a in images])
        if periodic[0]
        else None
    )
    atype = np.broadcast_to(
        np.array([type_map.index(s) for s in symbols], dtype=np.int64), coord.shape[:2]
    ).copy()
    return Frames(source, coord, box, atype, tuple(type_map))


# ----------------------------------------------------------------------------- selection


def select(table: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Indices of the frames whose ``max_devi_f`` (column 4) lies in [lo, hi)."""
    col = table[:, 1 + COLUMNS.index("max_devi_f")]
    return np.nonzero((col >= lo) & (col < hi))[0]


def write_npy_system(out: str | os.PathLike, frames: Frames, index: np.ndarray) -> int:
    """Write ``frames[index]`` as an unlabelled DeePMD-kit npy system; returns the frame count.

    Files: ``type.raw`` (one int per atom), ``type_map.raw``, ``set.000/coord.npy``
    (nf, N*3) and ``set.000/box.npy`` (nf, 9) or an empty ``nopbc`` file; float64, Å.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"output '{out}' exists and is not a folder")
    if not out.parent.is_dir():
        raise DataError(f"cannot write '{out}': folder '{out.parent}' does not exist")
    if (out / "type.raw").exists():
        raise DataError(f"'{out}' already holds a system; choose another folder")
    atype = frames.atype[index] if len(index) else frames.atype[:1]
    if np.any(atype != atype[0]):
        raise DataError("the selected frames do not share one atom order")
    # every file atomically, type.raw last: an interrupted write leaves no folder that reads
    # as a (partial) system
    try:
        (out / "set.000").mkdir(parents=True, exist_ok=True)
        nf, nat = len(index), atype.shape[1]
        with atomic_open(out / "set.000" / "coord.npy") as fh:
            np.save(fh, frames.coord[index].reshape(nf, nat * 3))
        if frames.box is not None:
            with atomic_open(out / "set.000" / "box.npy") as fh:
                np.save(fh, frames.box[index].reshape(nf, 9))
        else:
            write_text(out / "nopbc", "")
        write_text(out / "type_map.raw", "\n".join(frames.type_map) + "\n")
        write_text(out / "type.raw", "".join(f"{t}\n" for t in atype[0].tolist()))
    except OSError as err:
        raise DataError(f"cannot write the system '{out}': {err}") from None
    return len(index)


__all__ = [
    "COLUMNS",
    "Frames",
    "deviation_table",
    "evaluate_ensemble",
    "force_deviation",
    "format_block",
    "load_models",
    "read_frames",
    "select",
    "virial_deviation",
    "write_npy_system",
]
