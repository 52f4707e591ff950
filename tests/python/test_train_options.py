"""Training options with DeePMD-kit's meanings: disp_avg, disp_training, time_training,
tensorboard, profiling, stat_file_mode, and the per-atom labels of the atomic-energy loss."""

from __future__ import annotations

import importlib.util
import logging
import math
import shutil
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


class _Writer:
    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, float(value), step))

    def close(self) -> None:
        self.closed = True


def test_tensorboard_scalars(tmp_path, monkeypatch):
    """As dp: lr, loss and every metric under ``Default/`` at step 1 and every
    tensorboard_freq steps, in tensorboard_log_dir."""
    monkeypatch.chdir(tmp_path)
    writers: list[_Writer] = []

    def factory(log_dir: str) -> _Writer:
        writers.append(_Writer(log_dir))
        return writers[-1]

    monkeypatch.setattr("dpa3.train.monitor.summary_writer", factory)
    d = tiny_input(steps=5, tensorboard=True, tensorboard_log_dir="tb", tensorboard_freq=2)
    t = Trainer(d)
    seen = _record_steps(t)
    t.run()
    (w,) = writers
    assert w.log_dir == "tb" and w.closed
    steps = sorted({s for _, _, s in w.scalars})
    assert steps == [1, 2, 4]
    tags = {tag for tag, _, s in w.scalars if s == 2}
    assert tags == {
        "Default/lr",
        "Default/loss",
        "Default/rmse",
        "Default/rmse_e",
        "Default/rmse_f",
    }
    got = {tag: v for tag, v, s in w.scalars if s == 4}
    assert got["Default/rmse_f"] == pytest.approx(seen[3]["rmse_f"], rel=1e-12)
    assert got["Default/lr"] == pytest.approx(t.lr.value(3), rel=1e-12)


def test_tensorboard_needs_the_package(tmp_path, monkeypatch):
    """Without the tensorboard package the run stops with a clear error; with it, event
    files are written."""
    monkeypatch.chdir(tmp_path)
    t = Trainer(tiny_input(steps=1, tensorboard=True, tensorboard_log_dir="tb"))
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ConfigError, match="'training.tensorboard'.*pip install tensorboard"):
            t.run()
    else:
        t.run()
        assert list(Path("tb").glob("events.out.tfevents.*"))


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
    assert not Path("s.npz").exists()
    bias = Trainer(tiny_input(steps=0, stat_file="s.hdf5")).model.out_bias.clone()
    assert Path("s.npz").is_file()
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
