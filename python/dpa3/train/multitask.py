"""Multi-task models: one shared descriptor, one fitting net and energy bias per task (head).

:class:`MultiTaskModel` holds one :class:`dpa3.model.EnergyModel` per head whose
``descriptor`` attribute is the *same* module instance, so the descriptor (type embedding
included) is trained by every task.  Each head is therefore an ordinary single-task model:
freezing, testing or fine-tuning one head goes through the single-task code unchanged.

Multi-task checkpoints are dpa3 checkpoints (:mod:`dpa3.train.checkpoint`) whose ``model``
entry stores the shared descriptor once::

    "model": {"shared": {"descriptor.<...>": tensor, ...},
              "heads": {"<task>": {"fitting.<...>": tensor, "out_bias": ..., ...}, ...}},
    "model_config": None,
    "multitask": {"heads": [...], "type_map": [...],
                  "model_configs": {"<task>": typed ModelConfig dict},
                  "inputs": {"<task>": the equivalent single-task input.json}}

``{**shared, **heads[task]}`` is exactly the state dict of the single-task model of that head.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ..config.model import ModelConfig
from ..config.multitask import RANDOM_BRANCH, unknown_head_error
from ..errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

#: State-dict prefix of the shared part of every head.
SHARED_PREFIX = "descriptor."


class MultiTaskModel(nn.Module):
    """Heads (single-task energy models) sharing one descriptor instance.

    Parameters
    ----------
    cfgs
        Typed model config per head; all must have the same type map and descriptor.
    factory
        Builds one single-task model from its config (``EnergyModel`` by default).
    """

    def __init__(
        self,
        cfgs: Mapping[str, ModelConfig],
        factory: Callable[[ModelConfig], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if not cfgs:
            raise ValueError("a multi-task model needs at least one head")
        if factory is None:
            from ..model import EnergyModel

            factory = EnergyModel
        names = list(cfgs)
        first = cfgs[names[0]]
        for n in names[1:]:
            if cfgs[n].descriptor != first.descriptor or cfgs[n].type_map != first.type_map:
                raise ValueError(f"head {n!r} has another descriptor or type map than {names[0]!r}")
        heads = {n: factory(cfgs[n]) for n in names}
        self.descriptor = heads[names[0]].descriptor
        for h in heads.values():
            h.descriptor = self.descriptor
        self.heads = nn.ModuleDict(heads)
        self.cfgs = dict(cfgs)

    @property
    def names(self) -> list[str]:
        """Head names in task order."""
        return list(self.heads.keys())

    def head(self, name: str) -> nn.Module:
        """The single-task model of head ``name`` (shares the descriptor)."""
        if name not in self.heads:
            raise unknown_head_error(name, self.names)
        return self.heads[name]

    # ------------------------------------------------------------------ state
    def packed_state(self) -> dict[str, Any]:
        """``{"shared": descriptor state, "heads": {task: the rest}}`` (CPU tensors)."""
        shared = {
            SHARED_PREFIX + k: v.detach().cpu() for k, v in self.descriptor.state_dict().items()
        }
        heads = {
            n: {
                k: v.detach().cpu()
                for k, v in h.state_dict().items()
                if not k.startswith(SHARED_PREFIX)
            }
            for n, h in self.heads.items()
        }
        return {"shared": shared, "heads": heads}

    def load_packed_state(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`packed_state` (every head of this model must be present)."""
        missing = [n for n in self.names if n not in state["heads"]]
        if missing:
            raise ConfigError(f"the checkpoint has no head(s) {missing}")
        for n, h in self.heads.items():
            h.load_state_dict({**state["shared"], **state["heads"][n]})


# --------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------
def is_multitask_checkpoint(ckpt: Mapping[str, Any]) -> bool:
    """Whether a loaded dpa3 checkpoint is a multi-task one."""
    return isinstance(ckpt.get("multitask"), dict)


def checkpoint_heads(ckpt: Mapping[str, Any]) -> list[str]:
    """Head names of a multi-task checkpoint (``[]`` for a single-task one)."""
    return list(ckpt["multitask"]["heads"]) if is_multitask_checkpoint(ckpt) else []


def head_checkpoint(ckpt: Mapping[str, Any], head: str) -> dict[str, Any]:
    """The single-task checkpoint of one head (model config, weights, input, step)."""
    heads = checkpoint_heads(ckpt)
    if head not in heads:
        raise unknown_head_error(head, heads)
    mt = ckpt["multitask"]
    out = {k: v for k, v in ckpt.items() if k not in ("multitask", "optimizer", "sampler")}
    out.update(
        model_config=mt["model_configs"][head],
        model={**ckpt["model"]["shared"], **ckpt["model"]["heads"][head]},
        input=mt["inputs"][head],
        optimizer=None,
        sampler=None,
        head=head,
    )
    return out


