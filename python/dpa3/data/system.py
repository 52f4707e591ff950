"""DeePMD-kit ``npy`` systems, read once into memory.

A system folder holds ``type.raw`` (one integer type per atom), optionally ``type_map.raw``
(element names, one a line), an optional empty file ``nopbc``, and ``set.*`` folders with
``coord.npy`` (nframes, natoms*3), ``box.npy`` (nframes, 9; absent with ``nopbc``) and the
optional labels ``energy.npy`` (nframes,), ``force.npy`` (nframes, natoms*3) and
``virial.npy`` (nframes, 9), and the per-atom ``atom_ener.npy`` (nframes, natoms; the
atomic-energy loss term) and ``atom_ener_coeff.npy`` (nframes, natoms; 1 where absent, used
by the loss option ``enable_atom_ener_coeff``).  In the *mixed-type* layout
``set.*/real_atom_types.npy`` (nframes, natoms) gives each frame's types and ``type.raw`` is a
placeholder.

A missing label file switches that label off for the frames of that set, as DeePMD-kit's
``find_*`` flags do; the loss then skips the term for those frames.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError

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
    """

    path: str
    type_map: tuple[str, ...]
    coord: np.ndarray
    box: np.ndarray | None
    atype: np.ndarray
    labels: dict[str, np.ndarray]
    find: dict[str, np.ndarray] = field(default_factory=dict)

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


def find_systems(
    paths: Iterable[str | os.PathLike],
    base: str | os.PathLike | None = None,
    where: str = "systems",
) -> list[str]:
    """Expand ``training_data.systems`` into system folders.

    Each entry is a system folder (it contains ``type.raw``) or a parent folder that is
    searched recursively for systems (sorted for reproducibility).  Relative paths are taken
    relative to ``base`` (default: the working directory), as DeePMD-kit does.
    """
    out: list[str] = []
    for entry in paths:
        p = Path(entry)
        if base is not None and not p.is_absolute():
            p = Path(base) / p
        if not p.exists():
            raise DataError(f"{where}: system folder '{entry}' does not exist (looked at '{p}')")
        if not p.is_dir():
            raise DataError(f"{where}: '{entry}' is not a folder")
        if (p / "type.raw").is_file():
            out.append(str(p))
            continue
        found = sorted(str(f.parent) for f in p.rglob("type.raw"))
        if not found:
            raise DataError(f"{where}: no system (folder with type.raw) found under '{entry}'")
        out.extend(found)
    if not out:
        raise DataError(f"{where}: the list of systems is empty")
    return out


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:  # report which file is broken
        raise DataError(f"cannot read '{path}': {err}") from err


def _check_finite(arr: np.ndarray, path: Path) -> None:
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr.reshape(arr.shape[0], -1)))[0]
        raise DataError(f"'{path}' contains NaN or inf (first at frame {bad[0]})")


def _reshape(arr: np.ndarray, path: Path, nframes: int | None, width: int, what: str) -> np.ndarray:
    """Reshape ``arr`` to (nframes, width) and complain clearly if it cannot be."""
    if arr.ndim == 1 and width != 1 and nframes in (None, 1) and arr.size == width:
        arr = arr[None, :]
    if arr.ndim == 1 and width == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != width:
        raise DataError(f"'{path}' has shape {arr.shape}; expected (nframes, {width}) {what}")
    if nframes is not None and arr.shape[0] != nframes:
        raise DataError(
            f"'{path}' has {arr.shape[0]} frames but coord.npy of that set has {nframes}"
        )
    return arr


def _read_type_map(path: Path) -> list[str] | None:
    f = path / "type_map.raw"
    if not f.is_file():
        return None
    names = f.read_text().split()
    if not names:
        raise DataError(f"'{f}' is empty")
    return names


