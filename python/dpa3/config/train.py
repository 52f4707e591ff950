"""Typed configuration of training: learning rate, loss, optimizer, data and loop options.

Parsed once from the DeePMD-kit sections ``learning_rate``, ``loss``, ``optimizer``
(:mod:`dpa3.config.schedule`), ``training`` and ``validating`` of ``input.json``.  Defaults are
DeePMD-kit's schema defaults.  Every key of DeePMD-kit 3.2's schema is either read with its
meaning or refused by name ("not supported"); tests/config/test_config_keys.py checks this
against the schema.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._base import ConfigError, Section
from .model import ModelConfig
from .model_section import ModelSection
from .schedule import LearningRateConfig, LossConfig, OptimizerConfig

_NUMB_STEPS_ALIASES = {
    "numb_step": "numb_steps",
    "num_steps": "numb_steps",
    "num_step": "numb_steps",
    "stop_batch": "numb_steps",
}

# ``training`` keys refused at a non-default value: (default, what dpa3 lacks).
_REFUSED_TRAINING_KEYS = {
    "zero_stage": (0, "ZeRO sharding"),
    "enable_ema": (False, "EMA weights"),
    "ema_decay": (0.999, "EMA weights"),
    "ema_ckpt_keep": (None, "EMA weights"),
    "enable_compile": (False, "torch.compile"),
    "save_dir": (None, "a checkpoint folder; use a path in save_ckpt"),
    "ckpt_keep_ratio": (None, "ratio-based checkpoint keeping; use max_ckpt_keep"),
    "acc_freq": (1, "gradient accumulation (a PaddlePaddle option)"),
    "neighbor_graph_method": ("auto", "a PyTorch-Exportable option"),
    "enable_tf32": (False, "TF32 (a PyTorch-Exportable option)"),
}
# ``validating``: DeePMD-kit's full validation; accepted only at its defaults.
_VALIDATING_DEFAULTS = {
    "full_validation": False,
    "ema_full_validation": False,
    "validation_freq": 5000,
    "save_best": True,
    "save_best_dir": None,
    "max_best_ckpt": 1,
    "validation_metric": "E:MAE",
    "full_val_file": "val.log",
    "full_val_start": 0.5,
    "compiled_infer": False,
    "tf32_infer": False,
    "amp_infer": False,
}


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
    rglob_patterns: tuple[str, ...] | None = None

    @staticmethod
    def parse(sec: Section, validation: bool = False) -> DataConfig:
        """Parse a data section; ``systems`` is a list of folders / HDF5 files or one of them
        (each searched for systems, see :func:`dpa3.data.system.find_systems`)."""
        systems = sec.get("systems", required=True)
        if isinstance(systems, str):
            systems = [systems]
        if (
            not isinstance(systems, list)
            or not systems
            or not all(isinstance(s, str) and s for s in systems)
        ):
            raise ConfigError(
                f"'{sec.key('systems')}' must be a folder (or HDF5 file) or a list of them"
            )
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
        patterns = sec.get("rglob_patterns", None)
        if patterns is not None and (
            not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns)
        ):
            raise ConfigError(f"'{sec.key('rglob_patterns')}' must be a list of glob patterns")
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
            rglob_patterns=None if patterns is None else tuple(patterns),
        )
        sec.reject_unless_default("min_pair_dist", 0.0, "not supported (frame filtering)")
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
    stat_file_mode: str = "update"
    disp_training: bool = True
    time_training: bool = True
    disp_avg: bool = False
    tensorboard: bool = False
    tensorboard_log_dir: str = "log"
    tensorboard_freq: int = 1
    profiling: bool = False
    profiling_file: str = "timeline.json"
    enable_profiler: bool = False

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
            stat_file_mode=sec.choice("stat_file_mode", ("update", "read"), "update"),
            disp_training=sec.get_bool("disp_training", True),
            time_training=sec.get_bool("time_training", True),
            disp_avg=sec.get_bool("disp_avg", False),
            tensorboard=sec.get_bool("tensorboard", False),
            tensorboard_log_dir=sec.get_str("tensorboard_log_dir", "log"),
            tensorboard_freq=sec.get_int("tensorboard_freq", 1),
            profiling=sec.get_bool("profiling", False),
            profiling_file=sec.get_str("profiling_file", "timeline.json"),
            enable_profiler=sec.get_bool("enable_profiler", False),
        )
        if kw["stat_file_mode"] == "read" and kw["stat_file"] is None:
            raise ConfigError(f"'{sec.key('stat_file_mode')}' = 'read' needs 'training.stat_file'")
        for name in ("disp_file", "save_ckpt"):
            if not Path(kw[name]).name:
                raise ConfigError(f"'{sec.key(name)}' = {kw[name]!r} must name a file")
        # max_ckpt_keep below 1 keeps every checkpoint, as in DeePMD-kit
        for name in ("disp_freq", "save_freq", "tensorboard_freq"):
            if kw[name] <= 0:
                raise ConfigError(f"'{sec.key(name)}' must be positive, got {kw[name]}")
        if kw["gradient_max_norm"] < 0:
            raise ConfigError(f"'{sec.key('gradient_max_norm')}' must be >= 0")
        mp = sec.get("mixed_precision", None)
        if mp is not None:
            raise ConfigError(f"'{sec.key('mixed_precision')}' is not supported by dpa3")
        for name, (default, what) in _REFUSED_TRAINING_KEYS.items():
            sec.reject_unless_default(name, default, f"not supported ({what})")
        for name in (
            "kf_blocksize",
            "kf_start_pref_e",
            "kf_limit_pref_e",
            "kf_start_pref_f",
            "kf_limit_pref_f",
        ):
            if sec.has(name):
                raise ConfigError(f"'{sec.key(name)}': the LKF optimizer is not supported")
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
        lr_d = lr.to_input()
        loss_d = {"type": "ener", **asdict(loss)}
        if loss.relative_f is None:  # dp's schema has no default for it: left out as dp does
            del loss_d["relative_f"]
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
            "stat_file_mode",
            "disp_training",
            "time_training",
            "disp_avg",
            "tensorboard",
            "tensorboard_log_dir",
            "tensorboard_freq",
            "profiling",
            "profiling_file",
            "enable_profiler",
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
            raise ConfigError("'nvnmd' is not supported by dpa3 (a TensorFlow-only option)")
        val = top.sub("validating")
        for name, default in _VALIDATING_DEFAULTS.items():
            val.reject_unless_default(name, default, "not supported (DeePMD-kit's full validation)")
        val.finish()
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
    if d.rglob_patterns is not None:
        out["rglob_patterns"] = list(d.rglob_patterns)
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
