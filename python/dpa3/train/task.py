"""The per-head pieces of training: a task's data and loss, the model forward, ``"auto"``
selections and the energy-bias statistics.

A single-task run has one :class:`Task` (named ``""``); a multi-task run one per head.
:class:`dpa3.train.trainer.Trainer` builds and uses them the same way in both cases.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config.model import AUTO_SEL, SEL_KEYS, AutoSel, ModelConfig
from ..config.model_section import BiasAdjustMode, ModelSection
from ..config.schedule import LossConfig
from ..config.train import InputConfig
from ..data.loader import Batch, DataSampler
from ..data.neighbor_cache import NeighborCache
from ..data.stat_file import load_stat
from ..data.stats import auto_sel, compute_or_load_energy_stat, neighbor_stat
from ..data.system import System
from ..errors import ConfigError, DataError
from .distributed import DistContext
from .finetune import refit_bias_delta
from .loss import EnergyLoss

log = logging.getLogger(__name__)


def model_forward(
    model: torch.nn.Module, batch: Batch, neighbors: NeighborCache | None = None
) -> dict[str, torch.Tensor]:
    """Evaluate ``model`` on ``batch``: energy (nf,1), force (nf,N,3), virial (nf,9);
    ``neighbors`` keeps the neighbour data of frames seen before."""
    if neighbors is None:
        return model(batch.coord, batch.atype, batch.box)
    return model(batch.coord, batch.atype, batch.box, neighbors=neighbors)


def validation_metrics(
    model: torch.nn.Module,
    loss: EnergyLoss,
    data: DataSampler,
    numb_btch: int,
    lr: float,
    device: torch.device,
    neighbors: NeighborCache | None = None,
) -> dict[str, float]:
    """Atom-weighted mean metrics of ``model`` (evaluation mode) over ``numb_btch`` batches of
    ``data`` (labels absent from a batch, nan metrics, are left out of that metric's mean)."""
    model.eval()
    sums: dict[str, float] = {}
    wsum: dict[str, float] = {}
    try:
        for _ in range(numb_btch):
            b = data.next().to(device)
            _, m = loss(model_forward(model, b, neighbors), b, lr)
            for key, v in m.items():
                if v == v:  # skip nan (label absent)
                    sums[key] = sums.get(key, 0.0) + v * b.natoms
                    wsum[key] = wsum.get(key, 0.0) + b.natoms
    finally:
        model.train()
    return {
        key: (sums[key] / wsum[key] if wsum.get(key) else math.nan) for key in loss.metric_names()
    }


#: The loss terms: label file (without ``.npy``), prefactor suffix, whether it is active.
_TERMS = (
    ("energy", "e", lambda c: c.has_e),
    ("force", "f", lambda c: c.has_f),
    ("virial", "v", lambda c: c.has_v),
    ("atom_ener", "ae", lambda c: c.has_ae),
)


def check_labels(loss: LossConfig, systems: Sequence[System], where: str) -> None:
    """Refuse training data without a label for any active loss term (every step's loss
    would be 0 and nothing be learnt); warn for an active term no system has a label for
    (DeePMD-kit skips it silently).

    Raises :class:`dpa3.errors.DataError` naming the data and the label files looked for.
    """
    active = [(name, k) for name, k, on in _TERMS if on(loss)]
    missing = [(name, k) for name, k in active if not any(s.has_label(name) for s in systems)]
    if missing and len(missing) == len(active):
        files = ", ".join(f"{name}.npy (loss.*_pref_{k})" for name, k in missing)
        raise DataError(
            f"{where}: no system has a label for any loss term in use; looked for {files} "
            "in the sets: the loss would be 0 at every step"
        )
    if DistContext.current().is_main:
        for name, k in missing:
            log.warning(
                "loss.start_pref_%s/limit_pref_%s are non-zero but no system of %s has "
                "%s.npy: that term is skipped",
                k,
                k,
                where,
                name,
            )


@dataclass
class Task:
    """One head's training: its parsed input, data, statistics seed and loss.

    Attributes
    ----------
    name
        The head (``""`` in a single-task run: no prefix in logs and ``lcurve.out``).
    cfg
        The task's single-task input (data, loss, ``stat_file``, model section).
    train_data, valid_data
        Its samplers (no validation data: ``None``).
    stat_seed
        Seed of the frames drawn for the energy-bias statistics.
    model_cfg
        The head's resolved model config (set once the selections are known).
    loss
        Its loss (set once the learning rate is known).
    last_trn
        Training metrics of the last step that trained this task (``None`` before).
    """

    name: str
    cfg: InputConfig
    train_data: DataSampler
    valid_data: DataSampler | None
    stat_seed: int | None
    model_cfg: ModelConfig | None = None
    loss: EnergyLoss | None = None
    last_trn: dict[str, float] | None = None

    def __post_init__(self) -> None:
        check_labels(
            self.cfg.loss,
            self.train_data.systems,
            f"training.data_dict.{self.name}.training_data" if self.name else "training_data",
        )

    @property
    def label(self) -> str:
        """Log prefix: ``"[name] "`` (empty for the single task)."""
        return f"[{self.name}] " if self.name else ""

    def stat_batches(self) -> list[list[Batch]]:
        """The frames the energy-bias statistics use (``data_stat_nbatch`` per system)."""
        return self.train_data.sample_per_system(self.model_cfg.data_stat_nbatch, self.stat_seed)

    def compute_stat(self, head: torch.nn.Module) -> None:
        """Set ``head``'s energy bias from the statistics of the data (or the ``stat_file``;
        with ``stat_file_mode`` ``read`` only from it, which is never written)."""
        tr = self.cfg.training
        if tr.stat_file_mode == "read":
            stat = load_stat(tr.stat_file, self.model_cfg.type_map)
            if stat is None:
                raise ConfigError(
                    "'training.stat_file_mode' is 'read' but the stat file "
                    f"'{tr.stat_file}' is missing or has no statistics for the type map "
                    f"{list(self.model_cfg.type_map)} (group '{' '.join(self.model_cfg.type_map)}')"
                )
            for t, v in enumerate(self.model_cfg.preset_out_bias or ()):
                if v is not None:
                    stat.bias[t] = float(v)
        else:
            stat = compute_or_load_energy_stat(
                self.stat_batches(),
                self.model_cfg.type_map,
                self.model_cfg.preset_out_bias,
                tr.stat_file,
            )
        head.set_out_bias(stat.bias, stat.std)
        log.info(
            "%senergy bias per type %s: %s",
            self.label,
            list(self.model_cfg.type_map),
            np.array2string(stat.bias, precision=6),
        )

    def refit_bias(self, head: torch.nn.Module, mode: BiasAdjustMode, device: torch.device) -> None:
        """Re-fit ``head``'s energy bias on the data (see :class:`BiasAdjustMode`)."""
        if mode is BiasAdjustMode.SET:
            self.compute_stat(head)
            return
        delta = refit_bias_delta(
            head, self.stat_batches(), self.model_cfg.ntypes, model_forward, device
        )
        bias = head.out_bias.detach().cpu().numpy() + delta
        head.set_out_bias(bias)
        log.info(
            "%senergy bias changed by %s -> %s",
            self.label,
            np.array2string(delta, precision=6),
            np.array2string(bias, precision=6),
        )

    # ------------------------------------------------------------------ checkpoints
    def sampler_state(self, dist: DistContext) -> dict[str, Any]:
        """The task's sampler states for a checkpoint; with several ranks every rank's
        training stream (a collective when distributed: every rank must call it)."""
        train = self.train_data.state_dict()
        out = {
            "train": train,
            "valid": None if self.valid_data is None else self.valid_data.state_dict(),
        }
        if dist.enabled:
            out["train_ranks"] = dist.all_gather_object(train)
        return out

    def load_sampler_state(self, smp: dict[str, Any], dist: DistContext) -> None:
        """Continue the task's data streams from :meth:`sampler_state`'s output."""
        state = rank_state(smp, "train", dist)
        if state is not None:
            self.train_data.load_state_dict(state)
        if self.valid_data is not None and smp.get("valid") is not None:
            self.valid_data.load_state_dict(smp["valid"])


def rank_state(smp: dict[str, Any], key: str, dist: DistContext) -> Any:
    """This rank's state ``key`` of a checkpoint's sampler part (``None``: keep the fresh one).

    A checkpoint written by as many ranks has every rank's (``<key>_ranks``); otherwise rank 0
    continues the checkpoint's stream and the other ranks start new ones.
    """
    ranks = smp.get(f"{key}_ranks")
    if ranks is not None and len(ranks) == dist.world_size:
        return ranks[dist.rank]
    if ranks is not None or dist.enabled:
        log.warning(
            "the checkpoint was written by %d rank(s), this run has %d: rank 0 continues "
            "the checkpoint's data stream, the other ranks start new ones",
            len(ranks) if ranks is not None else 1,
            dist.world_size,
        )
    return smp.get(key) if dist.is_main else None


def resolve_sel(
    section: ModelSection,
    systems: Sequence[System],
    skip_neighbor_stat: bool,
    fallback: ModelConfig | None = None,
) -> ModelConfig:
    """The model config of ``section`` with integer ``e_sel``/``a_sel``.

    ``"auto"``/``"auto:f"`` become the largest neighbour count within ``e_rcut``/``a_rcut``
    in ``systems`` times ``f`` (default 1.1), rounded up to a multiple of 4.  With
    ``fallback`` (fine-tuning) the pretrained model's values are used instead.  Integer
    values are checked against the data unless ``skip_neighbor_stat``.
    """
    sel: dict[str, int] = {}
    for key, _ in SEL_KEYS:
        where = section.key(key)
        value = section.sel(key)
        rc = section.rcut(key)
        if isinstance(value, AutoSel):
            if fallback is not None:
                sel[key] = getattr(fallback.descriptor.repflow, key)
                log.info("%s = %s taken from the pretrained model", where, sel[key])
                continue
            if skip_neighbor_stat or not systems:
                raise ConfigError(
                    f"'{where}' = '{AUTO_SEL}' needs the neighbour statistics: drop "
                    "--skip-neighbor-stat or give an integer"
                )
            st = neighbor_stat(systems, rc)
            sel[key] = auto_sel(st.max_nbor_size, value.factor)
            log.info(
                "%s: max %d neighbours within %g A -> %d", where, st.max_nbor_size, rc, sel[key]
            )
            continue
        sel[key] = value
        if not skip_neighbor_stat and systems:
            st = neighbor_stat(systems, rc)
            if st.max_nbor_size > value:
                log.warning(
                    "%s = %d is smaller than the largest neighbour count %d within %g A in "
                    "the training data: the farthest neighbours are dropped",
                    where,
                    value,
                    st.max_nbor_size,
                    rc,
                )
    return section.resolve(sel["e_sel"], sel["a_sel"])


__all__ = ["Task", "model_forward", "rank_state", "resolve_sel"]
