"""ASE calculator for DPA3 models (frozen ``.pth`` files or dpa3 training checkpoints).

    from dpa3.calculator import DPA3Calculator
    atoms.calc = DPA3Calculator("model.pth")

Implements ``energy``, ``free_energy``, ``forces`` (eV/Å), ``stress`` (eV/Å^3, ASE's Voigt
order xx yy zz yz xz xy, ``= -virial / volume``) and per-atom ``energies``.  Periodic,
non-periodic and mixed systems (a slab: ``pbc=(True, True, False)``) are supported; a mixed
one is evaluated in its cell made periodic, as DeePMD-kit's calculator does, once the vacuum
along each non-periodic cell vector is checked to exceed the model's cutoff (so no atom sees
an image across it: the same numbers as without those images; the stress then refers to the
whole cell's volume, vacuum included).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from .data.neighbor import build_neighbor_data, face_distances
from .device import describe, resolve_device
from .errors import DataError
from .malloc import keep_freed_memory as _keep_freed_memory

log = logging.getLogger(__name__)


def _module_device(module: torch.nn.Module) -> torch.device:
    first = next(iter(module.parameters()), None)
    if first is None:
        first = next(iter(module.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def _load(model: str | Path | torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if isinstance(model, torch.nn.Module):
        return model.to(device)
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"dpa3: no model file {path}")
    from .export.load import load_model

    return load_model(path, device=device)  # what the file holds, whatever its suffix


def _check_vacuum(atoms, rcut: float) -> None:
    """A mixed-periodic ``atoms`` (pbc partly True) may be evaluated as fully periodic when,
    along every non-periodic cell vector, the gap between the atoms and their images (the face
    distance of the cell times the part of it the atoms do not span) exceeds ``rcut`` (Å);
    raises :class:`DataError` naming the vector otherwise."""
    pbc = atoms.get_pbc()
    cell = atoms.get_cell().array.astype(np.float64)
    if not np.isfinite(cell).all() or abs(np.linalg.det(cell)) <= 1e-10 * max(
        float(np.prod(np.linalg.norm(cell, axis=1))), 1e-300
    ):
        raise DataError(
            f"dpa3: pbc={pbc.tolist()} needs a cell of non-zero volume (with vacuum along the "
            f"non-periodic directions), got {cell.tolist()}"
        )
    frac = np.linalg.solve(cell.T, atoms.get_positions().astype(np.float64).T).T
    if not np.isfinite(frac).all():
        return  # build_neighbor_data names the non-finite position
    h = face_distances(cell)
    for d in np.flatnonzero(~pbc):
        gap = h[d] * (1.0 - float(frac[:, d].max() - frac[:, d].min()))
        if not gap > rcut * (1.0 + 1e-9):
            raise DataError(
                f"dpa3: pbc={pbc.tolist()}: the vacuum along cell vector {'abc'[d]} is "
                f"{gap:.3f} Å, not more than the model's cutoff {rcut:g} Å; make the cell longer "
                "along it (atoms would see images across the vacuum)"
            )


class DPA3Calculator(Calculator):
    """ASE calculator running a DPA3 model through its ``forward_lower`` method.

    Parameters
    ----------
    model
        A frozen model (``.pth`` from ``dpa3 freeze``), a dpa3 checkpoint (``.pt``), a DPA3
        energy model frozen by DeePMD-kit (``dp --pt freeze``; converted in memory), or an
        :class:`dpa3.model.EnergyModel` instance.
    device
        ``"auto"`` (default: a CUDA GPU if one is visible, else the CPU), ``"cpu"``, ``"cuda"``,
        ``"cuda:N"`` or a :class:`torch.device`.  A model given as a module is moved there,
        except with ``"auto"``, which leaves a module on the device it is on.
    keep_freed_memory
        Let the process's malloc keep freed memory for the next evaluation
        (:func:`dpa3.malloc.keep_freed_memory`, as the ``dpa3`` command and ``pair_style dpa3``
        do; default True): with glibc's defaults every evaluation of ~1,000 atoms or more
        faults its large tensors' pages in again (1,536 water atoms on the CPU: about 2x the
        time).  It changes the whole process (the resident set stays at the peak of an
        evaluation); False leaves malloc alone.
    """

    implemented_properties: ClassVar[list[str]] = [
        "energy",
        "free_energy",
        "energies",
        "forces",
        "stress",
    ]

    def __init__(
        self,
        model: str | Path | torch.nn.Module,
        device: str | torch.device = "auto",
        keep_freed_memory: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if keep_freed_memory:
            why = _keep_freed_memory()
            if why is not None:
                log.debug("DPA3Calculator: malloc left as is: %s", why)
        if isinstance(model, torch.nn.Module) and str(device) == "auto":
            self.device = _module_device(model)
        else:
            self.device = resolve_device(device)
        log.info("DPA3Calculator: %s", describe(device, self.device))
        self.model = _load(model, self.device)
        self.model.eval()
        self.type_map = list(self.model.get_type_map())
        self.rcut = float(self.model.get_rcut())
        self.sel = int(self.model.get_sel()[0])
        # the angle cutoff and a_sel (get_graph_spec; absent from models frozen before it)
        spec = self.model.get_graph_spec() if hasattr(self.model, "get_graph_spec") else []
        self.angle_limit = (float(spec[2]), int(spec[3])) if len(spec) >= 4 else None
        self._truncation_said = False

    def _report_truncation(self, nd, coord: np.ndarray) -> None:
        """Say once per calculator when an atom has more neighbours than e_sel within the
        cutoff (or, among those kept, more than a_sel within the angle cutoff): the model keeps
        the nearest and leaves the rest out, as DeePMD-kit does, and its energy is not smooth
        where a count crosses the limit."""
        most = int(nd.n_neighbors.max(initial=0))
        said = []
        if most > self.sel:
            said.append(f"{most} neighbours within {self.rcut:g} Å, more than e_sel {self.sel}")
        if self.angle_limit is not None and nd.nlist.size:
            a_rcut, a_sel = self.angle_limit
            valid = nd.nlist >= 0
            d = np.linalg.norm(nd.ext_coord[np.maximum(nd.nlist, 0)] - coord[:, None], axis=-1)
            most_a = int(((d <= a_rcut) & valid).sum(axis=1).max())
            if most_a > a_sel:
                said.append(f"{most_a} within {a_rcut:g} Å, more than a_sel {a_sel}")
        if said:
            self._truncation_said = True
            log.warning(
                "DPA3Calculator: an atom has %s: the nearest are used and the rest left out, as "
                "in DeePMD-kit, so the energy jumps where a count crosses its limit (a larger "
                "sel needs training again; said once)",
                "; ".join(said),
            )

    def _types(self, symbols: list[str]) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.type_map)}
        missing = sorted(set(symbols) - set(index))
        if missing:
            raise DataError(
                f"dpa3: element(s) {missing} are not in the model's type map {self.type_map}"
            )
        return np.array([index[s] for s in symbols], dtype=np.int64)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        """Compute the requested properties for ``atoms``."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        pbc = atoms.get_pbc()
        periodic = bool(pbc.any())
        if periodic and not pbc.all():
            _check_vacuum(atoms, self.rcut)
        coord = atoms.get_positions().astype(np.float64)
        box = atoms.get_cell().array.reshape(9).astype(np.float64) if periodic else None
        atype = self._types(atoms.get_chemical_symbols())
        nd = build_neighbor_data(coord, box, self.rcut, self.sel)
        if not self._truncation_said:
            self._report_truncation(nd, nd.ext_coord[: len(coord)])
        nloc = len(atype)
        dev = self.device
        mapping = torch.as_tensor(nd.mapping, device=dev)[None]
        ext_atype = torch.as_tensor(atype, device=dev)[mapping]
        # As in pair_style dpa3: run the scripted graphs without the profiling executor, which
        # spends the first calls after loading profiling and re-optimising (2-3x slower each)
        # and made no later call faster on the CPU.
        with torch.jit.optimized_execution(False):
            out = self.model.forward_lower(
                torch.as_tensor(nd.ext_coord, device=dev)[None],
                ext_atype,
                torch.as_tensor(nd.nlist, device=dev)[None],
                mapping,
                False,
                None,
            )
        ext_force = out["extended_force"][0].detach().cpu().numpy()
        force = np.zeros((nloc, 3))
        np.add.at(force, nd.mapping, ext_force)
        energy = float(out["energy"].item())
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = force
        self.results["energies"] = out["atom_energy"][0, :, 0].detach().cpu().numpy().copy()
        if periodic:
            virial = out["virial"][0].detach().cpu().numpy().reshape(3, 3)
            stress = -0.5 * (virial + virial.T) / atoms.get_volume()
            self.results["stress"] = stress.flat[[0, 4, 8, 5, 2, 1]]
