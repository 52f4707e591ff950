"""Faults during training: ``kill -9`` while a checkpoint is written, a diverging loss, and
DeePMD-kit's ``max_ckpt_keep`` retention."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import WATER, tiny_input

from dpa3.cli.main import main
from dpa3.train.checkpoint import load_checkpoint, resolve_checkpoint
from dpa3.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
TMP = re.compile(r"^\..*\.tmp-\d+$")


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TMP.match(p.name))


def _start_training(folder: Path, *extra: str) -> subprocess.Popen:
    env = dict(
        os.environ, PYTHONPATH=str(ROOT / "python"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"
    )
    cmd = [sys.executable, "-m", "dpa3", "train", "input.json", "--skip-neighbor-stat", *extra]
    return subprocess.Popen(
        cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _kill_during_write(proc: subprocess.Popen, folder: Path, deadline: float) -> str | None:
    """SIGKILL ``proc`` as soon as a checkpoint's temporary file appears; returns the name of
    the temporary file that the kill left behind (None: the write finished first).  Only
    writes after the first checkpoint count (there must be a previous one to fall back to)."""
    while time.monotonic() < deadline:
        with os.scandir(folder) as it:
            names = [e.name for e in it]
        ours = f".tmp-{proc.pid}"  # not a leftover of an earlier kill
        tmp = [n for n in names if n.startswith(".model.ckpt-") and n.endswith(ours)]
        if tmp and "checkpoint" in names:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return tmp[0] if (folder / tmp[0]).exists() else None
        if proc.poll() is not None:
            raise AssertionError(f"training ended before it was killed:\n{proc.stdout.read()}")
    proc.kill()
    raise AssertionError("no checkpoint write seen before the deadline")


def test_kill_9_while_a_checkpoint_is_written(tmp_path):
    """A real SIGKILL in the middle of a checkpoint write, three times: the previous checkpoint
    stays loadable, --restart continues from it, and the next save removes the leftovers."""
    d = tiny_input(steps=100000, save_freq=1, disp_freq=1000, max_ckpt_keep=3)
    # a wider fitting net makes the file (and the window in which it is written) larger
    d["model"]["fitting_net"]["neuron"] = [512, 512, 512]
    (tmp_path / "input.json").write_text(json.dumps(d))
    deadline = time.monotonic() + 600  # a loaded 2-core machine starts a run in ~45 s
    hits = 0
    restart: tuple[str, ...] = ()
    previous = -1
    while hits < 3:
        proc = _start_training(tmp_path, *restart)
        left = _kill_during_write(proc, tmp_path, deadline)
        assert proc.returncode == -signal.SIGKILL
        if restart:  # it continued from the last good checkpoint
            assert f"(from {previous})" in proc.stdout.read()
        if left is None:  # the write completed between seeing the file and the kill
            previous = load_checkpoint(tmp_path)["step"]
            restart = ("--restart", "model.ckpt.pt")
            continue
        hits += 1
        step = int(re.match(r"\.model\.ckpt-(\d+)\.pt\.tmp-\d+$", left).group(1))
        assert not (tmp_path / f"model.ckpt-{step}.pt").exists()
        assert len(_temporaries(tmp_path)) == 1  # the one just left; earlier ones were removed
        ck = load_checkpoint(tmp_path)  # through the 'checkpoint' pointer file
        assert ck["step"] == step - 1 >= previous
        assert load_checkpoint(tmp_path / "model.ckpt.pt")["step"] == step - 1
        assert all(torch.isfinite(v).all() for v in ck["model"].values())
        previous = step - 1
        restart = ("--restart", "model.ckpt.pt")
    # finish: two more steps from the last good checkpoint
    d["training"]["numb_steps"] = previous + 2
    (tmp_path / "input.json").write_text(json.dumps(d))
    proc = _start_training(tmp_path, "--restart", "model.ckpt.pt")
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    assert f"training {previous + 2} steps (from {previous})" in out
    assert _temporaries(tmp_path) == []
    assert load_checkpoint(tmp_path)["step"] == previous + 2
    kept = sorted(int(p.name[11:-3]) for p in tmp_path.glob("model.ckpt-*.pt"))
    assert kept == [previous, previous + 1, previous + 2]  # max_ckpt_keep 3


@pytest.mark.parametrize("clip", [5.0, 0.0])
def test_diverging_loss_stops_without_a_nan_checkpoint(tmp_path, monkeypatch, capsys, clip):
    """A learning rate of 1e8 diverges within a few steps: training stops with a message naming
    the step and the system of the batch, and the newest checkpoint is a finite one."""
    monkeypatch.chdir(tmp_path)
    d = tiny_input(WATER[:2], ("O", "H"), steps=50, save_freq=1, disp_freq=1000)
    d["training"]["training_data"]["batch_size"] = 1
    d["training"]["gradient_max_norm"] = clip
    d["learning_rate"].update(start_lr=1e8, stop_lr=1e7, decay_steps=10)
    (tmp_path / "input.json").write_text(json.dumps(d))
    assert main(["train", "input.json", "--skip-neighbor-stat"]) == 1
    out = capsys.readouterr().out
    err = [ln for ln in out.splitlines() if ln.startswith("DPA3 ERROR")]
    assert len(err) == 1, out
    # the loss/gradients at a step, or the weights after it (then no checkpoint is written)
    m = re.search(r"(?:at|after) step (\d+) \(system (\S+)\)", err[0])
    assert m, err[0]
    assert m.group(2) in WATER[:2]
    failed = int(m.group(1))  # 0-based step
    ck = load_checkpoint(tmp_path)
    assert ck["step"] <= failed
    assert resolve_checkpoint(tmp_path).name == f"model.ckpt-{ck['step']}.pt"
    for p in tmp_path.glob("model.ckpt-*.pt"):
        if not p.is_symlink():
            for k, v in load_checkpoint(p)["model"].items():
                assert torch.isfinite(v).all(), (p.name, k)
    assert not (tmp_path / f"model.ckpt-{failed + 1}.pt").exists()
    assert _temporaries(tmp_path) == []


def test_parameters_checked_before_a_checkpoint_is_written(tmp_path, monkeypatch):
    """Weights that became NaN (finite loss and gradients, a bad update) are caught when the
    checkpoint is due: the error names the step and system, and no checkpoint is written."""
    monkeypatch.chdir(tmp_path)
    t = Trainer(tiny_input(WATER[:1], ("O", "H"), steps=4, save_freq=2), skip_neighbor_stat=True)
    real = t.optimizer.step

    def poisoned(*a, **k):
        real(*a, **k)
        if len(t.step_times) == 3:  # 0-based step 3, the last before the save of 4
            with torch.no_grad():
                next(t.model.parameters()).view(-1)[0] = float("nan")

    t.optimizer.step = poisoned
    with pytest.raises(FloatingPointError, match=r"after step 3 \(system .*data_0\)") as info:
        t.run()
    assert "no checkpoint written for step 4" in str(info.value)
    assert load_checkpoint(tmp_path)["step"] == 2
    assert not (tmp_path / "model.ckpt-4.pt").exists()


def test_max_ckpt_keep_as_deepmd_kit(tmp_path, monkeypatch):
    """DeePMD-kit 3.2's rule (deepmd/dpmodel/train/checkpoint.py, CheckpointStore.prune):
    keep the newest ``max_ckpt_keep`` numbered checkpoints, a value below 1 keeps all, and a
    save removes numbered checkpoints above its step (left by a longer earlier run)."""
    monkeypatch.chdir(tmp_path)

    def steps() -> list[int]:
        return sorted(
            int(p.name[11:-3]) for p in tmp_path.glob("model.ckpt-*.pt") if not p.is_symlink()
        )

    Trainer(tiny_input(steps=6, save_freq=1, max_ckpt_keep=3), skip_neighbor_stat=True).run()
    assert steps() == [4, 5, 6]
    # a shorter run in the same folder: its first save removes 2..6's leftovers above it
    t = Trainer(tiny_input(steps=2, save_freq=1, max_ckpt_keep=3), skip_neighbor_stat=True)
    t.run()
    assert steps() == [1, 2]
    assert load_checkpoint(tmp_path)["step"] == 2
    # restart from 1 with max_ckpt_keep 0: keeps everything
    d = tiny_input(steps=5, save_freq=1, max_ckpt_keep=0)
    Trainer(d, restart="model.ckpt-1.pt", skip_neighbor_stat=True).run()
    assert steps() == [1, 2, 3, 4, 5]
    d = tiny_input(steps=7, save_freq=1, max_ckpt_keep=1)
    Trainer(d, restart="model.ckpt.pt", skip_neighbor_stat=True).run()
    assert steps() == [7]
