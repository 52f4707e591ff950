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
import shlex
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError

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

    cmd = f"dpa3 convert-deepmd {shlex.quote(str(p))} {shlex.quote(p.stem + '.ckpt.pt')}"
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
        The file does not exist or is neither a dpa3 checkpoint nor a frozen dpa3 model nor a
        DeePMD-kit frozen DPA3 energy model (the message gives the conversion command), or
        ``head`` is missing for a multi-task checkpoint or given for another model.
    ConfigError
        ``head`` is not a head of the multi-task checkpoint.
    """
    from ..train.checkpoint import CHECKPOINT_FORMAT, resolve_checkpoint
    from ..train.multitask import checkpoint_model

    p = Path(path)
    if p.is_dir() or p.name == "checkpoint":
        p = resolve_checkpoint(p)
    if not p.is_file():
        raise CheckpointError(f"model file '{path}' does not exist")
    load_err: Exception | None = None
    obj: Any = None
    if not is_torchscript(p):
        try:
            obj = torch.load(p, map_location=device, weights_only=True)
        except Exception as err:  # reported below with the TorchScript error
            load_err = err
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return checkpoint_model(obj, head, source=p).to(device)
    if obj is not None:
        raise CheckpointError(f"'{p}' is neither a dpa3 checkpoint nor a frozen dpa3 model")
    if head is not None:
        raise CheckpointError(f"'{p}' is not a multi-task checkpoint: --head does not apply")
    if is_deepmd_frozen(p):
        return _load_deepmd_frozen(p, device)
    from .freeze import load_frozen

    try:
        module, _ = load_frozen(p, map_location=device)
    except Exception as err:
        raise CheckpointError(
            f"cannot load model '{p}': not a dpa3 checkpoint ({load_err}) nor a frozen dpa3 "
            f"model ({err})"
        ) from err
    return module.eval()


__all__ = ["is_deepmd_frozen", "is_torchscript", "load_model"]
