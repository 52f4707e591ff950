"""One RepFlow layer of DPA3 on the flat edge/angle graph (docs/dpa3-spec.md §2.3-2.8).

Shapes (``Nn = nf*nloc`` local nodes, ``E`` valid edges, ``A`` valid angles):
``n [Nn, n_dim]``, ``e [E, e_dim]``, ``a [A, a_dim]``; ``n_ext [*, n_dim]`` holds the node
features gathered by ``nei [E]`` (local owners, or local + ghost rows after the exchange).

Concatenated linears ``[x, y, z] W`` are evaluated as ``x W_x + y W_y + z W_z`` with the
per-node products taken *before* gathering to edges/angles (DeePMD-kit's ``optim_update``;
identical up to rounding).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import _ops
from ..config.model import RepflowConfig
from .graph import Rows, edge_sum, gather, scatter, weighted_scatter
from .network import Activation, Linear
from .replay import LayerReplay


def _residual_param(
    count: int, dim: int, cfg: RepflowConfig, dtype: torch.dtype, generator: torch.Generator | None
) -> nn.Parameter:
    if cfg.update_residual_init == "norm":
        init = torch.randn(count, dim, generator=generator, dtype=torch.float64)
        init = init * cfg.update_residual
    else:
        init = torch.full((count, dim), cfg.update_residual, dtype=torch.float64)
    return nn.Parameter(init.to(dtype))


class RepFlowLayer(LayerReplay, nn.Module):
    """Node, edge and angle updates of one message-passing layer (its low-memory second pass:
    :class:`~.replay.LayerReplay`)."""

    def __init__(
        self,
        cfg: RepflowConfig,
        activation: Activation,
        dtype: torch.dtype,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        dn, de, da, nh = cfg.n_dim, cfg.e_dim, cfg.a_dim, cfg.n_multi_edge_message
        ax = cfg.axis_neuron
        self.n_dim, self.e_dim, self.a_dim, self.n_heads, self.axis = dn, de, da, nh, ax
        self.e_norm = cfg.e_norm
        self.a_norm = cfg.a_norm
        self.update_angle = cfg.update_angle
        self.smooth_edge_update = cfg.smooth_edge_update
        self.sequential = cfg.sequential_update
        self.update_style = cfg.update_style
        self.compress_split = cfg.a_compress_rate > 0 and cfg.a_compress_use_split
        self.nc_dim = cfg.n_comp_dim
        self.ec_dim = cfg.e_comp_dim
        self.act = activation
        # activations the fused C++ angle kernel implements (-1: composite path only)
        self.act_code = {"silu": 0, "silut": 1, "tanh": 2}.get(activation.name, -1)

        def lin(n_in: int, n_out: int, bias: bool = True) -> Linear:
            return Linear(n_in, n_out, bias=bias, dtype=dtype, generator=generator)

        self.node_self_mlp = lin(dn, dn)
        self.node_sym_linear = lin(ax * (de + dn), dn)
        self.node_edge_linear = lin(2 * dn + de, nh * dn)
        self.edge_self_linear = lin(2 * dn + de, de)
        res = cfg.update_style == "res_residual"
        self.n_residual = _residual_param(2 + nh, dn, cfg, dtype, generator) if res else None
        if self.update_angle:
            a_in = da + self.nc_dim + 2 * self.ec_dim
            linear_compress = cfg.a_compress_rate > 0 and not cfg.a_compress_use_split
            self.a_compress_n_linear = lin(dn, self.nc_dim, False) if linear_compress else None
            self.a_compress_e_linear = lin(de, self.ec_dim, False) if linear_compress else None
            self.edge_angle_linear1 = lin(a_in, de)
            self.edge_angle_linear2 = lin(de, de)
            self.angle_self_linear = lin(a_in, da)
            self.e_residual = _residual_param(2, de, cfg, dtype, generator) if res else None
            self.a_residual = _residual_param(1, da, cfg, dtype, generator) if res else None
        else:
            self.a_compress_n_linear = None
            self.a_compress_e_linear = None
            self.edge_angle_linear1 = None
            self.edge_angle_linear2 = None
            self.angle_self_linear = None
            self.e_residual = _residual_param(1, de, cfg, dtype, generator) if res else None
            self.a_residual = None

    # ----------------------------------------------------------------- helpers
    def _act(self, x: torch.Tensor, fused: bool) -> torch.Tensor:
        """The layer's activation; with ``fused`` the op library's (same function, its first and
        second derivatives in one pass each instead of a chain of element-wise ops)."""
        if fused:
            return _ops.activation(x, self.act_code, self.act.threshold)
        return self.act(x)

    def _combine(
        self,
        x: torch.Tensor,
        updates: list[torch.Tensor],
        rho: torch.Tensor | None,
        into: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Residual update of ``x`` by ``updates`` in the configured ``update_style``;
        ``into`` (without a graph, ``x``'s shape): the result is written into it and it is
        returned (the low-memory path's buffer)."""
        if into is not None:  # alpha x + sum_k beta_k u_k, in place
            alpha, betas = self._update_coefficients(rho, len(updates), x.shape[-1], x)
            if alpha == 1.0:
                torch.addcmul(x, updates[0], betas[0], out=into)
            else:
                torch.mul(x, alpha, out=into)
                into.addcmul_(updates[0], betas[0])
            for k in range(1, len(updates)):
                into.addcmul_(updates[k], betas[k])
            return into
        if self.update_style == "res_residual":
            assert rho is not None
            out = x
            for k, u in enumerate(updates):
                out = torch.addcmul(out, rho[k], u)
            return out
        total = updates[0]
        for u in updates[1:]:
            total = total + u
        if self.update_style == "res_avg":
            return (x + total) / math.sqrt(len(updates) + 1.0)
        return x + total / math.sqrt(float(len(updates)))  # res_incr

    def _pair_linear(
        self,
        w: torch.Tensor,
        b: torch.Tensor | None,
        n: torch.Tensor,
        n_ext: torch.Tensor,
        e: torch.Tensor,
        center: Rows,
        nei: Rows,
        xn: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[n_i, n_j, e_ij] W + b`` with ``W`` rows ordered ``n_i, n_j, e_ij``; ``xn``: the
        rows of ``n_ext W_j`` if already computed (:meth:`neighbour_matrix`)."""
        dn = self.n_dim
        return edge_sum(
            torch.matmul(n, w[:dn]),
            torch.matmul(n_ext, w[dn : 2 * dn]) if xn is None else xn,
            torch.matmul(e, w[2 * dn :]),
            b,
            center,
            nei,
        )

    def _self_preactivation(
        self,
        n: torch.Tensor,
        n_ext: torch.Tensor,
        e: torch.Tensor,
        center: Rows,
        nei: Rows,
        xn: torch.Tensor | None,
    ) -> torch.Tensor:
        """The edge self-update's pre-activation ``x_self = [n_i, n_j, e_ij] W + b [E, e_dim]``."""
        lin = self.edge_self_linear
        return self._pair_linear(lin.matrix, lin.bias, n, n_ext, e, center, nei, xn)

    def _sym(
        self,
        g: torch.Tensor,
        h2sw: torch.Tensor,
        center: Rows,
        nnode: int,
        keep: torch.Tensor | None = None,
        kept: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Symmetrisation ``G(g)`` flattened to ``[Nn, axis * d]`` (docs/dpa3-spec.md §2.4).

        On the op library's path, the centres' outer sums ``T [Nn, 3, d]`` are copied into
        ``keep`` (the low-memory path's first pass), and ``kept`` (such a ``T`` of the same
        inputs) is used in their place, with their backward (its second pass,
        :meth:`replay`)."""
        d = g.shape[1]
        perm = center.perm
        ptr = center.ptr
        if perm is not None and ptr is not None:  # op library: no [E, 3, d] intermediate
            tt = _ops.center_outer(h2sw, g, center.idx, perm, ptr, kept)
            if keep is not None:
                keep.copy_(tt)
        else:
            t = h2sw.unsqueeze(-1) * g.unsqueeze(1)  # [E, 3, d]
            tt = scatter(t.reshape(t.shape[0], 3 * d), center, nnode).view(nnode, 3, d)
        tt = tt / math.sqrt(self.e_norm)
        gg = torch.matmul(tt[:, :, : self.axis].transpose(1, 2), tt) / 3.0
        return gg.reshape(nnode, self.axis * d)

    def _edge_terms(
        self,
        w: torch.Tensor,
        b: torch.Tensor | None,
        nc: torch.Tensor,
        ec: torch.Tensor,
        center: Rows,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-edge parts of ``[a, n~_i, e~_ik, e~_ij] W + b`` (``W`` rows in that order).

        Returns the ``k``-independent part ``(n~ W_n)[i] + e~_ij W_j + b [E, out]`` (gathered
        by ``ij``) and ``e~ W_k [E, out]`` (gathered by ``ik``); ``a W_a`` is the rest.
        """
        da, dnc, dec = self.a_dim, self.nc_dim, self.ec_dim
        per_edge = edge_sum(
            torch.matmul(nc, w[da : da + dnc]),
            None,
            torch.matmul(ec, w[da + dnc + dec :]),
            b,
            center,
            center,
        )
        return per_edge, torch.matmul(ec, w[da + dnc : da + dnc + dec])

    def _angle_input(
        self,
        w: torch.Tensor,
        b: torch.Tensor | None,
        a: torch.Tensor,
        nc: torch.Tensor,
        ec: torch.Tensor,
        center: Rows,
        a_eij: Rows,
        a_eik: Rows,
    ) -> torch.Tensor:
        """``[a, n~_i, e~_ik, e~_ij] W + b`` over the flat angles ``[A, out]``."""
        per_edge, vk = self._edge_terms(w, b, nc, ec, center)
        return edge_sum(per_edge, vk, torch.matmul(a, w[: self.a_dim]), None, a_eij, a_eik)

    def _compressed(self, n: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Views ``n~ [Nn, nc_dim]``, ``e~ [E, ec_dim]`` used by the angle messages
        (docs/dpa3-spec.md §2.5)."""
        cn = self.a_compress_n_linear
        ce = self.a_compress_e_linear
        if cn is not None and ce is not None:
            return torch.matmul(n, cn.matrix), torch.matmul(e, ce.matrix)
        if self.compress_split:
            return n[:, : self.nc_dim], e[:, : self.ec_dim]
        return n, e

    def _angle_preactivation(
        self,
        red: torch.Tensor,
        e: torch.Tensor,
        is_a: torch.Tensor,
        into: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``Lin_ea2(P) [E, e_dim]`` from the reduced messages ``red [E, e_dim]``
        (docs/dpa3-spec.md §2.3.6); ``into`` (without a graph): written into it."""
        lin2 = self.edge_angle_linear2
        assert lin2 is not None
        if not self.smooth_edge_update:
            red = torch.where(is_a.unsqueeze(-1), red, e)
        return lin2(red, into)

    def _finish_edges(
        self, red: torch.Tensor, e: torch.Tensor, is_a: torch.Tensor, fused: bool = False
    ) -> torch.Tensor:
        """``V2 = act(Lin_ea2(P))`` from the reduced messages ``red [E, e_dim]``."""
        return self._act(self._angle_preactivation(red, e, is_a), fused)

    def _reduce_to_edges(
        self,
        p: torch.Tensor,
        e: torch.Tensor,
        a_weight: torch.Tensor,
        is_a: torch.Tensor,
        a_eij: Rows,
    ) -> torch.Tensor:
        """``V2 [E, e_dim]`` from the angle messages ``p [A, e_dim]``: ``sum_k w_ijk p_ijk``."""
        red = scatter(a_weight * p, a_eij, e.shape[0])
        return self._finish_edges(red, e, is_a)

    def _angle_fused(
        self,
        w: torch.Tensor,
        b: torch.Tensor,
        n_red: int,
        a: torch.Tensor,
        nc: torch.Tensor,
        ec: torch.Tensor,
        center: Rows,
        a_eij: Rows,
        a_eik: Rows,
        a_weight: torch.Tensor,
        replayed: torch.Tensor | None = None,
        a_into: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The angle block in one C++ pass: reduced edge messages ``[E, n_red]``, updated angles.

        Same math as :meth:`_angle_input` + activation + :meth:`_reduce_to_edges` and the
        residual update of ``a`` by the remaining ``D - n_red`` columns (derivatives up to
        second order: evaluation and training; needs the op library's inverse indices).
        ``a W_a`` is formed block by block inside the kernel, so no ``[A, D]`` tensor is
        materialised, in the backward and double backward either.

        ``replayed [E, n_red]``: any tensor of the messages' shape, returned (a view) in place
        of the messages, with the block's backward (the low-memory path's second pass,
        :meth:`replay`, which needs the graph and not the values; the angle output is then not
        computed and must not be read either).  ``a_into [A, D - n_red]`` (without a graph):
        the updated angles are written into it and it is returned (the low-memory path's first
        pass, into its buffer).
        """
        ptr = a_eij.ptr
        nptr = center.ptr
        assert ptr is not None and nptr is not None
        per_edge, vk = self._edge_terms(w, b, nc, ec, center)
        alpha, beta = self._angle_residual(w.shape[1] - n_red, a)
        wa = w[: self.a_dim]
        aw = a_weight.reshape(-1)
        act, thr = self.act_code, self.act.threshold
        out = _ops.angle_block(
            a,
            wa,
            per_edge,
            vk,
            aw,
            a_eik.idx,
            ptr,
            nptr,
            n_red,
            act,
            thr,
            alpha,
            beta,
            replayed,
            a_into,
        )
        return out[0], out[1]

    def _update_coefficients(
        self, rho: torch.Tensor | None, count: int, width: int, like: torch.Tensor
    ) -> tuple[float, list[torch.Tensor]]:
        """``(alpha, [beta_k [width]])`` with ``x_new = alpha x + sum_k beta_k * u_k``: the update
        of :meth:`_combine` with ``count`` terms and residual ``rho``, as coefficients."""
        betas: list[torch.Tensor] = []
        if self.update_style == "res_residual":
            assert rho is not None
            for k in range(count):
                betas.append(rho[k])
            return 1.0, betas
        if self.update_style == "res_avg":
            alpha = 1.0 / math.sqrt(count + 1.0)
            s = alpha
        else:  # res_incr
            alpha = 1.0
            s = 1.0 / math.sqrt(float(count))
        for _ in range(count):
            betas.append(torch.full((width,), s, dtype=like.dtype, device=like.device))
        return alpha, betas

    def _angle_residual(self, width: int, a: torch.Tensor) -> tuple[float, torch.Tensor]:
        """``(alpha, beta [width])`` with ``a_new = alpha a + beta * u`` for one update ``u``
        (``width == 0``: no angle output)."""
        if width == 0:
            return 1.0, torch.zeros(0, dtype=a.dtype, device=a.device)
        alpha, betas = self._update_coefficients(self.a_residual, 1, width, a)
        return alpha, betas[0]

    def _angle_weights(self, update: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W, b)`` of the angles' edge messages (columns ``[:e_dim]``), followed by those of
        the angle update where ``update`` (one fused linear)."""
        lin1 = self.edge_angle_linear1
        assert lin1 is not None
        b1 = lin1.bias
        assert b1 is not None
        if not update:
            return lin1.matrix, b1
        lin_a = self.angle_self_linear
        assert lin_a is not None
        ba = lin_a.bias
        assert ba is not None
        return torch.cat([lin1.matrix, lin_a.matrix], dim=1), torch.cat([b1, ba], dim=0)

    def _angle_both(
        self,
        a: torch.Tensor,
        nc: torch.Tensor,
        ec: torch.Tensor,
        center: Rows,
        a_eij: Rows,
        a_eik: Rows,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Edge messages ``p [A, e_dim]`` and angle updates ``[A, a_dim]`` from one fused linear."""
        w, b = self._angle_weights(True)
        out = self._angle_one(w, b, a, nc, ec, center, a_eij, a_eik)
        return out[:, : self.e_dim], out[:, self.e_dim :]

    def _angle_one(
        self,
        w: torch.Tensor,
        b: torch.Tensor,
        a: torch.Tensor,
        nc: torch.Tensor,
        ec: torch.Tensor,
        center: Rows,
        a_eij: Rows,
        a_eik: Rows,
    ) -> torch.Tensor:
        """Angle messages ``act([a, n~_i, e~_ik, e~_ij] W + b)`` ``[A, out]`` (composite path)."""
        return self.act(self._angle_input(w, b, a, nc, ec, center, a_eij, a_eik))

    def _node_update(
        self,
        n: torch.Tensor,
        n_ext: torch.Tensor,
        n_j: torch.Tensor,
        e: torch.Tensor,
        center: Rows,
        nei: Rows,
        h2sw: torch.Tensor,
        sw: torch.Tensor,
        fused: bool = False,
        xn: torch.Tensor | None = None,
        keep: list[torch.Tensor] | None = None,
        kept: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The updated node features ``[Nn, n_dim]``; ``keep``/``kept``: the outer sums of the
        symmetrisation of ``e`` and ``n_j``, in that order (:meth:`_sym`: where to copy them,
        what to use in their place)."""
        nnode = n.shape[0]
        u_self = self._act(self.node_self_mlp(n), fused)
        kept_e: torch.Tensor | None = None
        kept_n: torch.Tensor | None = None
        if kept is not None:
            kept_e = kept[0]
            kept_n = kept[1]
        keep_e: torch.Tensor | None = None
        keep_n: torch.Tensor | None = None
        if keep is not None:
            keep_e = keep[0]
            keep_n = keep[1]
        sym_in = torch.cat(
            [
                self._sym(e, h2sw, center, nnode, keep_e, kept_e),
                self._sym(n_j, h2sw, center, nnode, keep_n, kept_n),
            ],
            dim=-1,
        )
        u_sym = self._act(self.node_sym_linear(sym_in), fused)
        q = self._act(
            self._pair_linear(
                self.node_edge_linear.matrix,
                self.node_edge_linear.bias,
                n,
                n_ext,
                e,
                center,
                nei,
                xn,
            ),
            fused,
        )
        msg = weighted_scatter(sw, q, center, nnode) / self.e_norm
        updates = [u_self, u_sym]
        for h in range(self.n_heads):
            updates.append(msg[:, h * self.n_dim : (h + 1) * self.n_dim])
        return self._combine(n, updates, self.n_residual)

    # ----------------------------------------------------------------- forward
    def forward(
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
        is_a: torch.Tensor,
        a_eij: Rows,
        a_eik: Rows,
        fused: bool = False,
        level: int = 2,
        keep: list[torch.Tensor] | None = None,
        proj: torch.Tensor | None = None,
        a_into: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return updated ``(n, e, a)``.

        ``h2sw [E, 3]`` is ``h2 * sw`` (the switch enters the symmetrisation squared);
        ``sw [E]`` edge switch; ``a_weight [A, 1]`` is ``asw_ij asw_ik / sqrt(a_norm)``;
        ``is_a [E]`` marks the angle edges; ``a_eij``/``a_eik [A]`` the two edges of each angle;
        ``fused`` runs the angle block in the C++ kernel (up to second derivatives; needs the
        inverse indices of the op library in the ``Rows``).

        ``level`` says which outputs the caller uses: 2 all three, 1 ``(n, e)``, 0 ``n`` only
        (the last layers of a stack: the descriptor reads only node features).  Outputs not
        asked for are returned unchanged (``e``, ``a``) and their work is skipped where the
        update order allows it (the parallel update: ``sequential_update`` computes all).
        ``keep`` (without a graph, only where :meth:`keeps_preactivations`; the low-memory
        path's first pass): four tensors into which the layer writes the pre-activation of the
        edge update's angle term, ``x_ang = Lin_ea2(red) [E, e_dim]``, the node update's outer
        sums of ``e`` and ``n_j`` (``[Nn, 3, e_dim]``, ``[Nn, 3, n_dim]``, :meth:`_sym`) and
        the updated edges ``[E, e_dim]`` (returned: the last of them).  ``proj``: the rows
        of ``n_ext W_n`` (:meth:`neighbour_matrix` at ``level``), where the caller computed
        them for all rows.  ``a_into [A, a_dim]`` (without a graph, only where
        :meth:`writes_angles_into`): the updated angles are written into it (and it is
        returned), not into a new tensor (the low-memory path's buffer).
        """
        p_self, p_node = self._proj_parts(proj)
        n_j = gather(n_ext, nei)
        if level == 0 and not self.sequential:
            return self._node_update(n, n_ext, n_j, e, center, nei, h2sw, sw, fused, p_node), e, a
        x_self = self._self_preactivation(n, n_ext, e, center, nei, p_self)
        v_self = self._act(x_self, fused)
        if not self.update_angle:
            e_new = self._combine(e, [v_self], self.e_residual)
            n_new = self._node_update(n, n_ext, n_j, e, center, nei, h2sw, sw, fused, p_node)
            return n_new, e_new, a
        if self.sequential:
            er = self.e_residual
            ar = self.a_residual
            assert er is not None and ar is not None
            e1 = e + er[0] * v_self
            nc, ec = self._compressed(n, e1)
            lin1 = self.edge_angle_linear1
            lin_a = self.angle_self_linear
            assert lin1 is not None and lin_a is not None
            b1 = lin1.bias
            ba = lin_a.bias
            assert b1 is not None and ba is not None
            if fused:
                _, a_new = self._angle_fused(
                    lin_a.matrix, ba, 0, a, nc, ec, center, a_eij, a_eik, a_weight
                )
                red, _ = self._angle_fused(
                    lin1.matrix,
                    b1,
                    self.e_dim,
                    a_new,
                    nc,
                    ec,
                    center,
                    a_eij,
                    a_eik,
                    a_weight,
                )
                v_ang = self._finish_edges(red, e1, is_a, fused)
            else:
                w_ang = self._angle_one(lin_a.matrix, ba, a, nc, ec, center, a_eij, a_eik)
                a_new = a + ar[0] * w_ang
                p = self._angle_one(lin1.matrix, b1, a_new, nc, ec, center, a_eij, a_eik)
                v_ang = self._reduce_to_edges(p, e1, a_weight, is_a, a_eij)
            e_new = e1 + er[1] * v_ang
            n_new = self._node_update(n, n_ext, n_j, e_new, center, nei, h2sw, sw, fused, p_node)
            return n_new, e_new, a_new
        nc, ec = self._compressed(n, e)
        # level 1: the edge messages of the angles only, no angle update
        if fused:  # one kernel call for both levels (update columns only at level 2)
            w, b = self._angle_weights(level == 2)
            red, a_out = self._angle_fused(
                w, b, self.e_dim, a, nc, ec, center, a_eij, a_eik, a_weight, None, a_into
            )
            x_ang = self._angle_preactivation(red, e, is_a, None if keep is None else keep[0])
            v_ang = self._act(x_ang, fused)
            a_new = a_out if level == 2 else a
        elif level == 1:
            w, b = self._angle_weights(False)
            p = self._angle_one(w, b, a, nc, ec, center, a_eij, a_eik)
            v_ang = self._reduce_to_edges(p, e, a_weight, is_a, a_eij)
            a_new = a
        else:
            p, w_ang = self._angle_both(a, nc, ec, center, a_eij, a_eik)
            v_ang = self._reduce_to_edges(p, e, a_weight, is_a, a_eij)
            a_new = self._combine(a, [w_ang], self.a_residual)
        keep_t: list[torch.Tensor] | None = None
        e_into: torch.Tensor | None = None
        if keep is not None:
            keep_t = keep[1:3]
            e_into = keep[3]
        n_new = self._node_update(n, n_ext, n_j, e, center, nei, h2sw, sw, fused, p_node, keep_t)
        e_new = self._combine(e, [v_self, v_ang], self.e_residual, e_into)
        return n_new, e_new, a_new
