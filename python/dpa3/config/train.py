"""Typed configuration of training: learning rate, loss, optimizer, data and loop options.

Parsed once from the DeePMD-kit sections ``learning_rate``, ``loss``, ``optimizer`` and
``training`` of ``input.json``.  Defaults are DeePMD-kit's schema defaults.  Keys that
DeePMD-kit accepts but that only steer its own tooling (``profiling``, ``tensorboard``, ...)
are accepted and ignored; options dpa3 does not implement are rejected by name.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ._base import ConfigError, Section
from .model import ModelConfig
from .model_section import ModelSection

_NUMB_STEPS_ALIASES = {
    "numb_step": "numb_steps",
    "num_steps": "numb_steps",
    "num_step": "numb_steps",
    "stop_batch": "numb_steps",
}

# DeePMD-kit ``training`` keys that steer only its own logging/profiling tools.
_IGNORED_TRAINING_KEYS = (
    "disp_training",
    "time_training",
    "profiling",
    "profiling_file",
    "enable_profiler",
    "tensorboard",
    "tensorboard_log_dir",
    "tensorboard_freq",
    "mixed_precision_off",
)


# --------------------------------------------------------------------------------------
# learning rate
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LearningRateConfig:
    """``learning_rate`` of type ``exp`` (docs/dpa3-spec.md §5.2).

    ``stop_lr`` is already resolved (from ``stop_lr_ratio`` or the 5e-8 default);
    ``warmup_steps`` may still be ``None`` when ``warmup_ratio`` is given (resolved against
    ``numb_steps`` by :meth:`warmup_for`).
    """

    start_lr: float = 1e-3
    stop_lr: float = 5e-8
    decay_steps: int = 5000
    decay_rate: float | None = None
    smooth: bool = False
    warmup_steps: int | None = None
    warmup_ratio: float | None = None
    warmup_start_factor: float = 0.0

    @staticmethod
    def parse(sec: Section, training: Section | None = None) -> LearningRateConfig:
        """Parse ``learning_rate``; warmup keys may also sit in ``training`` (DeePMD-kit 3.0)."""
        kind = sec.get("type", "exp")
        if kind != "exp":
            raise ConfigError(f"'{sec.key('type')}' = {kind!r}: only 'exp' is supported")
        start = sec.get_float("start_lr", 1e-3)
        if start <= 0:
            raise ConfigError(f"'{sec.key('start_lr')}' must be positive, got {start}")
        stop = sec.get_float("stop_lr", None)
        ratio = sec.get_float("stop_lr_ratio", None)
        if stop is not None and ratio is not None:
            raise ConfigError(
                f"give only one of '{sec.key('stop_lr')}' and '{sec.key('stop_lr_ratio')}'"
            )
        if ratio is not None:
            stop = start * ratio
        if stop is None:
            stop = 5e-8
        decay_steps = sec.get_int("decay_steps", 5000)
        if decay_steps <= 0:
            raise ConfigError(f"'{sec.key('decay_steps')}' must be positive, got {decay_steps}")
        decay_rate = sec.get_float("decay_rate", None)
        sec.get("scale_by_worker")  # accepted; ignored by DeePMD-kit's PyTorch trainer too
        warm: dict[str, Any] = {}
        for name, getter in (
            ("warmup_steps", "get_int"),
            ("warmup_ratio", "get_float"),
            ("warmup_start_factor", "get_float"),
        ):
            here = getattr(sec, getter)(name, None)
            there = getattr(training, getter)(name, None) if training is not None else None
            if here is not None and there is not None:
                raise ConfigError(f"'{name}' is given both in '{sec.path}' and 'training'")
            warm[name] = here if here is not None else there
        if warm["warmup_steps"] is not None and warm["warmup_ratio"] is not None:
            raise ConfigError("give only one of 'warmup_steps' and 'warmup_ratio'")
        cfg = LearningRateConfig(
            start_lr=start,
            stop_lr=stop,
            decay_steps=decay_steps,
            decay_rate=decay_rate,
            smooth=sec.get_bool("smooth", False),
            warmup_steps=warm["warmup_steps"],
            warmup_ratio=warm["warmup_ratio"],
            warmup_start_factor=0.0
            if warm["warmup_start_factor"] is None
            else warm["warmup_start_factor"],
        )
        sec.finish()
        return cfg

    def warmup_for(self, numb_steps: int) -> int:
        """Number of warmup steps for a run of ``numb_steps`` steps."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        if self.warmup_ratio is not None:
            return int(self.warmup_ratio * numb_steps)
        return 0


