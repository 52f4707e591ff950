"""examples/quickstart/input.json stays a config whose model can learn in the quickstart's budget.

The quickstart (scripts/quickstart.sh) trains this config for a few minutes on 2 cores; its
step count, learning-rate schedule and loss were chosen by measurement
(benchmarks/results_quickstart.md). These checks catch the edits that silently undo that: a
schedule that reaches its floor long before the last step (the original 0.76 eV/A quickstart),
a run too long for the time budget, or data paths that no longer resolve from runs/quickstart/.
The schedule is recomputed here from DeePMD-kit's formula, not taken from dpa3.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from dpa3.config.train import InputConfig
from dpa3.train.lr import ExpLR

ROOT = Path(__file__).resolve().parents[2]
INPUT = ROOT / "examples" / "quickstart" / "input.json"
RUN_DIR = ROOT / "runs" / "quickstart"  # where scripts/quickstart.sh runs `dpa3 train`
# numb_steps measured to fit the 12-minute quickstart on 2 cores (results_quickstart.md)
MAX_STEPS = 2500


def load() -> dict:
    return json.loads(INPUT.read_text())


def formula_lr(lr: dict, numb_steps: int, t: int) -> float:
    """DeePMD-kit's stepped exponential decay: ``decay_rate`` as given, else the rate that
    reaches ``stop_lr`` at ``numb_steps``."""
    start, stop, ds = lr["start_lr"], lr["stop_lr"], lr["decay_steps"]
    rate = lr.get("decay_rate") or math.exp(math.log(stop / start) * ds / numb_steps)
    return max(start * rate ** (t // ds), stop)


def test_schedule_reaches_stop_lr_only_at_the_end():
    cfg = load()
    lr, n = cfg["learning_rate"], cfg["training"]["numb_steps"]
    ds = lr["decay_steps"]
    assert lr["stop_lr"] < lr["start_lr"]
    # decay_steps shorter than the run (DeePMD-kit would otherwise replace it) and at least
    # 10 decay intervals, so the schedule is a decay, not a few plateaus
    assert ds * 10 <= n, (ds, n)
    # the first step at which the lr sits on its floor is in the last decay interval
    floor = next((t for t in range(n) if formula_lr(lr, n, t) <= lr["stop_lr"] * (1 + 1e-9)), n)
    assert floor >= n - ds, f"lr reaches stop_lr at step {floor} of {n}"


def test_dpa3_parses_the_same_schedule():
    cfg = load()
    parsed = InputConfig.from_dict(cfg)
    n = parsed.training.numb_steps
    assert n == cfg["training"]["numb_steps"]
    sched = ExpLR(parsed.learning_rate, n)
    lr = cfg["learning_rate"]
    assert sched.decay_steps == lr["decay_steps"]  # not shortened for a short run
    for t in (0, lr["decay_steps"], n // 2, int(0.9 * n), n - 1):
        want = formula_lr(lr, n, t)
        assert math.isclose(sched.value(t), want, rel_tol=1e-12), t


def test_run_fits_the_quickstart_budget():
    cfg = load()
    tr = cfg["training"]
    assert 0 < tr["numb_steps"] <= MAX_STEPS
    assert tr["disp_freq"] <= tr["numb_steps"] // 10  # a learning curve with >= 10 points
    assert tr["save_freq"] <= tr["numb_steps"]  # the final checkpoint gets written


def test_data_paths_resolve_from_the_run_folder():
    tr = load()["training"]
    train = [(RUN_DIR / p).resolve() for p in tr["training_data"]["systems"]]
    valid = [(RUN_DIR / p).resolve() for p in tr["validation_data"]["systems"]]
    for p in train + valid:
        assert (p / "type.raw").is_file(), p
    # validation is the system the quickstart's `dpa3 test` reports (data_3), not trained on
    assert [p.name for p in valid] == ["data_3"]
    assert not set(train) & set(valid)
