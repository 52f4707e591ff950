"""Data-parallel training over ``torch.distributed`` (``torchrun -m dpa3 train input.json``).

``dpa3 train`` started by ``torchrun`` (the variables ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` are set) joins a process group (backend ``gloo`` on CPU, ``nccl`` on CUDA;
with ``--device auto``, the default, CUDA whenever a GPU is visible; a CUDA rank uses the GPU
``LOCAL_RANK mod (visible GPUs)``).  Every rank holds the whole model and draws its own
batches (its own random stream); after ``loss.backward()`` the gradients are averaged over
the ranks with one ``all_reduce`` per dtype, then every rank takes the same optimizer step,
so the weights stay identical without being sent again.

Why not ``DistributedDataParallel``: the model computes forces with
``torch.autograd.grad(..., create_graph=True)`` inside its forward, and in multi-task
training each rank picks its own task, so some heads have no gradient on some ranks.  DDP
handles both only with ``find_unused_parameters=True`` and a reducer whose hooks must not
fire during the inner ``autograd.grad``; averaging explicitly after the backward pass is
simpler, has exactly DDP's semantics (sum over ranks divided by the world size; a parameter
that no rank used keeps ``grad = None``, so the optimizer skips it as in one process) and
costs one collective per dtype instead of overlapped buckets.

Rank 0 alone computes statistics (neighbour counts for ``e_sel: "auto"``, the energy bias,
the stat file) and broadcasts the result, writes ``lcurve.out``, validates, logs and saves
checkpoints (which hold every rank's sampler state, so a restart on the same number of
ranks continues every stream).  Failures that happen on rank 0 inside such a section are
re-raised on every rank, so no rank waits forever in a collective.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

# torch.distributed.nn binds ``group=group.WORLD`` as default arguments when first imported
# (torch does so lazily, e.g. through torch._dynamo when the optimizer is built).  Imported
# after init_process_group, those defaults keep the group alive past destroy_process_group,
# and its gloo worker threads then release tensors during interpreter shutdown: a rare
# "terminate called without an active exception" (SIGABRT) at exit.  Imported here, before
# any group exists (init_distributed is below), the defaults are None.
import torch.distributed.nn

from ..device import describe, resolve_device

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Environment variables set by ``torchrun`` for every worker.
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """Rank and world size of this process (``world_size == 1``: plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether there are several ranks (collectives are needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that writes files and logs)."""
        return self.rank == 0

    @staticmethod
    def current() -> DistContext:
        """The context of the initialised default process group, or a single process."""
        if dist.is_available() and dist.is_initialized():
            ws = dist.get_world_size()
            if ws > 1:
                return DistContext(dist.get_rank(), ws, int(os.environ.get("LOCAL_RANK", "0")))
        return DistContext()

    # ------------------------------------------------------------------ seeds
    def rank_seed(self, seed: int | None, stream: int = 0) -> int | None:
        """Seed of random stream ``stream`` on this rank.

        Rank 0's stream 0 is ``seed`` itself, so one rank reproduces a single-process run;
        the other (rank, stream) pairs are derived with ``numpy.random.SeedSequence``.
        ``None`` stays ``None`` (fresh entropy, different on every rank).
        """
        if seed is None:
            return None
        if self.rank == 0 and stream == 0:
            return seed
        return int(np.random.SeedSequence([seed, stream, self.rank]).generate_state(1)[0])

    # ------------------------------------------------------------------ collectives
    def _device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._device())
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and return its result on every rank.

        An exception raised by ``fn`` on rank 0 is raised again on every rank (the other
        ranks get the same exception object), so nobody is left waiting in a collective.
        """
        if not self.enabled:
            return fn()
        result: Any = None
        error: BaseException | None = None
        if self.is_main:
            try:
                result = fn()
            except Exception as err:  # forwarded to every rank below
                error = err
        ok, payload = self.broadcast_object(
            (error is None, result if error is None else _picklable(error))
        )
        if not ok:
            if self.is_main and error is not None:
                raise error
            raise payload
        return payload

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on at least one rank."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers into ``module`` on every rank."""
        if not self.enabled:
            return
        seen: set[int] = set()
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                if id(t) in seen:
                    continue
                seen.add(id(t))
                dist.broadcast(t.data, src=0)

    def average_gradients(self, params: Sequence[torch.nn.Parameter], finite: bool = True) -> bool:
        """Average ``.grad`` over the ranks (DDP semantics); returns whether every loss was finite.

        ``params`` must be the same list, in the same order, on every rank.  A parameter
        without a gradient contributes zeros; one that has no gradient on any rank keeps
        ``grad = None``.  ``finite`` is this rank's loss check; if any rank reports a
        non-finite loss, every rank gets ``False`` (and the gradients are left undefined).
        """
        if not self.enabled:
            return finite
        dev = self._device()
        used = torch.tensor(
            [p.grad is not None for p in params] + [not finite], dtype=torch.float64, device=dev
        )
        dist.all_reduce(used)
        flags = used.tolist()
        if flags[-1] > 0:
            return False
        groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for i, p in enumerate(params):
            if flags[i] > 0:
                groups.setdefault((p.dtype, p.device), []).append(i)
        for (dtype, device), idx in groups.items():
            flat = torch.cat(
                [
                    params[i].grad.reshape(-1)
                    if params[i].grad is not None
                    else torch.zeros(params[i].numel(), dtype=dtype, device=device)
                    for i in idx
                ]
            )
            dist.all_reduce(flat)
            flat /= self.world_size
            off = 0
            for i in idx:
                p = params[i]
                n = p.numel()
                p.grad = flat[off : off + n].view_as(p).clone()
                off += n
        return True

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.enabled:
            dist.barrier()


def _picklable(err: BaseException) -> BaseException:
    """``err`` if it survives pickling, else a RuntimeError with its message."""
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


def torchrun_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from the ``torchrun`` variables, or ``None``."""
    if not all(k in os.environ for k in ENV_VARS[:2]):
        return None
    try:
        rank = int(os.environ["RANK"])
        world = int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        return None
    return rank, world, local


def init_distributed(
    device: str | torch.device = "auto", timeout_s: float = 1800.0
) -> tuple[DistContext, torch.device]:
    """Join the ``torchrun`` process group if there is one with several ranks.

    ``device`` is resolved by :func:`dpa3.device.resolve_device` (``auto``: CUDA if a GPU is
    visible, else CPU); under ``torchrun`` a CUDA rank uses ``cuda:(LOCAL_RANK mod GPUs)``.
    Returns the context and the device this rank trains on.  Without ``torchrun`` (or with
    one rank) no process group is initialised.  Backend: ``nccl`` for CUDA, ``gloo`` for CPU.
    """
    env = torchrun_env()
    if env is None or env[1] <= 1:
        dev = resolve_device(device, option="--device")
        log.info("%s", describe(device, dev))
        return DistContext(), dev
    rank, world, local = env
    dev = resolve_device(device, local_rank=local, option="--device")
    if dist.is_initialized():
        return DistContext.current(), dev
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(
        backend=backend,
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    ctx = DistContext(rank, world, local)
    log.info(
        "distributed training: rank %d of %d, backend %s, %s",
        rank,
        world,
        backend,
        describe(device, dev),
    )
    return ctx, dev


def shutdown_distributed() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = [
    "DistContext",
    "init_distributed",
    "shutdown_distributed",
    "torchrun_env",
]