# --------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossConfig:
    """``loss`` of type ``ener`` (docs/dpa3-spec.md §5.1); a term is active iff both prefactors
    are non-zero."""

    start_pref_e: float = 0.02
    limit_pref_e: float = 1.0
    start_pref_f: float = 1000.0
    limit_pref_f: float = 1.0
    start_pref_v: float = 0.0
    limit_pref_v: float = 0.0
    intensive_ener_virial: bool = False

    @property
    def has_e(self) -> bool:
        """Whether the energy term is active."""
        return self.start_pref_e != 0.0 and self.limit_pref_e != 0.0

    @property
    def has_f(self) -> bool:
        """Whether the force term is active."""
        return self.start_pref_f != 0.0 and self.limit_pref_f != 0.0

    @property
    def has_v(self) -> bool:
        """Whether the virial term is active."""
        return self.start_pref_v != 0.0 and self.limit_pref_v != 0.0

    @staticmethod
    def parse(sec: Section) -> LossConfig:
        """Parse the ``loss`` section; unimplemented options are rejected by name."""
        kind = sec.get("type", "ener")
        if kind != "ener":
            raise ConfigError(f"'{sec.key('type')}' = {kind!r}: only 'ener' loss is supported")
        d = LossConfig.__dataclass_fields__
        kw: dict[str, Any] = {}
        for name in (
            "start_pref_e",
            "limit_pref_e",
            "start_pref_f",
            "limit_pref_f",
            "start_pref_v",
            "limit_pref_v",
        ):
            kw[name] = sec.get_float(name, d[name].default)
        kw["intensive_ener_virial"] = sec.get_bool("intensive_ener_virial", False)
        for name in (
            "start_pref_ae",
            "limit_pref_ae",
            "start_pref_pf",
            "limit_pref_pf",
            "start_pref_gf",
            "limit_pref_gf",
            "start_pref_h",
            "limit_pref_h",
        ):
            v = sec.get_float(name, 0.0)
            if v != 0.0:
                raise ConfigError(
                    f"'{sec.key(name)}' = {v}: this loss term is not supported by dpa3"
                )
        sec.reject_unless_default("loss_func", "mse")
        sec.reject_unless_default("use_huber", False)
        sec.reject_unless_default("relative_f", None)
        sec.reject_unless_default("enable_atom_ener_coeff", False)
        sec.reject_unless_default("use_default_pf", False)
        sec.reject_unless_default("numb_generalized_coord", 0)
        sec.reject_unless_default("f_use_norm", False)
        sec.get("huber_delta")  # meaningful only with use_huber
        sec.finish()
        cfg = LossConfig(**kw)
        if not (cfg.has_e or cfg.has_f or cfg.has_v):
            raise ConfigError(f"'{sec.path}': every loss term has a zero prefactor")
        return cfg


