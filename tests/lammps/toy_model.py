"""A tiny message-passing model with DPA3's frozen-model contract, for plugin tests.

Node features ``h [nloc, n_dim]`` start from a type embedding and go through ``n_layers``
updates ``h <- tanh(h W_l + (sum_j s(r_ij) h_j) U_l + b_l)`` where the neighbour features
``h_j`` (ghosts included) come from ``torch.ops.dpa3.border_exchange`` (LAMMPS path) or a
gather over ``mapping`` (single process). The atomic energy adds a smooth pair term, so
energy, forces, virial and per-atom virial exercise the same paths as the real model:
geometry of local centres only, features of ghosts refreshed per layer, forces on ghosts.
``s(r) = (1 - r^2/rc^2)^2`` inside ``rc``: continuous with its derivative at the cutoff.
"""

from __future__ import annotations

import torch
from torch import nn

from dpa3 import _ops


def _exchange(h: torch.Tensor, nall: int, comm_dict: dict[str, torch.Tensor]) -> torch.Tensor:
    """``h [nloc, d]`` -> ``[nall, d]``: ghost rows filled from their owners."""
    pad = torch.zeros(nall - h.shape[0], h.shape[1], dtype=h.dtype, device=h.device)
    return _ops.border_exchange(torch.cat([h, pad], dim=0), comm_dict)


class ToyMessagePassing(nn.Module):
    """Toy model; see the module docstring. Parameters are random but reproducible."""

    def __init__(
        self,
        type_map: list[str],
        rcut: float = 4.0,
        n_dim: int = 3,
        n_layers: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        nt = len(type_map)
        f64 = torch.float64

        def rand(*shape: int, scale: float = 1.0) -> nn.Parameter:
            return nn.Parameter(scale * torch.randn(*shape, generator=gen, dtype=f64))

        self.type_map = list(type_map)
        self.ntypes = nt
        self.rcut = float(rcut)
        self.n_dim = n_dim
        self.n_layers = n_layers
        self.embed = rand(nt, n_dim)
        self.w_self = rand(n_layers, n_dim, n_dim, scale=0.5)
        self.w_msg = rand(n_layers, n_dim, n_dim, scale=0.3)
        self.b = rand(n_layers, n_dim, scale=0.1)
        self.w_out = rand(n_dim)
        self.e_bias = rand(nt)
        eps = torch.rand(nt, nt, generator=gen, dtype=f64)
        self.pair_eps = nn.Parameter(0.5 * (eps + eps.T))
        self.metadata = {"precision": "float64", "model": "toy"}

    @torch.jit.export
    def get_rcut(self) -> float:
        return self.rcut

    @torch.jit.export
    def get_sel(self) -> list[int]:
        return [1000]

    @torch.jit.export
    def get_type_map(self) -> list[str]:
        return self.type_map

    @torch.jit.export
    def get_ntypes(self) -> int:
        return self.ntypes

    @torch.jit.export
    def get_num_layers(self) -> int:
        return self.n_layers

    @torch.jit.export
    def get_exchange_width(self) -> int:
        return self.n_dim

    @torch.jit.export
    def get_metadata(self) -> dict[str, str]:
        return self.metadata

    def _atomic_energy(
        self,
        coord: torch.Tensor,
        atype: torch.Tensor,
        nlist: torch.Tensor,
        mapping: torch.Tensor | None,
        comm_dict: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        """``[nf, nloc]`` atomic energies."""
        nf, nloc, nnei = nlist.shape
        nall = coord.shape[1]
        idx = nlist.clamp(min=0)
        flat = idx.reshape(nf, nloc * nnei)
        xj = torch.gather(coord, 1, flat.unsqueeze(-1).expand(-1, -1, 3)).reshape(nf, nloc, nnei, 3)
        rij = xj - coord[:, :nloc, :].unsqueeze(2)
        r2 = (rij * rij).sum(-1)
        rc2 = self.rcut * self.rcut
        valid = (nlist >= 0) & (r2 < rc2)
        s = torch.where(valid, (1.0 - r2 / rc2) ** 2, torch.zeros_like(r2))  # [nf, nloc, nnei]

        ti = atype[:, :nloc]
        tj = torch.gather(atype, 1, flat).reshape(nf, nloc, nnei)
        e_pair = 0.5 * (self.pair_eps[ti.unsqueeze(-1), tj] * s * s).sum(-1)

        h = self.embed[ti]  # [nf, nloc, d]
        for layer in range(self.n_layers):
            if comm_dict is not None:
                h_ext = _exchange(h[0], nall, comm_dict).unsqueeze(0)
            else:
                assert mapping is not None
                h_ext = torch.gather(h, 1, mapping.unsqueeze(-1).expand(-1, -1, self.n_dim))
            hj = torch.gather(h_ext, 1, flat.unsqueeze(-1).expand(-1, -1, self.n_dim)).reshape(
                nf, nloc, nnei, self.n_dim
            )
            msg = (s.unsqueeze(-1) * hj).sum(2)
            h = torch.tanh(h @ self.w_self[layer] + msg @ self.w_msg[layer] + self.b[layer])
        return h @ self.w_out + self.e_bias[ti] + e_pair

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
        nloc = nlist.shape[1]
        coord = extended_coord.to(torch.float64).detach().requires_grad_(True)
        e_atom = self._atomic_energy(coord, extended_atype, nlist, mapping, comm_dict)
        energy = e_atom.sum(dim=1, keepdim=True)
        g = torch.autograd.grad(
            [energy.sum()], [coord], retain_graph=do_atomic_virial, allow_unused=True
        )[0]
        force = torch.zeros_like(coord) if g is None else -g
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
            # relative to the local centre holding each atomic energy: translation invariant
            x_loc = coord[:, :nloc, :].detach()
            cols: list[torch.Tensor] = []
            for j in range(3):
                gj = torch.autograd.grad(
                    [(e_atom * x_loc[:, :, j]).sum()], [coord], retain_graph=True, allow_unused=True
                )[0]
                cols.append(torch.zeros_like(coord) if gj is None else gj)
            corr = torch.stack(cols, dim=-1).reshape(ext_virial.shape)
            out["extended_virial"] = ext_virial + corr
        return out

    def forward(
        self,
        extended_coord: torch.Tensor,
        extended_atype: torch.Tensor,
        nlist: torch.Tensor,
        mapping: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        return self.forward_lower(extended_coord, extended_atype, nlist, mapping, True, None)
