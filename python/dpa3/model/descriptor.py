"""The DPA3 descriptor: type embedding, edge/angle embeddings and the RepFlow layer stack.

Input coordinates are float64 (model interface) and are cast to the descriptor precision
*before* differences are formed (as DeePMD-kit does).  Node features of neighbours are
refreshed before every layer: from their local owners (single process, ``mapping``) or by
the ghost-feature exchange op (``comm_dict``, one frame, LAMMPS swap schedule).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config.model import DescriptorConfig, descriptor_dim_out
from .exchange import ghost_features, ops_loaded
from .graph import angle_cosine, build_graph, make_rows, switch
from .network import Activation, Linear, TypeEmbedding, to_dtype
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
        self.layers = nn.ModuleList(
            [RepFlowLayer(rf, self.act, self.dtype, generator) for _ in range(rf.nlayers)]
        )
        # Normalisation of the environment matrix per centre type: columns (radial, x, y, z).
        # DPA3 fixes the mean to 0 and (by default) the std to fix_stat_std.
        self.register_buffer(
            "stddev", torch.full((ntypes, 4), rf.fix_stat_std or 1.0, dtype=self.dtype)
        )

    def forward(
        self,
        ext_coord: torch.Tensor,
        ext_atype: torch.Tensor,
        nlist: torch.Tensor,
        mapping: torch.Tensor | None,
        comm_dict: dict[str, torch.Tensor] | None,
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
        nall = ext_coord.shape[1]
        coord = ext_coord.to(self.dtype)
        g = build_graph(coord, nlist, self.a_rcut, self.a_sel)
        atype = ext_atype[:, :nloc].reshape(-1).clamp(min=0)
        std = self.stddev[atype[g.center]]
        r = g.dist
        sw = switch(r, self.e_rcut_smth, self.e_rcut, self.use_exp_switch)
        inv = 1.0 / (r + self.env_protection)
        h2 = (sw * inv * inv).unsqueeze(-1) * g.diff / std[:, 1:]
        h2sw = h2 * sw.unsqueeze(-1)
        asw = switch(r, self.a_rcut_smth, self.a_rcut, self.use_exp_switch)
        asw = torch.where(g.is_angle_edge, asw, torch.zeros_like(asw))
        a_weight = (
            torch.index_select(asw, 0, g.a_eij) * torch.index_select(asw, 0, g.a_eik)
        ).unsqueeze(-1) / math.sqrt(self.a_norm)

        if self.edge_init_use_dist:
            e = self.edge_embd(r.unsqueeze(-1))
        else:
            e = self.act(self.edge_embd((sw * inv / std[:, 0]).unsqueeze(-1)))
        a = self.angle_embd(angle_cosine(g.diff, r, g.a_eij, g.a_eik))
        tebd = self.type_embedding()[atype]
        n = self.act(tebd)

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
        rc = make_rows(g.center, nnode, use_ops)
        rn = make_rows(nei, nnode if comm_dict is None else nall, use_ops)
        rij = make_rows(g.a_eij, nedge, use_ops)
        rik = make_rows(g.a_eik, nedge, use_ops)
        fused = use_ops and self.layers[0].act_code >= 0
        for layer in self.layers:
            n_ext = ghost_features(n, nall, comm_dict)
            n, e, a = layer(
                n, n_ext, e, a, rc, rn, h2sw, sw, a_weight, g.is_angle_edge, rij, rik, fused
            )
        if self.concat_output_tebd:
            n = torch.cat([n, tebd], dim=-1)
        return n.view(nf, nloc, self.dim_out)