# --------------------------------------------------------------------------------------
# optimizer
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OptimizerConfig:
    """``optimizer`` section: Adam (coupled L2 decay) or AdamW (decoupled, on all parameters)."""

    type: str = "Adam"
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0

    @staticmethod
    def parse(sec: Section, opt_type: str | None) -> OptimizerConfig:
        """Parse ``optimizer`` (``training.opt_type`` is the legacy spelling of its type)."""
        kind = sec.get_str("type", None)
        if kind is not None and opt_type is not None and kind != opt_type:
            raise ConfigError(
                f"'{sec.key('type')}' = {kind!r} contradicts 'training.opt_type' = {opt_type!r}"
            )
        kind = kind or opt_type or "Adam"
        if kind not in ("Adam", "AdamW"):
            raise ConfigError(
                f"optimizer type {kind!r} is not supported by dpa3 (only 'Adam' and 'AdamW')"
            )
        cfg = OptimizerConfig(
            type=kind,
            beta1=sec.get_float("adam_beta1", 0.9),
            beta2=sec.get_float("adam_beta2", 0.999),
            weight_decay=sec.get_float("weight_decay", 0.001 if kind == "AdamW" else 0.0),
        )
        sec.finish()
        return cfg


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchSizeRule:
    """``batch_size``: ``kind`` is ``"int"``, ``"list"``, ``"auto"``, ``"max"`` or ``"filter"``."""

    kind: str
    value: int = 0
    values: tuple[int, ...] = ()

    @staticmethod
    def parse(value: Any, where: str) -> BatchSizeRule:
        """Parse an int, a list of ints, ``"auto"``, ``"auto:N"``, ``"max:N"`` or ``"filter:N"``."""
        if isinstance(value, int) and not isinstance(value, bool):
            if value <= 0:
                raise ConfigError(f"'{where}' must be positive, got {value}")
            return BatchSizeRule("int", value)
        if isinstance(value, list):
            if not value or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
            ):
                raise ConfigError(f"'{where}' as a list must hold positive integers")
            return BatchSizeRule("list", 0, tuple(value))
        if isinstance(value, str):
            kind, _, num = value.partition(":")
            if kind in ("auto", "max", "filter"):
                if not num and kind == "auto":
                    return BatchSizeRule("auto", 32)
                try:
                    n = int(num)
                except ValueError:
                    n = 0
                if n > 0:
                    return BatchSizeRule(kind, n)
        raise ConfigError(
            f"'{where}' = {value!r}: expected an integer, a list, 'auto', 'auto:N', 'max:N' "
            "or 'filter:N'"
        )

    def for_system(self, natoms: int, index: int) -> int | None:
        """Batch size of system ``index`` with ``natoms`` atoms; ``None`` means filtered out."""
        if self.kind == "int":
            return self.value
        if self.kind == "list":
            return self.values[index]
        if self.kind == "auto":
            return max(1, -(-self.value // natoms))
        if self.kind == "max":
            return max(1, self.value // natoms)
        if natoms > self.value:  # filter
            return None
        return max(1, self.value // natoms)


@dataclass(frozen=True)
class DataConfig:
    """``training_data`` / ``validation_data``."""

    systems: tuple[str, ...]
    batch_size: BatchSizeRule
    set_prefix: str = "set"
    auto_prob: str = "prob_sys_size"
    sys_probs: tuple[float, ...] | None = None
    numb_btch: int = 1

    @staticmethod
    def parse(sec: Section, validation: bool = False) -> DataConfig:
        """Parse a data section; ``systems`` is a list of folders or one parent folder."""
        systems = sec.get("systems", required=True)
        if isinstance(systems, str):
            systems = [systems]
        if (
            not isinstance(systems, list)
            or not systems
            or not all(isinstance(s, str) and s for s in systems)
        ):
            raise ConfigError(f"'{sec.key('systems')}' must be a folder or a list of folders")
        rule = BatchSizeRule.parse(sec.get("batch_size", "auto"), sec.key("batch_size"))
        auto_prob = sec.get_str("auto_prob", "prob_sys_size")
        if not (
            auto_prob in ("prob_uniform", "prob_sys_size") or auto_prob.startswith("prob_sys_size;")
        ):
            raise ConfigError(
                f"'{sec.key('auto_prob')}' = {auto_prob!r}: expected 'prob_sys_size', "
                "'prob_uniform' or 'prob_sys_size;start:end:weight;...'"
            )
        probs = sec.get("sys_probs", None)
        if probs is not None:
            if (
                not isinstance(probs, list)
                or not all(
                    isinstance(p, (int, float)) and not isinstance(p, bool) and p >= 0
                    for p in probs
                )
                or sum(probs) <= 0
            ):
                raise ConfigError(f"'{sec.key('sys_probs')}' must be a list of weights >= 0")
            probs = tuple(float(p) for p in probs)
        numb_btch = 1
        if validation:
            numb_btch = max(1, sec.get_int("numb_btch", 1))
        cfg = DataConfig(
            systems=tuple(systems),
            batch_size=rule,
            set_prefix=sec.get_str("set_prefix", "set"),
            auto_prob=auto_prob,
            sys_probs=probs,
            numb_btch=numb_btch,
        )
        if sec.get("rglob_patterns") not in (None, []):
            raise ConfigError(f"'{sec.key('rglob_patterns')}' is not supported by dpa3")
        sec.finish()
        return cfg


_DATA_ALIASES = {"auto_prob_style": "auto_prob", "sys_weights": "sys_probs"}
_VALID_ALIASES = dict(_DATA_ALIASES, numb_batch="numb_btch")


# --------------------------------------------------------------------------------------
# training loop
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingConfig:
    """``training`` section (single task)."""

    training_data: DataConfig
    validation_data: DataConfig | None = None
    numb_steps: int | None = None
    numb_epoch: float | None = None
    seed: int | None = None
    disp_file: str = "lcurve.out"
    disp_freq: int = 1000
    save_freq: int = 1000
    save_ckpt: str = "model.ckpt"
    max_ckpt_keep: int = 5  # newest numbered checkpoints kept; < 1 keeps all
    stat_file: str | None = None
    gradient_max_norm: float = 0.0
    change_bias_after_training: bool = False

    @staticmethod
    def parse(sec: Section) -> TrainingConfig:
        """Parse the loop options; learning-rate and optimizer keys here are read elsewhere."""
        if sec.has("data_dict") or sec.has("model_prob"):
            raise ConfigError(
                f"'{sec.path}.data_dict'/'model_prob' belong to a multi-task input, which needs "
                "'model.shared_dict' and 'model.model_dict' (see examples/multitask)"
            )
        train = DataConfig.parse(sec.sub("training_data", _DATA_ALIASES, required=True))
        valid = None
        if sec.get("validation_data") is not None:
            valid = DataConfig.parse(sec.sub("validation_data", _VALID_ALIASES), validation=True)
        steps = sec.get_int("numb_steps", None)
        epoch = sec.get_float("numb_epoch", None)
        if steps is None and epoch is None:
            raise ConfigError(f"missing required key '{sec.key('numb_steps')}'")
        if steps is not None and epoch is not None:
            raise ConfigError(f"give only one of '{sec.key('numb_steps')}' and 'numb_epoch'")
        if steps is not None and steps < 0:
            raise ConfigError(f"'{sec.key('numb_steps')}' must be >= 0")
        if epoch is not None and (epoch <= 0 or not math.isfinite(epoch)):
            raise ConfigError(f"'{sec.key('numb_epoch')}' must be positive")
        kw: dict[str, Any] = dict(
            training_data=train,
            validation_data=valid,
            numb_steps=steps,
            numb_epoch=epoch,
            seed=sec.get_int("seed", None),
            disp_file=sec.get_str("disp_file", "lcurve.out"),
            disp_freq=sec.get_int("disp_freq", 1000),
            save_freq=sec.get_int("save_freq", 1000),
            save_ckpt=sec.get_str("save_ckpt", "model.ckpt"),
            max_ckpt_keep=sec.get_int("max_ckpt_keep", 5),
            stat_file=sec.get_str("stat_file", None),
            gradient_max_norm=sec.get_float("gradient_max_norm", 0.0) or 0.0,
            change_bias_after_training=sec.get_bool("change_bias_after_training", False),
        )
        # max_ckpt_keep below 1 keeps every checkpoint, as in DeePMD-kit
        for name in ("disp_freq", "save_freq"):
            if kw[name] <= 0:
                raise ConfigError(f"'{sec.key(name)}' must be positive, got {kw[name]}")
        if kw["gradient_max_norm"] < 0:
            raise ConfigError(f"'{sec.key('gradient_max_norm')}' must be >= 0")
        mp = sec.get("mixed_precision", None)
        if mp is not None:
            raise ConfigError(f"'{sec.key('mixed_precision')}' is not supported by dpa3")
        sec.reject_unless_default("zero_stage", 0)
        sec.reject_unless_default("enable_ema", False)
        sec.reject_unless_default("enable_compile", False)
        for name in (
            "kf_blocksize",
            "kf_start_pref_e",
            "kf_limit_pref_e",
            "kf_start_pref_f",
            "kf_limit_pref_f",
        ):
            if sec.has(name):
                raise ConfigError(f"'{sec.key(name)}': the LKF optimizer is not supported")
        for name in _IGNORED_TRAINING_KEYS:
            sec.get(name)
        # read by LearningRateConfig / OptimizerConfig
        sec.finish(ignore=("warmup_steps", "warmup_ratio", "warmup_start_factor", "opt_type"))
        return TrainingConfig(**kw)


@dataclass(frozen=True)
class InputConfig:
    """A whole single-task DeePMD-kit ``input.json``, parsed.

    ``source`` is a copy of the dict as given; it is only written out (checkpoints keep the
    input, see :meth:`record`), never read by the trainer.
    """

    model: ModelSection
    learning_rate: LearningRateConfig
    loss: LossConfig
    optimizer: OptimizerConfig
    training: TrainingConfig
    source: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def record(self, model: ModelConfig) -> dict[str, Any]:
        """The input as a checkpoint stores it: ``source`` with the ``"auto"`` selections
        replaced by ``model``'s integers."""
        out = copy.deepcopy(self.source)
        repflow = out["model"]["descriptor"]["repflow"]
        for key in self.model.auto_sel:
            repflow[key] = getattr(model.descriptor.repflow, key)
        return out

    def normalized(self, model: ModelConfig | None = None) -> dict[str, Any]:
        """The input with every key dpa3 reads at its effective value (defaults filled in),
        as ``out.json``: a DeePMD-kit ``input.json`` that :meth:`from_dict` parses back to the
        same configuration (``model``: the resolved model config, see
        :meth:`ModelSection.to_input`).  Keys dpa3 accepts but ignores are left out."""
        lr, loss, opt, tr = self.learning_rate, self.loss, self.optimizer, self.training
        lr_d: dict[str, Any] = {
            "type": "exp",
            "start_lr": lr.start_lr,
            "stop_lr": lr.stop_lr,
            "decay_steps": lr.decay_steps,
            "decay_rate": lr.decay_rate,
            "smooth": lr.smooth,
            "warmup_start_factor": lr.warmup_start_factor,
        }
        if lr.warmup_ratio is not None:
            lr_d["warmup_ratio"] = lr.warmup_ratio
        else:
            lr_d["warmup_steps"] = lr.warmup_steps or 0
        loss_d = {"type": "ener", **asdict(loss)}
        opt_d = {
            "type": opt.type,
            "adam_beta1": opt.beta1,
            "adam_beta2": opt.beta2,
            "weight_decay": opt.weight_decay,
        }
        training: dict[str, Any] = {
            "training_data": _data_dict(tr.training_data, validation=False),
            "validation_data": None
            if tr.validation_data is None
            else _data_dict(tr.validation_data, validation=True),
        }
        if tr.numb_steps is not None:
            training["numb_steps"] = tr.numb_steps
        else:
            training["numb_epoch"] = tr.numb_epoch
        for name in (
            "seed",
            "disp_file",
            "disp_freq",
            "save_freq",
            "save_ckpt",
            "max_ckpt_keep",
            "stat_file",
            "gradient_max_norm",
            "change_bias_after_training",
        ):
            if getattr(tr, name) is not None or name != "stat_file":  # dp: no null stat_file
                training[name] = getattr(tr, name)
        return {
            "model": self.model.to_input(model),
            "learning_rate": lr_d,
            "loss": loss_d,
            "optimizer": opt_d,
            "training": training,
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> InputConfig:
        """Parse an ``input.json`` dict; raises :class:`ConfigError` naming the offending key."""
        top = Section(data, "")
        model = top.get("model", required=True)
        if not isinstance(model, dict):
            raise ConfigError("'model' must be a JSON object")
        if "model_dict" in model:
            raise ConfigError(
                "a multi-task input (model.model_dict) is parsed by "
                "dpa3.config.multitask.MultiTaskConfig and trained by "
                "dpa3.train.multitask_trainer.MultiTaskTrainer (dpa3 train picks it)"
            )
        if top.has("loss_dict") or top.has("learning_rate_dict"):
            raise ConfigError(
                "'loss_dict'/'learning_rate_dict' belong to a multi-task input, which needs "
                "'model.shared_dict' and 'model.model_dict' (see examples/multitask)"
            )
        if top.get("nvnmd") is not None:
            raise ConfigError("'nvnmd' is not supported by dpa3")
        tr = top.sub("training", _NUMB_STEPS_ALIASES, required=True)
        opt_type = tr.get_str("opt_type", None)
        lr = LearningRateConfig.parse(top.sub("learning_rate"), tr)
        loss = LossConfig.parse(top.sub("loss"))
        opt = OptimizerConfig.parse(top.sub("optimizer"), opt_type)
        training = TrainingConfig.parse(tr)
        msec = ModelSection.parse(top.sub("model"))
        top.finish()
        return InputConfig(
            model=msec,
            learning_rate=lr,
            loss=loss,
            optimizer=opt,
            training=training,
            source=copy.deepcopy(data),
        )


def _data_dict(d: DataConfig, validation: bool) -> dict[str, Any]:
    """A data section as ``input.json`` spells it (see :meth:`InputConfig.normalized`)."""
    rule = d.batch_size
    if rule.kind == "int":
        bs: Any = rule.value
    elif rule.kind == "list":
        bs = list(rule.values)
    else:
        bs = f"{rule.kind}:{rule.value}"
    out: dict[str, Any] = {
        "systems": list(d.systems),
        "batch_size": bs,
        "auto_prob": d.auto_prob,
        "sys_probs": None if d.sys_probs is None else list(d.sys_probs),
    }
    if d.set_prefix != "set":  # a key DeePMD-kit 3 has dropped (it warns); only when needed
        out["set_prefix"] = d.set_prefix
    if validation:
        out["numb_btch"] = d.numb_btch
    return out


__all__ = [
    "BatchSizeRule",
    "DataConfig",
    "InputConfig",
    "LearningRateConfig",
    "LossConfig",
    "OptimizerConfig",
    "TrainingConfig",
]
