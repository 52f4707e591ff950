"""The DPA3 descriptor: type embedding, edge/angle embeddings and the RepFlow layer stack.

Input coordinates are float64 (model interface) and are cast to the descriptor precision
*before* differences are formed (as DeePMD-kit does).  Node features of neighbours are
refreshed before every layer: from their local owners (single process, ``mapping``) or by
the ghost-feature exchange op (``comm_dict``, one frame, LAMMPS swap schedule).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..config.model import DescriptorConfig, descriptor_dim_out
from .blocks import BlockGrads, add_rows, add_to, rows_of
from .exchange import ghost_features, ops_loaded
from .graph import (
    Rows,
    angle_cosine,
    build_graph,
    edge_vectors,
    gather,
    get_rows,
    make_rows,
    put_rows,
    switch,
)
from .network import Activation, Linear, TypeEmbedding, to_dtype
from .prepared import CHUNK_ANGLES, Chunk, Prepared
from .repflow import RepFlowLayer


class DescrptDPA3(nn.Module):
    """DPA3 descriptor producing per-atom features ``D [nf, nloc, dim_out]``."""

    def __init__(
        self, cfg: DescriptorConfig, ntypes: int, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        rf = cfg.repflow
        self.dtype = to_dtype(cfg.precision)
        # what forward() reads; everything else stays in the typed config (model.cfg)
        self.e_rcut, self.e_rcut_smth = rf.e_rcut, rf.e_rcut_smth
        self.a_rcut, self.a_rcut_smth, self.a_sel = rf.a_rcut, rf.a_rcut_smth, rf.a_sel
        self.a_norm = rf.a_norm
        self.use_exp_switch = rf.use_exp_switch
        self.edge_init_use_dist = rf.edge_init_use_dist
        self.env_protection = cfg.env_protection
        self.concat_output_tebd = cfg.concat_output_tebd
        self.dim_out = descriptor_dim_out(cfg)
        self.act = Activation(cfg.activation, cfg.activation_threshold)
        self.type_embedding = TypeEmbedding(
            ntypes, rf.n_dim, cfg.use_tebd_bias, self.dtype, generator
        )
        self.edge_embd = Linear(1, rf.e_dim, bias=True, dtype=self.dtype, generator=generator)
        self.angle_embd = Linear(1, rf.a_dim, bias=False, dtype=self.dtype, generator=generator)
        # angles per block of centres in the low-memory backward pass (:meth:`coord_grad`)
        self.chunk_angles: int = CHUNK_ANGLES
        self.layers = nn.ModuleList(
            [RepFlowLayer(rf, self.act, self.dtype, generator) for _ in range(rf.nlayers)]
        )
        # Normalisation of the environment matrix per centre type: columns (radial, x, y, z).
        # DPA3 fixes the mean to 0 and (by default) the std to fix_stat_std.
        self.register_buffer(
            "stddev", torch.full((ntypes, 4), rf.fix_stat_std or 1.0, dtype=self.dtype)
        )

    def prepare(
        self,
        ext_coord: torch.Tensor,
        ext_atype: torch.Tensor,
        nlist: torch.Tensor,
        mapping: Optional[torch.Tensor],  # noqa: UP045 (TorchScript needs Optional)
        comm_dict: Optional[dict[str, torch.Tensor]],  # noqa: UP045
    ) -> Prepared:
        """The graph, the geometric factors and the initial features (see :class:`Prepared`).

        Arguments as :meth:`forward`; ``ext_coord`` may require grad: everything geometric in
        the result is differentiable with respect to it.  :meth:`index_graph`,
        :meth:`geometry`, then :meth:`prepare_indexed`.
        """
        graph = self.index_graph(ext_coord, nlist, mapping, comm_dict)
        self.geometry(ext_coord, graph)
        return self.prepare_indexed(ext_atype, graph, ext_coord.shape[1])

    def index_graph(
        self,
        ext_coord: torch.Tensor,
        nlist: torch.Tensor,
        mapping: Optional[torch.Tensor],  # noqa: UP045
        comm_dict: Optional[dict[str, torch.Tensor]],  # noqa: UP045
    ) -> dict[str, torch.Tensor]:
        """The index part of the graph of a formatted list (no autograd).

        It depends on the coordinates only through which pairs lie within the cutoffs, and
        on the model only through ``a_rcut``, ``a_sel`` and the descriptor precision (the
        precision of the distances compared with ``a_rcut``), so the models of a committee
        share it (``EnergyModel.prepare_graph``).  Arguments as :meth:`forward`.

        Returns
        -------
        ``nlist [nf, nloc, e_sel]`` (the input), ``nei_ext [E]`` (neighbour rows in the
        flattened extended atoms), ``is_a [E]`` bool (angle edges) and the row indices
        ``center``, ``nei``, ``a_eij``, ``a_eik`` of :class:`Prepared` (stored by
        :func:`~.graph.put_rows`).
        """
        nf, nloc, _ = nlist.shape
        nall = ext_coord.shape[1]
        with torch.no_grad():
            g = build_graph(ext_coord.detach().to(self.dtype), nlist, self.a_rcut, self.a_sel)
        if comm_dict is None:
            frame = torch.div(g.center, nloc, rounding_mode="floor")
            if mapping is not None:
                nei = mapping.reshape(-1)[g.nei_ext] + frame * nloc
            else:
                if nall != nloc:
                    raise RuntimeError("dpa3: ghost atoms need a mapping or a comm_dict")
                nei = g.nei_ext
        else:
            if nf != 1:
                raise RuntimeError("dpa3: the exchange path handles one frame at a time")
            nei = g.nei_ext

        # With the op library, gathers and their adjoint scatters use precomputed inverse
        # indices (fast in any derivative order), and the angle block runs in the fused C++
        # kernel, in evaluation and in training (it is differentiable twice: forces with
        # create_graph, then the loss gradient). Activations the kernel does not implement
        # (act_code < 0) and a missing op library use the composite PyTorch path.
        use_ops = True
        if not torch.jit.is_scripting():
            use_ops = ops_loaded()
        nnode = nf * nloc
        nedge = g.center.shape[0]
        graph: dict[str, torch.Tensor] = {
            "nlist": nlist,
            "nei_ext": g.nei_ext,
            "is_a": g.is_angle_edge,
        }
        put_rows(graph, "center", make_rows(g.center, nnode, use_ops, ascending=True))
        put_rows(graph, "nei", make_rows(nei, nnode if comm_dict is None else nall, use_ops))
        put_rows(graph, "a_eij", make_rows(g.a_eij, nedge, use_ops, ascending=True))
        put_rows(graph, "a_eik", make_rows(g.a_eik, nedge, use_ops))
        return graph

    def geometry(self, ext_coord: torch.Tensor, graph: dict[str, torch.Tensor]) -> None:
        """Add the geometric factors of the edges and angles of ``graph`` (:meth:`index_graph`)
        to it, differentiable in ``ext_coord [nf, nall, 3]`` (float64, Å; cast to the
        descriptor precision before the differences are formed).

        They depend on the model only through the cutoffs and smoothing radii, the switch
        form, ``a_norm`` and the precision (``EnergyModel.get_graph_spec``), not on its weights
        or statistics, so the models of a committee share them with the index graph: each
        model back-propagates its energy through the same autograd graph.  Keys, in the
        descriptor precision: ``edge_vec [E, 3]`` (``x_j - x_i``), ``edge_len [E]``,
        ``edge_sw [E]`` (switch of ``e_rcut``), ``angle_weight [A, 1]`` (product of the two
        edges' ``a_rcut`` switches / sqrt(a_norm)), ``angle_cos [A, 1]``
        (:func:`~.graph.angle_cosine`).
        """
        nloc = graph["nlist"].shape[1]
        a_eij = get_rows(graph, "a_eij")
        a_eik = get_rows(graph, "a_eik")
        diff, r = edge_vectors(ext_coord.to(self.dtype), graph["center"], graph["nei_ext"], nloc)
        sw = switch(r, self.e_rcut_smth, self.e_rcut, self.use_exp_switch)
        asw = switch(r, self.a_rcut_smth, self.a_rcut, self.use_exp_switch)
        asw = torch.where(graph["is_a"], asw, torch.zeros_like(asw))
        a_weight = (gather(asw, a_eij) * gather(asw, a_eik)).unsqueeze(-1) / math.sqrt(self.a_norm)
        graph["edge_vec"] = diff
        graph["edge_len"] = r
        graph["edge_sw"] = sw
        graph["angle_weight"] = a_weight
        graph["angle_cos"] = angle_cosine(diff, r, a_eij, a_eik)

    def prepare_indexed(
        self, ext_atype: torch.Tensor, graph: dict[str, torch.Tensor], nall: int
    ) -> Prepared:
        """:meth:`prepare` from a graph with its geometric factors (:meth:`index_graph`, then
        :meth:`geometry`, computed by this model or by another with the same graph spec, on
        the same coordinates, list and ``mapping``/``comm_dict``): the per-model parts (the
        environment normalisation ``stddev``, the type embedding), with ``nall`` local + ghost
        atoms and the types ``ext_atype [nf, nall]``."""
        nloc = graph["nlist"].shape[1]
        center = get_rows(graph, "center")
        diff = graph["edge_vec"]
        r = graph["edge_len"]
        sw = graph["edge_sw"]
        atype = ext_atype[:, :nloc].reshape(-1).clamp(min=0)
        std = self.stddev[atype[center.idx]]
        inv = 1.0 / (r + self.env_protection)
        h2 = (sw * inv * inv).unsqueeze(-1) * diff / std[:, 1:]
        h2sw = h2 * sw.unsqueeze(-1)
        if self.edge_init_use_dist:
            e_in = r.unsqueeze(-1)
        else:
            e_in = (sw * inv / std[:, 0]).unsqueeze(-1)
        tebd = self.type_embedding()[atype]
        return Prepared(
            tebd,
            e_in,
            graph["angle_cos"],
            h2sw,
            sw,
            graph["angle_weight"],
            graph["is_a"],
            center,
            get_rows(graph, "nei"),
            get_rows(graph, "a_eij"),
            get_rows(graph, "a_eik"),
            nall,
            center.perm is not None and self.layers[0].act_code >= 0,
        )

    def initial_features(self, p: Prepared) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Layer-0 inputs ``n [Nn, n_dim]``, ``e [E, e_dim]``, ``a [A, a_dim]``."""
        return self.act(p.tebd), self.initial_edges(p.e_in), self.initial_angles(p.cos)

    def initial_edges(self, e_in: torch.Tensor) -> torch.Tensor:
        """Layer-0 edge features ``[E, e_dim]`` of the edges' scalar inputs ``e_in [E, 1]``
        (row by row: a block's rows give the block's features)."""
        if self.edge_init_use_dist:
            return self.edge_embd(e_in)
        return self.act(self.edge_embd(e_in))

    def initial_angles(self, cos: torch.Tensor) -> torch.Tensor:
        """Layer-0 angle features ``[A, a_dim]`` of the angles' cosines ``cos [A, 1]`` (row by
        row)."""
        return self.angle_embd(cos)

    def _level(self, i: int) -> int:
        """Outputs of layer ``i`` that the stack uses (see :meth:`RepFlowLayer.forward`)."""
        return max(0, min(2, len(self.layers) - 1 - i))

    def output(self, n: torch.Tensor, p: Prepared, nf: int, nloc: int) -> torch.Tensor:
        """Descriptor ``[nf, nloc, dim_out]`` from the last node features ``n [Nn, n_dim]``."""
        if self.concat_output_tebd:
            n = torch.cat([n, p.tebd], dim=-1)
        return n.view(nf, nloc, self.dim_out)

    def forward(
        self,
        ext_coord: torch.Tensor,
        ext_atype: torch.Tensor,
        nlist: torch.Tensor,
        mapping: Optional[torch.Tensor],  # noqa: UP045
        comm_dict: Optional[dict[str, torch.Tensor]],  # noqa: UP045
    ) -> torch.Tensor:
        """Descriptor of the local atoms.

        Parameters
        ----------
        ext_coord
            ``[nf, nall, 3]`` float64 extended coordinates (Å).
        ext_atype
            ``[nf, nall]`` int64 types; only the local rows ``[:, :nloc]`` are read.
        nlist
            ``[nf, nloc, e_sel]`` formatted list (sorted, cut at ``e_rcut``, ``-1`` padded).
        mapping
            ``[nf, nall]`` owner local index of each extended atom (single process), or None.
        comm_dict
            Exchange schedule (LAMMPS path, ``nf == 1``), or None.

        Returns
        -------
        ``[nf, nloc, dim_out]`` in the descriptor precision.
        """
        nf, nloc, _ = nlist.shape
        return self.run(
            self.prepare(ext_coord, ext_atype, nlist, mapping, comm_dict), nf, nloc, comm_dict
        )

    def run(
        self,
        p: Prepared,
        nf: int,
        nloc: int,
        comm_dict: Optional[dict[str, torch.Tensor]],  # noqa: UP045
    ) -> torch.Tensor:
        """:meth:`forward` from the prepared batch ``p`` (``[nf, nloc, dim_out]``)."""
        n, e, a = self.initial_features(p)
        for i, layer in enumerate(self.layers):
            n, e, a = layer(
                n,
                ghost_features(n, p.nall, comm_dict),
                e,
                a,
                p.center,
                p.nei,
                p.h2sw,
                p.sw,
                p.a_weight,
                p.is_a,
                p.a_eij,
                p.a_eik,
                p.fused,
                self._level(i),
            )
        return self.output(n, p, nf, nloc)

    # ------------------------------------------------------------ low-memory evaluation
    def _recomputes_a1(self, p: Prepared) -> bool:
        """Whether the low-memory path recomputes layer 1's input angles from layer 0's
        inputs (:meth:`RepFlowLayer.angle_update`: one pass of the angle kernel over its
        angle-update columns) instead of keeping them (``[A, a_dim]``, the size of the
        messages kept for four layers)."""
        if len(self.layers) < 2 or self._level(0) != 2:
            return False
        for i, layer in enumerate(self.layers):
            if i == 0:
                return layer.keeps_messages(2, p.fused)
        return False

    def _layer1_angles(self, p: Prepared, chunks: list[Chunk]) -> list[torch.Tensor]:
        """Layer 1's input angles, recomputed block by block (no graph): ``[A_c, a_dim]`` per
        block."""
        out: list[torch.Tensor] = []
        with torch.no_grad():
            n0 = self.act(p.tebd)
            for i, layer in enumerate(self.layers):
                if i == 0:
                    for c in chunks:
                        a1 = layer.angle_update(
                            n0[c.c0 : c.c1],
                            self.initial_edges(p.e_in[c.e0 : c.e1]),
                            self.initial_angles(p.cos[c.a0 : c.a1]),
                            c.center,
                            c.a_eij,
                            c.a_eik,
                            p.a_weight[c.a0 : c.a1],
                        )
                        out.append(a1)
        return out

    def stack_inputs(
        self,
        p: Prepared,
        chunks: list[Chunk],
        comm_dict: Optional[dict[str, torch.Tensor]],  # noqa: UP045
    ) -> tuple[
        list[torch.Tensor],
        list[list[torch.Tensor]],
        list[Optional[list[torch.Tensor]]],  # noqa: UP045
        list[Optional[list[torch.Tensor]]],  # noqa: UP045
        torch.Tensor,
    ]:
        """Run the layers (call it under ``torch.no_grad()``), keeping what the backward needs.

        Returns the inputs ``n [Nn, n_dim]`` of layers ``1 .. L-1``, their ``e`` and ``a`` block
        by block (one tensor ``[E_c, e_dim]`` / ``[A_c, a_dim]`` per block of ``chunks``, as the
        blocks computed them: no copy into a whole tensor; layer 0's inputs are recomputed
        from ``p``, and layer 1's ``a`` too where :meth:`_recomputes_a1`: None in its place),
        the reduced edge messages of the angles ``[E_c, e_dim]`` per block of every layer that
        can keep them (``RepFlowLayer.keeps_messages``, else None; the second pass replays
        them instead of running the angle block's forward again) and the last node features
        ``[Nn, n_dim]``.
        A layer returns the outputs the next one does not read unchanged, so the lists share
        those tensors instead of holding copies.  Each layer runs block by block (``chunks``,
        :meth:`chunks`) after one exchange.
        """
        ns: list[torch.Tensor] = []
        es: list[list[torch.Tensor]] = []
        as_: list[Optional[list[torch.Tensor]]] = []  # noqa: UP045
        reds: list[Optional[list[torch.Tensor]]] = []  # noqa: UP045
        n, e0, a0 = self.initial_features(p)
        e = [e0[c.e0 : c.e1] for c in chunks]
        a = [a0[c.a0 : c.a1] for c in chunks]
        drop_a1 = self._recomputes_a1(p)
        for i, layer in enumerate(self.layers):
            if i > 0:
                ns.append(n)
                es.append(e)
                as_.append(None if i == 1 and drop_a1 else a)
            level = self._level(i)
            red: Optional[list[torch.Tensor]] = None  # noqa: UP045
            if level >= 1 and layer.keeps_messages(level, p.fused):
                red = []
            reds.append(red)
            n_ext = ghost_features(n, p.nall, comm_dict)
            n_new = torch.empty_like(n)
            e_new: list[torch.Tensor] = []
            a_new: list[torch.Tensor] = []
            for k, c in enumerate(chunks):
                n2, e2, a2 = layer(
                    n[c.c0 : c.c1],
                    rows_of(n_ext, c.rows),
                    e[k],
                    a[k],
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
                    red,
                )
                n_new[c.c0 : c.c1] = n2
                e_new.append(e2)
                a_new.append(a2)
            n, e, a = n_new, e_new, a_new
        return ns, es, as_, reds, n

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
            eik = make_rows(p.a_eik.idx[a0:a1] - e0, ne, True)
            out.append(Chunk(c0, c1, e0, e1, a0, a1, center, nei, eij, eik, rows))
            c0 = c1
        return out

    def coord_grad(
        self,
        coord: torch.Tensor,
        p: Prepared,
        chunks: list[Chunk],
        ns: list[torch.Tensor],
        es: list[list[torch.Tensor]],
        as_: list[Optional[list[torch.Tensor]]],  # noqa: UP045
        reds: list[Optional[list[torch.Tensor]]],  # noqa: UP045
        gn: torch.Tensor,
        comm_dict: Optional[dict[str, torch.Tensor]],  # noqa: UP045
        retain_graph: bool = False,
    ) -> Optional[torch.Tensor]:  # noqa: UP045
        """``sum <gn, d n_L / d coord>``: the backward pass through the layers, one at a time.

        Each layer is run again with a graph from its kept inputs (:meth:`stack_inputs`,
        emptied here as the pass goes down) and differentiated at once, block of centres by
        block (:meth:`chunks`), so only one block's graph exists at any time.  The exchange
        of a layer runs once, outside the blocks; the gradient of the ghost features is summed
        over the blocks and sent home through its backward.  The geometric factors' gradients
        are summed over the layers and taken back to ``coord`` (the tensor ``p`` was prepared
        from) through the graph of :meth:`prepare`, with those of layer 0's inputs.
        ``reds``: the angles' reduced edge messages kept per layer and block (or None),
        replayed instead of recomputed.  ``gn [Nn, n_dim]`` is the gradient of the output with
        respect to the last node features.  ``retain_graph`` keeps the graph of :meth:`prepare`
        (and of the geometric factors, which a committee shares:
        ``EnergyModel.forward_prepared``).  Returns ``[nf, nall, 3]`` or None.
        """
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
            if target == 0:  # inputs from the scalar ones block by block, below
                n = self.act(p.tebd).detach()
                e = [nothing for _ in chunks]
                a = [nothing for _ in chunks]
            else:
                n = ns.pop()
                e = es.pop()
                kept_a = as_.pop()
                if kept_a is None:  # layer 1's, not kept (_recomputes_a1)
                    kept_a = self._layer1_angles(p, chunks)
                a = kept_a
            red = reds.pop()
            n = n.detach().requires_grad_(True)
            n_ext = ghost_features(n, p.nall, comm_dict)
            n_ext_d = n_ext.detach()
            g_ext = torch.zeros_like(n_ext)
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
                n2, e2, a2 = nc, ec, ac
                # TorchScript unrolls this loop: a layer picked by a run-time index
                for i, layer in enumerate(self.layers):
                    if i == target:
                        n2, e2, a2 = layer(
                            nc,
                            xc,
                            ec,
                            ac,
                            c.center,
                            c.nei,
                            hc,
                            sc,
                            wc,
                            p.is_a[c.e0 : c.e1],
                            c.a_eij,
                            c.a_eik,
                            p.fused,
                            self._level(i),
                            None,
                            None if red is None else red[j],
                        )
                outs: list[torch.Tensor] = [n2]
                gouts: list[Optional[torch.Tensor]] = [gn[c.c0 : c.c1]]  # noqa: UP045
                if ge is not None:
                    outs.append(e2)
                    gouts.append(ge[j])
                if ga is not None:
                    outs.append(a2)
                    gouts.append(ga[j])
                grads = torch.autograd.grad(
                    outs, [nc, xc, e_leaf, a_leaf, hc, sc, wc], gouts, allow_unused=True
                )
                # this block's kept inputs and incoming gradients are read: let them go
                e[j] = nothing
                a[j] = nothing
                if red is not None:
                    red[j] = nothing
                if ge is not None:
                    ge[j] = nothing
                if ga is not None:
                    ga[j] = nothing
                with torch.no_grad():
                    add_to(g_n, c.c0, grads[0])
                    add_rows(g_ext, c.rows, grads[1])
                    ge_new.put(grads[2], e_leaf)
                    ga_new.put(grads[3], a_leaf)
                    add_to(gh, c.e0, grads[4])
                    add_to(gs, c.e0, grads[5])
                    add_to(gw, c.a0, grads[6])
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
        return torch.autograd.grad(
            outs0, [coord], gouts0, retain_graph=retain_graph, allow_unused=True
        )[0]
