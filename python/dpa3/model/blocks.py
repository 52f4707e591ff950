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


class Grad:
    """The gradient of a layer input, written block by block into the buffer of the incoming
    gradient of the same shape (or a new one), or None if no block has one."""

    def __init__(self, incoming: Optional[torch.Tensor], like: torch.Tensor) -> None:  # noqa: UP045
        self.buf = incoming
        self.like = like
        self.used = False

    def put(self, start: int, stop: int, g: Optional[torch.Tensor]) -> None:  # noqa: UP045
        buf = self.buf
        if g is None:
            if buf is not None:
                buf[start:stop].zero_()
            return
        if buf is None:
            buf = torch.zeros_like(self.like)
            self.buf = buf
        buf[start:stop].copy_(g)
        self.used = True

    def result(self) -> Optional[torch.Tensor]:  # noqa: UP045
        return self.buf if self.used else None
