"""Training options with DeePMD-kit's meanings: disp_avg, disp_training, time_training,
tensorboard, profiling, stat_file_mode, and the per-atom labels of the atomic-energy loss."""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import MOLECULE, read_lcurve, tiny_input

from dpa3.config._base import ConfigError
from dpa3.config.train import InputConfig
from dpa3.data.system import load_system
from dpa3.train.monitor import Monitor
from dpa3.train.trainer import Trainer


def _record_steps(t: Trainer) -> list[dict[str, float]]:
    """Wrap ``t.train_step`` to record every step's training metrics."""
    seen: list[dict[str, float]] = []
    real = t.train_step

    def step(i):
        out = real(i)
        seen.append(dict(out[1]))
        return out

    t.train_step = step
    return seen


@pytest.mark.parametrize("avg", [False, True])
def test_disp_avg(tmp_path, monkeypatch, avg):
    """disp_avg: a display row shows the mean of the steps since the previous display row
    (DeePMD-kit resets after every display, step 1 included); without it the last step."""
    monkeypatch.chdir(tmp_path)
    t = Trainer(tiny_input(steps=7, disp_freq=3, disp_avg=avg))
    seen = _record_steps(t)
    t.run()
    rows = read_lcurve("lcurve.out")
    assert [int(r[0]) for r in rows] == [1, 3, 6]
    names = ["rmse", "rmse_e", "rmse_f"]
    groups = {1: [0], 3: [1, 2], 6: [3, 4, 5]} if avg else {1: [0], 3: [2], 6: [5]}
    for r in rows:
        want = [np.mean([seen[i][k] for i in groups[int(r[0])]]) for k in names]
        assert [float(x) for x in r[1:4]] == pytest.approx(want, rel=6e-3)
    if avg:  # the averaged rows differ from the last step's values
        assert float(rows[2][2]) != pytest.approx(seen[5]["rmse_e"], rel=6e-3)


DP_DISP = Path(__file__).resolve().parents[1] / "data" / "dp_train"


def _lcurve(path: Path) -> tuple[list[str], list[int], np.ndarray]:
    """``lcurve.out``: header tokens, steps, (rows, columns) values after the step."""
    lines = Path(path).read_text().splitlines()
    rows = [ln.split() for ln in lines if not ln.startswith("#")]
    return lines[0].split(), [int(r[0]) for r in rows], np.array([r[1:] for r in rows], float)


def _check_disp_rule(per_step, last, avg) -> None:
    """``disp_freq`` 3 over 7 steps: rows at steps 1, 3, 6 (not 7); without ``disp_avg`` a
    row is that step's own metrics (the ``disp_freq`` 1 row), with it the mean of the metrics
    of the steps since the previous row (1 | 2-3 | 4-6); the lr column is the step's."""
    _, s1, v1 = per_step
    for _, steps, vals in (last, avg):
        assert steps == [1, 3, 6]
        assert vals[:, -1].tolist() == [v1[s1.index(s), -1] for s in steps]
    assert last[2].tolist() == [v1[s1.index(s)].tolist() for s in (1, 3, 6)]
    metrics = v1[:, :-1]  # values printed with 3 digits: means agree to rounding
    for row, group in zip(avg[2][:, :-1], ([1], [2, 3], [4, 5, 6]), strict=True):
        want = metrics[[s1.index(s) for s in group]].mean(axis=0)
        assert row == pytest.approx(want, rel=6e-3)
    assert not np.allclose(avg[2][1:, :-1], last[2][1:, :-1], rtol=1e-2)  # the rule shows


def test_disp_avg_rule_holds_on_dp_lcurves():
    """The rule dpa3 implements, read off ``dp --pt train``'s own ``lcurve.out`` files
    (tests/dp_train/generate_reference.py step 7: the same run displayed three ways)."""
    _check_disp_rule(
        *(_lcurve(DP_DISP / f"dp_lcurve_{n}.out") for n in ("disp1", "disp3", "disp3_avg"))
    )


