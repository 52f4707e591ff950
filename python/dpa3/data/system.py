"""DeePMD-kit systems (``npy`` folders and ``deepmd/hdf5`` files), read once into memory.

A system folder holds ``type.raw`` (one integer type per atom, whitespace-separated),
optionally ``type_map.raw`` (element names, whitespace-separated), an optional empty file
``nopbc``, and ``set.*`` folders (read in name order) with ``coord.npy`` (nframes, natoms*3),
``box.npy`` (nframes, 9; absent or ignored with ``nopbc``) and the optional labels
``energy.npy`` (nframes,), ``force.npy`` (nframes, natoms*3) and ``virial.npy`` (nframes, 9),
and the per-atom ``atom_ener.npy`` (nframes, natoms; the atomic-energy loss term) and
``atom_ener_coeff.npy`` (nframes, natoms; 1 where absent, used by the loss option
``enable_atom_ener_coeff``), also spelled ``atomic_ener.npy``/``atomic_ener_coeff.npy``.
Each array may also have the shapes DeePMD-kit reads (:func:`_reshape`: (nframes, natoms, 3),
(nframes, 3, 3), (nframes, 1) energies, a one-frame set without the frame axis), any integer
or float dtype, byte order and memory order.  In the *mixed-type* layout
``set.*/real_atom_types.npy`` (nframes, natoms) gives each frame's types and ``type.raw`` is a
placeholder; without ``type_map.raw`` those types index the model's type map (as in
``dp --pt train``).  Files the energy model never asks for (``atom_pref``, ``fparam``,
``aparam``, ``numb_copy``, ...) are not read, as in DeePMD-kit; the input keys that would use
them are refused in :mod:`dpa3.config`.  Refused with a :class:`DataError` naming the file:
other shapes (DeePMD-kit would reshape them in memory order, or fail in one of its two
readers), other dtypes (strings, booleans, complex numbers), files that are not ``.npy``,
sets without frames, and virtual atoms (type -1).  ``tests/python/test_npy_layouts.py``
compares each layout with what DeePMD-kit's ``DeepmdData`` reads.

The same layout inside an HDF5 file (``data.hdf5`` or ``data.hdf5#/group``, as dpdata's
``deepmd/hdf5`` writes it) is read through :mod:`dpa3.data.storage`.  ``.raw`` text frames
are not read (DeePMD-kit does not read them either: convert them with its ``raw_to_set.sh``
or dpdata).

A missing label file switches that label off for the frames of that set, as DeePMD-kit's
``find_*`` flags do; the loss then skips the term for those frames.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError

if TYPE_CHECKING:
    from .storage import Store

LABELS: tuple[str, ...] = ("energy", "force", "virial", "atom_ener", "atom_ener_coeff")
#: Value of a label absent from a set (DeePMD-kit's ``DataRequirementItem.default``).
_LABEL_DEFAULT = {"atom_ener_coeff": 1.0}


@dataclass
class System:
    """One DeePMD-kit system held in memory (all sets concatenated).

    Attributes
    ----------
    path
        The system folder.
    type_map
        The *model* type map; ``atype`` indexes into it.
    coord
        (nframes, natoms, 3) float64, Å.
    box
        (nframes, 9) float64 cell rows, or ``None`` for ``nopbc`` systems.
    atype
        (nframes, natoms) int64 model type indices.
    labels
        ``energy`` (nframes,), ``force`` (nframes, natoms, 3), ``virial`` (nframes, 9), all
        float64; zero where the label is absent.
    find
        Per label, (nframes,) bool: whether the frame has that label.
    set_nframes
        Frames of each ``set.*`` folder, in order (empty when not read from sets).
    """

    path: str
    type_map: tuple[str, ...]
    coord: np.ndarray
    box: np.ndarray | None
    atype: np.ndarray
    labels: dict[str, np.ndarray]
    find: dict[str, np.ndarray] = field(default_factory=dict)
    set_nframes: tuple[int, ...] = ()

    @property
    def nframes(self) -> int:
        """Number of frames."""
        return int(self.coord.shape[0])

    @property
    def natoms(self) -> int:
        """Number of atoms per frame."""
        return int(self.coord.shape[1])

    @property
    def pbc(self) -> bool:
        """Whether the system is periodic."""
        return self.box is not None

    def set_batches(self, batch_size: int) -> int:
        """Batches DeePMD-kit counts for this system in its data summary: per set
        ``nframes // batch_size``, at least 1 (``DeepmdData.get_sys_numb_batch``)."""
        sets = self.set_nframes or (self.nframes,)
        return sum(max(1, n // batch_size) for n in sets)

    def has_label(self, name: str) -> bool:
        """Whether any frame carries label ``name``."""
        return bool(self.find[name].any())

    def type_counts(self, ntypes: int | None = None) -> np.ndarray:
        """(nframes, ntypes) int64 number of atoms of each type per frame."""
        nt = len(self.type_map) if ntypes is None else ntypes
        counts = np.zeros((self.nframes, nt), dtype=np.int64)
        for t in range(nt):
            counts[:, t] = (self.atype == t).sum(axis=1)
        return counts


def _expand(p: Path, patterns: Sequence[str] | None) -> list[str]:
    """The systems under one folder in DeePMD-kit's order (``expand_sys_str``: every folder
    of ``Path.rglob("*")`` holding a ``type.raw``, then the folder itself if it is a system;
    with ``patterns`` (``rglob_sys_str``) the folders of ``Path.rglob(pattern)`` for each
    pattern, without duplicates and without the folder itself)."""
    if patterns is None:
        found = [str(d) for d in p.rglob("*") if (d / "type.raw").is_file()]
        if (p / "type.raw").is_file():
            found.append(str(p))
        return found
    found = []
    for pattern in patterns:
        found.extend(str(d) for d in p.rglob(pattern) if (d / "type.raw").is_file())
    return list(dict.fromkeys(found))


def find_systems(
    paths: str | Iterable[str | os.PathLike],
    base: str | os.PathLike | None = None,
    where: str = "systems",
    patterns: Sequence[str] | None = None,
) -> list[str]:
    """Expand ``training_data.systems`` into systems, as DeePMD-kit's ``process_systems``.

    Each entry (``paths`` may be one string) is searched recursively: a folder gives the
    systems in its sub-folders, in ``Path.rglob`` order (the file system's order, as
    DeePMD-kit lists them), followed by the folder itself if it holds ``type.raw``; an HDF5
    file ``data.hdf5`` or group ``data.hdf5#/group`` gives its direct sub-groups that are
    systems (name order), then itself if it is one.  ``patterns`` (``rglob_patterns``)
    keeps the folders matching any of the globs instead; DeePMD-kit returns those in no
    fixed order, dpa3 in the patterns' ``rglob`` order.  Relative paths are taken relative
    to ``base`` (default: the working directory).  The systems keep the spelling of the
    entries (DeePMD-kit prints them so in the data summary).
    """
    from .storage import h5_child_systems, is_h5_path, is_hdf5_system_path

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[str] = []
    for entry in paths:
        s = str(entry)
        if base is not None and not os.path.isabs(s):
            s = os.path.join(str(base), s)
        if os.path.isdir(s):
            found = _expand(Path(s), patterns)
        elif is_h5_path(s) and not is_hdf5_system_path(s):
            raise DataError(
                f"{where}: '{entry}' is a file but not an HDF5 file (no HDF5 signature); "
                "give a system folder (with type.raw and set.*) or an HDF5 file"
            )
        elif is_h5_path(s):
            if patterns is not None:
                raise DataError(
                    f"{where}: rglob_patterns select folders; '{entry}' is an HDF5 file "
                    "(list its groups as 'file.hdf5#/group' instead)"
                )
            found = h5_child_systems(s)
        elif os.path.exists(s.partition("#")[0]):
            raise DataError(f"{where}: '{entry}' is neither a folder nor an HDF5 file")
        else:
            raise DataError(f"{where}: system folder '{entry}' does not exist (looked at '{s}')")
        if not found:
            what = f" matching rglob_patterns {list(patterns)}" if patterns is not None else ""
            raise DataError(
                f"{where}: no system (folder with type.raw){what} found under '{entry}'"
            )
        out.extend(found)
    if not out:
        raise DataError(f"{where}: the list of systems is empty")
    return out


def _check_finite(arr: np.ndarray, where: str) -> None:
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr.reshape(arr.shape[0], -1)))[0]
        raise DataError(f"'{where}' contains NaN or inf (first at frame {bad[0]})")


