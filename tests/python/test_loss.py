"""The ``ener`` loss (docs/dpa3-spec.md §5.1) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from dpa3.config._base import ConfigError, Section
from dpa3.config.train import LossConfig
from dpa3.data.loader import Batch
from dpa3.train.loss import EnergyLoss


def loss_cfg(**kw) -> LossConfig:
    return LossConfig.parse(Section(kw, "loss"))


def make_batch(nf=2, n=3, find=(1.0, 1.0, 1.0)) -> tuple[Batch, dict]:
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    b = Batch(
        coord=r(nf, n, 3),
        atype=torch.zeros(nf, n, dtype=torch.long),
        box=None,
        energy=r(nf, 1),
        force=r(nf, n, 3),
        virial=r(nf, 9),
        find_energy=torch.full((nf,), find[0], dtype=torch.float64),
        find_force=torch.full((nf,), find[1], dtype=torch.float64),
        find_virial=torch.full((nf,), find[2], dtype=torch.float64),
    )
    pred = {"energy": r(nf, 1), "force": r(nf, n, 3), "virial": r(nf, 9)}
    return b, pred


def test_prefactors_follow_lr():
    loss = EnergyLoss(
        loss_cfg(
            start_pref_e=0.2,
            limit_pref_e=20,
            start_pref_f=100,
            limit_pref_f=60,
            start_pref_v=0.02,
            limit_pref_v=1,
        ),
        1e-3,
    )
    pe, pf, pv = loss.prefactors(1e-3)
    assert (pe, pf, pv) == pytest.approx((0.2, 100, 0.02))
    # water recipe end: gamma = 0.03
    pe, pf, pv = loss.prefactors(3e-5)
    assert pe == pytest.approx(19.406)
    assert pf == pytest.approx(61.2)
    assert pv == pytest.approx(0.9706)


def test_loss_value_by_hand():
    cfg = loss_cfg(
        start_pref_e=0.2,
        limit_pref_e=20,
        start_pref_f=100,
        limit_pref_f=60,
        start_pref_v=0.02,
        limit_pref_v=1,
    )
    loss = EnergyLoss(cfg, 1e-3)
    b, pred = make_batch()
    lr = 5e-4
    pe, pf, pv = loss.prefactors(lr)
    n = 3
    de = (pred["energy"] - b.energy).reshape(-1)
    df = pred["force"] - b.force
    dv = pred["virial"] - b.virial
    want = pe * (de**2).mean() / n + pf * (df**2).mean() + pv * (dv**2).mean() / n
    val, m = loss(pred, b, lr)
    assert float(val) == pytest.approx(float(want), rel=1e-12)
    assert m["rmse_e"] == pytest.approx(math.sqrt(float((de**2).mean())) / n)
    assert m["rmse_f"] == pytest.approx(math.sqrt(float((df**2).mean())))
    assert m["rmse_v"] == pytest.approx(math.sqrt(float((dv**2).mean())) / n)
    assert m["rmse"] == pytest.approx(math.sqrt(float(want)))
    assert list(m) == ["rmse", "rmse_e", "rmse_f", "rmse_v"]


def test_intensive_normalisation():
    cfg = loss_cfg(
        start_pref_e=1, limit_pref_e=1, start_pref_f=0, limit_pref_f=0, intensive_ener_virial=True
    )
    b, pred = make_batch()
    val, _ = EnergyLoss(cfg, 1e-3)(pred, b, 1e-3)
    de = (pred["energy"] - b.energy).reshape(-1)
    assert float(val) == pytest.approx(float((de**2).mean()) / 9)


def test_find_masks_terms():
    cfg = loss_cfg(
        start_pref_e=1,
        limit_pref_e=1,
        start_pref_f=1,
        limit_pref_f=1,
        start_pref_v=1,
        limit_pref_v=1,
    )
    b, pred = make_batch(find=(1.0, 1.0, 0.0))
    val, m = EnergyLoss(cfg, 1e-3)(pred, b, 1e-3)
    assert math.isnan(m["rmse_v"])
    de = (pred["energy"] - b.energy).reshape(-1)
    df = pred["force"] - b.force
    assert float(val) == pytest.approx(float((de**2).mean() / 3 + (df**2).mean()))
    # per-frame: only frame 0 has an energy label
    b.find_energy = torch.tensor([1.0, 0.0], dtype=torch.float64)
    val2, m2 = EnergyLoss(cfg, 1e-3)(pred, b, 1e-3)
    assert float(val2) == pytest.approx(float(de[0] ** 2 / 2 / 3 + (df**2).mean()))
    assert m2["rmse_e"] == pytest.approx(abs(float(de[0])) / 3)


def test_inactive_terms_and_gradient():
    cfg = loss_cfg(start_pref_e=1, limit_pref_e=0, start_pref_f=1, limit_pref_f=1)
    loss = EnergyLoss(cfg, 1e-3)
    assert loss.metric_names() == ["rmse", "rmse_f"]
    b, pred = make_batch()
    pred["force"].requires_grad_(True)
    val, _ = loss(pred, b, 1e-3)
    val.backward()
    assert pred["force"].grad is not None


def test_loss_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'start_pref_f'"):
        loss_cfg(start_pref_ff=1)
    with pytest.raises(ConfigError, match="start_pref_ae"):
        loss_cfg(start_pref_ae=1.0, limit_pref_ae=1.0)
    with pytest.raises(ConfigError, match="use_huber"):
        loss_cfg(use_huber=True)
    with pytest.raises(ConfigError, match="zero prefactor"):
        loss_cfg(start_pref_e=0, start_pref_f=0)
    # DeePMD-kit schema defaults
    d = loss_cfg()
    assert (d.start_pref_e, d.limit_pref_e, d.start_pref_f, d.limit_pref_f) == (0.02, 1, 1000, 1)
    assert not d.has_v
