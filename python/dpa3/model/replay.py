"""What a RepFlow layer does for the low-memory path (``docs/internals.md``, "Memory";
:mod:`.low_memory` drives it): the neighbours' products for all rows, and the second pass of
a layer that kept its pre-activations with the gradient of its edge update by hand.

:class:`LayerReplay` is a base of :class:`~.repflow.RepFlowLayer` and uses its weights and
helpers (``_pair_linear``, ``_node_update``, ``_angle_fused``, ...); shapes as there.
"""

from __future__ import annotations

import torch

from .. import _ops
from .graph import Rows, gather


class LayerReplay:
    """Methods of :class:`~.repflow.RepFlowLayer` for the low-memory path (see the module)."""

    def neighbour_matrix(self, level: int) -> torch.Tensor:
        """``W_n [n_dim, k]``: the neighbour features' weights in the pair linears that
        :meth:`forward` at ``level`` evaluates, the edge self-update's ``e_dim`` columns (where
        it runs) before the node messages' ``n_heads * n_dim``.  ``proj = n_ext W_n`` computed
        once for all rows serves every block that reads them (the low-memory path's blocks
        share most of their neighbours)."""
        dn = self.n_dim
        w_node = self.node_edge_linear.matrix[dn : 2 * dn]
        if level == 0 and not self.sequential:
            return w_node
        return torch.cat([self.edge_self_linear.matrix[dn : 2 * dn], w_node], dim=1)

    def _proj_parts(
        self, proj: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``proj`` (rows of ``n_ext W_n``, :meth:`neighbour_matrix`) split into the edge
        self-update's and the node messages' columns (None where not given)."""
        if proj is None:
            return None, None
        k = proj.shape[1] - self.n_heads * self.n_dim
        if k == 0:
            return None, proj
        return proj[:, :k], proj[:, k:]

    def keeps_preactivations(self, level: int, fused: bool) -> bool:
        """Whether :meth:`forward` at ``level`` can keep the pre-activation of its edge update's
        angle term (``keep``) and the low-memory path's second pass use it (:meth:`replay`,
        :meth:`edge_tail_grad`): the fused, parallel-update layer that updates its edges."""
        return fused and self.update_angle and not self.sequential and level >= 1

    def writes_angles_into(self, level: int, fused: bool) -> bool:
        """Whether :meth:`forward` at ``level`` can write its updated angles into a given tensor
        (``a_into``): where it keeps its pre-activations and updates its angles."""
        return self.keeps_preactivations(level, fused) and level == 2

    def edge_tail_grad(
        self, ge: torch.Tensor, x_self: torch.Tensor, x_ang: torch.Tensor, is_a: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The backward pass of the edge update ``e_new = alpha e + b_self act(x_self) + b_ang
        act(x_ang)`` from its pre-activations: the gradient ``ge [E, e_dim]`` of ``e_new`` taken
        to ``(x_self, e, red)``, the edge self-update's pre-activation (autograd takes it on
        through :meth:`replay`'s graph), the input edges (their direct part) and the angles'
        reduced messages (:meth:`replay`'s output, through ``x_ang = Lin_ea2(red)``); what
        autograd would do without the activations' and ``Lin_ea2``'s forward."""
        alpha, betas = self._update_coefficients(self.e_residual, 2, self.e_dim, ge)
        b_self, b_ang = betas[0], betas[1]
        code, thr = self.act_code, self.act.threshold
        g_self = _ops.activation_grad(ge * b_self, x_self, code, thr)
        g_ang = _ops.activation_grad(ge * b_ang, x_ang, code, thr)
        lin2 = self.edge_angle_linear2
        assert lin2 is not None
        g_red = torch.matmul(g_ang, lin2.matrix.t())
        g_e = ge if alpha == 1.0 else ge * alpha  # (res_residual: alpha 1, no copy)
        if not self.smooth_edge_update:
            mask = is_a.unsqueeze(-1)
            g_e = g_e + torch.where(mask, torch.zeros_like(g_red), g_red)
            g_red = torch.where(mask, g_red, torch.zeros_like(g_red))
        return g_self, g_e, g_red

    def replay(
        self,
        n: torch.Tensor,
        n_ext: torch.Tensor,
        e: torch.Tensor,
        a: torch.Tensor,
        center: Rows,
        nei: Rows,
        h2sw: torch.Tensor,
        sw: torch.Tensor,
        a_weight: torch.Tensor,
        a_eij: Rows,
        a_eik: Rows,
        level: int,
        kept: list[torch.Tensor],
        proj: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The low-memory path's second pass of :meth:`forward` (``level`` >= 1,
        :meth:`keeps_preactivations`) from what its first pass kept, ``kept = [x_ang [E, e_dim],
        T_e [Nn, 3, e_dim], T_n [Nn, 3, n_dim]]``: ``(n_new, red, a_new, x_self)`` with their
        graph, where ``red [E, e_dim]`` stands for the angles' reduced messages (values not
        computed: ``x_ang`` is returned in their place), ``a_new`` holds no values either and
        ``x_self`` is the edge self-update's pre-activation; the symmetrisation's outer sums
        are the kept ``T`` with their backward (:meth:`_sym`).  The rest of the edge update is
        not run: :meth:`edge_tail_grad` takes its gradient to ``x_self``, ``e`` and ``red``;
        ``proj`` as in :meth:`forward`."""
        x_ang = kept[0]
        p_self, p_node = self._proj_parts(proj)
        x_self = self._self_preactivation(n, n_ext, e, center, nei, p_self)
        n_j = gather(n_ext, nei)
        nc, ec = self._compressed(n, e)
        w, b = self._angle_weights(level == 2)
        red, a_out = self._angle_fused(
            w, b, self.e_dim, a, nc, ec, center, a_eij, a_eik, a_weight, x_ang
        )
        n_new = self._node_update(
            n, n_ext, n_j, e, center, nei, h2sw, sw, True, p_node, None, kept[1:]
        )
        return n_new, red, a_out, x_self