def load_system(
    path: str | os.PathLike, type_map: Sequence[str] | None, set_prefix: str = "set"
) -> System:
    """Read every set of one system into memory and map its types into ``type_map``.

    Parameters
    ----------
    path
        System folder.
    type_map
        Model element names.  The system's ``type_map.raw`` names are looked up in it; without
        ``type_map.raw`` the integer types are used as they are.  ``None`` uses the system's
        own ``type_map.raw`` (for tools such as ``neighbor-stat``).
    set_prefix
        Prefix of the set folders (DeePMD-kit's ``set_prefix``).
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"system folder '{root}' does not exist")
    tfile = root / "type.raw"
    if not tfile.is_file():
        raise DataError(f"'{root}' is not a system: '{tfile}' is missing")
    try:
        base_types = np.loadtxt(tfile, dtype=np.int64, ndmin=1)
    except ValueError as err:
        raise DataError(f"'{tfile}' must hold one integer per atom: {err}") from err
    natoms = int(base_types.size)
    if natoms == 0:
        raise DataError(f"'{tfile}' is empty")
    sys_names = _read_type_map(root)
    if type_map is None:
        if sys_names is None:
            raise DataError(f"'{root}' has no type_map.raw and no type map was given")
        type_map = sys_names
    type_map = tuple(type_map)
    nopbc = (root / "nopbc").exists()
    sets = sorted(p for p in root.glob(f"{set_prefix}.*") if p.is_dir())
    if not sets:
        raise DataError(f"'{root}' has no '{set_prefix}.*' folders")

    coords, boxes, types = [], [], []
    labels: dict[str, list[np.ndarray]] = {k: [] for k in LABELS}
    finds: dict[str, list[np.ndarray]] = {k: [] for k in LABELS}
    for sdir in sets:
        cfile = sdir / "coord.npy"
        if not cfile.is_file():
            raise DataError(f"'{cfile}' is missing")
        coord = _reshape(
            _load_npy(cfile), cfile, None, natoms * 3, f"(natoms = {natoms} from type.raw)"
        )
        nf = coord.shape[0]
        _check_finite(coord, cfile)
        coords.append(coord.reshape(nf, natoms, 3).astype(np.float64))
        if not nopbc:
            bfile = sdir / "box.npy"
            if not bfile.is_file():
                raise DataError(
                    f"'{bfile}' is missing (add an empty 'nopbc' file to "
                    f"'{root}' for a non-periodic system)"
                )
            box = _reshape(_load_npy(bfile), bfile, nf, 9, "cell rows")
            _check_finite(box, bfile)
            vol = np.linalg.det(box.reshape(nf, 3, 3))
            if np.any(np.abs(vol) < 1e-8):
                raise DataError(f"'{bfile}' has a degenerate (zero-volume) cell")
            boxes.append(box.astype(np.float64))
        rfile = sdir / "real_atom_types.npy"
        if rfile.is_file():
            rt = _reshape(_load_npy(rfile), rfile, nf, natoms, "types per frame")
            types.append(rt.astype(np.int64))
        else:
            types.append(np.broadcast_to(base_types, (nf, natoms)).copy())
        for name, width in (
            ("energy", 1),
            ("force", natoms * 3),
            ("virial", 9),
            ("atom_ener", natoms),
            ("atom_ener_coeff", natoms),
        ):
            lfile = sdir / f"{name}.npy"
            if lfile.is_file():
                arr = _reshape(
                    _load_npy(lfile),
                    lfile,
                    nf,
                    width,
                    f"(natoms = {natoms} from type.raw)" if name == "force" else "",
                )
                _check_finite(arr, lfile)
                labels[name].append(arr.astype(np.float64))
                finds[name].append(np.ones(nf, dtype=bool))
            else:
                labels[name].append(np.full((nf, width), _LABEL_DEFAULT.get(name, 0.0)))
                finds[name].append(np.zeros(nf, dtype=bool))

    atype_sys = np.concatenate(types)
    if np.any(atype_sys < 0):
        raise DataError(f"'{root}': negative (virtual) atom types are not supported by dpa3")
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
        path=str(root),
        type_map=type_map,
        coord=np.concatenate(coords),
        box=None if nopbc else np.concatenate(boxes),
        atype=np.ascontiguousarray(atype),
        labels=lab,
        find={k: np.concatenate(v) for k, v in finds.items()},
    )


def load_systems(
    paths: Sequence[str], type_map: Sequence[str] | None, set_prefix: str = "set"
) -> list[System]:
    """Load several systems (see :func:`load_system`)."""
    return [load_system(p, type_map, set_prefix) for p in paths]


__all__ = ["LABELS", "DataError", "System", "find_systems", "load_system", "load_systems"]
