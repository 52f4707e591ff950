"""The exchange boundary of the model: ghost-atom node features before every RepFlow layer.

On one process (``mapping`` given, or no ghosts) a layer reads its neighbours' features from
their local owners, so nothing moves.  Under LAMMPS each rank owns its local atoms and holds
ghost copies of atoms owned elsewhere; before every layer the ghost rows are refreshed from the
owners with the compiled op ``border_exchange`` over LAMMPS's swap schedule ``comm_dict``
(keys and dtypes: :data:`dpa3._ops.COMM_KEYS`; the schedule and the op's contract are in
``docs/internals.md``).  Its backward pass sends the ghosts' gradients back to their owners, so
forces on ghost atoms end up on the rank that owns them.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _ops
from .._ops import COMM_KEYS

__all__ = ["COMM_KEYS", "ghost_features", "ops_loaded"]


@torch.jit.unused
def ops_loaded() -> bool:
    """Whether the op library is loaded (loading it if built); eager mode only."""
    return _ops.load_ops()


@torch.jit.unused
def _require_ops() -> None:
    if not _ops.load_ops():
        raise RuntimeError("dpa3: the exchange path needs the op library libdpa3_ops.so")


def ghost_features(
    n: torch.Tensor,
    nall: int,
    comm_dict: Optional[dict[str, torch.Tensor]],  # noqa: UP045 (TorchScript needs Optional)
) -> torch.Tensor:
    """Node features as a layer's neighbours see them.

    Parameters
    ----------
    n
        ``[nloc, d]`` features of the local atoms (``[nf * nloc, d]`` without ``comm_dict``).
    nall
        Local + ghost atoms of this rank (read only with ``comm_dict``).
    comm_dict
        The exchange schedule (one frame), or None on the single-process path, where
        neighbour indices already point at local owners.

    Returns
    -------
    ``n`` itself without ``comm_dict``; otherwise ``[nall, d]`` whose rows ``[0, nloc)`` are
    ``n`` and whose ghost rows hold their owners' rows.
    """
    if comm_dict is None:
        return n
    if not torch.jit.is_scripting():
        _require_ops()
    pad = torch.zeros(nall - n.shape[0], n.shape[1], dtype=n.dtype, device=n.device)
    return _ops.border_exchange(torch.cat([n, pad], dim=0), comm_dict)
