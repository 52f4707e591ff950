"""Fine-tuning helpers: carry weights across type maps and re-fit the energy bias.

Type-indexed tensors (type embedding rows, ``out_bias``, ``davg``/``dstd``, ...) are found
without knowing the model's parameter names: a probe model with one extra type is built,
and every dimension that grows by one is a type dimension.  Rows of elements shared by the
old and the new type map are copied; new elements keep their fresh initialisation (and a
zero bias until the re-fit).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from ..config.model import ModelConfig
from ..data.loader import Batch
from ..data.stats import fit_energy_bias, stat_frames

log = logging.getLogger(__name__)


def type_dims(
    model_factory: Callable[[ModelConfig], torch.nn.Module], cfg: ModelConfig
) -> dict[str, list[int]]:
    """For each state-dict entry of ``model_factory(cfg)``, the dimensions indexed by type."""
    base = model_factory(cfg).state_dict()
    probe_cfg = replace(cfg, type_map=tuple(cfg.type_map) + ("__probe__",), preset_out_bias=None)
    probe = model_factory(probe_cfg).state_dict()
    out: dict[str, list[int]] = {}
    for k, v in base.items():
        w = probe.get(k)
        if w is None or w.dim() != v.dim():
            out[k] = []
            continue
        out[k] = [d for d in range(v.dim()) if w.shape[d] == v.shape[d] + 1]
    return out


def _index_map(
    old_tm: Sequence[str], new_tm: Sequence[str], old_len: int, new_len: int
) -> tuple[list[int], list[int]]:
    """(new positions, old positions) along one type dimension; extra rows map by offset."""
    nt_new, nt_old = len(new_tm), len(old_tm)
    new_pos, old_pos = [], []
    for i, t in enumerate(new_tm):
        if t in old_tm:
            new_pos.append(i)
            old_pos.append(old_tm.index(t))
    extra = new_len - nt_new
    if extra == old_len - nt_old:  # e.g. a padding-type row after the real types
        for k in range(extra):
            new_pos.append(nt_new + k)
            old_pos.append(nt_old + k)
    return new_pos, old_pos


def transfer_state(
    old_state: dict[str, torch.Tensor],
    old_tm: Sequence[str],
    new_model: torch.nn.Module,
    new_tm: Sequence[str],
    dims: dict[str, list[int]],
) -> list[str]:
    """Copy ``old_state`` into ``new_model`` remapping type dimensions; returns fresh keys."""
    new_state = new_model.state_dict()
    fresh: list[str] = []
    for k, v in new_state.items():
        if k not in old_state:
            fresh.append(k)
            continue
        old = old_state[k].to(v.dtype)
        tdims = dims.get(k, [])
        if not tdims:
            if old.shape != v.shape:
                raise ValueError(
                    f"'{k}' has shape {tuple(old.shape)} in the pretrained model and "
                    f"{tuple(v.shape)} in the new one: the architectures differ (use "
                    "--use-pretrain-script to take the pretrained model section)"
                )
            v.copy_(old)
            continue
        new_idx, old_idx = [], []
        for d in range(v.dim()):
            if d in tdims:
                n, o = _index_map(old_tm, new_tm, old.shape[d], v.shape[d])
            else:
                if old.shape[d] != v.shape[d]:
                    raise ValueError(
                        f"'{k}': dimension {d} differs ({old.shape[d]} vs "
                        f"{v.shape[d]}): the architectures differ"
                    )
                n = o = list(range(v.shape[d]))
            new_idx.append(torch.tensor(n, dtype=torch.long))
            old_idx.append(torch.tensor(o, dtype=torch.long))
        if any(len(i) == 0 for i in new_idx):
            continue
        nix = torch.meshgrid(*new_idx, indexing="ij")
        oix = torch.meshgrid(*old_idx, indexing="ij")
        v[nix] = old[oix]
    new_model.load_state_dict(new_state)
    return fresh


def predict_energies(
    model: torch.nn.Module,
    batches: Sequence[Sequence[Batch]],
    forward: Callable[[torch.nn.Module, Batch], dict[str, torch.Tensor]],
    device: torch.device | str = "cpu",
) -> list[list[np.ndarray]]:
    """Model energies (nf,) for every sampled batch (eval mode)."""
    was = model.training
    model.eval()
    out = []
    try:
        for per_sys in batches:
            out.append(
                [
                    forward(model, b.to(device))["energy"].detach().cpu().numpy().reshape(-1)
                    for b in per_sys
                ]
            )
    finally:
        model.train(was)
    return out


def refit_bias_delta(
    model: torch.nn.Module,
    batches: Sequence[Sequence[Batch]],
    ntypes: int,
    forward: Callable[[torch.nn.Module, Batch], dict[str, torch.Tensor]],
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """``change-by-statistic``: lstsq of (label - prediction) per type, to add to ``out_bias``."""
    preds = predict_energies(model, batches, forward, device)
    resid_batches = []
    for per_sys, per_pred in zip(batches, preds, strict=True):
        rb = []
        for b, p in zip(per_sys, per_pred, strict=True):
            r = Batch(**b.__dict__)
            r.energy = b.energy - torch.from_numpy(p).reshape(-1, 1)
            rb.append(r)
        resid_batches.append(rb)
    e, c = stat_frames(resid_batches, ntypes)
    delta, _ = fit_energy_bias(e, c)
    return delta


__all__ = ["predict_energies", "refit_bias_delta", "transfer_state", "type_dims"]
