"""The per-batch inputs of the RepFlow layers besides the features (:class:`Prepared`), and
the blocks of centres of the low-memory backward pass (:class:`Chunk`); :class:`Rows`, the row
indices they hold.

No ``from __future__ import annotations`` here: TorchScript reads the field types of a
NamedTuple that holds another NamedTuple (``Rows``) only from real annotations, in every order
of compilation.
"""

from typing import NamedTuple, Optional

import torch


class Rows(NamedTuple):
    """An index ``idx [M]`` into ``n`` rows, with its inverse in CSR form for fast scatters.

    ``perm = argsort(idx)`` and ``ptr [n+1]``: the entries of ``idx`` equal to ``r`` are
    ``perm[ptr[r]:ptr[r+1]]``.  Without the op library ``perm``/``ptr`` are None and the plain
    ``index_select``/``index_add`` are used.
    """

    idx: torch.Tensor
    perm: Optional[torch.Tensor]  # noqa: UP045 (TorchScript needs typing.Optional here)
    ptr: Optional[torch.Tensor]  # noqa: UP045


class Prepared(NamedTuple):
    """What the layers read besides the features, for one batch (:meth:`DescrptDPA3.prepare`).

    ``Nn`` local nodes, ``E`` edges, ``A`` angles, descriptor precision:
    ``tebd [Nn, n_dim]`` type embedding of the local atoms; ``e_in [E, 1]`` and ``cos [A, 1]``
    the inputs of the edge and angle embeddings; ``h2sw [E, 3]`` (``h2 * sw``), ``sw [E]``,
    ``a_weight [A, 1]`` the switched geometric factors; ``is_a [E]`` the angle edges;
    ``center``, ``nei``, ``a_eij``, ``a_eik`` the row indices of the layers; ``nall`` local +
    ghost atoms; ``fused`` whether the angle block runs in the C++ kernel.  ``e_in``, ``cos``,
    ``h2sw``, ``sw`` and ``a_weight`` are differentiable in the coordinates.
    """

    tebd: torch.Tensor
    e_in: torch.Tensor
    cos: torch.Tensor
    h2sw: torch.Tensor
    sw: torch.Tensor
    a_weight: torch.Tensor
    is_a: torch.Tensor
    center: Rows
    nei: Rows
    a_eij: Rows
    a_eik: Rows
    nall: int
    fused: bool


# Blocks of the low-memory path hold at most about this many angles (whole centres): ~200
# atoms of liquid water, ~0.1 GB of one layer's graph at float32 with the water recipe's widths.
CHUNK_ANGLES = 1 << 17


class Chunk(NamedTuple):
    """Centres ``[c0, c1)`` with their edges ``[e0, e1)`` and angles ``[a0, a1)`` (contiguous:
    edges are grouped by centre, angles by their ``ij`` edge) and the row indices of the
    block: ``center`` (into the block's centres), ``nei`` (into ``rows``), ``a_eij``/``a_eik``
    (into the block's edges).  ``rows [R]`` (ascending) are the node rows (local + ghost) the
    block's neighbours read, so a block's work does not grow with the system's size; None:
    all rows (a single block)."""

    c0: int
    c1: int
    e0: int
    e1: int
    a0: int
    a1: int
    center: Rows
    nei: Rows
    a_eij: Rows
    a_eik: Rows
    rows: Optional[torch.Tensor]  # noqa: UP045
