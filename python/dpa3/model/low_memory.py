"""The low-memory evaluation path of the descriptor (``docs/internals.md``, "Memory").

The layers but the last run once without a graph (:meth:`LowMemoryPass.stack_inputs`), keeping
what the backward pass needs; :meth:`LowMemoryPass.coord_grad` then runs the last layer with the
fitting net and each layer below again, all with a graph, last first, block of centres by block
(:meth:`LowMemoryPass.chunks`), and differentiates each block at once, so only one block's graph
exists at any time.  The last layer runs once: the fitting net reads only its block's rows.

Where a layer keeps the pre-activation of its edge update's angle term (``x_ang [E, e_dim]``,
:meth:`RepFlowLayer.keeps_preactivations`) and its node update's outer sums (``[N, 3, d]``),
its second run skips the angle kernel's forward, the outer sums, ``Lin_ea2``, the edge
update's activations and residual sum (:meth:`RepFlowLayer.replay`): the edge update's
gradient is taken by hand from the pre-activations (:meth:`RepFlowLayer.edge_tail_grad`).

:class:`LowMemoryPass` is a base of :class:`~dpa3.model.descriptor.DescrptDPA3` and reads its
``layers``, ``act``, ``chunk_angles`` and embedding methods.
"""

from __future__ import annotations

from typing import Optional

import torch

from .blocks import BlockGrads, Kept, Workspace, add_rows, add_to, rows_of
from .exchange import ghost_features
from .graph import Rows, make_rows
from .prepared import Chunk, Prepared


@torch.jit.interface
class AtomFitting(torch.nn.Module):
    """What the low-memory path calls of the fitting net (``FittingNet.atom_energies``)."""

    def atom_energies(self, d: torch.Tensor) -> torch.Tensor:
        """Atomic network energies ``[m]`` float64 of descriptor rows ``d [m, dim_out]``."""
        pass  # noqa: PIE790 (TorchScript's interface declarations need it)


