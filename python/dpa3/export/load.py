"""Load a model to evaluate: a frozen ``.pth`` or a dpa3 checkpoint (one head of a multi-task one).

Used by ``dpa3 test``, ``dpa3 info`` and :class:`dpa3.calculator.DPA3Calculator`.  Both kinds
of model offer ``forward_lower`` and the getters of ``docs/internals.md``, so
:func:`dpa3.train.evaluate.evaluate_system` drives either one.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding ``*/constants.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") for n in zf.namelist())


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
        The file does not exist or is neither a dpa3 checkpoint nor a frozen dpa3 model, or
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
    from .freeze import load_frozen

    try:
        module, _ = load_frozen(p, map_location=device)
    except Exception as err:
        raise CheckpointError(
            f"cannot load model '{p}': not a dpa3 checkpoint ({load_err}) nor a frozen dpa3 "
            f"model ({err})"
        ) from err
    return module.eval()


__all__ = ["is_torchscript", "load_model"]
