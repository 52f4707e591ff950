"""Block-wise gradient bookkeeping of the low-memory path (``DescrptDPA3.stack_inputs`` /
``coord_grad``): the node rows a block reads, and the sums of the blocks' gradients."""

from typing import Optional

import torch


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
