"""The ``dpa3`` command line: registration, train/test/neighbor-stat, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpa3.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data"
MOLECULE = str(DATA / "molecules-nopbc" / "C1H4O2")


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in (
        "train",
        "freeze",
        "test",
        "neighbor-stat",
        "convert-deepmd",
        "info",
        "plot",
        "model-devi",
        "change-bias",
        "show",
    ):
        assert cmd in out


def test_python_dash_m():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    r = subprocess.run(
        [sys.executable, "-m", "dpa3", "--version"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert r.returncode == 0 and r.stdout.startswith("dpa3 ")


def test_train_arguments():
    a = build_parser().parse_args(["train", "in.json", "--restart", "m.pt", "--skip-neighbor-stat"])
    assert a.restart == "m.pt" and a.skip_neighbor_stat and a.init_model is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "in.json", "--restart", "a", "--finetune", "b"])


def test_neighbor_stat(capsys):
    assert main(["neighbor-stat", "-s", MOLECULE, "-r", "10"]) == 0
    out = capsys.readouterr().out
    assert "max_nbor_size: [1, 4, 2]" in out  # C, H, O neighbours of any atom
    assert "min_nbor_dist" in out


def test_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "missing.json"]) == 1
    assert "does not exist" in capsys.readouterr().out
    Path("bad.json").write_text(json.dumps({"model": {}, "training": {"numb_step": 1}}))
    assert main(["train", "bad.json"]) == 1
    out = capsys.readouterr().out
    assert "training_data" in out and "Traceback" not in out
    assert main(["freeze", "-c", "x"]) == 1
    out = capsys.readouterr().out
    assert "x" in out and "Traceback" not in out
    assert main(["freeze", "a.pt", "-c", "b.pt"]) == 1
    assert "two checkpoints given" in capsys.readouterr().out
    assert main(["neighbor-stat", "-s", MOLECULE, "-r", "0"]) == 1
    out = capsys.readouterr().out
    assert "-r/--rcut must be positive, got 0.0" in out and "Traceback" not in out


def test_train_then_test(tmp_path, capsys, monkeypatch):
    from test_train import tiny_input

    monkeypatch.chdir(tmp_path)
    Path("input.json").write_text(json.dumps(tiny_input(steps=2)))
    assert main(["train", "input.json"]) == 0
    assert Path("model.ckpt-2.pt").is_file() and Path("lcurve.out").is_file()
    capsys.readouterr()
    assert main(["test", "-m", "model.ckpt.pt", "-s", MOLECULE, "-n", "6"]) == 0
    out = capsys.readouterr().out
    assert "number of test data : 6" in out
    for key in ("Energy MAE ", "Energy RMSE/Natoms", "Force  RMSE"):
        assert key in out
    assert main(["train", "input.json", "--restart", "model.ckpt.pt"]) == 0  # nothing left
    assert main(["test", "-m", "nope.pt", "-s", MOLECULE]) == 1


def test_device_option(tmp_path, capsys, monkeypatch):
    import torch
    from test_train import tiny_input

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without GPU
    Path("input.json").write_text(json.dumps(tiny_input(steps=2)))
    assert main(["train", "input.json", "--device", "auto", "--skip-neighbor-stat"]) == 0
    out = capsys.readouterr().out
    assert "device cpu (auto: no CUDA device visible)" in out
    assert Path("model.ckpt-2.pt").is_file()
    assert main(["test", "-m", "model.ckpt.pt", "-s", MOLECULE, "-n", "2"]) == 0  # auto default
    assert "device cpu (auto: no CUDA device visible)" in capsys.readouterr().out
    for cmd in (["train", "input.json"], ["test", "-m", "model.ckpt.pt", "-s", MOLECULE]):
        assert main([*cmd, "--device", "cuda"]) == 1
        out = capsys.readouterr().out
        assert "--device 'cuda': no CUDA device is visible" in out and "Traceback" not in out
        assert main([*cmd, "--device", "gpu"]) == 1
        assert "--device 'gpu': unknown device" in capsys.readouterr().out


def test_test_reports_virial(tmp_path, capsys, monkeypatch):
    from test_train import tiny_input

    monkeypatch.chdir(tmp_path)
    alloy = str(DATA / "alloy-emt-CuAlNi" / "natoms_31")
    Path("input.json").write_text(json.dumps(tiny_input([alloy], ("Cu", "Al", "Ni"), steps=0)))
    assert main(["train", "input.json", "--skip-neighbor-stat"]) == 0
    capsys.readouterr()
    assert main(["test", "-m", ".", "-s", alloy, "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "Virial RMSE/Natoms" in out


def test_test_on_frozen_model(tmp_path, capsys, monkeypatch):
    from test_train import tiny_input

    monkeypatch.chdir(tmp_path)
    Path("input.json").write_text(json.dumps(tiny_input(steps=1)))
    assert main(["train", "input.json", "--skip-neighbor-stat"]) == 0
    if main(["freeze", "-c", ".", "-o", "model.pth"]) != 0:
        pytest.fail("freezing is not available here (ops library not built)")
    # the checkpoint as a positional argument, as new users type it
    assert main(["freeze", "model.ckpt.pt", "-o", "model_pos.pth"]) == 0
    capsys.readouterr()
    assert main(["freeze", "model.ckpt.pt", "-o", "model_head.pth", "--head", "water"]) == 1
    assert "single-task checkpoint: --head does not apply" in capsys.readouterr().out
    assert not Path("model_head.pth").exists()
    capsys.readouterr()
    assert main(["test", "-m", "model.ckpt.pt", "-s", MOLECULE, "-n", "3"]) == 0
    eager = [ln for ln in capsys.readouterr().out.splitlines() if "RMSE" in ln]
    assert main(["test", "-m", "model.pth", "-s", MOLECULE, "-n", "3"]) == 0
    frozen = [ln for ln in capsys.readouterr().out.splitlines() if "RMSE" in ln]
    assert eager == frozen and len(eager) == 6  # the system, then the weighted average
    assert main(["test", "-m", "model_pos.pth", "-s", MOLECULE, "-n", "3"]) == 0
    assert [ln for ln in capsys.readouterr().out.splitlines() if "RMSE" in ln] == frozen


def test_dp_style_freeze_output_and_log_options(tmp_path, capsys, monkeypatch):
    """``freeze -o NAME`` makes the suffix .pth as ``dp --pt freeze`` (observed with DeePMD-kit
    3.2.0: ``-o frozen_noext`` -> frozen_noext.pth, ``-o model.v2`` -> model.pth); ``-l``/``-v``
    are accepted after the subcommand, as dp accepts them."""
    from test_train import tiny_input

    monkeypatch.chdir(tmp_path)
    Path("input.json").write_text(json.dumps(tiny_input(steps=0)))
    assert main(["train", "input.json", "--skip-neighbor-stat", "-l", "train.log"]) == 0
    assert "DPA3 INFO" in Path("train.log").read_text()
    if main(["freeze", "model.ckpt.pt", "-o", "frozen_noext"]) != 0:
        pytest.fail("freezing is not available here (ops library not built)")
    assert Path("frozen_noext.pth").is_file() and not Path("frozen_noext").exists()
    assert main(["freeze", "model.ckpt.pt", "-o", "model.v2", "-v", "WARNING"]) == 0
    assert Path("model.pth").is_file() and not Path("model.v2").exists()
    assert main(["freeze", "model.ckpt.pt", "-o", "."]) == 1
    capsys.readouterr()
    args = ["test", "-m", "frozen_noext", "-s", MOLECULE, "-n", "1"]  # .pth added, as dp test
    assert main([*args, "-l", "test.log", "-v", "2"]) == 0
    assert "Energy RMSE" in capsys.readouterr().out
    assert "Energy RMSE" in Path("test.log").read_text()
    assert main(["-v", "INFO", *args, "-v", "ERROR"]) == 0  # after the subcommand wins
    assert "Energy RMSE" not in capsys.readouterr().out
    assert main(["-l", "top.log", *args]) == 0  # before the subcommand still works
    assert "Energy RMSE" in Path("top.log").read_text()


def test_out_json(tmp_path, capsys, monkeypatch):
    """``dpa3 train`` writes out.json (as ``dp train``): every key dpa3 reads with its effective
    value, defaults the input omitted included; training from it repeats the run."""
    from dataclasses import replace

    from test_train import read_lcurve, tiny_input

    from dpa3.config.train import InputConfig

    inp = tiny_input(steps=3, disp_freq=1)
    del inp["learning_rate"]["decay_steps"]  # default 5000
    del inp["optimizer"]  # default Adam
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "a")
    Path("input.json").write_text(json.dumps(inp))
    assert main(["train", "input.json", "--skip-neighbor-stat"]) == 0
    out = json.loads(Path("out.json").read_text())
    assert out["learning_rate"]["decay_steps"] == 5000
    assert out["optimizer"] == {
        "type": "Adam",
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "weight_decay": 0.0,
    }
    assert out["loss"]["start_pref_v"] == 0.0 and out["training"]["save_ckpt"] == "model.ckpt"
    rf = out["model"]["descriptor"]["repflow"]
    assert rf["e_sel"] == 40 and rf["update_style"] == "res_residual"
    assert rf["n_multi_edge_message"] == 1
    assert out["model"]["descriptor"]["activation_function"] == "silut:10.0"
    assert out["training"]["training_data"]["batch_size"] == 2
    # the same configuration, parsed back (warmup: None and 0 steps are the same run)
    cfg, back = InputConfig.from_dict(inp), InputConfig.from_dict(out)
    assert back.training == cfg.training and back.loss == cfg.loss
    assert back.optimizer == cfg.optimizer and back.model.template == cfg.model.template
    assert back.learning_rate == replace(cfg.learning_rate, warmup_steps=0)
    monkeypatch.chdir(tmp_path / "b")
    shutil.copy(tmp_path / "a" / "out.json", "input.json")
    assert main(["train", "input.json", "--skip-neighbor-stat"]) == 0
    assert read_lcurve("lcurve.out") == read_lcurve(tmp_path / "a" / "lcurve.out")
    assert json.loads(Path("out.json").read_text()) == out  # a fixed point


def test_out_json_auto_sel_and_batch_rules():
    """``"auto"`` selections are written as the counted integers; batch-size rules, numb_epoch,
    validation data and warmup survive the round trip."""
    from test_train import tiny_input

    from dpa3.config.train import InputConfig

    inp = tiny_input(numb_epoch=2.5)
    del inp["training"]["numb_steps"]
    inp["model"]["descriptor"]["repflow"]["e_sel"] = "auto:1.1"
    inp["training"]["training_data"]["batch_size"] = "max:64"
    inp["training"]["validation_data"] = {"systems": [MOLECULE], "batch_size": [1], "numb_btch": 3}
    inp["learning_rate"]["warmup_ratio"] = 0.1
    cfg = InputConfig.from_dict(inp)
    resolved = cfg.model.resolve(37, 10)
    out = json.loads(json.dumps(cfg.normalized(resolved)))
    assert out["model"]["descriptor"]["repflow"]["e_sel"] == 37
    assert out["training"]["training_data"]["batch_size"] == "max:64"
    assert "numb_steps" not in out["training"] and out["training"]["numb_epoch"] == 2.5
    back = InputConfig.from_dict(out)
    assert back.training == cfg.training and back.learning_rate == cfg.learning_rate
    assert back.model.template == resolved and not back.model.auto_sel
