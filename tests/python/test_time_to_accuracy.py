"""benchmarks/time_to_accuracy.py: the crossing time and the inputs it is computed from.

Hand-made lcurve.out / checkpoint folders; expected values worked out here by hand (linear
interpolation between the last point above and the first point at or below a threshold).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import time_to_accuracy as tta  # noqa: E402


def test_crossing_interpolates_between_the_bracketing_points():
    times = [10.0, 20.0, 30.0, 40.0]
    rmse = [0.50, 0.40, 0.25, 0.18]
    # 0.30: first at or below is 0.25 at t=30; between (20, 0.40) and (30, 0.25):
    # 20 + 10 * (0.40 - 0.30) / (0.40 - 0.25) = 26.666...
    first, interp = tta.crossing_time(times, rmse, 0.30)
    assert first == 30.0
    assert interp == pytest.approx(20.0 + 10.0 * 0.10 / 0.15)
    # 0.20: 0.18 at t=40; 30 + 10 * (0.25 - 0.20) / (0.25 - 0.18)
    first, interp = tta.crossing_time(times, rmse, 0.20)
    assert first == 40.0
    assert interp == pytest.approx(30.0 + 10.0 * 0.05 / 0.07)


def test_crossing_is_the_first_one_even_if_the_curve_goes_back_up():
    times = [1.0, 2.0, 3.0, 4.0]
    rmse = [0.35, 0.29, 0.31, 0.22]
    first, interp = tta.crossing_time(times, rmse, 0.30)
    assert first == 2.0
    assert interp == pytest.approx(1.0 + 1.0 * 0.05 / 0.06)


def test_crossing_exactly_at_threshold_and_at_the_first_point():
    assert tta.crossing_time([5.0, 6.0], [0.4, 0.3], 0.3) == (6.0, 6.0)
    assert tta.crossing_time([5.0, 6.0], [0.1, 0.3], 0.3) == (5.0, 5.0)


def test_not_reached_is_none():
    assert tta.crossing_time([1.0, 2.0], [0.5, 0.21], 0.20) is None
    assert tta.crossing_time([], [], 0.20) is None


def test_lcurve_points_and_checkpoints_from_a_hand_made_run(tmp_path):
    (tmp_path / "lcurve.out").write_text(
        "#  step      rmse_val    rmse_trn    rmse_e_val  rmse_e_trn    rmse_f_val  rmse_f_trn"
        "         lr\n"
        "# If there is no available reference data, rmse_*_{val,trn} will print nan\n"
        "      1      2.0e+01    2.1e+01    1.0e-02    1.1e-02    9.0e-01    9.5e-01    1.0e-02\n"
        "     50      1.0e+01    1.1e+01    5.0e-03    5.5e-03    4.0e-01    4.5e-01    9.0e-03\n"
        "    100      8.0e+00    8.5e+00    4.0e-03    4.5e-03    2.5e-01    2.6e-01    8.0e-03\n"
    )
    # the last line was written after the run's final time stamp: it is not used
    (tmp_path / "meta.json").write_text(json.dumps({"t0": 1000.0, "lcurve_times": [3.0, 12.5]}))
    times, steps, rmse_f = tta.lcurve_points(tmp_path)
    assert times == [3.0, 12.5]
    assert steps == [1, 50]
    assert rmse_f == [0.9, 0.4]
    for step in (200, 100, 1000):
        (tmp_path / f"model.ckpt-{step}.pt").write_bytes(b"")
    os.symlink(tmp_path / "model.ckpt-1000.pt", tmp_path / "model.ckpt.pt")
    (tmp_path / "model.ckpt-tmp.pt").write_bytes(b"")
    assert [s for s, _ in tta.checkpoints(tmp_path)] == [100, 200, 1000]


def test_process_cpu_seconds_matches_process_time():
    t_end = time.process_time() + 0.3
    x = 0
    while time.process_time() < t_end:  # burn some CPU so the value is not ~0
        x += 1
    before = time.process_time()
    cpu = tta.process_cpu_seconds(os.getpid())
    after = time.process_time()
    # /proc counts in clock ticks (1/100 s here); utime + stime, as process_time
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    assert before - 2 * tick <= cpu <= after + 2 * tick
    assert math.isnan(tta.process_cpu_seconds(2**22 + 12345))  # above pid_max: no such process
