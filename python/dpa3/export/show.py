"""``dpa3 show``: a model's type map, descriptor and fitting-net parameters and size, printed
as ``dp --pt show`` prints them (same sentences, Python reprs of the same values).

The descriptor and fitting-net dicts are those of the model's typed config written as a
DeePMD-kit section (every key dpa3 reads, as ``out.json``), or for a model converted from
DeePMD-kit (``dpa3 convert-deepmd``) DeePMD-kit's own; sizes count parameters as DeePMD-kit
does (names containing ``descriptor``; names containing ``fitting``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: the attributes ``dp show`` knows that dpa3 prints
ATTRIBUTES = ("type-map", "descriptor", "fitting-net", "size")


def _model_section(ckpt: dict[str, Any]) -> dict[str, Any]:
    """DeePMD-kit's model section of a converted model, else the typed config as one."""
    from ..config.model import ModelConfig
    from ..config.model_section import ModelSection

    inp = ckpt.get("input") or {}
    if inp.get("converted_from") is not None and isinstance(inp.get("model"), dict):
        return inp["model"]
    cfg = ModelConfig.from_typed_dict(ckpt["model_config"])
    return ModelSection(cfg).to_input(cfg)


def show_lines(path: str | Path, attributes: list[str]) -> list[str]:
    """The lines ``dp --pt show PATH ATTRIBUTES...`` logs, for a dpa3 checkpoint or frozen model.

    Raises
    ------
    UsageError
        An attribute dpa3 does not show (``model-branch``, ``observed-type``, unknown).
    CheckpointError
        The model cannot be read (:func:`dpa3.export.load.resolve_model_file`), or is a
        multi-task checkpoint.
    ModelFileError
        A frozen model this dpa3 cannot load (:func:`dpa3.export.freeze.load_frozen`).
    """
    from ..errors import CheckpointError, UsageError
    from ..train.checkpoint import frozen_checkpoint, load_checkpoint
    from ..train.multitask import checkpoint_model, is_multitask_checkpoint
    from .load import is_torchscript, resolve_model_file

    bad = [a for a in attributes if a not in ATTRIBUTES]
    if bad:
        raise UsageError(
            f"show: {', '.join(bad)} not supported (dpa3 shows {', '.join(ATTRIBUTES)})"
        )
    p = resolve_model_file(path)
    frozen = is_torchscript(p)
    meta: dict[str, Any] = {}
    if frozen:  # load_frozen first: it refuses DeePMD-kit's and unsupported metadata clearly
        from .freeze import load_frozen

        _, meta = load_frozen(p)
    ckpt = frozen_checkpoint(p) if frozen else load_checkpoint(p)
    if is_multitask_checkpoint(ckpt):
        raise CheckpointError(
            f"show: '{p}' is a multi-task checkpoint; freeze one head (dpa3 freeze --head) first"
        )
    if frozen:
        if isinstance(meta.get("converted_model"), dict):  # see freeze_checkpoint
            ckpt["input"] = {"model": meta["converted_model"], "converted_from": str(p)}
    section = _model_section(ckpt)
    lines = ["This is a singletask model"]
    if "type-map" in attributes:
        lines.append(f"The type_map is {list(section['type_map'])}")
    if "descriptor" in attributes:
        lines.append(f"The descriptor parameter is {section['descriptor']}")
    if "fitting-net" in attributes:
        lines.append(f"The fitting_net parameter is {section['fitting_net']}")
    if "size" in attributes:
        net = checkpoint_model(ckpt, source=p)
        params = dict(net.named_parameters())
        des = sum(v.numel() for k, v in params.items() if "descriptor" in k)
        fit = sum(v.numel() for k, v in params.items() if "fitting" in k)
        size = {"descriptor": des, "fitting-net": fit, "total": des + fit}
        lines.append("Parameter counts:")
        lines += [f"Parameters in {k}: {size[k]:,}" for k in sorted(size)]
    return lines


__all__ = ["ATTRIBUTES", "show_lines"]
