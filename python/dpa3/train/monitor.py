"""What training reports besides ``lcurve.out``: averaged display metrics (``disp_avg``),
TensorBoard scalars (``tensorboard``) and the PyTorch profiler (``profiling``,
``enable_profiler``), with DeePMD-kit's meanings (``deepmd/pt/train/training.py``).

* ``disp_avg``: the training metrics of a display step are the mean of every step's metrics
  since the previous display step (that step excluded), per task.
* ``tensorboard``: at steps ``s`` (1-based) with ``s % tensorboard_freq == 0`` or ``s == 1``
  the scalars ``<task>/lr``, ``<task>/loss``, ``<task>/<metric>`` (the lcurve's RMSEs) and
  ``<task>/l2_<term>_loss`` (mean squared errors, see :class:`dpa3.train.loss.EnergyLoss`) are
  written to ``tensorboard_log_dir`` (``<task>`` is ``Default`` in a single-task run, as in
  ``dp``); with ``gradient_max_norm`` > 0 also the gradient norms before clipping:
  ``<task>/grad/total_norm``, the histogram ``<task>/grad/param_norms`` (one norm per
  parameter) and ``<task>/grad_top10/<parameter>`` for the ten largest (dpa3's parameter
  names, which differ from DeePMD-kit's).
* ``profiling``: a chrome trace of steps 17-19 written to ``profiling_file``;
  ``enable_profiler``: the same steps as TensorBoard traces in ``tensorboard_log_dir``.

:class:`DeferredInterrupt` turns Ctrl-C into a stop after the current step.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..config.train import TrainingConfig
from ..errors import ConfigError

log = logging.getLogger(__name__)

#: Builds a TensorBoard writer for a log folder (``SummaryWriter``; tests inject fakes).
WriterFactory = Callable[[str], Any]


def summary_writer(log_dir: str) -> Any:
    """torch's ``SummaryWriter`` (needs the ``tensorboard`` package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ConfigError(
            "'training.tensorboard' is true but the 'tensorboard' package is not installed "
            f"({err}); install it (pip install tensorboard) or set it to false"
        ) from None
    return SummaryWriter(log_dir=log_dir)


class Monitor:
    """Per-step bookkeeping of the options above for one run.

    Parameters
    ----------
    cfg
        The ``training`` section.
    main
        Whether this process writes (rank 0).
    writer_factory
        Builds the TensorBoard writer (default :func:`summary_writer`).
    """

    def __init__(
        self, cfg: TrainingConfig, main: bool = True, writer_factory: WriterFactory | None = None
    ) -> None:
        self.cfg = cfg
        self._sums: dict[str, dict[str, float]] = {}
        self._counts: dict[str, int] = {}
        self.writer = None
        self._grads: list[tuple[str, float]] = []
        self._total_norm: float | None = None
        if cfg.tensorboard and main:
            self.writer = (writer_factory or summary_writer)(cfg.tensorboard_log_dir)
        self._prof: Any = None
        if main and (cfg.profiling or cfg.enable_profiler):
            handler = (
                torch.profiler.tensorboard_trace_handler(cfg.tensorboard_log_dir)
                if cfg.enable_profiler
                else None
            )
            self._prof = torch.profiler.profile(
                schedule=torch.profiler.schedule(wait=1, warmup=15, active=3, repeat=1),
                on_trace_ready=handler,
                record_shapes=True,
                with_stack=True,
            )
            self._prof.start()

    def _writes(self, done: int) -> bool:
        """Whether the step that completes ``done`` steps is written to TensorBoard."""
        return self.writer is not None and (done % self.cfg.tensorboard_freq == 0 or done == 1)

    def before_clip(self, done: int, model: torch.nn.Module) -> None:
        """Record the per-parameter gradient norms before clipping (TensorBoard steps only)."""
        if self._writes(done):
            self._grads = [
                (name, float(p.grad.detach().norm()))
                for name, p in model.named_parameters()
                if p.grad is not None
            ]

    def after_clip(self, done: int, total_norm: torch.Tensor) -> None:
        """Record the total gradient norm before clipping (``clip_grad_norm_``'s result)."""
        if self._writes(done):
            self._total_norm = float(total_norm)

    def step(
        self,
        done: int,
        task: str,
        loss: float,
        metrics: Mapping[str, float],
        lr: float,
        extra: Mapping[str, float] | None = None,
    ) -> None:
        """Record the step that completed ``done`` steps and trained ``task``; ``extra``:
        scalars only TensorBoard shows (the ``l2_*_loss`` values)."""
        if self._prof is not None:
            self._prof.step()
        if self.cfg.disp_avg:
            sums = self._sums.setdefault(task, {})
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            self._counts[task] = self._counts.get(task, 0) + 1
        if self._writes(done):
            tag = task or "Default"
            self.writer.add_scalar(f"{tag}/lr", lr, done)
            self.writer.add_scalar(f"{tag}/loss", loss, done)
            for k, v in {**(extra or {}), **metrics}.items():
                self.writer.add_scalar(f"{tag}/{k}", v, done)
            if self._total_norm is not None:
                self.writer.add_scalar(f"{tag}/grad/total_norm", self._total_norm, done)
            if self._grads:
                norms = torch.tensor([g for _, g in self._grads], dtype=torch.float32)
                self.writer.add_histogram(f"{tag}/grad/param_norms", norms, done)
                for name, g in sorted(self._grads, key=lambda x: x[1], reverse=True)[:10]:
                    self.writer.add_scalar(f"{tag}/grad_top10/{name}", g, done)
        self._grads, self._total_norm = [], None

    def display_metrics(
        self, last: Mapping[str, Mapping[str, float] | None]
    ) -> dict[str, Mapping[str, float] | None]:
        """The training metrics a display step shows, per task: ``last`` (each task's last
        step), or with ``disp_avg`` the means since the previous display (then reset)."""
        if not self.cfg.disp_avg:
            return dict(last)
        out: dict[str, Mapping[str, float] | None] = {}
        for task, m in last.items():
            n = self._counts.get(task, 0)
            out[task] = (
                {k: v / n for k, v in self._sums[task].items()}
                if n
                else (None if m is None else dict.fromkeys(m, math.nan))
            )
        self._sums.clear()
        self._counts.clear()
        return out

    def close(self) -> None:
        """Flush the writer and write the profiler's trace."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._prof is not None:
            self._prof.stop()
            if self.cfg.profiling and not self.cfg.enable_profiler:
                self._prof.export_chrome_trace(self.cfg.profiling_file)
                log.info("profiling trace written to %s", self.cfg.profiling_file)
            self._prof = None


class DeferredInterrupt:
    """Turns the first Ctrl-C into a flag checked between steps (a second one aborts)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> DeferredInterrupt:
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


__all__ = ["DeferredInterrupt", "Monitor", "summary_writer"]
