"""Block-wise bookkeeping of the low-memory path (``DescrptDPA3.stack_inputs`` /
``coord_grad``): what the first pass keeps (:class:`Kept`, in one buffer: :class:`Workspace`),
the node rows a block reads, and the sums of the blocks' gradients."""

import math
from typing import NamedTuple, Optional

import torch

from .. import _ops


class Kept(NamedTuple):
    """What the low-memory path's first pass keeps for its backward pass (``stack_inputs``).

    Per layer ``1 .. L-1``: ``ns`` its input nodes ``[Nn, n_dim]``; ``es`` its input edges and
    ``as_`` its input angles block by block (``[E_c, e_dim]`` / ``[A_c, a_dim]`` per block);
    ``own_e`` / ``own_a`` whether those are this layer's alone (the previous layer computed
    them; not the same tensors as its own inputs, which a layer that does not update them
    passes on), so that the backward pass may write their gradient in their place.  Per layer
    ``0 .. L-1``: ``pres`` block by block ``[x_ang [E_c, e_dim], T_e [N_c, 3, e_dim], T_n [N_c,
    3, n_dim]]``, the pre-activation of the edge update's angle term and the node update's
    outer sums of the symmetrisation (``RepFlowLayer._sym``), or None (where the layer's
    second pass runs its forward; always for the last layer, which runs once, there).
    Every block tensor is a view of one :class:`Workspace` buffer (but inputs that layer 0
    passes on unchanged).
    """

    ns: list[torch.Tensor]
    es: list[list[torch.Tensor]]
    as_: list[list[torch.Tensor]]
    pres: list[Optional[list[list[torch.Tensor]]]]  # noqa: UP045
    own_e: list[bool]
    own_a: list[bool]


def workspace_numel(n: int) -> int:
    """``n`` rounded up to the next of the sizes ``2^(k/8)`` (steps of ~9 %): an evaluation
    asks for the same size as the one before unless its graph grew past the step, so the
    allocator hands back the buffer it freed (the part beyond ``n`` is never written, and
    pages never written are not resident)."""
    if n <= 1:
        return max(n, 0)
    k = math.ceil(8.0 * math.log(float(n)) / math.log(2.0))
    return max(n, math.ceil(2.0 ** (k / 8.0)))


class Workspace:
    """One buffer for everything the first pass keeps, handed out in slots (views): the
    block tensors of a layer are written into its slot as the blocks compute them, so the
    kept data is not scattered between the blocks' temporaries across the heap (which made
    the resident memory of long runs grow, ``benchmarks/results_memory.md``).  ``pooled`` (the
    op library is loaded): the buffer is ``dpa3::workspace``'s, on the CPU a mapping outside
    malloc that the next evaluation of the same size gets back, whatever malloc did in between
    (``src/ops/kernels/workspace.cpp``)."""

    def __init__(self, like: torch.Tensor, numel: int, pooled: bool = False) -> None:
        size = workspace_numel(numel)
        self.buf = _ops.workspace(like, size) if pooled else like.new_empty(size)
        self.off = 0

    def slot(self, rows: int, width: int) -> torch.Tensor:
        """The next ``[rows, width]`` of the buffer."""
        end = self.off + rows * width
        assert end <= self.buf.shape[0], "Workspace: capacity exceeded"
        out = self.buf[self.off : end].view(rows, width)
        self.off = end
        return out


def rows_of(x: torch.Tensor, rows: Optional[torch.Tensor]) -> torch.Tensor:  # noqa: UP045
    """The rows ``rows`` of ``x`` (a new tensor), or ``x`` itself for None (all rows)."""
    if rows is None:
        return x
    return x.index_select(0, rows)


def add_rows(
    acc: torch.Tensor,
    rows: Optional[torch.Tensor],  # noqa: UP045
    g: Optional[torch.Tensor],  # noqa: UP045
) -> None:
    """``acc[rows] += g`` (``rows`` distinct; all rows for None; nothing for ``g`` None)."""
    if g is None:
        return
    if rows is None:
        acc += g
    else:
        acc.index_add_(0, rows, g)


def add_to(acc: torch.Tensor, start: int, g: Optional[torch.Tensor]) -> None:  # noqa: UP045
    """``acc[start : start + len(g)] += g`` (nothing for None)."""
    if g is not None:
        acc[start : start + g.shape[0]] += g


class BlockGrads:
    """The gradient of a layer input block by block (``put`` in block order): one tensor per
    block, zeros where a block has none, or None if no block has one (nothing allocated)."""

    def __init__(self) -> None:
        self.grads: list[Optional[torch.Tensor]] = []  # noqa: UP045
        self.shapes: list[list[int]] = []
        self.kinds: list[torch.Tensor] = []  # empty tensors of the inputs' dtype and device
        self.used = False

    def put(self, g: Optional[torch.Tensor], like: torch.Tensor) -> None:  # noqa: UP045
        """The next block's gradient ``g`` (None: zero) of its input ``like`` (not kept)."""
        self.grads.append(g)
        self.shapes.append(list(like.shape))
        self.kinds.append(like.new_empty(0))
        if g is not None:
            self.used = True

    def result(self) -> Optional[list[torch.Tensor]]:  # noqa: UP045
        if not self.used:
            return None
        out: list[torch.Tensor] = []
        for i, g in enumerate(self.grads):
            out.append(self.kinds[i].new_zeros(self.shapes[i]) if g is None else g)
        return out
