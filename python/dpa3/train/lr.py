"""Exponential learning-rate schedule with optional linear warmup (docs/dpa3-spec.md §5.2).

``lr(t)`` is a pure function of the 0-based optimizer step ``t``, so a restarted run
reproduces it exactly; the loss prefactors use the same value.
"""

from __future__ import annotations

import math

from ..config.train import LearningRateConfig


class ExpLR:
    """``lr(t) = max(start_lr * decay_rate ** floor((t - warmup) / decay_steps), stop_lr)``.

    Parameters
    ----------
    cfg
        The ``learning_rate`` section.
    numb_steps
        Length of the run; sets ``decay_rate`` (unless given) and ``warmup_ratio`` steps.
    """

    def __init__(self, cfg: LearningRateConfig, numb_steps: int) -> None:
        self.start_lr = cfg.start_lr
        self.stop_lr = cfg.stop_lr
        self.smooth = cfg.smooth
        self.warmup_steps = cfg.warmup_for(numb_steps)
        self.warmup_start_factor = cfg.warmup_start_factor
        decay_total = numb_steps - self.warmup_steps
        decay_steps = cfg.decay_steps
        if cfg.decay_rate is None and decay_steps >= decay_total:
            # DeePMD-kit shortens decay_steps for short runs so that the lr still decays.
            decay_steps = 100 if decay_total // 10 > 100 else decay_total // 100 + 1
        self.decay_steps = max(1, decay_steps)
        if cfg.decay_rate is not None:
            self.decay_rate = cfg.decay_rate
        else:
            stop = max(self.stop_lr, 1e-10)
            self.decay_rate = math.exp(
                math.log(stop / self.start_lr) / (max(decay_total, 1) / self.decay_steps)
            )

    def value(self, step: int) -> float:
        """Learning rate at 0-based step ``step``."""
        if step < self.warmup_steps:
            w = self.warmup_start_factor
            return w * self.start_lr + (1.0 - w) * self.start_lr * step / self.warmup_steps
        t = step - self.warmup_steps
        expo = t / self.decay_steps if self.smooth else t // self.decay_steps
        return max(self.start_lr * self.decay_rate**expo, self.stop_lr)

    def factor(self, step: int) -> float:
        """``lr(step) / start_lr`` (the coefficient of the loss prefactors)."""
        return self.value(step) / self.start_lr


__all__ = ["ExpLR"]
