"""Load a model to evaluate: a frozen ``.pth`` or a dpa3 checkpoint (one head of a multi-task one).

A DPA3 energy model frozen by DeePMD-kit (``dp --pt freeze``) is converted in memory with
:func:`dpa3.convert.load_deepmd_model` (its weights are in the file); anything else frozen by
DeePMD-kit stops with the ``dpa3 convert-deepmd`` command and the reason it cannot run.

Used by ``dpa3 test``, ``dpa3 info`` and :class:`dpa3.calculator.DPA3Calculator`.  Both kinds
of model offer ``forward_lower`` and the getters of ``docs/internals.md``, so
:func:`dpa3.train.evaluate.evaluate_system` drives either one.
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError, DPA3Error
from ..train.checkpoint import (
    archive_problem,
    convert_command,
    first_line,
    is_deepmd_checkpoint,
)

log = logging.getLogger(__name__)


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding ``*/constants.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") for n in zf.namelist())


def is_deepmd_frozen(path: Path) -> bool:
    """Whether ``path`` is a model frozen by DeePMD-kit's PyTorch backend (``dp --pt freeze``):
    a TorchScript archive whose code comes from the ``deepmd`` package."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/__torch__/deepmd/" in n for n in zf.namelist())


def _load_deepmd_frozen(p: Path, device: str | torch.device) -> torch.nn.Module:
    """A DeePMD-kit frozen DPA3 model, converted in memory (its weights and its
    ``model_def_script`` are in the file); the exact ``dpa3 convert-deepmd`` command when the
    conversion is refused."""
    from ..convert import load_deepmd_model

    cmd = convert_command(p)
    try:
        with warnings.catch_warnings():  # torch's TypedStorage notice while reading the archive
            warnings.simplefilter("ignore", UserWarning)
            model = load_deepmd_model(p)
    except Exception as err:  # any failure: the reason and the command, not a stack trace
        why = str(err) if isinstance(err, ConfigError) else f"{type(err).__name__}: {err}"
        raise CheckpointError(
            f"'{p}' is a DeePMD-kit frozen model that dpa3 cannot convert ({why}); dpa3 runs "
            f"DeePMD-kit DPA3 energy models only, converted with: {cmd}"
        ) from None
    log.info(
        "'%s' is a DeePMD-kit frozen model: converted in memory (to keep the conversion: %s)",
        p,
        cmd,
    )
    return model.to(device).eval()


def check_archive(path: Path, error: type[DPA3Error] = CheckpointError) -> None:
    """Refuse a file that cannot hold a model: empty, or not the zip archive that ``torch.save``
    and ``torch.jit.save`` write (a text file, or an archive cut short by a copy or a write;
    :func:`dpa3.train.checkpoint.archive_problem`).

    Raises ``error`` (:class:`~dpa3.errors.CheckpointError` unless told) naming the file and
    what is wrong with it.
    """
    problem = archive_problem(path)
    if problem is None:
        return
    if problem == "empty":
        raise error(f"model file '{path}' is empty (0 bytes)")
    if problem == "truncated":  # a zip archive's first entry, but no end: the tail is missing
        raise error(
            f"model file '{path}' is truncated or corrupt: a zip archive without its end "
            "(was a copy or a write cut short?)"
        )
    tf = " (a TensorFlow .pb model cannot be used)" if path.suffix == ".pb" else ""
    raise error(
        f"'{path}' is not a model file: dpa3 checkpoints (.pt) and frozen models (.pth) are "
        f"zip archives written by torch, and this file is not one{tf}"
    )


def resolve_model_file(path: str | Path) -> Path:
    """The model file ``path`` names, checked by :func:`check_archive`: a file, or a training
    folder / ``checkpoint`` pointer file resolved to the checkpoint it names.

    Raises
    ------
    CheckpointError
        ``path`` does not exist, is a folder without a ``checkpoint`` pointer file, or names
        a file that cannot hold a model (:func:`check_archive`).
    """
    from ..train.checkpoint import POINTER, resolve_checkpoint

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"model file '{path}' does not exist")
    if p.is_dir() and not (p / POINTER).is_file():
        raise CheckpointError(
            f"'{path}' is a folder without a '{POINTER}' file naming a checkpoint; "
            "give the model file"
        )
    if p.is_dir() or p.name == POINTER:
        p = resolve_checkpoint(p)
    check_archive(p)
    return p


def load_model(
    path: str | Path, device: str | torch.device = "cpu", head: str | None = None
) -> torch.nn.Module:
    """An eval-mode model from a dpa3 checkpoint (eager) or a frozen ``.pth`` (TorchScript).

    Parameters
    ----------
    path
        A frozen model, a checkpoint, a ``checkpoint`` pointer file or the folder holding one.
    device
        Where the model is placed.
    head
        The head of a multi-task checkpoint (required for one, refused for other models).

    Raises
    ------
    CheckpointError
        As :func:`resolve_model_file`; or the file is neither a dpa3 checkpoint nor a frozen
        dpa3 model nor a DeePMD-kit frozen DPA3 energy model (for a DeePMD-kit checkpoint the
        message gives the conversion command), or ``head`` is missing for a multi-task
        checkpoint or given for another model.
    ConfigError
        ``head`` is not a head of the multi-task checkpoint.
    ModelFileError
        A frozen model this dpa3 cannot load (:func:`dpa3.export.freeze.load_frozen`).
    """
    from ..train.checkpoint import CHECKPOINT_FORMAT
    from ..train.multitask import checkpoint_model

    p = resolve_model_file(path)
    if is_torchscript(p):
        if head is not None:
            raise CheckpointError(
                f"'{p}' is a frozen model, not a multi-task checkpoint: --head does not apply"
            )
        if is_deepmd_frozen(p):
            return _load_deepmd_frozen(p, device)
        from .freeze import load_frozen

        module, _ = load_frozen(p, map_location=device)
        return module.eval()
    try:
        obj = torch.load(p, map_location=device, weights_only=True)
    except Exception as err:  # a damaged archive, or pickled objects no checkpoint holds
        raise CheckpointError(
            f"cannot read '{p}': neither a frozen model nor a dpa3 checkpoint ({first_line(err)})"
        ) from None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return checkpoint_model(obj, head, source=p).to(device)
    if is_deepmd_checkpoint(obj):
        raise CheckpointError(
            f"'{p}' is a DeePMD-kit checkpoint; convert it first: {convert_command(p)}"
        )
    raise CheckpointError(f"'{p}' is neither a dpa3 checkpoint nor a frozen dpa3 model")


__all__ = [
    "check_archive",
    "convert_command",
    "is_deepmd_checkpoint",
    "is_deepmd_frozen",
    "is_torchscript",
    "load_model",
    "resolve_model_file",
]
