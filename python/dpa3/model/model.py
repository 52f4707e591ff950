"""DPA3 energy model: descriptor + fitting + per-type bias; forces and virials by autograd.

Conventions: Å, eV, eV/Å; float64 at the interface; cell rows are lattice vectors;
virial ``W = sum_a F_a (x) X_a`` over extended atoms (eV, ``= -stress * volume``),
flattened row-major (``3k + j`` <-> ``(k, j)``).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from .. import __version__, _ops
from ..config.model import ModelConfig, descriptor_dim_out
from ..data.neighbor import TIE_QUANTUM
from ..data.neighbor_cache import NeighborCache
from .descriptor import DescrptDPA3, Prepared
from .graph import format_nlist
from .network import Activation, FittingNet, to_dtype

SERIAL_VERSION = 1

# Last entry of ``EnergyModel.get_graph_spec``: what a prepared graph holds (2: the index graph
# and the geometric factors; models frozen before it had a 6-entry spec and no geometry).
GRAPH_FORMAT = 2.0

# Default of ``EnergyModel.graph_budget_bytes`` (see ``docs/internals.md``, "Memory").
GRAPH_BUDGET_BYTES = 4 * 1024**3


#: Buffers registered with ``persistent=False``: the eager model saves none of them, but a
#: frozen (scripted) model's ``state_dict`` lists them (dropped when its weights are loaded).
NON_PERSISTENT_BUFFERS = ("graph_spec_t",)


class EnergyModel(nn.Module):
    """A DPA3 energy model (see ``docs/internals.md`` for the full contract)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        seed = cfg.descriptor.seed
        gen = torch.Generator().manual_seed(int(seed) if isinstance(seed, int) else 0)
        ntypes = cfg.ntypes
        self.type_map = list(cfg.type_map)
        self.ntypes = ntypes
        self.rcut = cfg.descriptor.repflow.e_rcut
        self.sel = cfg.descriptor.repflow.e_sel
        # rounding of the neighbour sort key (ties between equidistant neighbours)
        self.tie_quantum = TIE_QUANTUM
        # evaluation keeps every layer's graph while its estimate stays within this many
        # bytes per process, and recomputes the layers one at a time above it
        self.graph_budget_bytes: int = GRAPH_BUDGET_BYTES
        self.nlayers = cfg.descriptor.repflow.nlayers
        self.n_dim = cfg.descriptor.repflow.n_dim
        self.e_dim = cfg.descriptor.repflow.e_dim
        self.a_dim = cfg.descriptor.repflow.a_dim
        fitting_dtype = to_dtype(cfg.fitting.precision)
        self.descriptor = DescrptDPA3(cfg.descriptor, ntypes, gen)
        # what a prepared graph depends on besides its inputs (:meth:`get_graph_spec`)
        rf = cfg.descriptor.repflow
        self.graph_spec = [
            float(self.rcut),
            float(self.sel),
            float(rf.a_rcut),
            float(rf.a_sel),
            float(self.tie_quantum),
            float(torch.finfo(self.descriptor.dtype).bits // 8),
            float(rf.e_rcut_smth),
            float(rf.a_rcut_smth),
            1.0 if rf.use_exp_switch else 0.0,
            float(rf.a_norm),
            GRAPH_FORMAT,
        ]
        # the same as a float64 tensor (a list turned into a tensor inside TorchScript passes
        # through float32); not saved in state dicts
        self.register_buffer(
            "graph_spec_t", torch.tensor(self.graph_spec, dtype=torch.float64), persistent=False
        )
        fseed = cfg.fitting.seed
        fgen = torch.Generator().manual_seed(int(fseed) if isinstance(fseed, int) else 1)
        self.fitting = FittingNet(
            descriptor_dim_out(cfg.descriptor),
            cfg.fitting.neuron,
            Activation(cfg.fitting.activation, cfg.fitting.activation_threshold),
            cfg.fitting.resnet_dt,
            fitting_dtype,
            fgen,
        )
        # ``trainable: false`` freezes a block (DeePMD-kit sets ``requires_grad`` the same way)
        self.descriptor.requires_grad_(cfg.descriptor.trainable)
        self.fitting.requires_grad_(cfg.fitting.trainable)
        self.register_buffer("out_bias", torch.zeros(ntypes, dtype=torch.float64))
        self.register_buffer("out_std", torch.ones(ntypes, dtype=torch.float64))
        self.metadata = {
            "dpa3_version": __version__,
            "torch_version": torch.__version__,
            "precision": cfg.descriptor.precision,
            "fitting_precision": cfg.fitting.precision,
            "type_map": json.dumps(list(cfg.type_map)),
            "config": json.dumps(cfg.to_dict()),
        }

    # ------------------------------------------------------------------ getters
    @torch.jit.export
    def get_rcut(self) -> float:
        """Edge cutoff (Å)."""
        return self.rcut

    @torch.jit.export
    def get_sel(self) -> list[int]:
        """Neighbour capacity ``[e_sel]``."""
        return [self.sel]

    @torch.jit.export
    def get_type_map(self) -> list[str]:
        """Element names in model type order."""
        return self.type_map

    @torch.jit.export
    def get_ntypes(self) -> int:
        """Number of types."""
        return self.ntypes

    @torch.jit.export
    def get_num_layers(self) -> int:
        """Number of message-passing layers (= exchanges per evaluation)."""
        return self.nlayers

    @torch.jit.export
    def get_exchange_width(self) -> int:
        """Width of the node features exchanged between ranks (``n_dim``)."""
        return self.n_dim

    @torch.jit.export
    def get_graph_spec(self) -> list[float]:
        """What :meth:`prepare_graph` depends on besides its inputs: ``[e_rcut, e_sel, a_rcut,
        a_sel, tie quantum, bytes per number of the descriptor precision, e_rcut_smth,
        a_rcut_smth, exponential switch (1.0) or not (0.0), a_norm, graph format]``.  Models
        with equal specs can evaluate one another's graphs (:meth:`forward_prepared`)."""
        return self.graph_spec

    @torch.jit.export
    def get_metadata(self) -> dict[str, str]:
        """Versions, precision, type map and the typed config (JSON strings)."""
        return self.metadata

    # ------------------------------------------------------------------ statistics
    @torch.jit.ignore
    def set_out_bias(self, bias: np.ndarray | torch.Tensor, std: np.ndarray | None = None) -> None:
        """Set the per-type energy shift ``out_bias [ntypes]`` (eV)."""
        b = torch.as_tensor(np.asarray(bias, dtype=np.float64)).reshape(self.ntypes)
        self.out_bias.copy_(b)
        if std is not None:
            self.out_std.copy_(torch.as_tensor(np.asarray(std, dtype=np.float64)).reshape(-1))

    # ------------------------------------------------------------------ core
    def _atomic_energy(
        self,
        coord: torch.Tensor,
        ext_atype: torch.Tensor,
        nlist: torch.Tensor,
        mapping: torch.Tensor | None,
        comm_dict: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        """Atomic energies ``[nf, nloc]`` float64 (virtual atoms, type < 0, give 0)."""
        nloc = nlist.shape[1]
        d = self.descriptor(coord, ext_atype, nlist, mapping, comm_dict)
        return self._fit(d, ext_atype[:, :nloc])

    def _fit(self, d: torch.Tensor, atype: torch.Tensor) -> torch.Tensor:
        """Atomic energies ``[nf, nloc]`` float64 from the descriptor ``d [nf, nloc, dim_out]``
        and the local types ``atype [nf, nloc]`` (virtual atoms, type < 0, give 0)."""
        return self._with_bias(self.fitting.atom_energies(d), atype)

    def _with_bias(self, e_net: torch.Tensor, atype: torch.Tensor) -> torch.Tensor:
        """Atomic energies ``[nf, nloc]`` float64 from the fitting net's ``e_net [nf, nloc]``
        float64: the type's bias added, 0 for virtual atoms (type < 0)."""
        e_atom = e_net + self.out_bias[atype.clamp(min=0)]
        return torch.where(atype >= 0, e_atom, torch.zeros_like(e_atom))

    def _graph_bytes(self, p: Prepared) -> int:
        """Estimated bytes of the layers' autograd graph for the prepared batch ``p``: about
        ``nlayers * (2 A a_dim + 12 E e_dim)`` numbers of the descriptor precision."""
        nedge = p.sw.shape[0]
        nangle = p.a_weight.shape[0]
        numbers = self.nlayers * (2 * nangle * self.a_dim + 12 * nedge * self.e_dim)
        return numbers * p.sw.element_size()

    def _low_memory(self, p: Prepared, comm_dict: dict[str, torch.Tensor] | None) -> bool:
        """Whether to recompute the layers (the graph estimate exceeds the budget; under
        LAMMPS on any rank, so that every rank runs the same exchanges)."""
        if self.nlayers == 0:
            return False
        fits = self._graph_bytes(p) <= self.graph_budget_bytes
        if comm_dict is None:
            return not fits
        flag = torch.tensor([1 if fits else 0], dtype=torch.int64)
        return int(_ops.allreduce_min(flag, comm_dict)[0]) == 0

    def _energy_low_memory(
        self,
        coord: torch.Tensor,
        ext_atype: torch.Tensor,
        p: Prepared,
        nf: int,
        nloc: int,
        comm_dict: dict[str, torch.Tensor] | None,
        retain_graph: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Atomic energies ``[nf, nloc]`` and ``dE/d coord [nf, nall, 3]`` (or None) for the
        batch ``p`` prepared from ``coord``, keeping only each layer's inputs for the backward
        pass (``docs/internals.md``, "Memory"); ``retain_graph`` keeps the graph of ``p``.

        First derivatives only (evaluation): the layers but the last run without a graph,
        then :meth:`DescrptDPA3.coord_grad` runs the last one with the fitting net and the
        others again, one at a time, last first, each differentiated as soon as it is built.
        Same function as :meth:`_atomic_energy` with ``autograd.grad``, up to rounding.
        """
        desc = self.descriptor
        chunks = desc.chunks(p)
        with torch.no_grad():
            kept = desc.stack_inputs(p, chunks, comm_dict)
        atype = ext_atype[:, :nloc]
        e_net, grad = desc.coord_grad(
            coord, p, chunks, kept, self.fitting, atype.reshape(-1) >= 0, comm_dict, retain_graph
        )
        return self._with_bias(e_net.view(nf, nloc), atype), grad

    @torch.jit.export
    def forward_lower(
        self,
        extended_coord: torch.Tensor,
        extended_atype: torch.Tensor,
        nlist: torch.Tensor,
        mapping: torch.Tensor | None = None,
        do_atomic_virial: bool = False,
        comm_dict: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Energy, extended forces and virials from extended coordinates and a raw list.

        Parameters
        ----------
        extended_coord
            ``[nf, nall, 3]`` float64 (Å), local atoms first.
        extended_atype
            ``[nf, nall]`` int64 model types.
        nlist
            ``[nf, nloc, nnei]`` int64, any order/width, may include neighbours beyond rcut.
        mapping
            ``[nf, nall]`` int64 owner index (single process) or None with ``comm_dict``.
        do_atomic_virial
            Also return ``extended_virial [nf, nall, 9]`` (three extra backward passes).
        comm_dict
            Exchange schedule for the LAMMPS path (``nf == 1``).

        Returns
        -------
        ``energy [nf,1]``, ``atom_energy [nf,nloc,1]``, ``extended_force [nf,nall,3]`` (eV/Å),
        ``virial [nf,9]`` (eV) and optionally ``extended_virial [nf,nall,9]``.
        Same as :meth:`prepare_graph`, then :meth:`forward_prepared`.
        """
        graph = self.prepare_graph(extended_coord, nlist, mapping, comm_dict)
        return self._forward_graph(extended_atype, graph, do_atomic_virial, comm_dict, False)

    @torch.jit.export
    def prepare_graph(
        self,
        extended_coord: torch.Tensor,
        nlist: torch.Tensor,
        mapping: torch.Tensor | None = None,
        comm_dict: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The neighbour graph of :meth:`forward_lower`'s inputs (same arguments): the list
        sorted and cut (:func:`~.graph.format_nlist`), the edges, the angles and their row
        indices (``DescrptDPA3.index_graph``), ``coord [nf, nall, 3]`` float64 (a copy of
        ``extended_coord`` that requires grad: the forces are the gradients with respect to
        it), the geometric factors differentiable in it (``DescrptDPA3.geometry``), and
        ``spec`` float64 (:meth:`get_graph_spec` and 1.0 with ``comm_dict``, 0.0 without).

        A committee (model deviation) builds it once per step with its first model and
        evaluates every model with the same spec on it (:meth:`forward_prepared`): each model
        back-propagates through the same geometric factors.  Build it with grad mode on.
        """
        with torch.no_grad():
            nlist_f = format_nlist(
                extended_coord.to(torch.float64), nlist, self.rcut, self.sel, self.tie_quantum
            )
        return self._build_graph(extended_coord, nlist_f, mapping, comm_dict)

    @torch.jit.export
    def forward_prepared(
        self,
        extended_coord: torch.Tensor,
        extended_atype: torch.Tensor,
        graph: dict[str, torch.Tensor],
        do_atomic_virial: bool = False,
        comm_dict: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """:meth:`forward_lower` on the ``graph`` that :meth:`prepare_graph` (of this model or
        of one with the same :meth:`get_graph_spec`) built from the same ``extended_coord``,
        list and ``mapping``/``comm_dict``; ``comm_dict`` must be the one it was built with.
        The coordinates are the graph's (``extended_coord`` only has to match their shape).
        The graph's autograd graph is kept, so the next model can evaluate it too.

        Raises
        ------
        RuntimeError
            If the graph was prepared for another spec or exchange path.
        """
        spec = self._spec_tensor(comm_dict)
        got = graph.get("spec")
        if got is None or not torch.equal(got, spec):
            seen = "none"
            if got is not None:
                values: list[float] = got.tolist()
                seen = str(values)
            raise RuntimeError(
                "dpa3: forward_prepared got a graph prepared for [e_rcut, e_sel, a_rcut, a_sel, "
                "tie quantum, precision bytes, exchange path] = "
                + seen
                + ", but this model needs "
                + str(self.graph_spec + [1.0 if comm_dict is not None else 0.0])
                + "; build the graph with this model's prepare_graph"
            )
        if extended_coord.shape != graph["coord"].shape:
            raise RuntimeError(
                "dpa3: forward_prepared got extended_coord of another shape than the graph's"
            )
        return self._forward_graph(extended_atype, graph, do_atomic_virial, comm_dict, True)

    def _spec_tensor(self, comm_dict: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """``spec`` float64 of a graph built by this model (see :meth:`prepare_graph`)."""
        flag = 0.0 if comm_dict is None else 1.0
        spec = self.graph_spec_t
        return torch.cat([spec, torch.full([1], flag, dtype=spec.dtype, device=spec.device)])

    def _build_graph(
        self,
        extended_coord: torch.Tensor,
        nlist: torch.Tensor,
        mapping: torch.Tensor | None,
        comm_dict: dict[str, torch.Tensor] | None,
    ) -> dict[str, torch.Tensor]:
        """:meth:`prepare_graph` of a formatted list."""
        graph = self.descriptor.index_graph(extended_coord, nlist, mapping, comm_dict)
        coord = extended_coord.to(torch.float64).detach().requires_grad_(True)
        graph["coord"] = coord
        self.descriptor.geometry(coord, graph)
        graph["spec"] = self._spec_tensor(comm_dict)
        return graph

    def _forward_formatted(
        self,
        extended_coord: torch.Tensor,
        extended_atype: torch.Tensor,
        nlist: torch.Tensor,
        mapping: torch.Tensor | None,
        do_atomic_virial: bool,
        comm_dict: dict[str, torch.Tensor] | None,
    ) -> dict[str, torch.Tensor]:
        """:meth:`forward_lower` on a formatted list ``nlist [nf, nloc, sel]`` (sorted by
        distance, cut at ``rcut``, ``-1`` padded), as :func:`~.graph.format_nlist` and the
        Python neighbour search (:mod:`dpa3.data.neighbor`) produce it."""
        graph = self._build_graph(extended_coord, nlist, mapping, comm_dict)
        return self._forward_graph(extended_atype, graph, do_atomic_virial, comm_dict, False)

    def _forward_graph(
        self,
        extended_atype: torch.Tensor,
        graph: dict[str, torch.Tensor],
        do_atomic_virial: bool,
        comm_dict: dict[str, torch.Tensor] | None,
        shared: bool,
    ) -> dict[str, torch.Tensor]:
        """:meth:`forward_lower` on a prepared graph (:meth:`prepare_graph`); ``shared``: keep
        the autograd graph of its geometric factors for another model."""
        nlist = graph["nlist"]
        nf, nloc = nlist.shape[0], nlist.shape[1]
        coord = graph["coord"]
        create_graph = self.training
        p = self.descriptor.prepare_indexed(extended_atype, graph, coord.shape[1])
        if create_graph or do_atomic_virial or not self._low_memory(p, comm_dict):
            d = self.descriptor.run(p, nf, nloc, comm_dict)
            e_atom = self._fit(d, extended_atype[:, :nloc])
            energy = e_atom.sum(dim=1, keepdim=True)
            grads = torch.autograd.grad(
                [energy.sum()],
                [coord],
                create_graph=create_graph,
                retain_graph=create_graph or do_atomic_virial or shared,
                allow_unused=True,
            )
            g0 = grads[0]
        else:
            e_atom, g0 = self._energy_low_memory(
                coord, extended_atype, p, nf, nloc, comm_dict, shared
            )
            energy = e_atom.sum(dim=1, keepdim=True)
        force = torch.zeros_like(coord) if g0 is None else -g0
        ext_virial = (force.unsqueeze(-1) * coord.unsqueeze(-2)).reshape(
            coord.shape[0], coord.shape[1], 9
        )
        out: dict[str, torch.Tensor] = {
            "energy": energy,
            "atom_energy": e_atom.unsqueeze(-1),
            "extended_force": force,
            "virial": ext_virial.sum(dim=1),
        }
        if do_atomic_virial:
            # C_a[k][j] = sum_i X_ij dE_i/dX_ak, X_i of the local centres held constant
            x_loc = coord[:, :nloc, :].detach()
            cols: list[torch.Tensor] = []
            for j in range(3):
                gj = torch.autograd.grad(
                    [(e_atom * x_loc[:, :, j]).sum()],
                    [coord],
                    create_graph=create_graph,
                    retain_graph=True,
                    allow_unused=True,
                )[0]
                cols.append(torch.zeros_like(coord) if gj is None else gj)
            corr = torch.stack(cols, dim=-1)  # [nf, nall, 3(k), 3(j)]
            out["extended_virial"] = ext_virial + corr.reshape(ext_virial.shape)
        return out

    @torch.jit.unused
    def forward_extended(
        self,
        ext_coord: torch.Tensor,
        atype: torch.Tensor,
        mapping: torch.Tensor,
        nlist: torch.Tensor,
        do_atomic_virial: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Evaluate on precomputed neighbour data and fold results onto the local atoms.

        ``ext_coord [nf,nall,3]``, ``atype [nf,nloc]``, ``mapping [nf,nall]``, and
        ``nlist [nf,nloc,sel]`` already formatted (sorted by distance, cut at ``rcut``), as
        :func:`dpa3.data.neighbor.build_neighbor_batch` builds it: it is not sorted again.
        Returns ``energy [nf,1]``, ``atom_energy [nf,nloc,1]``, ``force [nf,nloc,3]``,
        ``virial [nf,9]`` and optionally ``atom_virial [nf,nloc,9]``.
        """
        nf, nloc = atype.shape
        ext_atype = torch.gather(atype, 1, mapping)
        low = self._forward_formatted(ext_coord, ext_atype, nlist, mapping, do_atomic_virial, None)
        idx = mapping.unsqueeze(-1)
        force = torch.zeros(nf, nloc, 3, dtype=torch.float64, device=ext_coord.device)
        force = force.scatter_add(1, idx.expand(-1, -1, 3), low["extended_force"])
        out = {
            "energy": low["energy"],
            "atom_energy": low["atom_energy"],
            "force": force,
            "virial": low["virial"],
        }
        if do_atomic_virial:
            av = torch.zeros(nf, nloc, 9, dtype=torch.float64, device=ext_coord.device)
            out["atom_virial"] = av.scatter_add(1, idx.expand(-1, -1, 9), low["extended_virial"])
        return out

    @torch.jit.unused
    def forward(
        self,
        coord: torch.Tensor,
        atype: torch.Tensor,
        box: torch.Tensor | None = None,
        do_atomic_virial: bool = False,
        neighbors: NeighborCache | None = None,
    ) -> dict[str, torch.Tensor]:
        """Energy, forces and virial of ``nf`` frames with the same atom count.

        ``coord [nf,N,3]`` float64 Å, ``atype [nf,N]`` int64, ``box [nf,9]`` (rows a, b, c)
        or None for non-periodic systems.  Returns ``energy [nf,1]``, ``atom_energy [nf,N,1]``,
        ``force [nf,N,3]``, ``virial [nf,9]``, and ``atom_virial [nf,N,9]`` if requested.
        ``neighbors``: a :class:`~dpa3.data.neighbor_cache.NeighborCache` that keeps the
        neighbour data of frames seen before (training); without it they are built each call.
        """
        from ..data.neighbor import build_neighbor_batch

        dev = self.out_bias.device
        coord = torch.as_tensor(coord, dtype=torch.float64)
        nf = coord.shape[0]
        coord = coord.reshape(nf, -1, 3)
        atype = torch.as_tensor(atype, dtype=torch.long).reshape(nf, -1)
        box_np = None if box is None else torch.as_tensor(box).detach().cpu().numpy().reshape(nf, 9)
        coord_np = coord.detach().cpu().numpy()
        if neighbors is None:
            nb = build_neighbor_batch(coord_np, box_np, self.rcut, self.sel)
        else:
            nb = neighbors.get(coord_np, box_np, self.rcut, self.sel)
        return self.forward_extended(
            nb.ext_coord.to(dev),
            atype.to(dev),
            nb.mapping.to(dev),
            nb.nlist.to(dev),
            do_atomic_virial,
        )

    # ------------------------------------------------------------------ state
    @torch.jit.ignore
    def serialize(self) -> dict:
        """Versioned, backend-neutral state: typed config + tensors (numpy)."""
        return {
            "@version": SERIAL_VERSION,
            "config": self.cfg.to_dict(),
            "state": {k: v.detach().cpu().numpy() for k, v in self.state_dict().items()},
        }

    @staticmethod
    def deserialize(data: dict) -> EnergyModel:
        """Inverse of :meth:`serialize`."""
        if data.get("@version") != SERIAL_VERSION:
            raise ValueError(f"unsupported dpa3 model serialization version {data.get('@version')}")
        model = EnergyModel(ModelConfig.from_typed_dict(data["config"]))
        model.load_state_dict({k: torch.as_tensor(v) for k, v in data["state"].items()})
        return model
