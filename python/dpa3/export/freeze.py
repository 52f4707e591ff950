"""Freeze a model into the TorchScript file that LAMMPS (``pair_style dpa3``) loads.

The frozen file holds one scripted module with ``forward_lower`` and the getters of the
contract in ``docs/internals.md``, plus ``metadata.json`` as an extra file. It is scripted,
not ``torch.jit.freeze``-d: freezing removes ``detach`` and so alters derivatives that
``forward_lower`` computes with autograd.
Freezing requires the op library: a message-passing model exchanges ghost features with
``torch.ops.dpa3.border_exchange``, and a model scripted without it could not run on
several ranks (there is deliberately no Python stand-in for the op).

:func:`freeze_checkpoint` freezes a training checkpoint, single-task or one head of a
multi-task one (``dpa3 freeze [--head HEAD]``).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..atomic_file import atomic_open
from ..errors import CheckpointError, ExportError, ModelFileError
from .metadata import METADATA_FILE, build_metadata, parse_metadata

#: Methods a frozen model must provide (``docs/internals.md``).
EXPORTED_METHODS = (
    "forward_lower",
    "get_rcut",
    "get_sel",
    "get_type_map",
    "get_ntypes",
    "get_num_layers",
    "get_exchange_width",
    "get_metadata",
)

_OP_NAME = "dpa3::border_exchange"


def _require_ops() -> None:
    """Load the op library through :mod:`dpa3._ops`, or raise :class:`ExportError`."""
    try:
        from .. import _ops
    except ImportError as exc:  # pragma: no cover - only in a broken installation
        raise ExportError(f"dpa3: cannot import dpa3._ops ({exc})") from exc
    try:
        loaded = _ops.load_ops()
    except RuntimeError as exc:  # the library is there but does not load
        raise ExportError(str(exc)) from exc
    if not loaded:
        raise ExportError(
            "dpa3: the op library libdpa3_ops.so (torch.ops.dpa3.border_exchange) is not "
            "available, so the model cannot be frozen for LAMMPS: a model scripted without it "
            "could not exchange ghost features between MPI ranks. Build dpa3 with its C++ "
            "extension (pip install --no-build-isolation .) against the installed torch."
        )


def _script(model: torch.nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return torch.jit.script(model)


def _inlined_graph(method: Any) -> str:
    """The method's graph with every call inlined (the inliner only runs while the graph
    executor optimisation is enabled, so enable it for the duration)."""
    before = torch._C._get_graph_executor_optimize()
    torch._C._set_graph_executor_optimize(True)
    try:
        graph = method.graph.copy()
        torch._C._jit_pass_inline(graph)
        return str(graph)
    finally:
        torch._C._set_graph_executor_optimize(before)


def freeze(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Script and save ``model`` for LAMMPS and :func:`load_frozen`.

    Parameters
    ----------
    model
        An :class:`dpa3.model.EnergyModel` (or any module honouring the same contract:
        ``forward_lower`` and the getters in :data:`EXPORTED_METHODS`). Left unchanged (its
        training flag is restored).
    path
        Output file (conventionally ``*.pth``); written atomically (temporary file in the
        same folder, then ``os.replace``).
    metadata
        Extra JSON-serialisable fields stored in ``metadata.json``.

    Returns
    -------
    The path written.

    Raises
    ------
    ExportError
        If the op library is not loaded, or the model does not call the exchange op although
        it declares message passing (a :class:`RuntimeError`).
    ModelFileError
        If the model lacks one of the exported methods, or ``metadata`` sets a computed field
        (a :class:`ValueError`).
    """
    _require_ops()
    path = Path(path)
    was_training = model.training
    model.eval()
    try:
        scripted = _script(model)
        missing = [m for m in EXPORTED_METHODS if not hasattr(scripted, m)]
        if missing:
            raise ModelFileError(
                "dpa3.export.freeze: the model lacks the @torch.jit.export method(s) "
                f"{', '.join(missing)} required by LAMMPS (see docs/internals.md)"
            )
        if int(scripted.get_num_layers()) > 0:  # message-passing layers need the exchange
            if _OP_NAME not in _inlined_graph(scripted.forward_lower):
                raise ExportError(
                    "dpa3.export.freeze: the model has message-passing layers but its "
                    "forward_lower never "
                    f"calls torch.ops.{_OP_NAME.replace('::', '.')}, so it could not run on "
                    "several MPI ranks"
                )
        meta = build_metadata(scripted, model, metadata)
        # Deliberately not torch.jit.freeze: freezing assumes inference without autograd and
        # drops aten::detach, which changes forward_lower's atomic virial (the correction term
        # differentiates with the centre positions detached).
        frozen = scripted
    finally:
        model.train(was_training)

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        torch.jit.save(frozen, fh, _extra_files={METADATA_FILE: json.dumps(meta, indent=2)})
    return path


