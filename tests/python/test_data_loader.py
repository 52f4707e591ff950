"""Batch-size rules, system probabilities and the reproducible sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dpa3.config._base import ConfigError
from dpa3.config.train import BatchSizeRule
from dpa3.data.loader import DataSampler, system_probabilities
from dpa3.data.system import DataError, find_systems, load_systems

DATA = Path(__file__).resolve().parents[2] / "examples" / "data"


def test_batch_size_rules():
    p = BatchSizeRule.parse
    assert p(4, "bs").for_system(192, 0) == 4
    assert p("auto", "bs").for_system(192, 0) == 1  # ceil(32/192)
    assert p("auto", "bs").for_system(7, 0) == 5  # ceil(32/7)
    assert p("auto:128", "bs").for_system(31, 0) == 5  # 4*31 = 124 < 128 -> 5
    assert p("auto:128", "bs").for_system(32, 0) == 4
    assert p("max:128", "bs").for_system(31, 0) == 4
    assert p("max:16", "bs").for_system(192, 0) == 1
    assert p("filter:64", "bs").for_system(72, 0) is None
    assert p("filter:64", "bs").for_system(32, 0) == 2
    assert p([1, 2], "bs").for_system(5, 1) == 2
    for bad in ("auto:x", "min:3", 0, -1, [], "max"):
        with pytest.raises(ConfigError, match="bs"):
            p(bad, "bs")


def test_probabilities():
    np.testing.assert_allclose(system_probabilities([1, 3], "prob_sys_size", None), [0.25, 0.75])
    np.testing.assert_allclose(system_probabilities([1, 3], "prob_uniform", None), [0.5, 0.5])
    np.testing.assert_allclose(system_probabilities([1, 3], "prob_sys_size", [1, 1]), [0.5, 0.5])
    np.testing.assert_allclose(
        system_probabilities([1, 3, 2, 2], "prob_sys_size;0:2:0.2;2:4:0.8", None),
        [0.05, 0.15, 0.4, 0.4],
    )
    with pytest.raises(DataError, match="sys_probs"):
        system_probabilities([1, 3], "prob_sys_size", [1])


def alloy(rule: str | int = "auto:64", seed: int = 3) -> DataSampler:
    systems = load_systems(find_systems([DATA / "alloy-emt-CuAlNi"]), ["Cu", "Al", "Ni"])
    return DataSampler(systems, BatchSizeRule.parse(rule, "bs"), seed=seed)


def test_sampler_batches_and_filter():
    s = alloy()
    sizes = {b.system.natoms: b.batch_size for b in s.batchers}
    assert sizes == {31: 3, 32: 2, 47: 2, 48: 2, 71: 1, 72: 1}
    nb = [b.nbatches for b in s.batchers]
    np.testing.assert_allclose(s.probs, np.array(nb) / sum(nb))
    b = s.next()
    assert b.coord.shape[1] == b.atype.shape[1] == b.natoms
    assert b.energy.shape == (b.nframes, 1) and b.virial.shape == (b.nframes, 9)
    f = alloy("filter:48")
    assert sorted(b.system.natoms for b in f.batchers) == [31, 32, 47, 48]
    with pytest.raises(DataError, match="every system was dropped"):
        alloy("filter:8")


def test_sampler_covers_frames_each_pass():
    s = DataSampler(
        load_systems([DATA / "alloy-emt-CuAlNi" / "natoms_32"], ["Cu", "Al", "Ni"]),
        BatchSizeRule.parse(5, "bs"),
        seed=0,
    )
    seen = []
    for _ in range(s.batchers[0].nbatches):  # 37 frames -> 8 batches, the last has 2
        idx = s.batchers[0].next_indices(s.rng)
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(37))


def test_sampler_state_roundtrip():
    a = alloy(seed=11)
    for _ in range(7):
        a.next()
    state = a.state_dict()
    want = [a.next() for _ in range(5)]
    b = alloy(seed=999)
    b.load_state_dict(state)
    got = [b.next() for _ in range(5)]
    for x, y in zip(want, got, strict=True):
        assert x.system == y.system
        assert np.array_equal(x.coord.numpy(), y.coord.numpy())


def test_stat_sample_is_separate_from_training_draws():
    a, b = alloy(seed=5), alloy(seed=5)
    a.sample_per_system(2, seed=1)
    assert np.array_equal(a.next().coord.numpy(), b.next().coord.numpy())
