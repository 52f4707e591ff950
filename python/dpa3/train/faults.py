"""Faults during training: a loss, gradients or parameters that are not finite.

A non-finite loss stops training before the optimizer step (the weights stay those of the
last good step); a step whose gradients or updated weights are not finite stops it before a
checkpoint is written, so a diverged run never puts a NaN checkpoint in front of a good one.
Every message names the step and the batch's system (``where``).
"""

from __future__ import annotations

import torch

#: what the user can do about a diverged run
ADVICE = "lower learning_rate.start_lr or check the data"


def nonfinite_loss(loss: float, step: int, where: str) -> FloatingPointError:
    """The error for a loss that is NaN or infinite at 0-based ``step`` on ``where``."""
    return FloatingPointError(f"the loss is {loss} at step {step} ({where}); {ADVICE}")


def nonfinite_gradients(step: int, where: str) -> FloatingPointError:
    """The error for gradients that are NaN or infinite (the loss was finite)."""
    return FloatingPointError(
        f"the gradients are not finite at step {step} ({where}); the weights were not "
        f"updated; {ADVICE}"
    )


def check_parameters_finite(model: torch.nn.Module, step: int, where: str) -> None:
    """Raise before a checkpoint of ``step`` completed steps is written if a weight is NaN or
    infinite (``where``: the system of the last batch trained)."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p.detach()).all()):
            raise FloatingPointError(
                f"parameter '{name}' is not finite after step {step - 1} ({where}); "
                f"no checkpoint written for step {step}, the previous one is kept; {ADVICE}"
            )


__all__ = [
    "ADVICE",
    "check_parameters_finite",
    "nonfinite_gradients",
    "nonfinite_loss",
]
