"""The ``ener`` loss (docs/dpa3-spec.md §5.1) against hand-computed values and DeePMD-kit's
``EnergyStdLoss`` numbers (tests/data/deepmd_train/loss.json)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dpa3.config._base import ConfigError, Section
from dpa3.config.schedule import LossConfig
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
    pe, pf, pv, _ = loss.prefactors(1e-3)
    assert (pe, pf, pv) == pytest.approx((0.2, 100, 0.02))
    # water recipe end: gamma = 0.03
    pe, pf, pv, _ = loss.prefactors(3e-5)
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
    pe, pf, pv, _ = loss.prefactors(lr)
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
    with pytest.raises(ConfigError, match="'loss.start_pref_pf' = 1.0 is not supported"):
        loss_cfg(start_pref_pf=1.0, limit_pref_pf=1.0)
    with pytest.raises(ConfigError, match="'loss.relative_f' must be positive"):
        loss_cfg(relative_f=0.0)
    with pytest.raises(ConfigError, match="use_huber"):
        loss_cfg(use_huber=True)
    with pytest.raises(ConfigError, match="zero prefactor"):
        loss_cfg(start_pref_e=0, start_pref_f=0)
    # DeePMD-kit schema defaults
    d = loss_cfg()
    assert (d.start_pref_e, d.limit_pref_e, d.start_pref_f, d.limit_pref_f) == (0.02, 1, 1000, 1)
    assert not d.has_v


REFERENCE = json.loads(
    (Path(__file__).resolve().parents[1] / "data" / "deepmd_train" / "loss.json").read_text()
)["cases"]


def reference_batch(case: dict) -> tuple[Batch, dict]:
    """The fixture's fixed predictions and labels as a Batch and a model output."""
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    lab, p = case["label"], case["pred"]
    ae = t(p["atom_energy"])
    nf, n = ae.shape
    ones = torch.ones(nf, dtype=torch.float64)
    b = Batch(
        coord=torch.zeros(nf, n, 3, dtype=torch.float64),
        atype=torch.zeros(nf, n, dtype=torch.long),
        box=None,
        energy=t(lab["energy"]).reshape(nf, 1),
        force=t(lab["force"]),
        virial=t(lab["virial"]),
        find_energy=ones,
        find_force=ones,
        find_virial=ones,
        atom_ener=t(lab["atom_ener"]),
        find_atom_ener=ones,
        atom_ener_coeff=t(lab["atom_ener_coeff"]),
    )
    pred = {
        "energy": ae.sum(dim=1, keepdim=True),
        "atom_energy": ae.unsqueeze(-1),
        "force": t(p["force"]),
        "virial": t(p["virial"]),
    }
    return b, pred


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_loss_equals_deepmd(name):
    """relative_f, enable_atom_ener_coeff, the atomic-energy term and their combinations give
    DeePMD-kit's loss and RMSE values on the same batch at three learning rates."""
    case = REFERENCE[name]
    b, pred = reference_batch(case)
    loss = EnergyLoss(loss_cfg(**case["loss"]), case["start_lr"])
    for lr, want in case["results"].items():
        val, m = loss(pred, b, float(lr))
        assert float(val) == pytest.approx(want["loss"], rel=1e-12)
        assert set(m) == set(want) - {"loss"}
        for k, v in m.items():
            assert v == pytest.approx(want[k], rel=1e-12), k


def test_loss_options_change_the_value():
    """Each option moves the loss on the reference batch (none is accepted and ignored)."""
    case = REFERENCE["plain_efv"]
    b, pred = reference_batch(case)
    base = dict(case["loss"])
    ref = float(EnergyLoss(loss_cfg(**base), 1e-3)(pred, b, 5e-4)[0])
    for extra in (
        {"relative_f": 0.5},
        {"enable_atom_ener_coeff": True},
        {"start_pref_ae": 1.0, "limit_pref_ae": 1.0},
    ):
        val = float(EnergyLoss(loss_cfg(**base, **extra), 1e-3)(pred, b, 5e-4)[0])
        assert val != pytest.approx(ref, rel=1e-6), extra


def test_atomic_energy_frames_without_label():
    """Frames without atom_ener.npy drop out of the atomic-energy term (find flag)."""
    b, pred = reference_batch(REFERENCE["atomic_energy"])
    cfg = loss_cfg(
        start_pref_e=0,
        limit_pref_e=0,
        start_pref_f=0,
        limit_pref_f=0,
        start_pref_ae=1.0,
        limit_pref_ae=1.0,
    )
    b.find_atom_ener = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    val, m = EnergyLoss(cfg, 1e-3)(pred, b, 1e-3)
    d = pred["atom_energy"][0, :, 0] - b.atom_ener[0]
    assert float(val) == pytest.approx(float((d**2).mean()) / 3)
    assert m["rmse_ae"] == pytest.approx(math.sqrt(float((d**2).mean())))
