"""The training loop behind ``dpa3 train`` (plain PyTorch; one process or data-parallel ranks).

Order of work: parse ``input.json`` -> load the data into memory -> resolve ``e_sel``/``a_sel``
``"auto"`` from the neighbour statistics -> build the model -> energy bias (statistics, or
from the checkpoint) -> loop.  The step ``t`` is 0-based; ``lr(t)`` and the loss prefactors are
pure functions of ``t``; the data sampler's generator and pass positions, the torch RNG and the
optimizer state are checkpointed, so ``--restart`` continues bit-identically on CPU.

Under ``torchrun`` (see :mod:`dpa3.train.distributed`) every rank draws its own batches and
the gradients are averaged after the backward pass; rank 0 computes the statistics, writes
``lcurve.out`` and the checkpoints.  Multi-task training lives in
:mod:`dpa3.train.multitask_trainer` and reuses this loop.
"""

from __future__ import annotations

import copy
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config._base import ConfigError
from ..config.model import ModelConfig
from ..config.multitask import RANDOM_BRANCH
from ..config.train import InputConfig
from ..data.loader import Batch, DataSampler
from ..data.stats import (
    auto_sel,
    compute_or_load_energy_stat,
    neighbor_stat,
    parse_auto_sel,
)
from .checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from .distributed import DistContext
from .finetune import refit_bias_delta, transfer_state, type_dims
from .lcurve import Lcurve, Progress, TaskMetrics
from .loss import EnergyLoss
from .lr import ExpLR
from .multitask import branch_checkpoint
from .optim import build_optimizer

log = logging.getLogger(__name__)

ModelFactory = Callable[[ModelConfig], torch.nn.Module]


def default_model_factory(cfg: ModelConfig) -> torch.nn.Module:
    """Build :class:`dpa3.model.EnergyModel`."""
    from ..model import EnergyModel

    return EnergyModel(cfg)


