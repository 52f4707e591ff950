"""Test helper: a pure-PyTorch reference of the ghost-exchange op, and self-swap schedules.

The compiled op ``torch.ops.dpa3.border_exchange`` (``src/ops``, loaded by :mod:`dpa3._ops`)
fills the ghost rows of a ``[nall, d]`` feature matrix swap by swap over a LAMMPS-style schedule
(``comm_dict``, see ``docs/internals.md``) and sends ghost gradients back to their owners in the
backward pass. This module implements the same contract for *self swaps only* (one process,
periodic images), with ``index_select`` / ``index_add``, so that tests can check the op against it.
It is not TorchScript-able; models call the op (``dpa3.model.exchange.ghost_features``).

Contract, with ``o_0 = nloc``, ``o_{s+1} = o_s + recv_num[s]``, ``o_nswap = nall`` (so
``nloc = nall - sum(recv_num)``) and ``L_s = send_idx[send_off[s]:send_off[s+1]]``:

- forward ``y = B g``: ``y = g.clone()``; for ``s = 0 .. nswap-1``: ``y[o_s:o_{s+1}] = y[L_s]``
  (gathered after the earlier swaps landed, so later swaps can forward ghost rows);
- backward ``gb = B^T gy``: ``gb = gy.clone()``; for ``s = nswap-1 .. 0``:
  ``gb.index_add_(0, L_s, gb[o_s:o_{s+1}])``; finally ``gb[nloc:] = 0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dpa3._ops import COMM_KEYS, comm_args

__all__ = [
    "COMM_KEYS",
    "border_exchange_reference",
    "comm_args",
    "reference_backward",
    "reference_forward",
    "self_swap_comm_dict",
]


def _self_schedule(
    nall: int, sched: Sequence[torch.Tensor]
) -> tuple[int, list[tuple[torch.Tensor, int, int]]]:
    """Validate a self-swap schedule; return nloc and per swap (L_s, o_s, recv_num[s])."""
    send_idx, send_off, send_num, recv_num, send_proc, recv_proc, _comm, rank = sched
    off = [int(v) for v in send_off.tolist()]
    ns = [int(v) for v in send_num.tolist()]
    nr = [int(v) for v in recv_num.tolist()]
    sp = [int(v) for v in send_proc.tolist()]
    rp = [int(v) for v in recv_proc.tolist()]
    me = int(rank.reshape(-1)[0])
    nswap = len(ns)
    if len(off) != nswap + 1 or off[0] != 0 or off[-1] != send_idx.numel():
        raise ValueError("send_off must be the prefix sums of send_num over send_idx")
    nloc = nall - sum(nr)
    if nloc < 0:
        raise ValueError(f"the swaps receive {sum(nr)} rows but there are only {nall}")
    swaps = []
    first = nloc
    idx = send_idx.long()
    for s in range(nswap):
        if sp[s] != me or rp[s] != me:
            raise ValueError(f"swap {s} is not a self swap; the reference handles self swaps only")
        if off[s + 1] - off[s] != ns[s] or ns[s] != nr[s]:
            raise ValueError(f"swap {s}: inconsistent counts")
        ls = idx[off[s] : off[s + 1]]
        if ls.numel() and (int(ls.min()) < 0 or int(ls.max()) >= first):
            raise ValueError(f"swap {s} sends rows outside [0, {first})")
        swaps.append((ls, first, nr[s]))
        first += nr[s]
    return nloc, swaps


def reference_forward(g: torch.Tensor, *sched: torch.Tensor) -> torch.Tensor:
    """``B g`` for a self-swap schedule, no autograd bookkeeping (``g [nall, ...]``)."""
    _, swaps = _self_schedule(g.shape[0], sched)
    y = g.clone()
    for ls, first, n in swaps:
        y[first : first + n] = y.index_select(0, ls.to(g.device))
    return y


def reference_backward(gy: torch.Tensor, *sched: torch.Tensor) -> torch.Tensor:
    """``B^T gy`` for a self-swap schedule, ghost rows of the result zeroed."""
    nloc, swaps = _self_schedule(gy.shape[0], sched)
    gb = gy.clone()
    for ls, first, n in reversed(swaps):
        gb.index_add_(0, ls.to(gy.device), gb[first : first + n].clone())
    gb[nloc:] = 0
    return gb


class _Exchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g: torch.Tensor, *sched: torch.Tensor) -> torch.Tensor:
        ctx.sched = sched
        return reference_forward(g, *sched)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        return (_ExchangeTransposed.apply(gy, *ctx.sched),) + (None,) * len(ctx.sched)


class _ExchangeTransposed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gy: torch.Tensor, *sched: torch.Tensor) -> torch.Tensor:
        ctx.sched = sched
        return reference_backward(gy, *sched)

    @staticmethod
    def backward(ctx, gg: torch.Tensor):
        return (_Exchange.apply(gg, *ctx.sched),) + (None,) * len(ctx.sched)


def border_exchange_reference(
    g: torch.Tensor,
    send_idx: torch.Tensor,
    send_off: torch.Tensor,
    send_num: torch.Tensor,
    recv_num: torch.Tensor,
    send_proc: torch.Tensor,
    recv_proc: torch.Tensor,
    comm: torch.Tensor,
    rank: torch.Tensor,
) -> torch.Tensor:
    """Differentiable pure-PyTorch ``torch.ops.dpa3.border_exchange`` for self swaps.

    Parameters
    ----------
    g
        ``[nall, ...]`` float features; rows ``[0, nloc)`` owned, ghost rows are not read.
    send_idx, send_off, send_num, recv_num, send_proc, recv_proc, comm, rank
        The schedule (see :data:`COMM_KEYS`); every swap must be a self swap.

    Returns
    -------
    torch.Tensor
        ``[nall, ...]``, a new tensor; ghost rows hold copies of their source rows.
    """
    return _Exchange.apply(
        g, send_idx, send_off, send_num, recv_num, send_proc, recv_proc, comm, rank
    )


def self_swap_comm_dict(
    mapping: torch.Tensor,
    nloc: int,
    n_swaps: int = 3,
    chain: bool = True,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """A self-swap ``comm_dict`` reproducing the periodic images of a single-process system.

    The ghost rows ``[nloc, nall)`` are split into ``n_swaps`` contiguous blocks (swap ``s``
    fills block ``s``; blocks may be empty, giving zero-count swaps). With ``chain``, a ghost
    is copied from the most recent earlier copy of the same owner (possibly a ghost filled by an
    earlier swap), as LAMMPS does for edge and corner images; otherwise from its owner.
    Either way ``border_exchange(g, ...)[j] == g[mapping[j]]`` for every row ``j``.

    Parameters
    ----------
    mapping
        ``[nall]`` (or ``[1, nall]``) int64 owner of every extended atom, ``mapping[i] = i``
        for ``i < nloc``.
    nloc
        Number of local (owned) atoms.
    n_swaps
        Number of swaps (>= 0; 0 is only valid without ghosts).
    chain
        Send earlier ghost copies instead of owners where possible.
    device
        Device of ``send_idx`` (the feature device); everything else stays on the CPU.

    Returns
    -------
    dict[str, torch.Tensor]
        The ``comm_dict`` (keys :data:`COMM_KEYS`) with ``comm = 0`` and ``rank = 0``.
    """
    owner = mapping.reshape(-1).to("cpu", torch.int64)
    nall = owner.numel()
    nghost = nall - nloc
    if nloc < 0 or nghost < 0:
        raise ValueError(f"nloc = {nloc} outside [0, {nall}]")
    if nghost and (n_swaps < 1 or int(owner[nloc:].min()) < 0 or int(owner[nloc:].max()) >= nloc):
        raise ValueError("ghost owners must lie in [0, nloc) and need at least one swap")
    sizes = [nghost // n_swaps + (1 if s < nghost % n_swaps else 0) for s in range(n_swaps)]
    latest = list(range(nloc))  # owner -> most recent row holding a copy of it
    send: list[int] = []
    first = nloc
    for n in sizes:
        rows = range(first, first + n)
        if chain:
            send.extend(latest[int(owner[j])] for j in rows)
            for j in rows:
                latest[int(owner[j])] = j
        else:
            send.extend(int(owner[j]) for j in rows)
        first += n
    counts = torch.tensor(sizes, dtype=torch.int32)
    off = torch.zeros(n_swaps + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(counts.long(), 0)
    me = torch.zeros(n_swaps, dtype=torch.int32)
    return {
        "send_idx": torch.tensor(send, dtype=torch.int32, device=device),
        "send_off": off,
        "send_num": counts,
        "recv_num": counts.clone(),
        "send_proc": me,
        "recv_proc": me.clone(),
        "comm": torch.zeros(1, dtype=torch.int64),
        "rank": torch.zeros(1, dtype=torch.int32),
    }
