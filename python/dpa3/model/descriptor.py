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
from .exchange import ghost_features, ops_loaded
from .graph import (
    angle_cosine,
    build_graph,
    edge_vectors,
    gather,
    get_rows,
    make_rows,
    put_rows,
    switch,
)
from .low_memory import LowMemoryPass
from .network import Activation, Linear, TypeEmbedding, to_dtype
from .prepared import CHUNK_ANGLES, Prepared
from .repflow import RepFlowLayer


class DescrptDPA3(LowMemoryPass, nn.Module):
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
        return self.output_rows(n, p.tebd).view(nf, nloc, self.dim_out)

    def output_rows(self, n: torch.Tensor, tebd: torch.Tensor) -> torch.Tensor:
        """Descriptor rows ``[m, dim_out]`` from the last node features ``n [m, n_dim]`` and the
        same rows' type embedding ``tebd [m, *]``."""
        if self.concat_output_tebd:
            return torch.cat([n, tebd], dim=-1)
        return n

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
