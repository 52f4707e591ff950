"""Where a DeePMD-kit system lives: a folder, or a group of an HDF5 file.

DeePMD-kit reads a system through one path type for both: a folder ``sys/`` with files such as
``sys/type.raw`` and ``sys/set.000/coord.npy``, or an HDF5 file ``data.hdf5`` (its root group)
or ``data.hdf5#/group``, where groups play the folders and datasets the files (the
``deepmd/hdf5`` layout dpdata writes: ``type.raw`` an integer dataset, ``type_map.raw`` a bytes
dataset, ``nopbc`` a dataset, ``set.*`` groups of ``*.npy`` datasets).  :func:`open_store`
returns a :class:`Store` for either; :mod:`dpa3.data.system` reads systems through it.

HDF5 needs ``h5py`` (installed by ``scripts/setup.sh``; ``pip install h5py`` elsewhere).
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

#: Separates the HDF5 file from the group in ``data.hdf5#/group`` (DeePMD-kit's spelling).
H5_SEP = "#"
#: The first bytes of every ``.npy`` file (format version excluded).
_NPY_MAGIC = b"\x93NUMPY"


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise DataError(
            "reading HDF5 systems needs the h5py package: install h5py (pip install h5py)"
        ) from None
    return h5py


def split_h5(path: str) -> tuple[str, str]:
    """``"data.hdf5#/a/b"`` -> ``("data.hdf5", "/a/b")``; no ``#``: the root group ``"/"``."""
    file, _, group = path.partition(H5_SEP)
    group = group or "/"
    if not group.startswith("/"):
        group = "/" + group
    return file, group


def _join_h5(file: str, group: str) -> str:
    return f"{file}{H5_SEP}{group}"


class Store:
    """Read access to one system location (a folder or an HDF5 group).

    Paths given to the methods are relative, ``/``-separated (``"set.000/coord.npy"``).
    """

    #: The system's name as DeePMD-kit prints it (folder path or ``file.hdf5#/group``).
    label: str

    def is_file(self, rel: str) -> bool:  # pragma: no cover - interface
        """Whether ``rel`` is a file (HDF5: a dataset)."""
        raise NotImplementedError

    def subdirs(self, pattern: str) -> list[str]:  # pragma: no cover - interface
        """Names of the sub-folders (groups) matching the glob ``pattern``, sorted."""
        raise NotImplementedError

    def array(self, rel: str) -> np.ndarray:  # pragma: no cover - interface
        """The array in ``rel`` (an ``.npy`` file or a dataset)."""
        raise NotImplementedError

    def ints(self, rel: str) -> np.ndarray:  # pragma: no cover - interface
        """A text file of integers (``type.raw``) as a 1-d int64 array."""
        raise NotImplementedError

    def names(self, rel: str) -> list[str]:  # pragma: no cover - interface
        """A text file of names (``type_map.raw``), one a line."""
        raise NotImplementedError

    def where(self, rel: str) -> str:
        """``rel`` as an error message names it."""
        return f"{self.label}/{rel}"

    def close(self) -> None:
        """Release the file (HDF5)."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DirStore(Store):
    """A system folder."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.root = Path(path)
        self.label = str(path)

    def is_file(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def subdirs(self, pattern: str) -> list[str]:
        return sorted(p.name for p in self.root.glob(pattern) if p.is_dir())

    def where(self, rel: str) -> str:
        return str(self.root / rel)

    def array(self, rel: str) -> np.ndarray:
        try:
            with open(self.root / rel, "rb") as fh:
                magic = fh.read(len(_NPY_MAGIC))
        except OSError as err:
            raise DataError(f"cannot read '{self.where(rel)}': {err}") from err
        if magic != _NPY_MAGIC:
            # numpy would try it as a pickle and report "pickled (object) data"
            what = "it is empty" if not magic else "it does not start with the .npy signature"
            raise DataError(f"'{self.where(rel)}' is not a NumPy .npy file ({what})")
        try:
            return np.load(self.root / rel, allow_pickle=False)
        except Exception as err:  # report which file is broken
            raise DataError(f"cannot read '{self.where(rel)}': {err}") from err

    def ints(self, rel: str) -> np.ndarray:
        try:
            return np.loadtxt(self.root / rel, dtype=np.int64, ndmin=1)
        except ValueError as err:
            raise DataError(f"'{self.where(rel)}' must hold one integer per atom: {err}") from err

    def names(self, rel: str) -> list[str]:
        try:
            return (self.root / rel).read_text().split()
        except UnicodeDecodeError as err:
            raise DataError(
                f"'{self.where(rel)}' must be a text file of element names: {err}"
            ) from None


class H5Store(Store):
    """A group of an HDF5 file (``file.hdf5`` = its root group, ``file.hdf5#/group``)."""

    def __init__(self, path: str) -> None:
        h5py = _h5py()
        self.file, self.group = split_h5(path)
        self.label = path
        try:
            self._f = h5py.File(self.file, "r")
        except OSError as err:
            raise DataError(f"cannot read '{self.file}' as an HDF5 file: {err}") from None
        obj = self._f.get(self.group)
        if not isinstance(obj, h5py.Group):
            self._f.close()
            raise DataError(f"'{path}': the HDF5 file has no group '{self.group}'")
        self._g = obj
        self._h5py = h5py

    def _get(self, rel: str) -> Any:
        obj: Any = self._g
        for part in rel.split("/"):
            if not isinstance(obj, self._h5py.Group) or part not in obj:
                return None
            obj = obj[part]
        return obj

    def is_file(self, rel: str) -> bool:
        return isinstance(self._get(rel), self._h5py.Dataset)

    def subdirs(self, pattern: str) -> list[str]:
        return sorted(
            k
            for k in self._g.keys()
            if fnmatch.fnmatchcase(k, pattern) and isinstance(self._g[k], self._h5py.Group)
        )

    def where(self, rel: str) -> str:
        return _join_h5(self.file, self.group.rstrip("/") + "/" + rel)

    def array(self, rel: str) -> np.ndarray:
        obj = self._get(rel)
        if not isinstance(obj, self._h5py.Dataset):
            raise DataError(f"'{self.where(rel)}' is missing")
        try:
            return np.asarray(obj[()])
        except Exception as err:
            raise DataError(f"cannot read '{self.where(rel)}': {err}") from err

    def ints(self, rel: str) -> np.ndarray:
        arr = self.array(rel)
        if not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"'{self.where(rel)}' must hold one integer per atom")
        return arr.astype(np.int64).reshape(-1)

    def names(self, rel: str) -> list[str]:
        arr = np.atleast_1d(self.array(rel)).reshape(-1)
        return [x.decode() if isinstance(x, bytes) else str(x) for x in arr.tolist()]

    def close(self) -> None:
        self._f.close()


