"""Batches and the multi-system sampler used by training, statistics and ``dpa3 test``.

All frames in a batch come from one system (same ``natoms``).  Each step draws one
system with a probability (DeePMD-kit's ``auto_prob``/``sys_probs``) and takes the next
batch of that system's shuffled pass over its frames (the last batch of a pass may be
smaller, like a ``torch`` ``DataLoader`` without ``drop_last``).  All randomness comes from
one ``numpy`` generator whose state, with each system's pass order and position, is part of
the checkpoint, so a restarted run draws exactly the same batches.

Neighbour lists are built by the model's ``forward`` (:mod:`dpa3.data.neighbor`), sorted once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from ..config.train import BatchSizeRule, DataConfig
from .system import DataError, System, find_systems, load_systems


@dataclass
class Batch:
    """Frames of one system, as torch tensors.

    Attributes
    ----------
    coord
        (nf, natoms, 3) float64.
    atype
        (nf, natoms) int64 model type indices.
    box
        (nf, 9) float64, or ``None`` (non-periodic).
    energy, force, virial
        (nf, 1), (nf, natoms, 3), (nf, 9) float64 labels (zero where absent).
    find_energy, find_force, find_virial
        (nf,) float64: 1 where the frame has the label, else 0.
    system
        Index of the system in its sampler.
    atom_ener, find_atom_ener
        (nf, natoms) float64 atomic-energy labels and (nf,) their flags (``None``: not loaded).
    atom_ener_coeff
        (nf, natoms) float64 coefficients of ``enable_atom_ener_coeff`` (1 where absent).
    """

    coord: torch.Tensor
    atype: torch.Tensor
    box: torch.Tensor | None
    energy: torch.Tensor
    force: torch.Tensor
    virial: torch.Tensor
    find_energy: torch.Tensor
    find_force: torch.Tensor
    find_virial: torch.Tensor
    system: int = 0
    atom_ener: torch.Tensor | None = None
    find_atom_ener: torch.Tensor | None = None
    atom_ener_coeff: torch.Tensor | None = None

    @property
    def nframes(self) -> int:
        """Number of frames in the batch."""
        return int(self.coord.shape[0])

    @property
    def natoms(self) -> int:
        """Atoms per frame."""
        return int(self.coord.shape[1])

    def to(self, device: torch.device | str) -> Batch:
        """Copy every tensor to ``device``."""
        kw: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v.to(device) if isinstance(v, torch.Tensor) else v
        return Batch(**kw)


def make_batch(system: System, idx: np.ndarray, sys_index: int = 0) -> Batch:
    """Gather frames ``idx`` of ``system`` into a :class:`Batch`."""
    idx = np.asarray(idx, dtype=np.int64)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a[idx]))

    return Batch(
        coord=t(system.coord),
        atype=t(system.atype),
        box=None if system.box is None else t(system.box),
        energy=t(system.labels["energy"]).reshape(-1, 1),
        force=t(system.labels["force"]),
        virial=t(system.labels["virial"]),
        find_energy=t(system.find["energy"]).to(torch.float64),
        find_force=t(system.find["force"]).to(torch.float64),
        find_virial=t(system.find["virial"]).to(torch.float64),
        system=sys_index,
        atom_ener=t(system.labels["atom_ener"]),
        find_atom_ener=t(system.find["atom_ener"]).to(torch.float64),
        atom_ener_coeff=t(system.labels["atom_ener_coeff"]),
    )


class SystemBatcher:
    """Shuffled passes over the frames of one system, ``batch_size`` frames at a time."""

    def __init__(self, system: System, batch_size: int, index: int = 0) -> None:
        self.system = system
        self.batch_size = int(batch_size)
        self.index = index
        self._order = np.arange(system.nframes, dtype=np.int64)
        self._pos = system.nframes  # forces a shuffle on first use

    @property
    def nbatches(self) -> int:
        """Batches per pass (the last one may be smaller)."""
        return -(-self.system.nframes // self.batch_size)

    def next_indices(self, rng: np.random.Generator) -> np.ndarray:
        """Frame indices of the next batch; reshuffles at the end of each pass."""
        if self._pos >= self.system.nframes:
            self._order = rng.permutation(self.system.nframes).astype(np.int64)
            self._pos = 0
        idx = self._order[self._pos : self._pos + self.batch_size]
        self._pos += len(idx)
        return idx

    def next(self, rng: np.random.Generator) -> Batch:
        """The next batch."""
        return make_batch(self.system, self.next_indices(rng), self.index)

    def state_dict(self) -> dict[str, Any]:
        """Pass order and position (for restarts)."""
        return {"order": torch.from_numpy(self._order.copy()), "pos": int(self._pos)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        order = np.asarray(state["order"], dtype=np.int64)
        if order.shape != (self.system.nframes,):
            raise DataError(
                f"'{self.system.path}': the checkpoint's sampler state is for "
                f"{order.shape[0]} frames, the system has {self.system.nframes}"
            )
        self._order = order
        self._pos = int(state["pos"])


def system_probabilities(
    nbatches: Sequence[int], auto_prob: str, sys_probs: Sequence[float] | None
) -> np.ndarray:
    """Probability of drawing each system (DeePMD-kit's ``auto_prob`` / ``sys_probs``)."""
    n = len(nbatches)
    if sys_probs is not None:
        if len(sys_probs) != n:
            raise DataError(f"sys_probs has {len(sys_probs)} entries for {n} systems")
        p = np.asarray(sys_probs, dtype=np.float64)
    elif auto_prob == "prob_uniform":
        p = np.ones(n)
    elif auto_prob == "prob_sys_size":
        p = np.asarray(nbatches, dtype=np.float64)
    else:  # "prob_sys_size;start:end:weight;..."
        p = np.zeros(n)
        for block in auto_prob.split(";")[1:]:
            try:
                s, e, w = block.split(":")
                s, e, w = int(s), int(e), float(w)
            except ValueError:
                raise DataError(f"auto_prob: bad block {block!r} (want start:end:weight)") from None
            if not 0 <= s < e <= n:
                raise DataError(f"auto_prob: block {block!r} is outside 0..{n}")
            nb = np.asarray(nbatches[s:e], dtype=np.float64)
            p[s:e] = w * nb / nb.sum()
    if p.sum() <= 0:
        raise DataError("system probabilities sum to zero")
    return p / p.sum()


def _name_column(name: str, width: int = 42) -> str:
    """A system name in the summary's 42-character column (longer ones: ``-- `` + the end)."""
    if len(name) <= width:
        return f"{name:>{width}s}"
    return "-- " + name[-(width - 3) :]


class DataSampler:
    """Draws batches from several systems (one system per batch).

    Parameters
    ----------
    systems
        Loaded systems.
    rule
        The ``batch_size`` rule; systems that ``filter:N`` drops are left out.
    auto_prob, sys_probs
        System probabilities (see :func:`system_probabilities`).
    seed
        Seed of the sampler's ``numpy`` generator.
    """

    def __init__(
        self,
        systems: Sequence[System],
        rule: BatchSizeRule,
        auto_prob: str = "prob_sys_size",
        sys_probs: Sequence[float] | None = None,
        seed: int | None = None,
        where: str = "training_data",
    ) -> None:
        if rule.kind == "list" and len(rule.values) != len(systems):
            raise DataError(
                f"{where}.batch_size lists {len(rule.values)} sizes for {len(systems)} systems"
            )
        self.batchers: list[SystemBatcher] = []
        kept: list[int] = []
        for i, s in enumerate(systems):
            bs = rule.for_system(s.natoms, i)
            if bs is None:
                continue
            kept.append(i)
            self.batchers.append(SystemBatcher(s, bs, len(self.batchers)))
        if not self.batchers:
            raise DataError(
                f"{where}: every system was dropped by batch_size {rule.kind}:{rule.value}"
            )
        if sys_probs is not None and len(sys_probs) == len(systems):
            sys_probs = [sys_probs[i] for i in kept]
        self.systems = [b.system for b in self.batchers]
        self.probs = system_probabilities([b.nbatches for b in self.batchers], auto_prob, sys_probs)
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_config(
        cls,
        cfg: DataConfig,
        type_map: Sequence[str],
        seed: int | None,
        where: str = "training_data",
    ) -> DataSampler:
        """Find, load and wrap the systems of a data section."""
        paths = find_systems(cfg.systems, where=f"{where}.systems", patterns=cfg.rglob_patterns)
        if cfg.rglob_patterns is not None and (
            cfg.batch_size.kind == "list" or cfg.sys_probs is not None
        ):
            key = "batch_size" if cfg.batch_size.kind == "list" else "sys_probs"
            raise DataError(
                f"{where}: a per-system {key} list with rglob_patterns: DeePMD-kit returns "
                "the systems rglob_patterns find in no fixed order, so the list cannot be "
                "matched to them; list the systems instead"
            )
        systems = load_systems(paths, type_map, cfg.set_prefix)
        return cls(systems, cfg.batch_size, cfg.auto_prob, cfg.sys_probs, seed, where)

    def summary(self, name: str) -> list[str]:
        """The data summary DeePMD-kit logs at the start of training, line by line: each
        system's path, atoms, batch size, batches (counted per set, as DeePMD-kit prints
        them), probability and periodicity."""
        lines = [
            f"---Summary of DataSystem: {name.capitalize():13s}"
            "-----------------------------------------------",
            f"Found {len(self.batchers)} System(s):",
            f"{_name_column('system')}  {'natoms':<6s}  {'bch_sz':<6s}  {'n_bch':<6s}  "
            f"{'prob':<9s}  {'pbc':<3s}",
        ]
        for b, p in zip(self.batchers, self.probs, strict=True):
            s = b.system
            lines.append(
                f"{_name_column(s.path)}  {s.natoms:6d}  {b.batch_size:6d}  "
                f"{s.set_batches(b.batch_size):6d}  {p:9.3e}  {'T' if s.pbc else 'F':>3s}"
            )
        lines.append("-" * 86)
        return lines

    @property
    def total_batches(self) -> int:
        """Batches in one pass over every system."""
        return sum(b.nbatches for b in self.batchers)

    def next(self) -> Batch:
        """Draw a system, then return its next batch."""
        i = int(self.rng.choice(len(self.batchers), p=self.probs))
        return self.batchers[i].next(self.rng)

    def state_dict(self) -> dict[str, Any]:
        """Generator state and every system's pass position (plain types and tensors)."""
        return {
            "rng": self.rng.bit_generator.state,
            "systems": [b.state_dict() for b in self.batchers],
            "paths": [b.system.path for b in self.batchers],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict` (the systems must be the same, in the same order)."""
        if len(state["systems"]) != len(self.batchers):
            raise DataError(
                f"the checkpoint's sampler has {len(state['systems'])} systems, the input "
                f"{len(self.batchers)}: restart with the same training data"
            )
        self.rng.bit_generator.state = state["rng"]
        for b, s in zip(self.batchers, state["systems"], strict=True):
            b.load_state_dict(s)

    def sample_per_system(self, nbatch: int, seed: int | None) -> list[list[Batch]]:
        """Up to ``nbatch`` distinct batches from each system's own shuffled order.

        Used for statistics: a separate generator, so the training draws do not change.
        """
        rng = np.random.default_rng(seed)
        out = []
        for b in self.batchers:
            perm = rng.permutation(b.system.nframes)
            chunks = [perm[k : k + b.batch_size] for k in range(0, len(perm), b.batch_size)]
            out.append([make_batch(b.system, c, b.index) for c in chunks[:nbatch]])
        return out


__all__ = [
    "Batch",
    "DataSampler",
    "SystemBatcher",
    "make_batch",
    "system_probabilities",
]