def test_disp_avg_as_dp(tmp_path, monkeypatch):
    """dpa3 on the input of those dp runs: the same header, rows and lr column as dp, and
    the same averaging rule on dpa3's own printed numbers (loss values differ: other
    weights)."""
    shutil.copytree(DP_DISP / "mol", tmp_path / "mol")
    base = json.loads((DP_DISP / "disp_input.json").read_text())
    got = []
    for name, extra in (
        ("disp1", {}),
        ("disp3", {"disp_freq": 3}),
        ("disp3_avg", {"disp_freq": 3, "disp_avg": True}),
    ):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        d = json.loads(json.dumps(base))
        d["training"].update(extra, training_data={"systems": ["../mol"], "batch_size": 2})
        Trainer(d).run()
        mine, dp = _lcurve("lcurve.out"), _lcurve(DP_DISP / f"dp_lcurve_{name}.out")
        assert mine[0] == dp[0] and mine[1] == dp[1]
        assert mine[2][:, -1].tolist() == dp[2][:, -1].tolist()
        assert (tmp_path / name / "lcurve.out").read_text().splitlines()[1] == (
            DP_DISP / f"dp_lcurve_{name}.out"
        ).read_text().splitlines()[1]
        got.append(mine)
    _check_disp_rule(*got)


def test_disp_training_and_time_training(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="dpa3")
    Trainer(tiny_input(steps=2, disp_freq=1, time_training=False)).run()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(lines) == 2 and not any("steps/s" in ln for ln in lines)
    assert not any("finished" in r.getMessage() for r in caplog.records)
    caplog.clear()
    Trainer(tiny_input(steps=2, disp_freq=1, disp_file="quiet.out", disp_training=False)).run()
    assert read_lcurve("quiet.out") == []
    assert not any(r.getMessage().startswith("step ") for r in caplog.records)
    assert any("finished" in r.getMessage() for r in caplog.records)


DP_TRAIN = Path(__file__).resolve().parents[1] / "data" / "dp_train"


def _read_events(log_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list]]:
    """The event files of ``log_dir`` read back with tensorboard's own reader: scalars
    (tag -> [(step, value)]) and histograms (tag -> [(step, number of values, sum of
    squares)])."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    hists = {
        t: [
            (e.step, e.histogram_value.num, e.histogram_value.sum_squares)
            for e in acc.Histograms(t)
        ]
        for t in tags["histograms"]
    }
    return scalars, hists


def test_tensorboard_real_writer_as_dp(tmp_path, monkeypatch):
    """With the real ``tensorboard`` package (installed by scripts/setup.sh), on the input
    ``dp --pt train`` ran for tests/data/dp_train/tensorboard.json: the same tags at the same
    steps as DeePMD-kit (``grad_top10/`` names its parameters, dpa3 its own: compared by
    count), and the values are the lcurve's columns at the lcurve's steps."""
    for name in ("mol", "water"):
        shutil.copytree(DP_TRAIN / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    d = json.loads((DP_TRAIN / "input.json").read_text())
    assert d["training"]["tensorboard"] and d["training"]["gradient_max_norm"] > 0
    t = Trainer(d)
    seen = _record_steps(t)
    t.run()
    assert len(list(Path("tb").glob("events.out.tfevents.*"))) == 1
    ev, hists = _read_events(Path("tb"))
    dp = json.loads((DP_TRAIN / "tensorboard.json").read_text())

    def split(tags: dict) -> tuple[dict, list]:
        top = [g for g in tags if g.startswith("Default/grad_top10/")]
        return {g: s for g, s in tags.items() if g not in top}, top

    ours, our_top = split({g: [s for s, _ in v] for g, v in ev.items()})
    theirs, their_top = split(dp["scalars"])
    assert ours == theirs
    assert sorted(hists) == dp["histograms"] == ["Default/grad/param_norms"]
    assert [h[0] for h in hists["Default/grad/param_norms"]] == [1, 2]
    for step in (1, 2):  # ten parameters per step, as dp
        assert sum(step in [s for s, _ in ev[g]] for g in our_top) == 10
        assert sum(step in dp["scalars"][g] for g in their_top) == 10
    # the values: the lcurve's columns (printed with 3 or 2 digits), full precision against
    # each step's own metrics, and DeePMD-kit's relations between the terms
    header = Path("lcurve.out").read_text().splitlines()[0].lstrip("#").split()
    rows = read_lcurve("lcurve.out")
    assert [int(r[0]) for r in rows] == [1, 2]
    for c, col in zip(header[1:], zip(*[r[1:] for r in rows], strict=True), strict=True):
        tag = "Default/" + c.removesuffix("_trn")
        rel = 6e-2 if c == "lr" else 6e-3
        assert [v for _, v in ev[tag]] == pytest.approx([float(x) for x in col], rel=rel)
    for s, v in ev["Default/rmse_f"]:
        assert v == pytest.approx(seen[s - 1]["rmse_f"], rel=1e-6)
    for (_, l2f), (_, rf) in zip(ev["Default/l2_force_loss"], ev["Default/rmse_f"], strict=True):
        assert l2f == pytest.approx(rf**2, rel=1e-5)
    for (_, l2e), (_, re) in zip(ev["Default/l2_ener_loss"], ev["Default/rmse_e"], strict=True):
        natoms = math.sqrt(l2e) / re  # rmse_e is per atom: a 7- or a 192-atom frame
        assert natoms == pytest.approx(7, rel=1e-5) or natoms == pytest.approx(192, rel=1e-5)
    for (_, loss), (_, rmse) in zip(ev["Default/loss"], ev["Default/rmse"], strict=True):
        assert math.sqrt(loss) == pytest.approx(rmse, rel=1e-5)
    for s, v in ev["Default/lr"]:  # exp decay every step over 2 steps: lr of step s - 1
        assert v == pytest.approx(2e-3 * (1e-4 / 2e-3) ** ((s - 1) / 2), rel=1e-6)
    # the histogram holds one norm per parameter with a gradient (with nlayers 1 the edge and
    # angle updates of the last layer get none); their root sum of squares is the total
    nparams = sum(1 for p in t.model.parameters() if p.requires_grad)
    for (s, num, sq), (s2, total) in zip(
        hists["Default/grad/param_norms"], ev["Default/grad/total_norm"], strict=True
    ):
        assert s == s2 and 10 < num <= nparams and total > 0
        assert math.sqrt(sq) == pytest.approx(total, rel=1e-5)


def test_tensorboard_needs_the_package(tmp_path, monkeypatch):
    """Without the tensorboard package (import failure simulated) the run stops with an
    error that says how to install it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    t = Trainer(tiny_input(steps=1, tensorboard=True, tensorboard_log_dir="tb"))
    with pytest.raises(ConfigError, match="'training.tensorboard'.*pip install tensorboard"):
        t.run()
    assert not Path("tb").exists()