def head_model(ckpt: Mapping[str, Any], head: str) -> nn.Module:
    """An eval-mode :class:`dpa3.model.EnergyModel` of one head of a multi-task checkpoint."""
    from ..model import EnergyModel

    single = head_checkpoint(ckpt, head)
    model = EnergyModel(ModelConfig.from_typed_dict(single["model_config"]))
    model.load_state_dict(single["model"])
    return model.eval()


def checkpoint_model(
    ckpt: Mapping[str, Any], head: str | None = None, source: Any = "checkpoint"
) -> nn.Module:
    """The eval-mode :class:`dpa3.model.EnergyModel` (on the CPU) of a loaded dpa3 checkpoint.

    Parameters
    ----------
    ckpt
        A loaded dpa3 checkpoint, single- or multi-task.
    head
        The head of a multi-task checkpoint; must be ``None`` for a single-task one.
    source
        Where the checkpoint came from, for messages.

    Raises
    ------
    CheckpointError
        A multi-task checkpoint without ``head``, or a single-task one with a ``head``.
    ConfigError
        ``head`` is not one of the checkpoint's heads (the message lists them).
    """
    if is_multitask_checkpoint(ckpt):
        if head is None:
            heads = ", ".join(checkpoint_heads(ckpt))
            raise CheckpointError(
                f"'{source}' is a multi-task checkpoint (heads: {heads}): choose one "
                "(--head HEAD in dpa3 test and dpa3 freeze, head=HEAD in Python)"
            )
        return head_model(ckpt, head)
    if head is not None:
        raise CheckpointError(f"'{source}' is a single-task checkpoint: --head does not apply")
    from ..model import EnergyModel

    model = EnergyModel(ModelConfig.from_typed_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def branch_checkpoint(
    ckpt: dict[str, Any], branch: str | None, source: Any, finetune: bool = True
) -> dict[str, Any]:
    """The single-task checkpoint a single-task run starts from.

    Parameters
    ----------
    ckpt
        A loaded dpa3 checkpoint (single- or multi-task).
    branch
        ``--model-branch``: a head of a multi-task checkpoint, ``"RANDOM"`` (keep the
        descriptor only; the fitting net starts fresh) or ``None`` (single-task: the whole
        model; multi-task: as ``"RANDOM"``, as DeePMD-kit does, with a warning).
    source
        The checkpoint path, for messages.
    finetune
        ``False`` (``--restart``/``--init-model``): a multi-task checkpoint is an error.

    With ``"RANDOM"`` the result carries ``random_fitting = True`` and only the descriptor
    weights; its ``model_config`` (used by ``--use-pretrain-script``) is the first head's.
    """
    if not is_multitask_checkpoint(ckpt):
        if branch is None or not finetune:
            return ckpt
        if branch != RANDOM_BRANCH:
            raise ConfigError(
                f"'{source}' is a single-task checkpoint: --model-branch/finetune_head can only "
                f"be {RANDOM_BRANCH!r} (fresh fitting net), got {branch!r}"
            )
        shared = {k: v for k, v in ckpt["model"].items() if k.startswith(SHARED_PREFIX)}
        return {**ckpt, "model": shared, "random_fitting": True}
    heads = checkpoint_heads(ckpt)
    if not finetune:
        raise ConfigError(
            f"'{source}' is a multi-task checkpoint (heads: {', '.join(heads)}): --restart and "
            "--init-model need its multi-task input.json (model.model_dict); to start a "
            "single-task model from one head use --finetune with --model-branch HEAD"
        )
    if branch is None:
        log.warning(
            "'%s' is a multi-task checkpoint and no --model-branch was given: fine-tuning its "
            "descriptor with a fresh fitting net (%s); the heads are: %s",
            source,
            RANDOM_BRANCH,
            ", ".join(heads),
        )
        branch = RANDOM_BRANCH
    if branch == RANDOM_BRANCH:
        single = head_checkpoint(ckpt, heads[0])
        single["model"] = dict(ckpt["model"]["shared"])
        single["random_fitting"] = True
        single.pop("head")
        return single
    single = head_checkpoint(ckpt, branch)
    log.info("fine-tuning from head '%s' of the multi-task checkpoint %s", branch, source)
    return single


__all__ = [
    "SHARED_PREFIX",
    "MultiTaskModel",
    "branch_checkpoint",
    "checkpoint_heads",
    "checkpoint_model",
    "head_checkpoint",
    "head_model",
    "is_multitask_checkpoint",
]
