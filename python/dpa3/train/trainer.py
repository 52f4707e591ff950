"""The training loop behind ``dpa3 train`` (plain PyTorch; one process or data-parallel ranks).

Order of work: parse ``input.json`` -> load the data into memory -> resolve ``e_sel``/``a_sel``
``"auto"`` from the neighbour statistics -> build the model -> energy bias (statistics, or
from the checkpoint) -> loop.  The step ``t`` is 0-based; ``lr(t)`` and the loss prefactors are
pure functions of ``t``; the data sampler's generator and pass positions, the torch RNG and the
optimizer state are checkpointed, so ``--restart`` continues bit-identically on CPU.

Under ``torchrun`` (see :mod:`dpa3.train.distributed`) every rank draws its own batches and
the gradients are averaged after the backward pass; rank 0 computes the statistics, writes
``lcurve.out`` and the checkpoints.

The trainer works on a list of :class:`dpa3.train.task.Task` (data, loss, statistics of one
head): a single-task run has one, named ``""``.  Multi-task training
(:mod:`dpa3.train.multitask_trainer`) is this class with one task per head; it overrides only
what differs (how the input is parsed, the model built and stored, a task drawn).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config.model import ModelConfig
from ..config.model_section import BiasAdjustMode
from ..config.multitask import RANDOM_BRANCH, MultiTaskConfig
from ..config.train import InputConfig
from ..data.loader import Batch, DataSampler
from ..data.neighbor_cache import NeighborCache
from ..errors import ConfigError
from .checkpoint import (
    POINTER,
    check_output_paths,
    frozen_checkpoint,
    load_checkpoint,
    make_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .distributed import DistContext
from .faults import ADVICE, check_parameters_finite, nonfinite_gradients, nonfinite_loss
from .finetune import transfer_state, type_dims
from .lcurve import Lcurve, Progress, TaskMetrics
from .loss import EnergyLoss
from .lr import make_lr
from .monitor import DeferredInterrupt, Monitor
from .multitask import branch_checkpoint
from .optim import build_optimizer
from .task import Task, model_forward, resolve_sel, validation_metrics

log = logging.getLogger(__name__)

ModelFactory = Callable[[ModelConfig], torch.nn.Module]


def default_model_factory(cfg: ModelConfig) -> torch.nn.Module:
    """Build :class:`dpa3.model.EnergyModel`."""
    from ..model import EnergyModel

    return EnergyModel(cfg)


# --------------------------------------------------------------------------------------
# trainer
# --------------------------------------------------------------------------------------
class Trainer:
    """Train a DPA3 model from a DeePMD-kit ``input.json``.

    Parameters
    ----------
    config
        The parsed JSON, or its :class:`dpa3.config.train.InputConfig` (the trainer reads
        only the typed config).  Relative paths (data, outputs) are relative to the working
        directory.
    restart
        Checkpoint to continue (model, optimizer, step, RNG and sampler states).
    init_model
        Checkpoint whose weights and statistics start a new run (step 0, fresh optimizer).
    init_frz_model
        As ``init_model``, from a frozen model (``dpa3 freeze``; its weights are recovered).
    finetune
        Checkpoint to fine-tune: shared elements keep their parameters, the energy bias is
        re-fitted on the new data (``model.bias_adjust_mode``, default change-by-statistic).
    use_pretrain_script
        With ``finetune``: take the descriptor/fitting sections of the pretrained model.
    model_branch
        With ``finetune``: the head of a multi-task checkpoint to start from (its descriptor
        and fitting net), or ``"RANDOM"`` for the descriptor with a fresh fitting net (also
        from a single-task checkpoint).  Default: ``model.finetune_head`` of the input.
    skip_neighbor_stat
        Do not scan the data for neighbour counts (then ``e_sel: "auto"`` is an error).
    model_factory
        Builds the model from its typed config (tests inject small models).
    device
        Torch device of the model and batches.
    """

    def __init__(
        self,
        config: dict[str, Any] | InputConfig | MultiTaskConfig,
        *,
        restart: str | None = None,
        init_model: str | None = None,
        init_frz_model: str | None = None,
        finetune: str | None = None,
        use_pretrain_script: bool = False,
        model_branch: str | None = None,
        skip_neighbor_stat: bool = False,
        model_factory: ModelFactory | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if sum(x is not None for x in (restart, init_model, init_frz_model, finetune)) > 1:
            raise ConfigError(
                "give only one of --restart, --init-model, --init-frz-model and --finetune"
            )
        self._check_options(finetune, use_pretrain_script, model_branch)
        task_cfgs = self._parse(config)
        self.cfg: InputConfig = next(iter(task_cfgs.values()))  # shared lr / optimizer / loop
        self.device = torch.device(device)
        self.factory = model_factory or default_model_factory
        self.dist = DistContext.current()
        tcfg = self.cfg.training
        # a bad output path fails now, on every rank, not at the first save
        self.dist.run_on_main(lambda: check_output_paths(tcfg))

        ckpt = None
        src = restart or init_model or init_frz_model or finetune
        if src is not None:
            ckpt = frozen_checkpoint(src) if init_frz_model else load_checkpoint(src)
            how = "restart" if restart else "init-model" if init_model else "finetune"
            log.info(
                "%s from %s (step %d)",
                "init-frz-model" if init_frz_model else how,
                src,
                ckpt["step"],
            )
            ckpt = self._open_checkpoint(ckpt, src, finetune is not None, model_branch)
        pre_cfgs = self._checkpoint_model_configs(ckpt) if ckpt else {}
        pre = next(iter(pre_cfgs.values()), None)  # the (first) pretrained head
        resume = restart is not None or init_model is not None or init_frz_model is not None

        # --- type map and data ------------------------------------------------------------
        type_map = self.cfg.model.type_map
        if resume:
            if pre.type_map != type_map:
                log.warning(
                    "model.type_map %s differs from the checkpoint's %s; using the checkpoint's",
                    list(type_map),
                    list(pre.type_map),
                )
            type_map = pre.type_map
        self.tasks = self._make_tasks(task_cfgs, list(type_map))

        # --- typed model configs ----------------------------------------------------------
        if resume:
            cfgs = pre_cfgs
            for task in (t for t in self.tasks if t.name in cfgs):
                for diff in task.cfg.model.differences(cfgs[task.name]):
                    msg = "%s is %r in the input but %r in the checkpoint: its model is used"
                    log.warning(msg, *diff)
        else:
            cfgs = self._resolve_model_configs(skip_neighbor_stat, pre, use_pretrain_script)
        for task in self.tasks:
            task.model_cfg = cfgs[task.name]
        self._check_descriptor_stat()
        self.input_record = self._input_record()

        # --- model, weights and statistics ------------------------------------------------
        if tcfg.seed is not None:
            torch.manual_seed(tcfg.seed)
        self.model = self._build_model(cfgs).to(self.device)
        self.start_step = 0
        if resume:
            self._load_weights(ckpt["model"])
            if restart:
                self.start_step = int(ckpt["step"])
        elif finetune:
            self._finetune_from(ckpt, pre)
        else:
            self.dist.run_on_main(self._compute_stat)
        self.dist.broadcast_module(self.model)  # statistics were computed on rank 0

        # --- schedule, losses, optimizer --------------------------------------------------
        if tcfg.numb_steps is not None:
            self.numb_steps = tcfg.numb_steps
        else:
            batches = sum(t.train_data.total_batches for t in self.tasks)
            self.numb_steps = math.ceil(tcfg.numb_epoch * batches)
        self.lr = make_lr(self.cfg.learning_rate, self.numb_steps)
        for task in self.tasks:
            task.loss = EnergyLoss(task.cfg.loss, self.cfg.learning_rate.start_lr)
        self.optimizer = build_optimizer(
            self.model.parameters(), self.cfg.optimizer, self.lr.value(self.start_step)
        )
        if restart:
            self._load_sampler_state(self._resume(ckpt))
        self.restarted = restart is not None
        self.monitor = Monitor(tcfg, main=False)  # run() opens the writer and profiler
        self.last_checkpoint: Path | None = None
        self._last_where = "no step trained yet"
        self.step_times: list[float] = []
        self.neighbors = NeighborCache()  # every pass revisits the frames: lists built once

    # ------------------------------------------------------------------ building blocks
    # (multi-task training overrides the hooks marked "hook")
    def _check_options(
        self, finetune: str | None, use_pretrain_script: bool, model_branch: str | None
    ) -> None:
        """Hook: reject option combinations this trainer does not support."""
        if model_branch is not None and finetune is None:
            raise ConfigError("--model-branch needs --finetune")

    def _parse(
        self, config: dict[str, Any] | InputConfig | MultiTaskConfig
    ) -> dict[str, InputConfig]:
        """Hook: the parsed input of every task, by name (single-task: one, named ``""``)."""
        if isinstance(config, MultiTaskConfig):
            raise ConfigError("a multi-task input is trained by MultiTaskTrainer, not Trainer")
        cfg = config if isinstance(config, InputConfig) else InputConfig.from_dict(config)
        return {"": cfg}

    def _open_checkpoint(
        self, ckpt: dict[str, Any], src: str, finetune: bool, model_branch: str | None
    ) -> dict[str, Any]:
        """Hook: check a loaded checkpoint; returns the one to start from."""
        if finetune:
            return branch_checkpoint(ckpt, model_branch or self.cfg.model.finetune_head, src)
        return branch_checkpoint(ckpt, None, src, finetune=False)  # rejects multi-task ones

    def _checkpoint_model_configs(self, ckpt: dict[str, Any]) -> dict[str, ModelConfig]:
        """Hook: the typed model config of every head stored in ``ckpt``."""
        return {"": ModelConfig.from_typed_dict(ckpt["model_config"])}

    def _seeds(self, index: int) -> tuple[int | None, int | None, int | None]:
        """Hook: seeds of task ``index``: training sampler (this rank's), validation sampler,
        statistics frames."""
        seed = self.cfg.training.seed
        if seed is None:
            return None, None, None
        return self.dist.rank_seed(seed), seed + 1, seed + 7

    def _make_tasks(self, task_cfgs: dict[str, InputConfig], type_map: list[str]) -> list[Task]:
        """Load every task's data (hook: multi-task training also sets up the task draw)."""
        tasks = []
        for i, (name, cfg) in enumerate(task_cfgs.items()):
            train_seed, valid_seed, stat_seed = self._seeds(i)
            prefix = f"training.data_dict.{name}." if name else ""
            train = DataSampler.from_config(
                cfg.training.training_data, type_map, train_seed, where=prefix + "training_data"
            )
            valid = None
            if cfg.training.validation_data is not None:
                valid = DataSampler.from_config(
                    cfg.training.validation_data,
                    type_map,
                    valid_seed,
                    where=prefix + "validation_data",
                )
            if self.dist.is_main:  # DeePMD-kit's data summary, to check per-system lists by eye
                for kind, data in (("training", train), ("validation", valid)):
                    if data is not None:
                        for line in data.summary(f"{kind} in {name}" if name else kind):
                            log.info("%s", line)
            tasks.append(Task(name, cfg, train, valid, stat_seed))
        return tasks

    def _config_error(self, err: ConfigError, task: str) -> ConfigError:
        """Hook: ``err`` about the expanded input of ``task``, as the user's input names it."""
        return err

    def _resolve_model_configs(
        self, skip_neighbor_stat: bool, pretrained: ModelConfig | None, use_pretrain_script: bool
    ) -> dict[str, ModelConfig]:
        """Every head's model config: ``"auto"`` selections resolved once, on the training
        systems of all tasks (the heads share one descriptor)."""
        first = self.tasks[0]
        systems = [s for t in self.tasks for s in t.train_data.systems]
        try:
            resolved = self.dist.run_on_main(
                lambda: resolve_sel(first.cfg.model, systems, skip_neighbor_stat, pretrained)
            )
            rf = resolved.descriptor.repflow
            cfgs = {t.name: t.cfg.model.resolve(rf.e_sel, rf.a_sel) for t in self.tasks}
        except ConfigError as err:
            raise self._config_error(err, first.name) from None
        if use_pretrain_script:
            cfgs = {
                n: replace(
                    pretrained,
                    type_map=c.type_map,
                    preset_out_bias=c.preset_out_bias,
                    data_stat_nbatch=c.data_stat_nbatch,
                )
                for n, c in cfgs.items()
            }
        return cfgs

    def _check_descriptor_stat(self) -> None:
        """dpa3 fixes the descriptor statistics: ``fix_stat_std`` must be a constant."""
        first = self.tasks[0]
        rf = first.model_cfg.descriptor.repflow
        if rf.fix_stat_std == 0 and not rf.skip_stat:
            err = ConfigError(
                f"'{first.cfg.model.key('fix_stat_std')}' = 0 (descriptor statistics computed "
                "from data) is not implemented by dpa3; use a non-zero constant such as 0.3"
            )
            raise self._config_error(err, first.name)

    def _input_record(self) -> dict[str, Any]:
        """Hook: the input as checkpoints store it (``"auto"`` selections resolved)."""
        return self.cfg.record(self.tasks[0].model_cfg)

    def normalized_input(self) -> dict[str, Any] | None:
        """Hook: the input with every default filled in, as ``out.json`` records it."""
        return self.cfg.normalized(self.tasks[0].model_cfg)

    def _build_model(self, cfgs: dict[str, ModelConfig]) -> torch.nn.Module:
        """Hook: the model of the heads ``cfgs``."""
        return self.factory(cfgs[""])

    def _head(self, name: str) -> torch.nn.Module:
        """Hook: the single-task model of head ``name``."""
        return self.model

    def _load_weights(self, state: dict[str, Any]) -> None:
        """Hook: load a checkpoint's ``model`` entry."""
        self.model.load_state_dict(state)

    def _finetune_from(self, ckpt: dict[str, Any], pretrained: ModelConfig) -> None:
        """Copy the pretrained weights (type maps remapped) and re-fit the energy bias."""
        mcfg = self.model_cfg
        dims = type_dims(self.factory, mcfg)
        fresh = transfer_state(ckpt["model"], pretrained.type_map, self.model, mcfg.type_map, dims)
        if ckpt.get("random_fitting"):
            log.info("fine-tuning with a freshly initialised fitting net (%s)", RANDOM_BRANCH)
        elif fresh:
            log.warning("not in the pretrained model, left at initial values: %s", fresh)
        new = [t for t in mcfg.type_map if t not in pretrained.type_map]
        if new:
            log.info("fine-tuning adds new element(s) %s", new)
        mode = self.cfg.model.bias_adjust_mode
        self.dist.run_on_main(lambda: self._refit_bias(mode))

    # ------------------------------------------------------------------ views
    @property
    def model_cfg(self) -> ModelConfig:
        """The (first) head's model config."""
        return self.tasks[0].model_cfg

    @property
    def model_cfgs(self) -> dict[str, ModelConfig]:
        """Every head's model config, by task name."""
        return {t.name: t.model_cfg for t in self.tasks}

    @property
    def train_data(self) -> DataSampler:
        """The training sampler (of the first task)."""
        return self.tasks[0].train_data

    @property
    def valid_data(self) -> DataSampler | None:
        """The validation sampler (of the first task)."""
        return self.tasks[0].valid_data

    @property
    def loss(self) -> EnergyLoss:
        """The loss (of the first task)."""
        return self.tasks[0].loss

    # ------------------------------------------------------------------ statistics
    def _stat_batches(self, task: Task | None = None) -> list[list[Batch]]:
        return (task or self.tasks[0]).stat_batches()

    def _compute_stat(self) -> None:
        for task in self.tasks:
            task.compute_stat(self._head(task.name))

    def _refit_bias(self, mode: BiasAdjustMode) -> None:
        for task in self.tasks:
            task.refit_bias(self._head(task.name), mode, self.device)

    # ------------------------------------------------------------------ checkpoints
    def _sampler_state(self) -> dict[str, Any]:
        """Hook: the ``sampler`` entry of a checkpoint (a collective when distributed)."""
        return self.tasks[0].sampler_state(self.dist)

    def _load_sampler_state(self, smp: dict[str, Any]) -> None:
        """Hook: inverse of :meth:`_sampler_state`."""
        self.tasks[0].load_sampler_state(smp, self.dist)

    def _resume(self, ckpt: dict[str, Any]) -> dict[str, Any]:
        """Load a restart's optimizer and torch RNG states; returns its sampler part."""
        if ckpt.get("optimizer") is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt.get("rng"))
        return ckpt.get("sampler") or {}

    def _model_config_record(self) -> dict[str, Any] | None:
        """Hook: the ``model_config`` entry of a checkpoint (the typed model config)."""
        return self.model_cfg.to_dict()

    def _model_state(self) -> dict[str, Any]:
        """Hook: the ``model`` entry of a checkpoint (CPU tensors)."""
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def checkpoint_dict(self, step: int) -> dict[str, Any]:
        """Everything needed to restart at ``step`` (completed steps)."""
        return make_checkpoint(
            step=step,
            model_config=self._model_config_record(),
            input_config=self.input_record,
            model_state=self._model_state(),
            optimizer_state=self.optimizer.state_dict(),
            rng_state=rng_state(),
            sampler_state=self._sampler_state(),
        )

    def save(self, step: int) -> Path:
        """Write the checkpoint of ``step`` completed steps (rank 0 writes; all ranks call)."""
        t = self.cfg.training
        check_parameters_finite(self.model, step, self._last_where)
        ckpt = self.checkpoint_dict(step)
        if self.dist.is_main:
            self.last_checkpoint = save_checkpoint(ckpt, t.save_ckpt, t.max_ckpt_keep, POINTER)
        else:
            pre = Path(t.save_ckpt)
            self.last_checkpoint = pre.with_name(f"{pre.name}-{step}.pt")
        return self.last_checkpoint

    # ------------------------------------------------------------------ evaluation
    def _validate(self, lr: float) -> dict[str, dict[str, float]] | None:
        """Validation metrics per task with validation data (``None``: no task has any)."""
        tasks = [t for t in self.tasks if t.valid_data is not None]
        if not tasks:
            return None
        return {
            t.name: validation_metrics(
                self._head(t.name),
                t.loss,
                t.valid_data,
                t.cfg.training.validation_data.numb_btch,
                lr,
                self.device,
                self.neighbors,
            )
            for t in tasks
        }

    def _describe_data(self) -> str:
        """Hook: the data summary of the start-of-training log line."""
        return (
            f"{len(self.train_data.systems)} systems, "
            f"{self.train_data.total_batches} batches per pass"
        )

    def _lcurve(self) -> Lcurve:
        """The ``lcurve.out`` columns (see :mod:`dpa3.train.lcurve`)."""
        validation = any(t.valid_data is not None for t in self.tasks)
        return Lcurve({t.name: t.loss.metric_names() for t in self.tasks}, validation)

    def _task_metrics(self, val: dict[str, dict[str, float]] | None) -> TaskMetrics:
        """Per task: the metrics of its last training step (``disp_avg``: the means since the
        last display step) and ``_validate``'s."""
        trn = self.monitor.display_metrics({t.name: t.last_trn for t in self.tasks})
        return {t.name: (trn[t.name], (val or {}).get(t.name)) for t in self.tasks}

    # ------------------------------------------------------------------ loop
    def _draw_task(self) -> Task:
        """Hook: the task the next step trains."""
        return self.tasks[0]

    def train_step(self, step: int) -> tuple[float, dict[str, float], float]:
        """One optimizer step at 0-based ``step``; returns (loss, metrics of the task trained,
        lr)."""
        lr = self._set_lr(step)
        task = self._draw_task()
        batch = task.train_data.next().to(self.device)
        pred = model_forward(self._head(task.name), batch, self.neighbors)
        loss, metrics = task.loss(pred, batch, lr)
        where = f"system {task.train_data.systems[batch.system].path}"
        self._optimize(loss, step, f"task {task.name}, {where}" if task.name else where)
        task.last_trn = metrics
        self.monitor.step(step + 1, task.name, float(loss.detach()), metrics, lr, task.loss.l2)
        return float(loss.detach()), metrics, lr

    def _set_lr(self, step: int) -> float:
        """Set and return the learning rate of 0-based ``step``."""
        lr = self.lr.value(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def _optimize(self, loss: torch.Tensor, step: int, where: str) -> None:
        """Backward, average the gradients over the ranks, clip, optimizer step (stops with a
        message naming ``step`` and ``where`` on a non-finite loss or gradient)."""
        self._last_where = where
        finite = bool(torch.isfinite(loss))
        if not finite and not self.dist.enabled:
            raise nonfinite_loss(float(loss.detach()), step, where)
        self.optimizer.zero_grad(set_to_none=True)
        if finite:
            loss.backward()
        if self.dist.enabled:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            if not self.dist.average_gradients(params, finite):
                here = "this rank (" + where + ")" if not finite else "another rank"
                raise FloatingPointError(
                    f"the loss is not finite at step {step} on {here}; {ADVICE}"
                )
        clip = self.cfg.training.gradient_max_norm
        if clip > 0:
            self.monitor.before_clip(step + 1, self.model)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.monitor.after_clip(step + 1, norm)
            if not bool(torch.isfinite(norm)):
                raise nonfinite_gradients(step, where)
        self.optimizer.step()

    def run(self) -> Path:
        """Train to ``numb_steps``; returns the last checkpoint written.

        With several ranks every rank runs this loop; rank 0 alone validates and writes
        ``lcurve.out`` and the log, and an interrupt on any rank stops all after the step.
        """
        t = self.cfg.training
        main = self.dist.is_main
        disp = Path(t.disp_file)
        mode = "a" if self.restarted and disp.exists() else "w"
        self.model.train()
        n_total = self.numb_steps
        step = self.start_step
        log.info(
            "training %d steps (from %d), %s%s",
            n_total,
            step,
            self._describe_data(),
            f", {self.dist.world_size} ranks" if self.dist.enabled else "",
        )
        with ExitStack() as stack:
            self.monitor = Monitor(t, main)
            stack.callback(self.monitor.close)
            fout = stack.enter_context(open(disp, mode, buffering=1)) if main else None
            intr = stack.enter_context(DeferredInterrupt())
            lcurve = self._lcurve()
            if fout is not None and mode == "w":
                fout.write(lcurve.header())
            progress = Progress(n_total, step)
            try:
                while step < n_total:
                    ts = time.perf_counter()
                    loss, _, lr = self.train_step(step)
                    self.step_times.append(time.perf_counter() - ts)
                    done = step + 1
                    if (
                        main
                        and t.disp_training
                        and (done % t.disp_freq == 0 or step == self.start_step)
                    ):
                        metrics = self._task_metrics(self._validate(lr))
                        fout.write(lcurve.line(done, metrics, lr))
                        log.info("%s", progress.line(done, loss, metrics, lr, t.time_training))
                    step = done
                    if step % t.save_freq == 0:
                        self.save(step)
                    if self.dist.any(intr.requested):
                        raise KeyboardInterrupt
            except KeyboardInterrupt:
                self.save(step)
                log.warning("interrupted at step %d; checkpoint %s", step, self.last_checkpoint)
                raise
        if t.change_bias_after_training:
            self.dist.run_on_main(lambda: self._refit_bias(BiasAdjustMode.CHANGE))
            self.dist.broadcast_module(self.model)
            self.save(step)
        elif self.last_checkpoint is None or not self.last_checkpoint.name.endswith(f"-{step}.pt"):
            self.save(step)
        if self.step_times and t.time_training:
            log.info(
                "finished %d steps in %.1f s (%.3f s/step)",
                len(self.step_times),
                sum(self.step_times),
                float(np.mean(self.step_times)),
            )
        return self.last_checkpoint


__all__ = ["Task", "Trainer", "default_model_factory", "model_forward", "resolve_sel"]
