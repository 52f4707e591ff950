"""``dpa3 change-bias``: re-fit or set the per-type energy bias of a trained model.

As ``dp --pt change-bias``: the input is a dpa3 checkpoint (``.pt``) or a frozen model
(``.pth``), told apart by content and written back in the same kind (default name
``<input>_updated.pt/.pth``; never over the input).  The bias is either given per type
(``bias``), or fitted by least squares on labelled systems: ``change`` adds the fit of
(label - prediction) to the current bias (DeePMD-kit's ``change-by-statistic``), ``set``
replaces the bias by the fit of the labels (``set-by-statistic``).  Every frame of every
system is used, or the first ``numb_batch`` frames of each system (batch size 1, as
DeePMD-kit).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, UsageError

log = logging.getLogger(__name__)

MODES = ("change", "set")


@dataclass
class BiasChange:
    """What :func:`change_bias` did."""

    output: Path
    type_map: list[str]
    before: np.ndarray
    after: np.ndarray


def _updated_name(path: Path) -> Path:
    return path.with_name(f"{path.stem}_updated{path.suffix}")


def change_bias(
    model: str | Path,
    *,
    systems: Sequence[str] | None = None,
    bias: Sequence[float] | None = None,
    mode: str = "change",
    numb_batch: int = 0,
    output: str | Path | None = None,
    set_prefix: str = "set",
) -> BiasChange:
    """Re-fit (``systems``) or set (``bias``) the energy bias of ``model``; see the module doc.

    Raises
    ------
    UsageError
        Neither or both of ``systems`` and ``bias``, a ``bias`` of the wrong length or not
        finite, an unknown ``mode``, a negative ``numb_batch``, an ``output`` that is the
        input model.
    CheckpointError
        The model cannot be read (:func:`dpa3.export.load.resolve_model_file`), or is a
        multi-task checkpoint.
    ModelFileError
        A frozen model this dpa3 cannot load (:func:`dpa3.export.freeze.load_frozen`).
    DataError
        As :func:`dpa3.data.system.load_systems`.
    """
    from ..data.loader import make_batch
    from ..data.stats import fit_energy_bias, stat_frames
    from ..data.system import find_systems, load_systems
    from ..train.checkpoint import atomic_torch_save, frozen_checkpoint, load_checkpoint
    from ..train.finetune import refit_bias_delta
    from ..train.multitask import checkpoint_model, is_multitask_checkpoint
    from ..train.task import model_forward
    from .freeze import freeze, load_frozen
    from .load import is_torchscript, resolve_model_file

    if mode not in MODES:
        raise UsageError(f"change-bias: mode '{mode}' is not one of {', '.join(MODES)}")
    if (systems is None) == (bias is None):
        raise UsageError("change-bias: give either systems to fit the bias on or the bias")
    if numb_batch < 0:
        raise UsageError(f"change-bias: numb_batch must be >= 0, got {numb_batch}")
    if bias is not None and not np.all(np.isfinite(np.asarray(bias, dtype=np.float64))):
        raise UsageError(f"change-bias: the bias values must be finite numbers, got {list(bias)}")
    src = resolve_model_file(model)
    out = Path(output) if output is not None else _updated_name(src)
    if out.exists() and out.resolve() == src.resolve():
        raise UsageError(
            f"change-bias: the output '{out}' is the input model; write the changed model "
            "to another file (-o) so that the original stays"
        )
    frozen = is_torchscript(src)  # by content: a frozen model may be named .pt and vice versa
    if frozen:
        load_frozen(src)  # refuses DeePMD-kit's and unsupported metadata before reading weights
    ckpt = frozen_checkpoint(src) if frozen else load_checkpoint(src)
    if is_multitask_checkpoint(ckpt):
        raise CheckpointError(
            f"change-bias: '{src}' is a multi-task checkpoint; freeze one head "
            "(dpa3 freeze --head HEAD) and change the bias of the frozen model"
        )
    net = checkpoint_model(ckpt, source=src)
    type_map = list(net.get_type_map())
    before = net.out_bias.detach().cpu().numpy().copy()
    if bias is not None:
        if len(bias) != len(type_map):
            raise UsageError(
                f"change-bias: {len(bias)} bias values for the {len(type_map)} types "
                f"{' '.join(type_map)}"
            )
        net.set_out_bias(np.asarray(bias, dtype=np.float64))
    else:
        paths = find_systems(list(systems), where="-s")
        loaded = load_systems(paths, type_map, set_prefix)
        batches = []
        for i, s in enumerate(loaded):
            n = s.nframes if numb_batch == 0 else min(numb_batch, s.nframes)
            batches.append([make_batch(s, np.array([f]), i) for f in range(n)])
        if mode == "change":
            delta = refit_bias_delta(net, batches, len(type_map), model_forward, "cpu")
            net.set_out_bias(before + delta)
        else:
            e, c = stat_frames(batches, len(type_map))
            fitted, std = fit_energy_bias(e, c)
            net.set_out_bias(fitted, std)
        log.info("bias fitted on %d systems, %d frames", len(loaded), sum(map(len, batches)))
    after = net.out_bias.detach().cpu().numpy().copy()
    if frozen:
        freeze(net, out, metadata={"changed_bias_of": str(src)})
    else:
        ckpt = dict(ckpt)
        ckpt["model"] = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        atomic_torch_save(ckpt, out)
    log.info(
        "changed the energy bias of %s from %s to %s",
        type_map,
        np.array2string(before, precision=6),
        np.array2string(after, precision=6),
    )
    return BiasChange(out, type_map, before, after)


__all__ = ["MODES", "BiasChange", "change_bias"]