class LowMemoryPass:
    """Methods of the low-memory path (a base class of ``DescrptDPA3``; see the module)."""

    def stack_inputs(
        self,
        p: Prepared,
        chunks: list[Chunk],
        comm_dict: Optional[dict[str, torch.Tensor]],  # noqa: UP045
    ) -> Kept:
        """Run the layers but the last (call it under ``torch.no_grad()``), keeping what the
        backward needs (:class:`Kept`; layer 0's inputs are recomputed from ``p``; the last
        layer runs once, in :meth:`coord_grad`, from its inputs kept here).  A layer returns the
        outputs the next one does not read unchanged, so the lists share those tensors instead
        of holding copies.  Each layer runs block by block (``chunks``, :meth:`chunks`) after
        one exchange; what a block computes and a later layer keeps is copied into the layer's
        slot of one :class:`Workspace`.
        """
        ns: list[torch.Tensor] = []
        es: list[list[torch.Tensor]] = []
        as_: list[list[torch.Tensor]] = []
        pres: list[Optional[list[list[torch.Tensor]]]] = []  # noqa: UP045
        own_e: list[bool] = []
        own_a: list[bool] = []
        n = self.act(p.tebd)
        nl = len(self.layers)
        nn, ne, na = n.shape[0], p.sw.shape[0], p.a_weight.shape[0]
        dn, de, da = n.shape[1], self.layers[0].e_dim, self.layers[0].a_dim
        # at most: the input edges and angles of layers 1 .. L-1, the pre-activations and
        # outer sums of layers 0 .. L-2
        ws = Workspace(n, (nl - 1) * (2 * ne * de + na * da + 3 * nn * (de + dn)), p.fused)
        e: list[torch.Tensor] = []  # layer 0's: block by block from the scalar inputs
        a: list[torch.Tensor] = []
        e_own = False  # whether e / a are the next layer's alone (in a slot of their own)
        a_own = False
        for i, layer in enumerate(self.layers):
            if i > 0:
                ns.append(n)
                es.append(e)
                own_e.append(e_own)
                as_.append(a)
                own_a.append(a_own)
            if i == nl - 1:  # the last layer runs in coord_grad
                pres.append(None)
            else:
                level = self._level(i)
                pre: Optional[list[list[torch.Tensor]]] = None  # noqa: UP045
                keep: Optional[list[torch.Tensor]] = None  # noqa: UP045
                slots: list[torch.Tensor] = []  # x_ang [E, de], T_e [Nn, 3, de], T_n [Nn, 3, dn]
                e_slot = n
                a_slot = n
                e_own = False
                a_own = False
                if layer.keeps_preactivations(level, p.fused):
                    pre = []
                    slots = [
                        ws.slot(ne, de),
                        ws.slot(3 * nn, de).view(nn, 3, de),
                        ws.slot(3 * nn, dn).view(nn, 3, dn),
                    ]
                    e_slot = ws.slot(ne, de)  # the layer writes its new edges into it
                    e_own = True
                pres.append(pre)
                n_ext = ghost_features(n, p.nall, comm_dict)
                # the neighbours' products once for all rows (the blocks share most of them)
                proj = torch.matmul(n_ext, layer.neighbour_matrix(level))
                n_new = torch.empty_like(n)
                e_new: list[torch.Tensor] = []
                a_new: list[torch.Tensor] = []
                writes_a = layer.writes_angles_into(level, p.fused)
                if writes_a:  # the kernel writes the new angles into the layer's slot
                    a_slot = ws.slot(na, da)
                    a_own = True
                for k, c in enumerate(chunks):
                    if i == 0:
                        ek = self.initial_edges(p.e_in[c.e0 : c.e1])
                        ak = self.initial_angles(p.cos[c.a0 : c.a1])
                    else:
                        ek = e[k]
                        ak = a[k]
                    if pre is not None:  # the layer writes into its slots
                        keep = [
                            slots[0][c.e0 : c.e1],
                            slots[1][c.c0 : c.c1],
                            slots[2][c.c0 : c.c1],
                            e_slot[c.e0 : c.e1],
                        ]
                    a_into: Optional[torch.Tensor] = None  # noqa: UP045
                    if writes_a:
                        a_into = a_slot[c.a0 : c.a1]
                    n2, e2, a2 = layer(
                        n[c.c0 : c.c1],
                        rows_of(n_ext, c.rows),
                        ek,
                        ak,
                        c.center,
                        c.nei,
                        p.h2sw[c.e0 : c.e1],
                        p.sw[c.e0 : c.e1],
                        p.a_weight[c.a0 : c.a1],
                        p.is_a[c.e0 : c.e1],
                        c.a_eij,
                        c.a_eik,
                        p.fused,
                        level,
                        keep,
                        rows_of(proj, c.rows),
                        a_into,
                    )
                    n_new[c.c0 : c.c1] = n2
                    if pre is not None and keep is not None:  # written into the slots
                        pre.append(keep[:3])
                    elif e2 is not ek:
                        if not e_own:  # the layer's first new block: its slot
                            e_slot = ws.slot(ne, de)
                            e_own = True
                        e2 = e_slot[c.e0 : c.e1].copy_(e2)
                    if a2 is not ak and a_into is None:
                        if not a_own:
                            a_slot = ws.slot(na, da)
                            a_own = True
                        a2 = a_slot[c.a0 : c.a1].copy_(a2)
                    e_new.append(e2)
                    a_new.append(a2)
                n, e, a = n_new, e_new, a_new
        return Kept(ns, es, as_, pres, own_e, own_a)

    def chunks(self, p: Prepared) -> list[Chunk]:
        """Blocks of whole centres with at most ``chunk_angles`` angles each (a centre with
        more is a block of its own; one block without the op library's inverse indices)."""
        cptr = p.center.ptr
        aptr = p.a_eij.ptr
        nnode = p.tebd.shape[0]
        nedge = p.sw.shape[0]
        nangle = p.a_weight.shape[0]
        if cptr is None or aptr is None or nangle <= self.chunk_angles:
            return [Chunk(0, nnode, 0, nedge, 0, nangle, p.center, p.nei, p.a_eij, p.a_eik, None)]
        # angles before each centre, to cut at centre boundaries
        a_before: list[int] = aptr.index_select(0, cptr).tolist()
        e_before: list[int] = cptr.tolist()
        out: list[Chunk] = []
        c0 = 0
        while c0 < nnode:
            c1 = c0 + 1
            while c1 < nnode and a_before[c1 + 1] - a_before[c0] <= self.chunk_angles:
                c1 += 1
            e0, e1 = e_before[c0], e_before[c1]
            a0, a1 = a_before[c0], a_before[c1]
            ne = e1 - e0
            center = Rows(
                p.center.idx[e0:e1] - c0,
                torch.arange(ne, dtype=torch.long, device=cptr.device),
                cptr[c0 : c1 + 1] - e0,
            )
            # the node rows this block's neighbours read, and its neighbour index into them
            rows, local = torch.unique(p.nei.idx[e0:e1], sorted=True, return_inverse=True)
            nei = make_rows(local, rows.shape[0], True)
            eij = Rows(
                p.a_eij.idx[a0:a1] - e0,
                torch.arange(a1 - a0, dtype=torch.long, device=cptr.device),
                aptr[e0 : e1 + 1] - a0,
            )
            eik = self._block_rows(p.a_eik, a0, a1, e0, e1)
            out.append(Chunk(c0, c1, e0, e1, a0, a1, center, nei, eij, eik, rows))
            c0 = c1
        return out

    def _block_rows(self, rows: Rows, a0: int, a1: int, e0: int, e1: int) -> Rows:
        """The block's part of ``rows`` (entries ``[a0, a1)``, all of them into the rows
        ``[e0, e1)`` and every entry into those rows among them, as the ``ik`` edges of a
        block's angles: so the ``a0`` entries before are those into the rows before ``e0``),
        renumbered from 0: the inverse index is a slice of the whole one, no sort."""
        perm = rows.perm
        ptr = rows.ptr
        idx = rows.idx[a0:a1] - e0
        if perm is None or ptr is None:
            return make_rows(idx, e1 - e0, True)
        return Rows(idx, perm[a0:a1] - a0, ptr[e0 : e1 + 1] - a0)

    def _tail_grad(
        self,
        target: int,
        ge: torch.Tensor,
        x_self: torch.Tensor,
        x_ang: torch.Tensor,
        is_a: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Layer ``target``'s :meth:`RepFlowLayer.edge_tail_grad`.  TorchScript unrolls the loops
        of this method and the next: a layer picked by a run-time index."""
        out = (ge, ge, ge)
        for i, layer in enumerate(self.layers):
            if i == target:
                out = layer.edge_tail_grad(ge, x_self, x_ang, is_a)
        return out

    def _rerun(
        self,
        target: int,
        n: torch.Tensor,
        x: torch.Tensor,
        e: torch.Tensor,
        a: torch.Tensor,
        h2sw: torch.Tensor,
        sw: torch.Tensor,
        a_weight: torch.Tensor,
        p: Prepared,
        c: Chunk,
        kept: Optional[list[torch.Tensor]],  # noqa: UP045
        proj: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Layer ``target`` on the block ``c`` with a graph: ``(n, e, a, e)`` of its forward, or
        ``(n, red, a, x_self)`` of its :meth:`RepFlowLayer.replay` where what the first pass
        kept of the block is given (``[x_ang, T_e, T_n]``, :class:`Kept`); ``proj``: the
        block's rows of ``n_ext W_n`` (:meth:`_neighbour_matrix`)."""
        out = (n, e, a, e)
        for i, layer in enumerate(self.layers):
            if i == target:
                if kept is None:
                    n2, e2, a2 = layer(
                        n,
                        x,
                        e,
                        a,
                        c.center,
                        c.nei,
                        h2sw,
                        sw,
                        a_weight,
                        p.is_a[c.e0 : c.e1],
                        c.a_eij,
                        c.a_eik,
                        p.fused,
                        self._level(i),
                        None,
                        proj,
                    )
                    out = (n2, e2, a2, e2)
                else:
                    out = layer.replay(
                        n,
                        x,
                        e,
                        a,
                        c.center,
                        c.nei,
                        h2sw,
                        sw,
                        a_weight,
                        c.a_eij,
                        c.a_eik,
                        self._level(i),
                        kept,
                        proj,
                    )
        return out

    def _neighbour_matrix(self, target: int) -> torch.Tensor:
        """Layer ``target``'s :meth:`RepFlowLayer.neighbour_matrix` at its level (no graph)."""
        out = torch.zeros(0)
        for i, layer in enumerate(self.layers):
            if i == target:
                out = layer.neighbour_matrix(self._level(i)).detach()
        return out

    def coord_grad(
        self,
        coord: torch.Tensor,
        p: Prepared,
        chunks: list[Chunk],
        kept: Kept,
        fitting: AtomFitting,
        real: torch.Tensor,
        comm_dict: Optional[dict[str, torch.Tensor]],  # noqa: UP045
        retain_graph: bool = False,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:  # noqa: UP045
        """The fitting net's atomic energies ``E_i`` and ``sum_i dE_i / d coord``: the last
        layer and the backward pass through the layers, one at a time.

        The last layer (its inputs kept by :meth:`stack_inputs`) runs once, block of centres
        by block (:meth:`chunks`), with its graph and the ``fitting`` net on the block's
        descriptor rows (``real [Nn]`` bool: False for virtual atoms, whose energy is 0), and
        is differentiated at once.  Each layer below is run again with a graph from its kept
        inputs (``kept``, emptied here as the pass goes down) and differentiated at once, block
        by block, so only one block's graph exists at any time.  A layer that
        kept ``x_ang`` runs :meth:`RepFlowLayer.replay` instead of its forward, and its edge
        update's gradient is taken by hand (:meth:`RepFlowLayer.edge_tail_grad`) to the
        self-update's pre-activation, the input edges and the angles' messages, from where
        autograd takes it on with the other outputs' gradients.  The exchange of a layer runs
        once, outside the blocks; the gradient of the ghost features is summed over the blocks
        and sent home through its backward.  The geometric factors' gradients are summed over
        the layers and taken back to ``coord`` (the tensor ``p`` was prepared from) through the
        graph of :meth:`prepare`, with those of layer 0's inputs.  ``retain_graph`` keeps the
        graph of :meth:`prepare` (and of the geometric factors, which a committee shares:
        ``EnergyModel.forward_prepared``).  Returns ``(E [Nn] float64, [nf, nall, 3] or None)``.

        A block's gradients of a layer's input edges and angles are written in the place of
        those inputs where they are the layer's alone (``kept.own_e`` / ``own_a``), and the
        replayed angle kernel writes the gradient of its input angles over the incoming
        gradient of its output angles (``dpa3::angle_block_replay``'s in-place backward): nothing
        kept is freed and nothing as large allocated while the pass goes down.
        """
        ns, es, as_, pres = kept.ns, kept.es, kept.as_, kept.pres
        own_es, own_as = kept.own_e, kept.own_a
        e_net = torch.zeros(real.shape[0], dtype=torch.float64, device=real.device)
        gn = p.sw.new_empty(0)  # the gradient of a layer's node output (none for the last)
        gh = torch.zeros_like(p.h2sw)
        gs = torch.zeros_like(p.sw)
        gw = torch.zeros_like(p.a_weight)
        nothing = p.sw.new_empty(0)  # in place of what a block has read
        # gradients of the layer outputs e, a: one tensor per block (None: not read)
        ge: Optional[list[torch.Tensor]] = None  # noqa: UP045
        ga: Optional[list[torch.Tensor]] = None  # noqa: UP045
        nlayers = len(self.layers)
        for k in range(nlayers):
            target = nlayers - 1 - k
            pre = pres.pop()
            own_e = False
            own_a = False
            if target == 0:  # inputs from the scalar ones block by block, below
                n = self.act(p.tebd).detach()
                e = [nothing for _ in chunks]
                a = [nothing for _ in chunks]
            else:
                n = ns.pop()
                e = es.pop()
                own_e = own_es.pop()
                own_a = own_as.pop()
                a = as_.pop()
            n = n.detach().requires_grad_(True)
            n_ext = ghost_features(n, p.nall, comm_dict)
            n_ext_d = n_ext.detach()
            g_ext = torch.zeros_like(n_ext)
            # the neighbours' products for all rows; their gradient summed over the blocks and
            # taken to n_ext once below
            w_nei = self._neighbour_matrix(target)
            proj = torch.matmul(n_ext_d, w_nei)
            g_proj = torch.zeros_like(proj)
            g_n = torch.zeros_like(n)
            ge_new = BlockGrads()
            ga_new = BlockGrads()
            for j, c in enumerate(chunks):
                nc = n[c.c0 : c.c1].detach().requires_grad_(True)
                if target == 0:  # leaves: the scalar inputs of the edges and angles
                    e_leaf = p.e_in[c.e0 : c.e1].detach().requires_grad_(True)
                    a_leaf = p.cos[c.a0 : c.a1].detach().requires_grad_(True)
                    ec = self.initial_edges(e_leaf)
                    ac = self.initial_angles(a_leaf)
                else:
                    ec = e[j].detach().requires_grad_(True)
                    ac = a[j].detach().requires_grad_(True)
                    e_leaf = ec
                    a_leaf = ac
                hc = p.h2sw[c.e0 : c.e1].detach().requires_grad_(True)
                sc = p.sw[c.e0 : c.e1].detach().requires_grad_(True)
                wc = p.a_weight[c.a0 : c.a1].detach().requires_grad_(True)
                xc = rows_of(n_ext_d, c.rows).requires_grad_(True)
                pc = rows_of(proj, c.rows).requires_grad_(True)
                kept_c: Optional[list[torch.Tensor]] = None  # noqa: UP045
                x_ang: Optional[torch.Tensor] = None  # noqa: UP045
                if pre is not None:
                    kept_c = pre[j]
                    x_ang = kept_c[0]
                n2, e2, a2, xs2 = self._rerun(target, nc, xc, ec, ac, hc, sc, wc, p, c, kept_c, pc)
                outs: list[torch.Tensor] = []
                gouts: list[Optional[torch.Tensor]] = []  # noqa: UP045
                if k == 0:  # the last layer: the fitting net on the block's rows
                    e_blk = fitting.atom_energies(self.output_rows(n2, p.tebd[c.c0 : c.c1]))
                    e_blk = torch.where(real[c.c0 : c.c1], e_blk, torch.zeros_like(e_blk))
                    e_net[c.c0 : c.c1] = e_blk.detach()
                    outs.append(e_blk.sum())
                    gouts.append(None)
                else:
                    outs.append(n2)
                    gouts.append(gn[c.c0 : c.c1])
                if ge is not None and x_ang is not None:
                    # e2 stands for the angles' messages, xs2 is x_self: the edge update by hand
                    g_self, t_e, t_red = self._tail_grad(
                        target, ge[j], xs2.detach(), x_ang, p.is_a[c.e0 : c.e1]
                    )
                    outs.append(xs2)
                    outs.append(e2)
                    outs.append(ec)
                    gouts.append(g_self)
                    gouts.append(t_red)
                    gouts.append(t_e)
                elif ge is not None:
                    outs.append(e2)
                    gouts.append(ge[j])
                ga_in = nothing
                if ga is not None:
                    ga_in = ga[j]
                    outs.append(a2)
                    gouts.append(ga_in)
                grads = torch.autograd.grad(
                    outs, [nc, xc, e_leaf, a_leaf, hc, sc, wc, pc], gouts, allow_unused=True
                )
                # this block's incoming gradients are read: let them go (the kept inputs are
                # views of the buffer; their gradients take their place below)
                if ge is not None:
                    ge[j] = nothing
                if ga is not None:
                    ga[j] = nothing
                with torch.no_grad():
                    add_to(g_n, c.c0, grads[0])
                    add_rows(g_ext, c.rows, grads[1])
                    g_e = grads[2]
                    if own_e and g_e is not None:
                        g_e = e[j].copy_(g_e)
                    g_a = grads[3]
                    # (the replayed angle kernel wrote it over ga_in where it could: in place)
                    if own_a and g_a is not None and not g_a.is_set_to(ga_in):
                        g_a = a[j].copy_(g_a)
                    ge_new.put(g_e, e_leaf)
                    ga_new.put(g_a, a_leaf)
                    add_to(gh, c.e0, grads[4])
                    add_to(gs, c.e0, grads[5])
                    add_to(gw, c.a0, grads[6])
                    add_rows(g_proj, c.rows, grads[7])
            g_ext = g_ext + torch.matmul(g_proj, w_nei.t())
            g_back: list[Optional[torch.Tensor]] = [g_ext]  # noqa: UP045
            g_home = torch.autograd.grad([n_ext], [n], g_back, allow_unused=True)[0]
            if g_home is not None:
                g_n = g_n + g_home
            gn = g_n
            ge = ge_new.result()
            ga = ga_new.result()
        # ge, ga: now those of layer 0's scalar inputs e_in [E, 1] and cos [A, 1]
        outs0: list[torch.Tensor] = [p.h2sw, p.sw, p.a_weight]
        gouts0: list[Optional[torch.Tensor]] = [gh, gs, gw]  # noqa: UP045
        if ge is not None:
            outs0.append(p.e_in)
            gouts0.append(torch.cat(ge))
        if ga is not None:
            outs0.append(p.cos)
            gouts0.append(torch.cat(ga))
        grad = torch.autograd.grad(
            outs0, [coord], gouts0, retain_graph=retain_graph, allow_unused=True
        )[0]
        return e_net, grad