def _reshape(
    arr: np.ndarray,
    where: str,
    nframes: int | None,
    width: int,
    what: str,
    inner: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Reshape ``arr`` to (nframes, width) where DeePMD-kit reads it so, else a clear error.

    Accepted, as both of DeePMD-kit's readers (``dp test``'s whole sets and ``dp --pt
    train``'s frames) read them: (nframes, width); (nframes,) when width is 1; (nframes,
    *inner) with ``inner`` the per-frame shape ((natoms, 3) for coordinates and forces,
    (3, 3) for cells and virials, (natoms, 1) for per-atom values); and a set of one frame
    stored without the frame axis: (width,), ``inner``, or () when width is 1 (for
    coord.npy, which counts the frames, ``nframes`` None: only (width,)).  Any other shape
    is refused, even with the right number of values: DeePMD-kit reshapes such arrays in
    memory order (a force array of shape (nframes, 3, natoms) becomes other forces) or reads
    them in one reader only.
    """
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"'{where}' holds {arr.dtype} values; expected integers or floats")
    inner = inner or (width,)
    one = ((width,),) if nframes is None else ((width,), inner) if nframes == 1 else ()
    if arr.shape in one or (arr.ndim == 0 and width == 1 and nframes == 1):
        arr = arr.reshape(1, width)
    elif arr.ndim == 1 and width == 1 and nframes is not None:
        arr = arr[:, None]
    elif arr.ndim >= 2 and arr.shape[1:] == inner:
        arr = arr.reshape(arr.shape[0], width)
    if arr.ndim != 2 or arr.shape[1] != width:
        alt = "" if inner == (width,) else f" or (nframes, {', '.join(map(str, inner))})"
        raise DataError(
            f"'{where}' has shape {arr.shape}; expected (nframes, {width}){alt} {what}".rstrip()
        )
    if nframes is not None and arr.shape[0] != nframes:
        raise DataError(
            f"'{where}' has {arr.shape[0]} frames but coord.npy of that set has {nframes}"
        )
    return arr


def _label_file(st: Store, sdir: str, name: str) -> str:
    """``<set>/<name>.npy``; for a per-atom label ``atom_X`` missing under that name, the
    spelling ``atomic_X.npy`` that DeePMD-kit also reads (``DeepmdData._get_data_path``)."""
    rel = f"{sdir}/{name}.npy"
    if not st.is_file(rel) and name.startswith("atom_"):
        alt = f"{sdir}/atomic_{name[5:]}.npy"
        if st.is_file(alt):
            return alt
    return rel


def load_system(
    path: str | os.PathLike, type_map: Sequence[str] | None, set_prefix: str = "set"
) -> System:
    """Read every set of one system into memory and map its types into ``type_map``.

    Parameters
    ----------
    path
        System folder, or an HDF5 system (``data.hdf5``, ``data.hdf5#/group``; see
        :mod:`dpa3.data.storage`).
    type_map
        Model element names.  The system's ``type_map.raw`` names are looked up in it; without
        ``type_map.raw`` the integer types are used as they are.  ``None`` uses the system's
        own ``type_map.raw`` (for tools such as ``neighbor-stat``).
    set_prefix
        Prefix of the set folders (DeePMD-kit's ``set_prefix``).
    """
    from .storage import open_store

    with open_store(path) as st:
        return _read_system(st, type_map, set_prefix)


def _read_system(st: Store, type_map: Sequence[str] | None, set_prefix: str) -> System:
    root = st.label
    if not st.is_file("type.raw"):
        raise DataError(f"'{root}' is not a system: '{st.where('type.raw')}' is missing")
    base_types = st.ints("type.raw")
    natoms = int(base_types.size)
    if natoms == 0:
        raise DataError(f"'{st.where('type.raw')}' is empty")
    sys_names = None
    if st.is_file("type_map.raw"):
        sys_names = st.names("type_map.raw")
        if not sys_names:
            raise DataError(f"'{st.where('type_map.raw')}' is empty")
    if type_map is None:
        if sys_names is None:
            raise DataError(f"'{root}' has no type_map.raw and no type map was given")
        type_map = sys_names
    type_map = tuple(type_map)
    nopbc = st.is_file("nopbc")
    sets = st.subdirs(f"{set_prefix}.*")
    if not sets:
        raise DataError(f"'{root}' has no '{set_prefix}.*' folders")

    coords, boxes, types, set_nframes = [], [], [], []
    labels: dict[str, list[np.ndarray]] = {k: [] for k in LABELS}
    finds: dict[str, list[np.ndarray]] = {k: [] for k in LABELS}
    mixed = [st.is_file(f"{d}/real_atom_types.npy") for d in sets]
    if any(mixed) and not all(mixed):
        raise DataError(
            f"'{root}': some sets have real_atom_types.npy (mixed type) and some do not; "
            "all sets of a system must use the same layout"
        )
    if not any(mixed) and base_types.min() < 0:
        raise DataError(
            f"'{st.where('type.raw')}' has the type {int(base_types.min())}: types are "
            "0-based indices into type_map.raw (dpa3 does not support virtual atoms)"
        )
    for sdir in sets:
        cfile = f"{sdir}/coord.npy"
        if not st.is_file(cfile):
            raise DataError(f"'{st.where(cfile)}' is missing")
        coord = _reshape(
            st.array(cfile),
            st.where(cfile),
            None,
            natoms * 3,
            f"(natoms = {natoms} from type.raw)",
            (natoms, 3),
        )
        nf = coord.shape[0]
        if nf == 0:
            raise DataError(f"'{st.where(cfile)}' has no frames (shape {coord.shape})")
        set_nframes.append(nf)
        _check_finite(coord, st.where(cfile))
        coords.append(coord.reshape(nf, natoms, 3).astype(np.float64))
        if not nopbc:
            bfile = f"{sdir}/box.npy"
            if not st.is_file(bfile):
                raise DataError(
                    f"'{st.where(bfile)}' is missing (add an empty 'nopbc' file to "
                    f"'{root}' for a non-periodic system)"
                )
            box = _reshape(st.array(bfile), st.where(bfile), nf, 9, "cell rows", (3, 3))
            _check_finite(box, st.where(bfile))
            vol = np.linalg.det(box.reshape(nf, 3, 3))
            if np.any(np.abs(vol) < 1e-8):
                raise DataError(f"'{st.where(bfile)}' has a degenerate (zero-volume) cell")
            boxes.append(box.astype(np.float64))
        rfile = f"{sdir}/real_atom_types.npy"
        if st.is_file(rfile):
            rt = _reshape(st.array(rfile), st.where(rfile), nf, natoms, "types per frame")
            if np.any(rt != np.round(rt)):
                raise DataError(f"'{st.where(rfile)}' holds non-integer types")
            types.append(rt.astype(np.int64))
        else:
            types.append(np.broadcast_to(base_types, (nf, natoms)).copy())
        for name, width, inner in (
            ("energy", 1, (1,)),
            ("force", natoms * 3, (natoms, 3)),
            ("virial", 9, (3, 3)),
            ("atom_ener", natoms, (natoms, 1)),
            ("atom_ener_coeff", natoms, (natoms, 1)),
        ):
            lfile = _label_file(st, sdir, name)
            if st.is_file(lfile):
                arr = _reshape(
                    st.array(lfile),
                    st.where(lfile),
                    nf,
                    width,
                    f"(natoms = {natoms} from type.raw)" if name == "force" else "",
                    inner,
                )
                _check_finite(arr, st.where(lfile))
                labels[name].append(arr.astype(np.float64))
                finds[name].append(np.ones(nf, dtype=bool))
            else:
                labels[name].append(np.full((nf, width), _LABEL_DEFAULT.get(name, 0.0)))
                finds[name].append(np.zeros(nf, dtype=bool))

    atype_sys = np.concatenate(types)
    if np.any(atype_sys < 0):
        raise DataError(
            f"'{root}': real_atom_types.npy has type -1 (virtual atoms padding frames to one "
            "size); dpa3 does not support virtual atoms: write the frames without padding"
        )
    if sys_names is not None:
        if atype_sys.max() >= len(sys_names):
            raise DataError(
                f"'{root}': type index {int(atype_sys.max())} but type_map.raw has only "
                f"{len(sys_names)} names"
            )
        used = np.unique(atype_sys)
        missing = [sys_names[i] for i in used if sys_names[i] not in type_map]
        if missing:
            raise DataError(
                f"'{root}': element(s) {missing} of type_map.raw are not in the model "
                f"type_map {list(type_map)}"
            )
        lut = np.array(
            [type_map.index(n) if n in type_map else -1 for n in sys_names], dtype=np.int64
        )
        atype = lut[atype_sys]
    else:
        if atype_sys.max() >= len(type_map):
            raise DataError(
                f"'{root}': type index {int(atype_sys.max())} is outside the model type_map "
                f"{list(type_map)} (add a type_map.raw to the system)"
            )
        atype = atype_sys
    nf_tot = sum(c.shape[0] for c in coords)
    lab = {
        "energy": np.concatenate(labels["energy"])[:, 0],
        "force": np.concatenate(labels["force"]).reshape(nf_tot, natoms, 3),
        "virial": np.concatenate(labels["virial"]),
        "atom_ener": np.concatenate(labels["atom_ener"]),
        "atom_ener_coeff": np.concatenate(labels["atom_ener_coeff"]),
    }
    return System(
        path=root,
        type_map=type_map,
        coord=np.concatenate(coords),
        box=None if nopbc else np.concatenate(boxes),
        atype=np.ascontiguousarray(atype),
        labels=lab,
        find={k: np.concatenate(v) for k, v in finds.items()},
        set_nframes=tuple(set_nframes),
    )


def load_systems(
    paths: Sequence[str], type_map: Sequence[str] | None, set_prefix: str = "set"
) -> list[System]:
    """Load several systems (see :func:`load_system`)."""
    return [load_system(p, type_map, set_prefix) for p in paths]


__all__ = ["LABELS", "DataError", "System", "find_systems", "load_system", "load_systems"]
