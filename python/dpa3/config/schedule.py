"""Typed ``learning_rate``, ``loss`` and ``optimizer`` sections of a DeePMD-kit ``input.json``.

Defaults are DeePMD-kit 3.2's schema defaults (``deepmd/utils/argcheck.py``); options dpa3
does not implement are refused by name (``ConfigError`` naming the key path and saying
"not supported").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ._base import ConfigError, Section

#: ``learning_rate.type`` values and the keys only that type reads.
LR_TYPES = {
    "exp": ("decay_steps", "decay_rate", "smooth"),
    "cosine": (),
    "wsd": ("decay_phase_ratio", "decay_type"),
}
WSD_DECAY_TYPES = ("inverse_linear", "cosine", "linear")


# --------------------------------------------------------------------------------------
# learning rate
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LearningRateConfig:
    """``learning_rate`` of type ``exp``, ``cosine`` or ``wsd`` (docs/dpa3-spec.md §5.2).

    ``stop_lr`` is already resolved (from ``stop_lr_ratio`` or the 5e-8 default);
    ``warmup_steps`` may still be ``None`` when ``warmup_ratio`` is given (resolved against
    ``numb_steps`` by :meth:`warmup_for`).  ``decay_steps``/``decay_rate``/``smooth`` are read
    by ``exp`` only, ``decay_phase_ratio``/``decay_type`` by ``wsd`` only.
    """

    start_lr: float = 1e-3
    stop_lr: float = 5e-8
    decay_steps: int = 5000
    decay_rate: float | None = None
    smooth: bool = False
    warmup_steps: int | None = None
    warmup_ratio: float | None = None
    warmup_start_factor: float = 0.0
    type: str = "exp"
    decay_phase_ratio: float = 0.1
    decay_type: str = "inverse_linear"

    @staticmethod
    def parse(sec: Section, training: Section | None = None) -> LearningRateConfig:
        """Parse ``learning_rate``; warmup keys may also sit in ``training`` (DeePMD-kit 3.0)."""
        kind = sec.get("type", "exp")
        if kind not in LR_TYPES:
            raise ConfigError(
                f"'{sec.key('type')}' = {kind!r} is not supported by dpa3 "
                f"(supported: {', '.join(LR_TYPES)})"
            )
        for other, keys in LR_TYPES.items():
            for name in keys:
                if other != kind and sec.has(name):
                    raise ConfigError(
                        f"'{sec.key(name)}' belongs to learning_rate type '{other}', not {kind!r}"
                    )
        start = sec.get_float("start_lr", 1e-3)
        if not (start > 0 and math.isfinite(start)):
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
        if not (stop >= 0 and math.isfinite(stop)) or (kind == "wsd" and stop <= 0):
            where = sec.key("stop_lr_ratio" if ratio is not None else "stop_lr")
            raise ConfigError(f"'{where}' must be positive, got {stop}")
        if stop > start:
            # lr / start_lr > 1 would carry the loss prefactors past their start values, a
            # start_pref below its limit_pref to a negative weight
            where = sec.key("stop_lr_ratio" if ratio is not None else "stop_lr")
            raise ConfigError(
                f"'{where}' gives stop_lr {stop:g} above start_lr {start:g}: the learning rate "
                "must not grow (the loss prefactors follow lr / start_lr)"
            )
        kw: dict[str, Any] = {"type": kind, "start_lr": start, "stop_lr": stop}
        if kind == "exp":
            kw["decay_steps"] = sec.get_int("decay_steps", 5000)
            if kw["decay_steps"] <= 0:
                raise ConfigError(
                    f"'{sec.key('decay_steps')}' must be positive, got {kw['decay_steps']}"
                )
            rate = sec.get_float("decay_rate", None)
            if rate is not None and not 0 < rate <= 1:
                raise ConfigError(f"'{sec.key('decay_rate')}' must be in (0, 1], got {rate}")
            kw["decay_rate"] = rate
            kw["smooth"] = sec.get_bool("smooth", False)
        elif kind == "wsd":
            r = sec.get_float("decay_phase_ratio", 0.1)
            if not 0 < r <= 1:
                raise ConfigError(f"'{sec.key('decay_phase_ratio')}' must be in (0, 1], got {r}")
            kw["decay_phase_ratio"] = r
            kw["decay_type"] = sec.choice("decay_type", WSD_DECAY_TYPES, "inverse_linear")
        # DeePMD-kit's PyTorch trainer does not read it either (TensorFlow only).
        sec.choice("scale_by_worker", ("linear", "sqrt", "none"), "linear")
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
        if warm["warmup_steps"] is not None and warm["warmup_steps"] < 0:
            raise ConfigError(f"'{sec.key('warmup_steps')}' must be >= 0")
        if warm["warmup_ratio"] is not None and not 0 <= warm["warmup_ratio"] < 1:
            raise ConfigError(f"'{sec.key('warmup_ratio')}' must be in [0, 1)")
        cfg = LearningRateConfig(
            **kw,
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

    def to_input(self) -> dict[str, Any]:
        """The section as ``input.json`` spells it, every default filled in."""
        out: dict[str, Any] = {
            "type": self.type,
            "start_lr": self.start_lr,
            "stop_lr": self.stop_lr,
            "warmup_start_factor": self.warmup_start_factor,
        }
        if self.type == "exp":
            out.update(decay_steps=self.decay_steps, decay_rate=self.decay_rate, smooth=self.smooth)
        elif self.type == "wsd":
            out.update(decay_phase_ratio=self.decay_phase_ratio, decay_type=self.decay_type)
        if self.warmup_ratio is not None:
            out["warmup_ratio"] = self.warmup_ratio
        else:
            out["warmup_steps"] = self.warmup_steps or 0
        return out


# --------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------
#: Loss keys refused at a non-default value, with the reason.
_LOSS_REFUSED = {
    "start_pref_pf": (0.0, "the atom-prefactor force term"),
    "limit_pref_pf": (0.0, "the atom-prefactor force term"),
    "use_default_pf": (False, "the atom-prefactor force term"),
    "start_pref_gf": (0.0, "the generalized-force term"),
    "limit_pref_gf": (0.0, "the generalized-force term"),
    "numb_generalized_coord": (0, "the generalized-force term"),
    "start_pref_h": (0.0, "the Hessian term"),
    "limit_pref_h": (0.0, "the Hessian term"),
    "loss_func": ("mse", "an MAE loss"),
    "use_huber": (False, "the Huber loss"),
    "f_use_norm": (False, "the force-norm loss (MAE/Huber only)"),
}


@dataclass(frozen=True)
class LossConfig:
    """``loss`` of type ``ener`` (docs/dpa3-spec.md §5.1); a term is active iff both prefactors
    are non-zero.

    ``relative_f``: force errors divided by ``|F_label| + relative_f`` per atom;
    ``enable_atom_ener_coeff``: the energy term compares ``sum_i c_i E_i`` (``c_i`` from
    ``atom_ener_coeff.npy``, 1 where absent) with the label; ``*_pref_ae``: per-atom energy term
    against ``atom_ener.npy``.
    """

    start_pref_e: float = 0.02
    limit_pref_e: float = 1.0
    start_pref_f: float = 1000.0
    limit_pref_f: float = 1.0
    start_pref_v: float = 0.0
    limit_pref_v: float = 0.0
    intensive_ener_virial: bool = False
    start_pref_ae: float = 0.0
    limit_pref_ae: float = 0.0
    relative_f: float | None = None
    enable_atom_ener_coeff: bool = False

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

    @property
    def has_ae(self) -> bool:
        """Whether the atomic-energy term is active."""
        return self.start_pref_ae != 0.0 and self.limit_pref_ae != 0.0

    @staticmethod
    def parse(sec: Section) -> LossConfig:
        """Parse the ``loss`` section; unimplemented options are refused by name."""
        kind = sec.get("type", "ener")
        if kind != "ener":
            raise ConfigError(
                f"'{sec.key('type')}' = {kind!r} is not supported by dpa3 (only 'ener' loss)"
            )
        d = LossConfig.__dataclass_fields__
        kw: dict[str, Any] = {}
        for name in (
            "start_pref_e",
            "limit_pref_e",
            "start_pref_f",
            "limit_pref_f",
            "start_pref_v",
            "limit_pref_v",
            "start_pref_ae",
            "limit_pref_ae",
        ):
            kw[name] = sec.get_float(name, d[name].default)
            if not (kw[name] >= 0 and math.isfinite(kw[name])):  # NaN fails the first test
                # a negative prefactor rewards the error it weighs
                raise ConfigError(f"'{sec.key(name)}' must be >= 0, got {kw[name]}")
        kw["intensive_ener_virial"] = sec.get_bool("intensive_ener_virial", False)
        kw["relative_f"] = sec.get_float("relative_f", None)
        if kw["relative_f"] is not None and not kw["relative_f"] > 0:
            # a zero shift divides by |F| = 0 for atoms without force
            raise ConfigError(f"'{sec.key('relative_f')}' must be positive, got {kw['relative_f']}")
        kw["enable_atom_ener_coeff"] = sec.get_bool("enable_atom_ener_coeff", False)
        for name, (default, what) in _LOSS_REFUSED.items():
            sec.reject_unless_default(name, default, f"not supported ({what})")
        sec.get("huber_delta")  # meaningful only with use_huber (refused above)
        sec.finish()
        cfg = LossConfig(**kw)
        if not (cfg.has_e or cfg.has_f or cfg.has_v or cfg.has_ae):
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
        where = sec.key("type") if kind is not None or opt_type is None else "training.opt_type"
        kind = kind or opt_type or "Adam"
        if kind not in ("Adam", "AdamW"):
            raise ConfigError(
                f"'{where}' = {kind!r} is not supported by dpa3 (only 'Adam' and 'AdamW')"
            )
        cfg = OptimizerConfig(
            type=kind,
            beta1=sec.get_float("adam_beta1", 0.9),
            beta2=sec.get_float("adam_beta2", 0.999),
            weight_decay=sec.get_float("weight_decay", 0.001 if kind == "AdamW" else 0.0),
        )
        sec.finish()
        return cfg


__all__ = ["LR_TYPES", "LearningRateConfig", "LossConfig", "OptimizerConfig"]