def is_h5_path(path: str) -> bool:
    """Whether ``path`` names an HDF5 file or group (not a folder), as DeePMD-kit decides:
    anything that is not a folder but whose part before ``#`` is a file."""
    return not os.path.isdir(path) and os.path.isfile(path.partition(H5_SEP)[0])


def is_hdf5_system_path(path: str) -> bool:
    """Whether ``path`` (``file`` or ``file#/group``) names an HDF5 file: its first bytes are the
    HDF5 signature (tells an HDF5 system from a trajectory file of another format)."""
    file = path.partition(H5_SEP)[0]
    if os.path.isdir(path) or not os.path.isfile(file):
        return False
    with open(file, "rb") as fh:
        return fh.read(8) == b"\x89HDF\r\n\x1a\n"


def open_store(path: str | os.PathLike) -> Store:
    """A :class:`Store` for a system folder or an HDF5 file / group.

    Raises :class:`dpa3.errors.DataError` if ``path`` is neither.
    """
    s = str(path)
    if os.path.isdir(s):
        return DirStore(path)
    if is_h5_path(s):
        return H5Store(s)
    raise DataError(f"system '{s}' does not exist")


def h5_child_systems(path: str) -> list[str]:
    """The systems of an HDF5 file or group as DeePMD-kit's ``expand_sys_str`` finds them:
    the direct sub-groups holding a ``type.raw`` dataset, in the file's (name) order, then the
    group itself if it holds one."""
    with H5Store(path) as st:
        h5py = st._h5py
        out = []
        for k in st._g.keys():  # h5py lists the links of a group in name order
            g = st._g[k]
            if isinstance(g, h5py.Group) and isinstance(g.get("type.raw"), h5py.Dataset):
                out.append(_join_h5(st.file, st.group.rstrip("/") + "/" + k))
        if st.is_file("type.raw"):
            out.append(_join_h5(st.file, st.group))
    return out


__all__ = [
    "H5_SEP",
    "DirStore",
    "H5Store",
    "Store",
    "h5_child_systems",
    "is_h5_path",
    "is_hdf5_system_path",
    "open_store",
    "split_h5",
]
