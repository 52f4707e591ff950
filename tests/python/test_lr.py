"""Learning-rate schedules (docs/dpa3-spec.md §5.2) against hand-computed values and
DeePMD-kit's numbers (tests/data/deepmd_train/lr.json)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dpa3.config._base import ConfigError, Section
from dpa3.config.schedule import LearningRateConfig
from dpa3.train.lr import ExpLR, make_lr


def lr_cfg(**kw) -> LearningRateConfig:
    return LearningRateConfig.parse(Section(kw, "learning_rate"))


def test_water_recipe_numbers():
    lr = ExpLR(lr_cfg(start_lr=1e-3, stop_lr=3e-5, decay_steps=5000), 1_000_000)
    assert lr.decay_steps == 5000
    assert lr.decay_rate == pytest.approx(0.98262002, abs=1e-8)
    assert lr.value(0) == 1e-3
    assert lr.value(4999) == 1e-3  # stepped decay
    assert lr.value(5000) == pytest.approx(9.8262e-4, rel=1e-5)
    assert lr.value(500_000) == pytest.approx(1.7321e-4, rel=1e-4)
    assert lr.value(999_999) == pytest.approx(3.0531e-5, rel=1e-4)
    assert lr.factor(999_999) == pytest.approx(0.030531, rel=1e-4)


def test_short_run_shortens_decay_steps():
    # T = 1000 <= decay_steps: T // 10 = 100 is not > 100, so T // 100 + 1 = 11
    assert ExpLR(lr_cfg(decay_steps=5000), 1000).decay_steps == 11
    # T = 2000: T // 10 = 200 > 100 -> 100
    assert ExpLR(lr_cfg(decay_steps=5000), 2000).decay_steps == 100
    # explicit decay_rate keeps decay_steps
    assert ExpLR(lr_cfg(decay_steps=5000, decay_rate=0.9), 1000).decay_steps == 5000


def test_stop_lr_ratio_default_and_clamp():
    assert lr_cfg(start_lr=2e-3, stop_lr_ratio=0.01).stop_lr == pytest.approx(2e-5)
    assert lr_cfg().stop_lr == 5e-8
    lr = ExpLR(lr_cfg(start_lr=1e-3, stop_lr=1e-4, decay_steps=10, decay_rate=0.5), 100)
    assert lr.value(10) == 5e-4
    assert lr.value(90) == 1e-4  # clamped at stop_lr
    with pytest.raises(ConfigError, match="stop_lr"):
        lr_cfg(stop_lr=1e-5, stop_lr_ratio=0.1)


def test_smooth_and_warmup():
    lr = ExpLR(lr_cfg(start_lr=1e-3, stop_lr=1e-5, decay_steps=10, smooth=True), 100)
    assert lr.value(5) == pytest.approx(1e-3 * lr.decay_rate**0.5)
    w = ExpLR(
        lr_cfg(
            start_lr=1e-3, stop_lr=1e-5, decay_steps=10, warmup_steps=10, warmup_start_factor=0.1
        ),
        110,
    )
    assert w.value(0) == pytest.approx(1e-4)
    assert w.value(5) == pytest.approx(0.1e-3 + 0.9e-3 * 0.5)
    assert w.value(10) == pytest.approx(1e-3)
    # decay counts from the end of the warmup over T = 100 steps
    assert w.decay_rate == pytest.approx(math.exp(math.log(1e-2) / 10))
    assert w.value(20) == pytest.approx(1e-3 * w.decay_rate)
    r = ExpLR(lr_cfg(warmup_ratio=0.1), 200)
    assert r.warmup_steps == 20


def test_warmup_in_training_section():
    tr = Section({"warmup_steps": 5}, "training")
    assert LearningRateConfig.parse(Section({}, "learning_rate"), tr).warmup_steps == 5
    with pytest.raises(ConfigError, match="both"):
        LearningRateConfig.parse(
            Section({"warmup_steps": 3}, "learning_rate"), Section({"warmup_steps": 5}, "training")
        )


def test_lr_unknown_key_suggests():
    with pytest.raises(ConfigError, match="did you mean 'decay_steps'"):
        lr_cfg(decay_step=100)
    with pytest.raises(ConfigError, match="'learning_rate.type' = 'linear' is not supported"):
        lr_cfg(type="linear")
    with pytest.raises(ConfigError, match="'learning_rate.decay_steps' belongs to .* 'exp'"):
        lr_cfg(type="cosine", decay_steps=100)


REFERENCE = json.loads(
    (Path(__file__).resolve().parents[1] / "data" / "deepmd_train" / "lr.json").read_text()
)["cases"]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_lr_equals_deepmd(name):
    """exp, cosine and wsd schedules (warmup, stop_lr_ratio, smooth, short runs) give
    DeePMD-kit's learning rate at every stored step (tests/config/generate_train_reference.py)."""
    case = REFERENCE[name]
    lr = make_lr(lr_cfg(**case["learning_rate"]), case["numb_steps"])
    got = [lr.value(s) for s in case["steps"]]
    assert got == pytest.approx(case["lr"], rel=1e-12, abs=0)


def test_lr_types_are_distinct():
    """The references cover every type and each type gives its own column."""
    kinds = {REFERENCE[n]["learning_rate"].get("type", "exp") for n in REFERENCE}
    assert kinds == {"exp", "cosine", "wsd"}
    a = make_lr(lr_cfg(type="cosine", start_lr=1e-3, stop_lr=1e-5), 100)
    b = make_lr(lr_cfg(start_lr=1e-3, stop_lr=1e-5), 100)
    assert a.value(50) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi / 2)))
    assert b.value(50) != pytest.approx(a.value(50))


def test_warmup_longer_than_run_is_refused():
    with pytest.raises(ConfigError, match="learning_rate.warmup_steps"):
        make_lr(lr_cfg(warmup_steps=100), 100)
