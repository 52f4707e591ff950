"""Checkpoint files: atomic writes, the ``checkpoint`` pointer, ``max_ckpt_keep`` and the
``save_ckpt`` folder, each against what ``dp --pt train`` leaves (tests/data/dp_train/)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from test_train import tiny_input

from dpa3.train import checkpoint as ckpt_mod
from dpa3.train.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from dpa3.train.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dp_train"))
from listing import ckpt_listing, folder_listing


def test_atomic_checkpoint_write_survives_crash(tmp_path, monkeypatch):
    pre = str(tmp_path / "model.ckpt")
    good = {
        "format": ckpt_mod.CHECKPOINT_FORMAT,
        "version": 1,
        "step": 5,
        "w": torch.arange(1000.0),
    }
    save_checkpoint(good, pre, 5)
    real_save = torch.save

    def crashing_save(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(dict(good, step=10), pre, 5)
    monkeypatch.setattr(torch, "save", real_save)
    assert not (tmp_path / "model.ckpt-10.pt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    back = load_checkpoint(tmp_path)  # via the 'checkpoint' pointer
    assert back["step"] == 5 and torch.equal(back["w"], good["w"])
    assert resolve_checkpoint(tmp_path / "model.ckpt.pt").resolve().name == "model.ckpt-5.pt"


DP_TRAIN = Path(__file__).resolve().parents[1] / "data" / "dp_train"


def test_max_ckpt_keep_as_dp(tmp_path, monkeypatch):
    """``max_ckpt_keep`` 2, ``save_freq`` 2: after 7 steps and after 3 more steps run in the
    same folder, the same checkpoint files, symlink and ``checkpoint`` text as
    ``dp --pt train`` left on the same input (tests/data/dp_train/ckpt_reference.json)."""
    ref = json.loads((DP_TRAIN / "ckpt_reference.json").read_text())
    d = json.loads((DP_TRAIN / "ckpt_input.json").read_text())
    shutil.copytree(DP_TRAIN / "mol", tmp_path / "mol")
    monkeypatch.chdir(tmp_path)
    Trainer(d).run()
    assert ckpt_listing(tmp_path) == ref["steps7"]
    d["training"]["numb_steps"] = 3
    Trainer(d).run()
    assert ckpt_listing(tmp_path) == ref["steps7_then_3"]


def test_max_ckpt_keep_below_one_keeps_every_file(tmp_path):
    """DeePMD-kit's ``CheckpointStore.prune`` returns at once for a value below 1: nothing
    is removed, not even the numbered files a longer earlier run left."""
    pre = str(tmp_path / "model.ckpt")
    for s in (2, 4, 6, 1):
        save_checkpoint({"format": ckpt_mod.CHECKPOINT_FORMAT, "step": s}, pre, 0)
    assert sorted(p.name for p in tmp_path.glob("model.ckpt-*.pt")) == [
        f"model.ckpt-{s}.pt" for s in (1, 2, 4, 6)
    ]
    assert (tmp_path / "checkpoint").read_text() == "model.ckpt-1.pt"


def test_max_ckpt_keep(tmp_path):
    pre = str(tmp_path / "run" / "model.ckpt")
    for s in (1, 2, 3, 4):
        save_checkpoint({"format": ckpt_mod.CHECKPOINT_FORMAT, "step": s}, pre, 2)
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pt") if not p.is_symlink()) == [
        "model.ckpt-3.pt",
        "model.ckpt-4.pt",
    ]


def test_checkpoint_contents(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tiny_input(steps=1)
    Trainer(d).run()
    ck = load_checkpoint(tmp_path)
    assert set(ck) >= {"model_config", "input", "model", "optimizer", "step", "rng", "sampler"}
    from dpa3.config.model import ModelConfig

    cfg = ModelConfig.from_typed_dict(ck["model_config"])
    assert cfg.type_map == ("C", "H", "O")
    json.dumps(ck["input"])  # the raw input stays JSON


def test_save_ckpt_in_a_folder_as_dp(tmp_path, monkeypatch):
    """``save_ckpt`` ``run/model.ckpt``: the checkpoints go to ``run/``, the ``checkpoint``
    pointer stays in the working folder naming ``run/model.ckpt-<step>.pt``, as
    ``dp --pt train`` leaves them (tests/data/dp_train/ckpt_dir_reference.json); ``dpa3
    freeze``'s default ``-c .`` and ``--restart`` then find the newest checkpoint."""
    ref = json.loads((DP_TRAIN / "ckpt_dir_reference.json").read_text())
    shutil.copytree(DP_TRAIN / "mol", tmp_path / "mol")
    monkeypatch.chdir(tmp_path)
    Trainer(ref["input"]).run()
    work = folder_listing(tmp_path, {"mol", "lcurve.out"})
    ref["work"]["files"].pop("input_v2_compat.json")  # dp's input in its v2 spelling
    assert work == ref["work"]  # the pointer here, naming run/model.ckpt-7.pt
    assert folder_listing(tmp_path / "run", set()) == ref["run"]  # no pointer in run/
    assert resolve_checkpoint(tmp_path) == Path("run/model.ckpt-7.pt").resolve()
    assert load_checkpoint(tmp_path)["step"] == 7  # what 'dpa3 freeze -c .' reads
