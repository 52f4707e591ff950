"""``lcurve.out`` and the progress line of the training log (single- and multi-task).

``lcurve.out`` follows DeePMD-kit: a ``# step`` header, one row per display step with, per
metric, the validation then the training value (only the training value without
validation data), and the learning rate last.  Multi-task runs suffix every column with
``_<task>`` and list the tasks in input order; a task without metrics yet (not drawn, or
without validation data) prints ``nan``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

#: Per task (``""`` for a single-task run): (training metrics, validation metrics).
TaskMetrics = Mapping[str, tuple[Mapping[str, float] | None, Mapping[str, float] | None]]


class Lcurve:
    """The column layout of ``lcurve.out``.

    Parameters
    ----------
    metrics
        Per task, the metric names in column order (``EnergyLoss.metric_names``); a single
        task named ``""`` gives the unsuffixed single-task columns.
    validation
        Whether the run has validation data (then each metric has a ``_val`` column).
    """

    def __init__(self, metrics: Mapping[str, Sequence[str]], validation: bool) -> None:
        self.metrics = {task: list(names) for task, names in metrics.items()}
        self.validation = validation

    def _columns(self, cell: Callable[[str, str, str], str]) -> list[str]:
        """Per task and metric, ``cell(task, metric, "val")`` (with validation data) and
        ``cell(task, metric, "trn")`` joined by a space."""
        kinds = ("val", "trn") if self.validation else ("trn",)
        return [
            " ".join(cell(task, k, kind) for kind in kinds)
            for task, names in self.metrics.items()
            for k in names
        ]

    def header(self) -> str:
        """The two comment lines that open a new ``lcurve.out``."""

        def name(task: str, k: str, kind: str) -> str:
            return f"{k}_{kind}{'_' + task if task else ''}".rjust(11)

        cols = ["# step".ljust(7), *self._columns(name), f"{'lr':>8s}"]
        tasks = "_<task>" if any(self.metrics) else ""
        return (
            "   ".join(cols) + "\n# If there is no available reference data, "
            f"rmse_*_{{val,trn}}{tasks} will print nan\n"
        )

    def line(self, step: int, metrics: TaskMetrics, lr: float) -> str:
        """The row of ``step`` (completed steps); missing values print ``nan``."""

        def value(task: str, k: str, kind: str) -> str:
            trn, val = metrics.get(task) or (None, None)
            return f"{((val if kind == 'val' else trn) or {}).get(k, math.nan):11.2e}"

        cols = [f"{step:7d}", *self._columns(value), f"{lr:8.1e}"]
        return "   ".join(cols) + "\n"


def format_metrics(metrics: TaskMetrics) -> str:
    """The metrics part of a progress line: ``k_trn x ... k_val x ...`` per task.

    Tasks other than ``""`` are prefixed ``[task]`` (``-`` when they have no metrics yet)
    and separated by two spaces.
    """
    out = []
    for task, (trn, val) in metrics.items():
        parts = [f"{k}_trn {x:.3e}" for k, x in (trn or {}).items()]
        parts += [f"{k}_val {x:.3e}" for k, x in (val or {}).items()]
        text = " ".join(parts) if parts else "-"
        out.append(f"[{task}] {text}" if task else text)
    return "  ".join(out)


def format_eta(seconds: float) -> str:
    """``h:mm:ss`` (``?`` if not finite)."""
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """The log line of a display step: loss, metrics, lr, steps/s since the previous one, ETA.

    Parameters
    ----------
    n_total
        The last step of the run.
    step
        The step the run (or this display interval) starts from; the clock starts now.
    """

    def __init__(self, n_total: int, step: int) -> None:
        self.n_total = n_total
        self._t, self._step = time.perf_counter(), step

    def line(
        self, done: int, loss: float, metrics: TaskMetrics, lr: float, timing: bool = True
    ) -> str:
        """The line of ``done`` completed steps (and restart the rate's clock); ``timing``
        false (``training.time_training``) leaves out the rate and the ETA."""
        now = time.perf_counter()
        rate = (done - self._step) / max(now - self._t, 1e-9)
        self._t, self._step = now, done
        text = f"step {done}/{self.n_total}  loss {loss:.4e}  {format_metrics(metrics)}  "
        text += f"lr {lr:.2e}"
        if not timing:
            return text
        return f"{text}  {rate:.2f} steps/s  ETA {format_eta((self.n_total - done) / rate)}"


__all__ = ["Lcurve", "Progress", "TaskMetrics", "format_eta", "format_metrics"]