def test_profiling_writes_a_trace(tmp_path, monkeypatch):
    """profiling: a chrome trace of the profiled steps in profiling_file."""
    monkeypatch.chdir(tmp_path)
    Trainer(tiny_input(steps=20, disp_freq=100, profiling=True, profiling_file="trace.json")).run()
    text = Path("trace.json").read_text()
    assert "traceEvents" in text


def test_monitor_without_options_passes_last_metrics():
    cfg = InputConfig.from_dict(tiny_input()).training
    m = Monitor(cfg)
    m.step(1, "", 1.0, {"rmse": 2.0}, 1e-3)
    assert m.display_metrics({"": {"rmse": 3.0}}) == {"": {"rmse": 3.0}}
    assert m.writer is None


def test_stat_file_mode_read(tmp_path, monkeypatch):
    """stat_file_mode 'read': the cache must exist (never written); 'update' writes it."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="stat_file_mode.*needs 'training.stat_file'"):
        InputConfig.from_dict(tiny_input(stat_file_mode="read"))
    with pytest.raises(ConfigError, match="'training.stat_file_mode' is 'read'"):
        Trainer(tiny_input(steps=0, stat_file="s.hdf5", stat_file_mode="read"))
    assert not Path("s.hdf5").exists()
    bias = Trainer(tiny_input(steps=0, stat_file="s.hdf5")).model.out_bias.clone()
    assert Path("s.hdf5").is_file()
    again = Trainer(tiny_input(steps=0, stat_file="s.hdf5", stat_file_mode="read", seed=5))
    assert np.array_equal(again.model.out_bias.numpy(), bias.numpy())


def _molecule_with_atomic_labels(tmp_path: Path) -> Path:
    root = tmp_path / "mol"
    shutil.copytree(MOLECULE, root)
    s = load_system(root, ["C", "H", "O"])
    e = np.load(root / "set.000" / "energy.npy").reshape(-1, 1)
    ae = np.repeat(e / s.natoms, s.natoms, axis=1) + 0.01 * np.arange(s.natoms)
    np.save(root / "set.000" / "atom_ener.npy", ae)
    return root


def test_atomic_labels_are_loaded(tmp_path):
    """atom_ener.npy is read per frame and atom; atom_ener_coeff defaults to 1 (dp's default)."""
    root = _molecule_with_atomic_labels(tmp_path)
    s = load_system(root, ["C", "H", "O"])
    want = np.load(root / "set.000" / "atom_ener.npy")
    assert np.array_equal(s.labels["atom_ener"], want)
    assert s.find["atom_ener"].all()
    assert np.all(s.labels["atom_ener_coeff"] == 1.0) and not s.find["atom_ener_coeff"].any()
    coeff = np.full_like(want, 0.5)
    np.save(root / "set.000" / "atom_ener_coeff.npy", coeff)
    assert np.array_equal(load_system(root, ["C", "H", "O"]).labels["atom_ener_coeff"], coeff)


def test_training_with_atomic_energy_term(tmp_path, monkeypatch):
    """start_pref_ae/limit_pref_ae train against atom_ener.npy (an rmse_ae column)."""
    monkeypatch.chdir(tmp_path)
    root = _molecule_with_atomic_labels(tmp_path)
    d = tiny_input([str(root)], steps=2, disp_freq=1)
    d["loss"].update(start_pref_ae=1.0, limit_pref_ae=0.5, relative_f=1.0)
    d["learning_rate"] = {"type": "cosine", "start_lr": 1e-3, "stop_lr": 1e-5}
    t = Trainer(d)
    t.run()
    header = Path("lcurve.out").read_text().splitlines()[0].split()
    assert header[-2:] == ["rmse_ae_trn", "lr"]
    rows = read_lcurve("lcurve.out")
    assert all(math.isfinite(float(r[-2])) for r in rows)
    assert float(rows[-1][-1]) == pytest.approx(t.lr.value(1), rel=0.05)


@pytest.mark.parametrize("frozen", ["descriptor", "fitting_net"])
def test_trainable_false_freezes_the_block(tmp_path, monkeypatch, frozen):
    """descriptor/fitting_net ``trainable: false``: that block keeps its initial weights."""
    monkeypatch.chdir(tmp_path)
    d = tiny_input(steps=2)
    d["model"][frozen]["trainable"] = False
    t = Trainer(d)
    block = {"descriptor": t.model.descriptor, "fitting_net": t.model.fitting}
    before = {k: [p.detach().clone() for p in b.parameters()] for k, b in block.items()}
    t.run()
    for k, b in block.items():
        same = all(torch.equal(p, q) for p, q in zip(b.parameters(), before[k], strict=True))
        assert same == (k == frozen), k


@pytest.mark.parametrize("kind", ["AdamW", "Adam"])
def test_optimizer_updates_equal_the_per_parameter_loop(kind):
    """The multi-tensor (foreach) update of ``build_optimizer`` gives bit for bit the values of
    torch's per-parameter loop (its CPU default and DeePMD-kit's), step after step."""
    from dpa3.config.schedule import OptimizerConfig
    from dpa3.train.optim import build_optimizer

    cfg = OptimizerConfig(type=kind, weight_decay=0.01)
    gen = torch.Generator().manual_seed(2)
    shapes = [(32, 16), (16,), (1, 16), (64, 64), (3,)]
    init = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(4)]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    ref = [torch.nn.Parameter(t.clone()) for t in init]
    opt = build_optimizer(ours, cfg, 1e-2)
    kw = dict(lr=1e-2, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    ref_opt = getattr(torch.optim, kind)(ref, foreach=False, **kw)
    for step in range(12):
        for ps in (ours, ref):
            for p, g in zip(ps, grads[step % 4], strict=True):
                p.grad = g.clone()
        opt.step()
        ref_opt.step()
    for a, b, a0 in zip(ours, ref, init, strict=True):
        assert not torch.equal(a.detach(), a0)  # the parameters moved
        assert torch.equal(a.detach(), b.detach())
