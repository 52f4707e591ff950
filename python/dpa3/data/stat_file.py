"""``training.stat_file`` in DeePMD-kit's layout, so that ``dp --pt`` and dpa3 read each
other's statistics files.

As in DeePMD-kit 3.2 (``deepmd/utils/stat_file.py``): a name ending in ``.h5``/``.hdf5`` (any
case) is one HDF5 file, any other name a folder (an existing folder stays a folder whatever
its name).  Inside, one group (sub-folder) per type map, named by the element names joined
with one space (``"O H"``), holds the statistics of an energy model whose descriptor
statistics are constants (DPA3 with ``fix_stat_std`` > 0 writes no descriptor group):

=====================  ==================  ==========================================
dataset                shape, dtype        meaning
=====================  ==================  ==========================================
``bias_atom_energy``   (ntypes, 1) f64     per-type energy bias (eV), ``out_bias``
``std_atom_energy``    (ntypes, 1) f64     residual std (eV, the same for every type)
``observed_type``      (nobs,) bytes       elements seen in the statistics sample,
                                           ordered by atomic number
=====================  ==================  ==========================================

In a folder each dataset is a ``.npy`` file without suffix.  While DeePMD-kit replaces the
bias/std pair it keeps a marker ``__deepmd_output_stat_transaction__`` in the group; a group
holding it is treated as missing, as DeePMD-kit does.  dpa3 writes an HDF5 file atomically (a
copy is edited, then renamed over the file) and a folder with DeePMD-kit's marker protocol,
each ``.npy`` file written atomically.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_file import atomic_open
from ..errors import ConfigError

HDF5_SUFFIXES = (".h5", ".hdf5")
BIAS = "bias_atom_energy"
STD = "std_atom_energy"
OBSERVED = "observed_type"
MARKER = "__deepmd_output_stat_transaction__"

# element symbols by atomic number (1-118), for DeePMD-kit's order of ``observed_type``
_SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As "
    "Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu "
    "Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np "
    "Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()
_Z = {s: z for z, s in enumerate(_SYMBOLS, start=1)}


def sort_by_atomic_number(elements: Sequence[str]) -> list[str]:
    """``elements`` by atomic number; names that are not elements last, in their order."""
    return sorted(elements, key=lambda s: _Z.get(s, len(_SYMBOLS) + 1))


@dataclass
class EnergyStat:
    """The energy statistics of one type map (see the table above; shapes without the
    trailing 1)."""

    type_map: tuple[str, ...]
    bias: np.ndarray  # (ntypes,) float64, eV
    std: np.ndarray  # (ntypes,) float64, eV
    observed: tuple[str, ...] = ()


def is_hdf5(stat_file: str | os.PathLike) -> bool:
    """Whether ``stat_file`` is (or will be) one HDF5 file rather than a folder."""
    p = Path(stat_file)
    return not p.is_dir() and (p.exists() or p.suffix.lower() in HDF5_SUFFIXES)


def group_name(type_map: Sequence[str]) -> str:
    """The group of a type map: its names joined with one space."""
    return " ".join(type_map)


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise ConfigError(
            "an HDF5 'training.stat_file' (.h5/.hdf5) needs the h5py package: install h5py "
            "(pip install h5py), or give a folder name"
        ) from None
    return h5py


def _open_h5(path: Path, mode: str) -> Any:
    h5py = _h5py()
    try:
        return h5py.File(path, mode)
    except OSError as err:
        raise ConfigError(
            f"'training.stat_file' = '{path}' is not a readable HDF5 file ({err}); DeePMD-kit's "
            "stat file is an HDF5 file (.h5/.hdf5 name) or a folder (any other name)"
        ) from None


def _from_arrays(type_map: Sequence[str], items: dict[str, np.ndarray]) -> EnergyStat:
    nt = len(type_map)
    bias = np.asarray(items[BIAS], dtype=np.float64)
    std = np.asarray(items[STD], dtype=np.float64)
    if bias.size != nt or std.size != nt:
        raise ConfigError(
            f"stat file group '{group_name(type_map)}': {BIAS} has shape {bias.shape} and "
            f"{STD} {std.shape}, expected ({nt}, 1)"
        )
    obs = items.get(OBSERVED)
    observed = (
        ()
        if obs is None
        else tuple(x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(obs).tolist())
    )
    return EnergyStat(tuple(type_map), bias.reshape(nt), std.reshape(nt), observed)


def load_stat(stat_file: str | os.PathLike, type_map: Sequence[str]) -> EnergyStat | None:
    """The statistics of ``type_map`` in ``stat_file``, or ``None`` if the file, its group or
    the bias/std pair is missing (or a write was interrupted)."""
    p = Path(stat_file)
    if not p.exists():
        return None
    name = group_name(type_map)
    items: dict[str, np.ndarray] = {}
    if is_hdf5(p):
        with _open_h5(p, "r") as f:
            g = f.get(name)
            if g is None or MARKER in g:
                return None
            for key in (BIAS, STD, OBSERVED):
                if key in g:
                    items[key] = g[key][()]
    else:
        d = p / name
        if not d.is_dir() or (d / MARKER).exists():
            return None
        for key in (BIAS, STD, OBSERVED):
            if (d / key).is_file():
                items[key] = np.load(d / key, allow_pickle=False)
    if BIAS not in items or STD not in items:
        return None
    return _from_arrays(type_map, items)


def _arrays(stat: EnergyStat) -> dict[str, np.ndarray]:
    nt = len(stat.type_map)
    return {
        BIAS: np.asarray(stat.bias, dtype=np.float64).reshape(nt, 1),
        STD: np.asarray(stat.std, dtype=np.float64).reshape(nt, 1),
        OBSERVED: np.array(list(stat.observed), dtype="S"),
    }


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_open(path, "wb") as fh:
        np.save(fh, arr)


def save_stat(stat_file: str | os.PathLike, stat: EnergyStat) -> Path:
    """Write ``stat`` into its type map's group of ``stat_file`` (other groups are kept);
    returns the path."""
    p = Path(stat_file)
    name = group_name(stat.type_map)
    arrays = _arrays(stat)
    if is_hdf5(p):
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        if p.exists():
            shutil.copyfile(p, tmp)
        try:
            with _open_h5(tmp, "a") as f:
                g = f.require_group(name)
                for key, arr in arrays.items():
                    if key in g:
                        del g[key]
                    g.create_dataset(key, data=arr)
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
        return p
    d = p / name
    d.mkdir(parents=True, exist_ok=True)
    _save_npy(d / MARKER, np.array([1], dtype=np.uint8))
    for key in (BIAS, STD, OBSERVED):  # the bias before the std, as DeePMD-kit
        _save_npy(d / key, arrays[key])
    (d / MARKER).unlink()
    return p


__all__ = [
    "BIAS",
    "MARKER",
    "OBSERVED",
    "STD",
    "EnergyStat",
    "group_name",
    "is_hdf5",
    "load_stat",
    "save_stat",
    "sort_by_atomic_number",
]
