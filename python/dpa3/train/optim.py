"""Optimizer construction (Adam with coupled L2 decay, AdamW with decoupled decay)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..config.schedule import OptimizerConfig


def build_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig, lr: float
) -> torch.optim.Optimizer:
    """Adam/AdamW over *all* trainable parameters (weight decay included on biases)."""
    params = [p for p in params if p.requires_grad]
    kw = dict(lr=lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    # foreach=False: the per-parameter loop is bit-reproducible and as fast on CPU.
    if cfg.type == "AdamW":
        return torch.optim.AdamW(params, foreach=False, **kw)
    return torch.optim.Adam(params, foreach=False, **kw)


__all__ = ["build_optimizer"]
