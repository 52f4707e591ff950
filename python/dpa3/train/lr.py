"""Learning-rate schedules ``exp``, ``cosine`` and ``wsd`` with optional linear warmup
(docs/dpa3-spec.md §5.2; DeePMD-kit 3.2's meanings, checked against its numbers in
tests/python/test_lr.py).

``lr(t)`` is a pure function of the 0-based optimizer step ``t``, so a restarted run
reproduces it exactly; the loss prefactors use the same value.  During the first ``W`` warmup
steps ``lr(t) = f * start_lr + (1 - f) * start_lr * t / W`` (``f`` = ``warmup_start_factor``);
afterwards the schedule runs on ``u = t - W`` over ``T = numb_steps - W`` decay steps.
"""

from __future__ import annotations

import math

from ..config.schedule import LearningRateConfig
from ..errors import ConfigError


class _Schedule:
    """Warmup shared by every schedule; subclasses give :meth:`decay` (lr at decay step u)."""

    def __init__(self, cfg: LearningRateConfig, numb_steps: int) -> None:
        self.start_lr = cfg.start_lr
        self.stop_lr = cfg.stop_lr
        self.warmup_steps = cfg.warmup_for(numb_steps)
        self.warmup_start_factor = cfg.warmup_start_factor
        if numb_steps > 0 and self.warmup_steps >= numb_steps:
            raise ConfigError(
                f"'learning_rate.warmup_steps' ({self.warmup_steps} warmup steps) must be "
                f"smaller than the number of training steps ({numb_steps})"
            )
        if numb_steps == 0:
            self.warmup_steps = 0
        self.decay_total = numb_steps - self.warmup_steps

    def decay(self, u: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def value(self, step: int) -> float:
        """Learning rate at 0-based step ``step``."""
        if step < self.warmup_steps:
            w = self.warmup_start_factor
            return w * self.start_lr + (1.0 - w) * self.start_lr * step / self.warmup_steps
        return self.decay(step - self.warmup_steps)

    def factor(self, step: int) -> float:
        """``lr(step) / start_lr`` (the coefficient of the loss prefactors)."""
        return self.value(step) / self.start_lr


class ExpLR(_Schedule):
    """``lr(u) = max(start_lr * decay_rate ** floor(u / decay_steps), stop_lr)`` (``u /
    decay_steps`` with ``smooth``); ``decay_rate`` defaults to the rate that reaches
    ``stop_lr`` at the last step, and ``decay_steps`` is shortened for runs shorter than it."""

    def __init__(self, cfg: LearningRateConfig, numb_steps: int) -> None:
        super().__init__(cfg, numb_steps)
        self.smooth = cfg.smooth
        decay_steps = cfg.decay_steps
        total = self.decay_total
        if cfg.decay_rate is None and decay_steps >= total:
            # DeePMD-kit shortens decay_steps for short runs so that the lr still decays.
            decay_steps = 100 if total // 10 > 100 else total // 100 + 1
        self.decay_steps = decay_steps
        if cfg.decay_rate is not None:
            self.decay_rate = cfg.decay_rate
        elif total == 0:
            self.decay_rate = 1.0
        else:
            stop = max(self.stop_lr, 1e-10)
            self.decay_rate = math.exp(math.log(stop / self.start_lr) / (total / decay_steps))

    def decay(self, u: int) -> float:
        expo = u / self.decay_steps if self.smooth else u // self.decay_steps
        return max(self.start_lr * self.decay_rate**expo, self.stop_lr)


class CosineLR(_Schedule):
    """``lr(u) = stop + (start - stop) * (1 + cos(pi * u / T)) / 2``, ``stop_lr`` from ``T`` on."""

    def decay(self, u: int) -> float:
        if self.decay_total == 0:
            return self.start_lr
        if u >= self.decay_total:
            return self.stop_lr
        a = self.stop_lr / self.start_lr
        return self.start_lr * (a + 0.5 * (1 - a) * (1 + math.cos(math.pi * u / self.decay_total)))


class WsdLR(_Schedule):
    """Warmup-stable-decay: ``start_lr`` for ``T - D`` steps, then over the last
    ``D = clip(int(decay_phase_ratio * numb_steps), 1, T)`` steps one of ``inverse_linear``
    (``1 / (tau / stop + (1 - tau) / start)``), ``cosine`` or ``linear`` in the progress
    ``tau``; ``stop_lr`` from ``T`` on."""

    def __init__(self, cfg: LearningRateConfig, numb_steps: int) -> None:
        super().__init__(cfg, numb_steps)
        self.decay_type = cfg.decay_type
        self.phase = max(1, min(int(cfg.decay_phase_ratio * numb_steps), self.decay_total))
        self.stable = self.decay_total - self.phase

    def decay(self, u: int) -> float:
        if u >= self.decay_total:
            return self.stop_lr
        if u < self.stable:
            return self.start_lr
        tau = min(max((u - self.stable) / self.phase, 0.0), 1.0)
        start, stop = self.start_lr, self.stop_lr
        if self.decay_type == "inverse_linear":
            return 1.0 / (tau / stop + (1.0 - tau) / start)
        if self.decay_type == "cosine":
            return stop + (start - stop) * 0.5 * (1.0 + math.cos(math.pi * tau))
        return start + (stop - start) * tau


_SCHEDULES = {"exp": ExpLR, "cosine": CosineLR, "wsd": WsdLR}


def make_lr(cfg: LearningRateConfig, numb_steps: int) -> _Schedule:
    """The schedule of ``learning_rate.type`` for a run of ``numb_steps`` steps."""
    return _SCHEDULES[cfg.type](cfg, numb_steps)


__all__ = ["CosineLR", "ExpLR", "WsdLR", "make_lr"]
