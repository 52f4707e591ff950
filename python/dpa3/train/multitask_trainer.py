"""Multi-task training (``dpa3 train`` with a DeePMD-kit multi-task ``input.json``).

One shared descriptor, one fitting net and energy bias per task (see
:mod:`dpa3.train.multitask` and :mod:`dpa3.config.multitask`).  Each step draws one task
with probability ``model_prob`` (normalised weights; default proportional to the task's
number of training systems), then a batch of that task's data, and takes one optimizer step
on that task's loss: the descriptor and the chosen head move, the other heads do not (their
gradients are ``None``, so Adam/AdamW skip them, weight decay included).  With several
ranks each rank draws its own task, as DeePMD-kit does; the averaged gradient then mixes the
tasks of that step and a head's gradient is divided by the world size like every other.

:class:`MultiTaskTrainer` is :class:`dpa3.train.trainer.Trainer` with one task per head: the
construction, statistics, loop, checkpoint writing, interrupts and data parallelism are the
parent's; this class says only how the input is parsed, the model built and stored, and a
task drawn.  ``lcurve.out`` has, per task, the columns ``<metric>_val_<task>
<metric>_trn_<task>`` (training metrics of the last step that trained that task; ``nan``
before the first one).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ..config.model import ModelConfig
from ..config.multitask import MultiTaskConfig, task_error
from ..config.train import InputConfig
from ..data.loader import DataSampler
from ..errors import ConfigError
from .multitask import MultiTaskModel, checkpoint_heads, is_multitask_checkpoint
from .task import Task, rank_state
from .trainer import Trainer

log = logging.getLogger(__name__)


def _task_seed(seed: int | None, index: int, stream: int) -> int | None:
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, index, stream]).generate_state(1)[0])


class MultiTaskTrainer(Trainer):
    """Train the heads of a multi-task input with one shared descriptor.

    Takes the arguments of :class:`dpa3.train.trainer.Trainer`; ``config`` is a multi-task
    ``input.json`` dict (or its :class:`dpa3.config.multitask.MultiTaskConfig`), ``restart``
    and ``init_model`` a multi-task checkpoint of the same tasks, and fine-tuning into a
    multi-task input is not supported.
    """

    mt: MultiTaskConfig

    def _check_options(
        self, finetune: str | None, use_pretrain_script: bool, model_branch: str | None
    ) -> None:
        if finetune is not None or use_pretrain_script or model_branch is not None:
            raise ConfigError(
                "fine-tuning into a multi-task input is not supported by dpa3: fine-tune a "
                "single-task input from one head (--finetune CKPT --model-branch HEAD), or "
                "continue the multi-task checkpoint with --init-model/--restart"
            )

    def _parse(
        self, config: dict[str, Any] | InputConfig | MultiTaskConfig
    ) -> dict[str, InputConfig]:
        if isinstance(config, InputConfig):
            raise ConfigError("a single-task input is trained by Trainer, not MultiTaskTrainer")
        self.mt = (
            config if isinstance(config, MultiTaskConfig) else MultiTaskConfig.from_dict(config)
        )
        return dict(self.mt.tasks)

    @property
    def names(self) -> list[str]:
        """Task (head) names in input order."""
        return self.mt.names

    def _open_checkpoint(
        self, ckpt: dict[str, Any], src: str, finetune: bool, model_branch: str | None
    ) -> dict[str, Any]:
        if not is_multitask_checkpoint(ckpt):
            raise ConfigError(
                f"'{src}' is a single-task checkpoint; a multi-task run starts only from a "
                "multi-task one (to add heads to a single-task model, fine-tune it per task)"
            )
        if checkpoint_heads(ckpt) != self.names:
            raise ConfigError(
                f"the checkpoint '{src}' has the heads {checkpoint_heads(ckpt)}, the input the "
                f"tasks {self.names}: they must be the same, in the same order"
            )
        if tuple(ckpt["multitask"]["type_map"]) != self.mt.type_map:
            raise ConfigError(
                f"the checkpoint '{src}' has the type map {ckpt['multitask']['type_map']}, "
                f"the input {list(self.mt.type_map)}"
            )
        return ckpt

    def _checkpoint_model_configs(self, ckpt: dict[str, Any]) -> dict[str, ModelConfig]:
        stored = ckpt["multitask"]["model_configs"]
        return {n: ModelConfig.from_typed_dict(stored[n]) for n in self.names}

    def _seeds(self, index: int) -> tuple[int | None, int | None, int | None]:
        seed = self.cfg.training.seed
        return (
            self.dist.rank_seed(_task_seed(seed, index, 0)),
            _task_seed(seed, index, 1),
            _task_seed(seed, index, 7),
        )

    def _make_tasks(self, task_cfgs: dict[str, InputConfig], type_map: list[str]) -> list[Task]:
        tasks = super()._make_tasks(task_cfgs, type_map)
        weights = self.mt.model_prob or {t.name: float(len(t.train_data.systems)) for t in tasks}
        total = sum(weights.values())
        self.model_prob = np.array([weights[t.name] / total for t in tasks])
        seed = self.cfg.training.seed
        self.task_rng = np.random.default_rng(self.dist.rank_seed(_task_seed(seed, len(tasks), 0)))
        return tasks

    def _config_error(self, err: ConfigError, task: str) -> ConfigError:
        return ConfigError(task_error(str(err), task, self.mt.descriptor_key))

    def _input_record(self) -> dict[str, Any]:
        self.head_inputs = {t.name: t.cfg.record(t.model_cfg) for t in self.tasks}
        return self.mt.record(self.model_cfg)

    def normalized_input(self) -> dict[str, Any] | None:
        return self.mt.normalized({t.name: t.model_cfg for t in self.tasks})

    def _build_model(self, cfgs: dict[str, ModelConfig]) -> torch.nn.Module:
        return MultiTaskModel(cfgs, self.factory)

    def _head(self, name: str) -> torch.nn.Module:
        return self.model.heads[name]

    def _load_weights(self, state: dict[str, Any]) -> None:
        self.model.load_packed_state(state)

    # ------------------------------------------------------------------ views
    @property
    def train_data(self) -> dict[str, DataSampler]:  # type: ignore[override]
        """Training sampler per task."""
        return {t.name: t.train_data for t in self.tasks}

    @property
    def valid_data(self) -> dict[str, DataSampler]:  # type: ignore[override]
        """Validation sampler per task that has validation data."""
        return {t.name: t.valid_data for t in self.tasks if t.valid_data is not None}

    @property
    def losses(self) -> dict[str, Any]:
        """Loss per task."""
        return {t.name: t.loss for t in self.tasks}

    # ------------------------------------------------------------------ checkpoints
    def _sampler_state(self) -> dict[str, Any]:
        tasks = {t.name: t.sampler_state(self.dist) for t in self.tasks}
        rng = self.task_rng.bit_generator.state
        sampler: dict[str, Any] = {"tasks": tasks, "task_rng": rng}
        if self.dist.enabled:
            sampler["task_rng_ranks"] = self.dist.all_gather_object(rng)
        return sampler

    def _load_sampler_state(self, smp: dict[str, Any]) -> None:
        for t in self.tasks:
            t.load_sampler_state((smp.get("tasks") or {}).get(t.name) or {}, self.dist)
        rng = rank_state(smp, "task_rng", self.dist)
        if rng is not None:
            self.task_rng.bit_generator.state = rng

    def checkpoint_dict(self, step: int) -> dict[str, Any]:
        """All heads, the optimizer and every task's sampler state (see :mod:`.multitask`)."""
        ckpt = super().checkpoint_dict(step)
        ckpt["multitask"] = {
            "heads": list(self.names),
            "type_map": list(self.mt.type_map),
            "model_configs": {t.name: t.model_cfg.to_dict() for t in self.tasks},
            "inputs": self.head_inputs,
        }
        return ckpt

    def _model_config_record(self) -> dict[str, Any] | None:
        return None

    def _model_state(self) -> dict[str, Any]:
        return self.model.packed_state()

    # ------------------------------------------------------------------ loop pieces
    def _describe_data(self) -> str:
        parts = [
            f"{t.name}: {len(t.train_data.systems)} systems, p={p:.3f}"
            for t, p in zip(self.tasks, self.model_prob, strict=True)
        ]
        return f"{len(self.tasks)} tasks ({'; '.join(parts)})"

    def _draw_task(self) -> Task:
        return self.tasks[int(self.task_rng.choice(len(self.tasks), p=self.model_prob))]


__all__ = ["MultiTaskTrainer"]
