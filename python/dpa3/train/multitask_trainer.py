"""Multi-task training (``dpa3 train`` with a DeePMD-kit multi-task ``input.json``).

One shared descriptor, one fitting net and energy bias per task (see
:mod:`dpa3.train.multitask` and :mod:`dpa3.config.multitask`).  Each step draws one task
with probability ``model_prob`` (normalised weights; default proportional to the task's
number of training systems), then a batch of that task's data, and takes one optimizer step
on that task's loss: the descriptor and the chosen head move, the other heads do not (their
gradients are ``None``, so Adam/AdamW skip them, weight decay included).  With several
ranks each rank draws its own task, as DeePMD-kit does; the averaged gradient then mixes the
tasks of that step and a head's gradient is divided by the world size like every other.

The loop, checkpoint writing, interrupts and data parallelism are those of
:class:`dpa3.train.trainer.Trainer`.  ``lcurve.out`` has, per task, the columns
``<metric>_val_<task> <metric>_trn_<task>`` (training metrics of the last step that trained
that task; ``nan`` before the first one).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config._base import ConfigError
from ..config.model import ModelConfig
from ..config.multitask import MultiTaskConfig, task_error
from ..data.loader import Batch, DataSampler
from ..data.stats import compute_or_load_energy_stat
from .checkpoint import load_checkpoint, make_checkpoint
from .distributed import DistContext
from .finetune import refit_bias_delta
from .lcurve import Lcurve, TaskMetrics
from .loss import EnergyLoss
from .lr import ExpLR
from .multitask import MultiTaskModel, checkpoint_heads, is_multitask_checkpoint
from .optim import build_optimizer
from .trainer import (
    Trainer,
    _rng_state,
    default_model_factory,
    model_forward,
    resolve_sel,
)

log = logging.getLogger(__name__)


class _AllSystems:
    """The training systems of every task (what ``resolve_sel`` scans for ``"auto"``)."""

    def __init__(self, samplers: list[DataSampler]) -> None:
        self.systems = [s for smp in samplers for s in smp.systems]


def _task_seed(seed: int | None, index: int, stream: int) -> int | None:
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, index, stream]).generate_state(1)[0])


class MultiTaskTrainer(Trainer):
    """Train the heads of a multi-task input with one shared descriptor.

    Parameters
    ----------
    input_dict
        The parsed multi-task ``input.json``.
    restart
        A multi-task checkpoint of the same tasks to continue.
    init_model
        A multi-task checkpoint of the same tasks whose weights start a new run.
    skip_neighbor_stat, model_factory, device
        As for :class:`dpa3.train.trainer.Trainer`.
    """

    def __init__(
        self,
        input_dict: dict[str, Any],
        *,
        restart: str | None = None,
        init_model: str | None = None,
        finetune: str | None = None,
        use_pretrain_script: bool = False,
        model_branch: str | None = None,
        skip_neighbor_stat: bool = False,
        model_factory: Any = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if finetune is not None or use_pretrain_script or model_branch is not None:
            raise ConfigError(
                "fine-tuning into a multi-task input is not supported by dpa3: fine-tune a "
                "single-task input from one head (--finetune CKPT --model-branch HEAD), or "
                "continue the multi-task checkpoint with --init-model/--restart"
            )
        if restart is not None and init_model is not None:
            raise ConfigError("give only one of --restart and --init-model")
        self.input_dict = copy.deepcopy(input_dict)
        self.mt = MultiTaskConfig.from_dict(self.input_dict)
        self.names = self.mt.names
        self.cfg = self.mt.tasks[self.names[0]]  # shared lr / optimizer / loop options
        self.device = torch.device(device)
        self.factory = model_factory or default_model_factory
        self.dist = DistContext.current()
        tcfg = self.cfg.training
        seed = tcfg.seed
        type_map = self.mt.type_map

        ckpt = None
        src = restart or init_model
        if src is not None:
            ckpt = load_checkpoint(src)
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
            if tuple(ckpt["multitask"]["type_map"]) != type_map:
                raise ConfigError(
                    f"the checkpoint '{src}' has the type map {ckpt['multitask']['type_map']}, "
                    f"the input {list(type_map)}"
                )
            log.info(
                "%s from %s (step %d)", "restart" if restart else "init-model", src, ckpt["step"]
            )

        # --- data ---------------------------------------------------------------------------
        self.train_data: dict[str, DataSampler] = {}
        self.valid_data: dict[str, DataSampler] = {}
        for i, n in enumerate(self.names):
            tc = self.mt.tasks[n].training
            self.train_data[n] = DataSampler.from_config(
                tc.training_data,
                type_map,
                self.dist.rank_seed(_task_seed(seed, i, 0)),
                where=f"training.data_dict.{n}.training_data",
            )
            if tc.validation_data is not None:
                self.valid_data[n] = DataSampler.from_config(
                    tc.validation_data,
                    type_map,
                    _task_seed(seed, i, 1),
                    where=f"training.data_dict.{n}.validation_data",
                )
        weights = self.mt.model_prob or {
            n: float(len(self.train_data[n].systems)) for n in self.names
        }
        total = sum(weights.values())
        self.model_prob = np.array([weights[n] / total for n in self.names])
        self.task_rng = np.random.default_rng(
            self.dist.rank_seed(_task_seed(seed, len(self.names), 0))
        )

        # --- typed model configs (one shared descriptor) -----------------------------------
        self.head_inputs = copy.deepcopy(self.mt.inputs)
        if ckpt is not None:
            self.model_cfgs = {
                n: ModelConfig.from_typed_dict(ckpt["multitask"]["model_configs"][n])
                for n in self.names
            }
            desc = ckpt["multitask"]["inputs"][self.names[0]]["model"]["descriptor"]
        else:
            first_model = self.head_inputs[self.names[0]]["model"]
            samplers = _AllSystems(list(self.train_data.values()))
            desc = self.dist.run_on_main(
                lambda: resolve_sel(first_model, samplers, skip_neighbor_stat)["descriptor"]  # type: ignore[arg-type]
            )
            self.model_cfgs = {}
            for n in self.names:
                self.head_inputs[n]["model"]["descriptor"] = copy.deepcopy(desc)
                try:
                    self.model_cfgs[n] = ModelConfig.from_dict(self.head_inputs[n]["model"])
                except ConfigError as err:
                    raise ConfigError(task_error(str(err), n, self.mt.descriptor_key)) from None
        for n in self.names:
            self.head_inputs[n]["model"]["descriptor"] = copy.deepcopy(desc)
        self.input_dict["model"]["shared_dict"][self.mt.descriptor_key] = copy.deepcopy(desc)
        rf = self.model_cfgs[self.names[0]].descriptor.repflow
        if rf.fix_stat_std == 0 and not rf.skip_stat:
            raise ConfigError(
                f"'model.shared_dict.{self.mt.descriptor_key}.repflow.fix_stat_std' = 0 is not "
                "implemented by dpa3; use a non-zero constant such as 0.3"
            )

        # --- model, weights and statistics ------------------------------------------------
        if seed is not None:
            torch.manual_seed(seed)
        self.model = MultiTaskModel(self.model_cfgs, self.factory).to(self.device)
        self.start_step = 0
        if ckpt is not None:
            self.model.load_packed_state(ckpt["model"])
            if restart:
                self.start_step = int(ckpt["step"])
        else:
            self.dist.run_on_main(self._compute_stat)
        self.dist.broadcast_module(self.model)

        # --- schedule, losses, optimizer --------------------------------------------------
        self.numb_steps = tcfg.numb_steps
        self.lr = ExpLR(self.cfg.learning_rate, self.numb_steps)
        self.losses = {
            n: EnergyLoss(self.mt.tasks[n].loss, self.cfg.learning_rate.start_lr)
            for n in self.names
        }
        self.optimizer = build_optimizer(
            self.model.parameters(), self.cfg.optimizer, self.lr.value(self.start_step)
        )
        self.last_trn: dict[str, dict[str, float] | None] = {n: None for n in self.names}
        if restart:
            smp = self._resume(ckpt)
            for n in self.names:
                per = (smp.get("tasks") or {}).get(n) or {}
                state = self._rank_sampler_state(per, "train")
                if state is not None:
                    self.train_data[n].load_state_dict(state)
                if n in self.valid_data and per.get("valid") is not None:
                    self.valid_data[n].load_state_dict(per["valid"])
            rng = self._rank_sampler_state(smp, "task_rng")
            if rng is not None:
                self.task_rng.bit_generator.state = rng
        self.restarted = restart is not None
        self.last_checkpoint: Path | None = None
        self.step_times: list[float] = []

    # ------------------------------------------------------------------ statistics
    def _task_stat_batches(self, i: int, n: str) -> list[list[Batch]]:
        seed = self.cfg.training.seed
        return self.train_data[n].sample_per_system(
            self.model_cfgs[n].data_stat_nbatch, _task_seed(seed, i, 7)
        )

    def _compute_stat(self) -> None:
        for i, n in enumerate(self.names):
            stat = compute_or_load_energy_stat(
                self._task_stat_batches(i, n),
                self.mt.type_map,
                self.model_cfgs[n].preset_out_bias,
                self.mt.tasks[n].training.stat_file,
            )
            self.model.heads[n].set_out_bias(stat.bias, stat.std)
            log.info(
                "[%s] energy bias per type %s: %s",
                n,
                list(self.mt.type_map),
                np.array2string(stat.bias, precision=6),
            )

    def _refit_bias(self, mode: str) -> None:
        if mode != "change-by-statistic":
            raise ConfigError(f"bias mode {mode!r} is not available in multi-task training")
        for i, n in enumerate(self.names):
            head = self.model.heads[n]
            delta = refit_bias_delta(
                head,
                self._task_stat_batches(i, n),
                len(self.mt.type_map),
                model_forward,
                self.device,
            )
            bias = head.out_bias.detach().cpu().numpy() + delta
            head.set_out_bias(bias)
            log.info("[%s] energy bias changed by %s", n, np.array2string(delta, precision=6))

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_dict(self, step: int) -> dict[str, Any]:
        """All heads, the optimizer and every task's sampler state (see :mod:`.multitask`)."""
        tasks = {
            n: self._sampler_states(
                self.train_data[n].state_dict(),
                self.valid_data[n].state_dict() if n in self.valid_data else None,
            )
            for n in self.names
        }
        rng = self.task_rng.bit_generator.state
        sampler: dict[str, Any] = {"tasks": tasks, "task_rng": rng}
        if self.dist.enabled:
            sampler["task_rng_ranks"] = self.dist.all_gather_object(rng)
        ckpt = make_checkpoint(
            step=step,
            model_config=None,
            input_config=self.input_dict,
            model_state=self.model.packed_state(),
            optimizer_state=self.optimizer.state_dict(),
            rng_state=_rng_state(),
            sampler_state=sampler,
        )
        ckpt["multitask"] = {
            "heads": list(self.names),
            "type_map": list(self.mt.type_map),
            "model_configs": {n: self.model_cfgs[n].to_dict() for n in self.names},
            "inputs": self.head_inputs,
        }
        return ckpt

    # ------------------------------------------------------------------ loop pieces
    def _describe_data(self) -> str:
        parts = [
            f"{n}: {len(self.train_data[n].systems)} systems, p={p:.3f}"
            for n, p in zip(self.names, self.model_prob, strict=True)
        ]
        return f"{len(self.names)} tasks ({'; '.join(parts)})"

    def train_step(self, step: int) -> tuple[float, dict[str, Any], float]:
        """One optimizer step on a task drawn with ``model_prob``; returns (loss, metrics, lr).

        ``metrics`` maps every task to the metrics of its last training step (or ``None``).
        """
        lr = self._set_lr(step)
        task = self.names[int(self.task_rng.choice(len(self.names), p=self.model_prob))]
        data = self.train_data[task]
        batch = data.next().to(self.device)
        pred = model_forward(self.model.heads[task], batch)
        loss, metrics = self.losses[task](pred, batch, lr)
        self._optimize(loss, step, f"task {task}, system {data.systems[batch.system].path}")
        self.last_trn[task] = metrics
        return float(loss.detach()), dict(self.last_trn), lr

    def _validate(self, lr: float) -> dict[str, Any] | None:
        if not self.valid_data:
            return None
        return {
            n: self._validate_with(
                self.model.heads[n],
                self.losses[n],
                self.valid_data[n],
                self.mt.tasks[n].training.validation_data.numb_btch,
                lr,
            )
            for n in self.valid_data
        }

    def _lcurve(self) -> Lcurve:
        return Lcurve({n: self.losses[n].metric_names() for n in self.names}, bool(self.valid_data))

    def _task_metrics(self, trn: dict[str, Any], val: dict[str, Any] | None) -> TaskMetrics:
        return {n: (trn.get(n), (val or {}).get(n)) for n in self.names}


__all__ = ["MultiTaskTrainer"]