def model_forward(model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    """Evaluate ``model`` on ``batch``: energy (nf,1), force (nf,N,3), virial (nf,9)."""
    return model(batch.coord, batch.atype, batch.box)


# --------------------------------------------------------------------------------------
# e_sel / a_sel "auto"
# --------------------------------------------------------------------------------------
def resolve_sel(
    model: dict[str, Any],
    sampler: DataSampler | None,
    skip_neighbor_stat: bool,
    fallback: ModelConfig | None = None,
) -> dict[str, Any]:
    """A copy of the raw ``model`` section with integer ``e_sel``/``a_sel``.

    ``"auto"``/``"auto:f"`` become the largest neighbour count within ``e_rcut``/``a_rcut``
    in the training data times ``f`` (default 1.1), rounded up to a multiple of 4.  With
    ``fallback`` (fine-tuning) the pretrained model's values are used instead.  Integer
    values are checked against the data unless ``skip_neighbor_stat``.
    """
    model = copy.deepcopy(model)
    try:
        rf = model["descriptor"]["repflow"]
    except (KeyError, TypeError):
        return model  # ModelConfig.from_dict reports the missing section by name
    if not isinstance(rf, dict):
        return model
    for sel_key, rc_key in (("e_sel", "e_rcut"), ("a_sel", "a_rcut")):
        where = f"model.descriptor.repflow.{sel_key}"
        value = rf.get(sel_key)
        if isinstance(value, str):
            try:
                factor = parse_auto_sel(value, where)
            except ValueError as err:
                raise ConfigError(str(err)) from None
            if fallback is not None:
                rf[sel_key] = getattr(fallback.descriptor.repflow, sel_key)
                log.info("%s = %s taken from the pretrained model", where, rf[sel_key])
                continue
            if skip_neighbor_stat or sampler is None:
                raise ConfigError(
                    f"'{where}' = {value!r} needs the neighbour statistics: drop "
                    "--skip-neighbor-stat or give an integer"
                )
            rc = rf.get(rc_key)
            if not isinstance(rc, (int, float)) or isinstance(rc, bool):
                raise ConfigError(f"missing or invalid 'model.descriptor.repflow.{rc_key}'")
            st = neighbor_stat(sampler.systems, float(rc))
            rf[sel_key] = auto_sel(st.max_nbor_size, factor)
            log.info(
                "%s: max %d neighbours within %g A -> %d", where, st.max_nbor_size, rc, rf[sel_key]
            )
        elif (
            isinstance(value, int)
            and not skip_neighbor_stat
            and sampler is not None
            and isinstance(rf.get(rc_key), (int, float))
        ):
            st = neighbor_stat(sampler.systems, float(rf[rc_key]))
            if st.max_nbor_size > value:
                log.warning(
                    "%s = %d is smaller than the largest neighbour count %d within %g A in "
                    "the training data: the farthest neighbours are dropped",
                    where,
                    value,
                    st.max_nbor_size,
                    rf[rc_key],
                )
    return model


# --------------------------------------------------------------------------------------
# RNG state
# --------------------------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any] | None) -> None:
    if state and "torch" in state:
        torch.set_rng_state(state["torch"])


class _DeferredInterrupt:
    """Turns the first Ctrl-C into a flag checked between steps (a second one aborts)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> _DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("interrupt: stopping after this step (Ctrl-C again to abort at once)")

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


# --------------------------------------------------------------------------------------
# trainer
# --------------------------------------------------------------------------------------
class Trainer:
    """Train a DPA3 model from a DeePMD-kit ``input.json`` dict.

    Parameters
    ----------
    input_dict
        The parsed JSON.  Relative paths (data, outputs) are relative to the working directory.
    restart
        Checkpoint to continue (model, optimizer, step, RNG and sampler states).
    init_model
        Checkpoint whose weights and statistics start a new run (step 0, fresh optimizer).
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
        input_dict: dict[str, Any],
        *,
        restart: str | None = None,
        init_model: str | None = None,
        finetune: str | None = None,
        use_pretrain_script: bool = False,
        model_branch: str | None = None,
        skip_neighbor_stat: bool = False,
        model_factory: ModelFactory | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if sum(x is not None for x in (restart, init_model, finetune)) > 1:
            raise ConfigError("give only one of --restart, --init-model and --finetune")
        if model_branch is not None and finetune is None:
            raise ConfigError("--model-branch needs --finetune")
        self.input_dict = copy.deepcopy(input_dict)
        self.cfg = InputConfig.from_dict(self.input_dict)
        self.device = torch.device(device)
        self.factory = model_factory or default_model_factory
        self.dist = DistContext.current()
        tcfg = self.cfg.training
        seed = tcfg.seed

        ckpt = None
        src = restart or init_model or finetune
        if src is not None:
            ckpt = load_checkpoint(src)
            log.info(
                "%s from %s (step %d)",
                "restart" if restart else "init-model" if init_model else "finetune",
                src,
                ckpt["step"],
            )
            if finetune:
                branch = model_branch or self.cfg.model.get("finetune_head")
                ckpt = branch_checkpoint(ckpt, branch, src)
            else:
                branch_checkpoint(ckpt, None, src, finetune=False)  # rejects multi-task ones
        pre_cfg = ModelConfig.from_typed_dict(ckpt["model_config"]) if ckpt else None

        # --- type map and data ------------------------------------------------------------
        raw_model = self.cfg.model
        if restart or init_model:
            type_map = list(pre_cfg.type_map)
            raw_tm = raw_model.get("type_map")
            if raw_tm is not None and list(raw_tm) != type_map:
                log.warning(
                    "model.type_map %s differs from the checkpoint's %s; using the checkpoint's",
                    raw_tm,
                    type_map,
                )
        else:
            type_map = raw_model.get("type_map")
            if not isinstance(type_map, list) or not type_map:
                raise ConfigError("'model.type_map' must be a non-empty list of element names")
        self.train_data = DataSampler.from_config(
            tcfg.training_data, type_map, self.dist.rank_seed(seed)
        )
        self.valid_data = None
        if tcfg.validation_data is not None:
            vseed = None if seed is None else seed + 1
            self.valid_data = DataSampler.from_config(
                tcfg.validation_data, type_map, vseed, where="validation_data"
            )

        # --- typed model config -----------------------------------------------------------
        if restart or init_model:
            mcfg = pre_cfg
            resolved = copy.deepcopy(ckpt["input"].get("model", raw_model))
        else:
            resolved = self.dist.run_on_main(
                lambda: resolve_sel(raw_model, self.train_data, skip_neighbor_stat, pre_cfg)
            )
            mcfg = ModelConfig.from_dict(resolved)
            if finetune and use_pretrain_script:
                mcfg = replace(
                    pre_cfg,
                    type_map=mcfg.type_map,
                    preset_out_bias=mcfg.preset_out_bias,
                    data_stat_nbatch=mcfg.data_stat_nbatch,
                )
        rf = mcfg.descriptor.repflow
        if rf.fix_stat_std == 0 and not rf.skip_stat:
            raise ConfigError(
                "'model.descriptor.repflow.fix_stat_std' = 0 (descriptor statistics computed "
                "from data) is not implemented by dpa3; use a non-zero constant such as 0.3"
            )
        self.model_cfg = mcfg
        self.input_dict["model"] = resolved

        # --- model, weights and statistics ------------------------------------------------
        if seed is not None:
            torch.manual_seed(seed)
        self.model = self.factory(mcfg).to(self.device)
        self.start_step = 0
        if restart or init_model:
            self.model.load_state_dict(ckpt["model"])
            if restart:
                self.start_step = int(ckpt["step"])
        elif finetune:
            dims = type_dims(self.factory, mcfg)
            fresh = transfer_state(ckpt["model"], pre_cfg.type_map, self.model, mcfg.type_map, dims)
            if ckpt.get("random_fitting"):
                log.info("fine-tuning with a freshly initialised fitting net (%s)", RANDOM_BRANCH)
            elif fresh:
                log.warning("not in the pretrained model, left at initial values: %s", fresh)
            new = [t for t in mcfg.type_map if t not in pre_cfg.type_map]
            if new:
                log.info("fine-tuning adds new element(s) %s", new)
            mode = raw_model.get("bias_adjust_mode", "change-by-statistic")
            self.dist.run_on_main(lambda: self._refit_bias(mode))
        else:
            self.dist.run_on_main(self._compute_stat)
        self.dist.broadcast_module(self.model)  # statistics were computed on rank 0

        # --- schedule, loss, optimizer ----------------------------------------------------
        if tcfg.numb_steps is not None:
            self.numb_steps = tcfg.numb_steps
        else:
            self.numb_steps = math.ceil(tcfg.numb_epoch * self.train_data.total_batches)
        self.lr = ExpLR(self.cfg.learning_rate, self.numb_steps)
        self.loss = EnergyLoss(self.cfg.loss, self.cfg.learning_rate.start_lr)
        self.optimizer = build_optimizer(
            self.model.parameters(), self.cfg.optimizer, self.lr.value(self.start_step)
        )
        if restart:
            smp = self._resume(ckpt)
            train_state = self._rank_sampler_state(smp, "train")
            if train_state is not None:
                self.train_data.load_state_dict(train_state)
            if self.valid_data is not None and smp.get("valid") is not None:
                self.valid_data.load_state_dict(smp["valid"])
        self.restarted = restart is not None
        self.last_checkpoint: Path | None = None
        self.step_times: list[float] = []

    # ------------------------------------------------------------------ statistics
    def _stat_batches(self) -> list[list[Batch]]:
        seed = self.cfg.training.seed
        return self.train_data.sample_per_system(
            self.model_cfg.data_stat_nbatch, None if seed is None else seed + 7
        )

    def _compute_stat(self) -> None:
        stat = compute_or_load_energy_stat(
            self._stat_batches(),
            self.model_cfg.type_map,
            self.model_cfg.preset_out_bias,
            self.cfg.training.stat_file,
        )
        self.model.set_out_bias(stat.bias, stat.std)
        log.info(
            "energy bias per type %s: %s",
            list(self.model_cfg.type_map),
            np.array2string(stat.bias, precision=6),
        )

    def _refit_bias(self, mode: str) -> None:
        if mode == "set-by-statistic":
            self._compute_stat()
            return
        if mode != "change-by-statistic":
            raise ConfigError(
                f"'model.bias_adjust_mode' = {mode!r}: expected "
                "'change-by-statistic' or 'set-by-statistic'"
            )
        delta = refit_bias_delta(
            self.model, self._stat_batches(), self.model_cfg.ntypes, model_forward, self.device
        )
        bias = self.model.out_bias.detach().cpu().numpy() + delta
        self.model.set_out_bias(bias)
        log.info(
            "energy bias changed by %s -> %s",
            np.array2string(delta, precision=6),
            np.array2string(bias, precision=6),
        )

    # ------------------------------------------------------------------ checkpoints
    def _sampler_states(self, train: Any, valid: Any) -> dict[str, Any]:
        """Sampler part of a checkpoint; with several ranks every rank's training stream.

        A collective when distributed: every rank must call it.
        """
        out = {"train": train, "valid": valid}
        if self.dist.enabled:
            out["train_ranks"] = self.dist.all_gather_object(train)
        return out

    def _rank_sampler_state(self, smp: dict[str, Any], key: str = "train") -> Any:
        """This rank's training-sampler state from a checkpoint (``None``: keep the fresh one)."""
        ranks = smp.get(f"{key}_ranks")
        if ranks is not None and len(ranks) == self.dist.world_size:
            return ranks[self.dist.rank]
        if ranks is not None or self.dist.enabled:
            log.warning(
                "the checkpoint was written by %d rank(s), this run has %d: rank 0 continues "
                "the checkpoint's data stream, the other ranks start new ones",
                len(ranks) if ranks is not None else 1,
                self.dist.world_size,
            )
        return smp.get(key) if self.dist.is_main else None

    def _resume(self, ckpt: dict[str, Any]) -> dict[str, Any]:
        """Load a restart's optimizer and torch RNG states; returns its sampler part."""
        if ckpt.get("optimizer") is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt.get("rng"))
        return ckpt.get("sampler") or {}

    def checkpoint_dict(self, step: int) -> dict[str, Any]:
        """Everything needed to restart at ``step`` (completed steps)."""
        return make_checkpoint(
            step=step,
            model_config=self.model_cfg.to_dict(),
            input_config=self.input_dict,
            model_state={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            optimizer_state=self.optimizer.state_dict(),
            rng_state=_rng_state(),
            sampler_state=self._sampler_states(
                self.train_data.state_dict(),
                None if self.valid_data is None else self.valid_data.state_dict(),
            ),
        )

    def save(self, step: int) -> Path:
        """Write the checkpoint of ``step`` completed steps (rank 0 writes; all ranks call)."""
        t = self.cfg.training
        ckpt = self.checkpoint_dict(step)
        if self.dist.is_main:
            self.last_checkpoint = save_checkpoint(ckpt, t.save_ckpt, t.max_ckpt_keep)
        else:
            pre = Path(t.save_ckpt)
            self.last_checkpoint = pre.with_name(f"{pre.name}-{step}.pt")
        return self.last_checkpoint

    # ------------------------------------------------------------------ evaluation
    def _validate(self, lr: float) -> dict[str, float] | None:
        if self.valid_data is None:
            return None
        nb = self.cfg.training.validation_data.numb_btch
        return self._validate_with(self.model, self.loss, self.valid_data, nb, lr)

    def _validate_with(
        self, model: torch.nn.Module, loss: EnergyLoss, data: DataSampler, numb_btch: int, lr: float
    ) -> dict[str, float]:
        """Atom-weighted mean metrics of ``model`` over ``numb_btch`` batches of ``data``."""
        model.eval()
        sums: dict[str, float] = {}
        wsum: dict[str, float] = {}
        try:
            for _ in range(numb_btch):
                b = data.next().to(self.device)
                _, m = loss(model_forward(model, b), b, lr)
                for k, v in m.items():
                    if v == v:  # skip nan (label absent)
                        sums[k] = sums.get(k, 0.0) + v * b.natoms
                        wsum[k] = wsum.get(k, 0.0) + b.natoms
        finally:
            model.train()
        return {k: (sums[k] / wsum[k] if wsum.get(k) else math.nan) for k in loss.metric_names()}

    def _describe_data(self) -> str:
        return (
            f"{len(self.train_data.systems)} systems, "
            f"{self.train_data.total_batches} batches per pass"
        )

    def _lcurve(self) -> Lcurve:
        """The ``lcurve.out`` columns (see :mod:`dpa3.train.lcurve`)."""
        return Lcurve({"": self.loss.metric_names()}, self.valid_data is not None)

    def _task_metrics(self, trn: dict[str, Any], val: dict[str, Any] | None) -> TaskMetrics:
        """``train_step``'s and ``_validate``'s metrics per task (one task, ``""``)."""
        return {"": (trn, val)}

    # ------------------------------------------------------------------ loop
    def train_step(self, step: int) -> tuple[float, dict[str, float], float]:
        """One optimizer step at 0-based ``step``; returns (loss, metrics, lr)."""
        lr = self._set_lr(step)
        batch = self.train_data.next().to(self.device)
        pred = model_forward(self.model, batch)
        loss, metrics = self.loss(pred, batch, lr)
        self._optimize(loss, step, f"system {self.train_data.systems[batch.system].path}")
        return float(loss.detach()), metrics, lr

    def _set_lr(self, step: int) -> float:
        """Set and return the learning rate of 0-based ``step``."""
        lr = self.lr.value(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def _optimize(self, loss: torch.Tensor, step: int, where: str) -> None:
        """Backward, average the gradients over the ranks, clip, optimizer step."""
        finite = bool(torch.isfinite(loss))
        if not finite and not self.dist.enabled:
            raise FloatingPointError(
                f"the loss is {float(loss)} at step {step} ({where}); lower "
                "learning_rate.start_lr or check the data"
            )
        self.optimizer.zero_grad(set_to_none=True)
        if finite:
            loss.backward()
        if self.dist.enabled:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            if not self.dist.average_gradients(params, finite):
                raise FloatingPointError(
                    f"the loss is not finite at step {step} on "
                    f"{'this rank (' + where + ')' if not finite else 'another rank'}; lower "
                    "learning_rate.start_lr or check the data"
                )
        clip = self.cfg.training.gradient_max_norm
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip, error_if_nonfinite=True)
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
            fout = stack.enter_context(open(disp, mode, buffering=1)) if main else None
            intr = stack.enter_context(_DeferredInterrupt())
            lcurve = self._lcurve()
            if fout is not None and mode == "w":
                fout.write(lcurve.header())
            progress = Progress(n_total, step)
            try:
                while step < n_total:
                    ts = time.perf_counter()
                    loss, trn, lr = self.train_step(step)
                    self.step_times.append(time.perf_counter() - ts)
                    done = step + 1
                    if main and (done % t.disp_freq == 0 or step == self.start_step):
                        metrics = self._task_metrics(trn, self._validate(lr))
                        fout.write(lcurve.line(done, metrics, lr))
                        log.info("%s", progress.line(done, loss, metrics, lr))
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
            self.dist.run_on_main(lambda: self._refit_bias("change-by-statistic"))
            self.dist.broadcast_module(self.model)
            self.save(step)
        elif self.last_checkpoint is None or not self.last_checkpoint.name.endswith(f"-{step}.pt"):
            self.save(step)
        if self.step_times:
            log.info(
                "finished %d steps in %.1f s (%.3f s/step)",
                len(self.step_times),
                sum(self.step_times),
                float(np.mean(self.step_times)),
            )
        return self.last_checkpoint


__all__ = ["Trainer", "default_model_factory", "model_forward", "resolve_sel"]