def load_frozen(
    path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu"
) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Load a model written by :func:`freeze`.

    Returns the scripted module (methods ``forward_lower`` and the getters) and the parsed
    ``metadata.json``. Loads the op library first, since the model refers to it.

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a file.
    ModelFileError
        If it is not a frozen dpa3 model this dpa3 can load (empty, not a zip archive or cut
        short, frozen by DeePMD-kit, another version's op signatures, no or unsupported
        ``metadata.json``, missing methods); a :class:`ValueError`.
    ExportError
        If the op library is not available.
    """
    from .load import check_archive, convert_command, is_deepmd_frozen

    _require_ops()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dpa3: no model file {path}")
    check_archive(path, ModelFileError)
    if is_deepmd_frozen(path):  # its code calls DeePMD-kit's ops, which dpa3 does not have
        raise ModelFileError(
            f"'{path}' is a model frozen by DeePMD-kit, not by dpa3; dpa3 test, model-devi "
            f"and the ASE calculator run it as is, or convert it: {convert_command(path)}"
        )
    extra = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
        except RuntimeError as exc:
            text = str(exc)
            if "dpa3::" in text and (
                "Expected a value of type" in text or "Unknown builtin op" in text
            ):
                raise ModelFileError(
                    f"dpa3: {path} calls dpa3 ops with signatures this dpa3 does not have: it "
                    "was frozen by another dpa3 version; re-freeze it with this one "
                    f"(dpa3 freeze -c CHECKPOINT -o model.pth). Details: {exc}"
                ) from exc
            raise ModelFileError(f"dpa3: cannot load {path} as a frozen model: {exc}") from exc
    meta = parse_metadata(extra[METADATA_FILE], str(path))
    missing = [m for m in EXPORTED_METHODS if not hasattr(module, m)]
    if missing:
        raise ModelFileError(f"dpa3: {path} lacks method(s) {', '.join(missing)}")
    return module, meta


def freeze_checkpoint(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str] = "model.pth",
    head: str | None = None,
    graph_budget_bytes: int | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Freeze a dpa3 training checkpoint: a single-task one, or one head of a multi-task one.

    Parameters
    ----------
    checkpoint
        A checkpoint file, a ``checkpoint`` pointer file or the folder holding one.
    output
        The frozen model to write (see :func:`freeze`).
    head
        The head (task) of a multi-task checkpoint; must be ``None`` for a single-task one.
        It is recorded in the metadata as ``head``.
    graph_budget_bytes
        The frozen model's ``graph_budget_bytes`` (per process: evaluation keeps every layer's
        autograd graph while its estimate fits, and recomputes the layers above it;
        ``docs/internals.md``, "Memory"); None keeps the default.

    Returns
    -------
    The path written and its metadata as :func:`load_frozen` reads it back.

    Raises
    ------
    CheckpointError
        The checkpoint is missing or unreadable (:func:`dpa3.export.load.resolve_model_file`)
        or a frozen model, or ``head`` is missing for a multi-task
        checkpoint or given for a single-task one.
    ConfigError
        ``head`` is not a head of the checkpoint (the message lists them).
    ExportError, ModelFileError
        As :func:`freeze`.
    """
    from ..train.checkpoint import load_checkpoint
    from ..train.multitask import checkpoint_model
    from .load import is_deepmd_frozen, is_torchscript, resolve_model_file

    source = resolve_model_file(checkpoint)
    if is_torchscript(source):  # a frozen model holds no training state to freeze from
        who = "DeePMD-kit" if is_deepmd_frozen(source) else "dpa3"
        raise CheckpointError(
            f"'{source}' is a model frozen by {who}, not a training checkpoint: dpa3 freeze "
            "reads a checkpoint (.pt, e.g. model.ckpt.pt)"
        )
    ckpt = load_checkpoint(source)
    model = checkpoint_model(ckpt, head, source=source)
    if graph_budget_bytes is not None:
        model.graph_budget_bytes = int(graph_budget_bytes)
    metadata: dict[str, Any] = {"checkpoint": str(source), "step": int(ckpt.get("step", -1))}
    if head is not None:
        metadata["head"] = head
    inp = ckpt.get("input") or {}
    if head is None and inp.get("converted_from") is not None:  # for dpa3 show
        metadata["converted_model"] = inp.get("model")
    out = freeze(model, output, metadata=metadata)
    _, meta = load_frozen(out)
    return out, meta
