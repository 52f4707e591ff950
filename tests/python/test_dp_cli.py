"""``dpa3 change-bias``, ``dpa3 show`` and ``dpa3 train --init-frz-model`` against DeePMD-kit.

The fixtures in tests/data/dp_cli/ were written by ``dp --pt change-bias`` and ``dp --pt show``
on the DeePMD-kit checkpoint tests/data/model_devi/m0.ckpt.pt (generator:
tests/dp_cli/generate_reference.py); here that checkpoint is converted with
``dpa3 convert-deepmd`` and given to dpa3 with the same arguments.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import tiny_input

from dpa3.cli.main import main
from dpa3.train.checkpoint import frozen_checkpoint, load_checkpoint
from dpa3.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "data" / "dp_cli"
SYSTEMS = REPO / "tests" / "data" / "dp_test"
CASES = json.loads((FIX / "change_bias.json").read_text())


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder as the generator's: m0.pt (converted), m0.pth (frozen), sys_a, sys_b,
    data/sys_a, data/sys_b, systems.txt."""
    d = tmp_path_factory.mktemp("dp_cli")
    src = str(REPO / "tests/data/model_devi/m0.ckpt.pt")
    assert main(["convert-deepmd", src, str(d / "m0.pt")]) == 0
    assert main(["freeze", str(d / "m0.pt"), "-o", str(d / "m0.pth")]) == 0
    for name in ("sys_a", "sys_b"):
        shutil.copytree(SYSTEMS / name, d / name)
        shutil.copytree(SYSTEMS / name, d / "data" / name)
    (d / "systems.txt").write_text("sys_a\nsys_b\n")
    return d


def _bias_pt(path: Path) -> np.ndarray:
    return load_checkpoint(path)["model"]["out_bias"].numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_change_bias_as_deepmd(work, monkeypatch, case):
    monkeypatch.chdir(work)
    ref = CASES[case]
    np.testing.assert_allclose(_bias_pt(work / "m0.pt"), ref["bias_before"], rtol=0, atol=1e-12)
    assert main(["change-bias", "m0.pt", *ref["args"], "-o", f"{case}.pt"]) == 0
    np.testing.assert_allclose(_bias_pt(work / f"{case}.pt"), ref["bias_after"], rtol=0, atol=1e-6)
    # the rest of the checkpoint is untouched
    a, b = load_checkpoint(work / "m0.pt"), load_checkpoint(work / f"{case}.pt")
    assert a["model_config"] == b["model_config"] and a["step"] == b["step"]
    for k, v in a["model"].items():
        if k not in ("out_bias", "out_std"):
            assert torch.equal(v, b["model"][k]), k


def test_change_bias_frozen_model_and_default_name(work, monkeypatch, capsys):
    monkeypatch.chdir(work)
    ref = CASES["change_sys_a"]
    assert main(["change-bias", "m0.pth", *ref["args"]]) == 0
    out = frozen_checkpoint(work / "m0_updated.pth")  # dp's default name
    np.testing.assert_allclose(out["model"]["out_bias"].numpy(), ref["bias_after"], atol=1e-6)
    assert main(["test", "-m", "m0_updated.pth", "-s", "sys_a"]) == 0  # still a usable model


def test_change_bias_numb_batch_by_formula(work, monkeypatch):
    """-m set -n 1: the bias fitted on the first frame alone, the minimum-norm solution of
    one equation E = n_O b_O + n_H b_H: b = E n / |n|^2."""
    monkeypatch.chdir(work)
    assert main(["change-bias", "m0.pt", "-s", "sys_a", "-m", "set", "-n", "1", "-o", "n1.pt"]) == 0
    energy = float(np.load(work / "sys_a/set.000/energy.npy").reshape(-1)[0])
    types = np.loadtxt(work / "sys_a/type.raw", dtype=int)
    n = np.bincount(types, minlength=2).astype(float)
    np.testing.assert_allclose(_bias_pt(work / "n1.pt"), energy * n / (n @ n), rtol=1e-10)


def test_change_bias_errors(work, monkeypatch, capsys):
    monkeypatch.chdir(work)
    assert main(["change-bias", "m0.pt", "-b", "1.0"]) == 1
    assert "1 bias values for the 2 types O H" in capsys.readouterr().out
    assert main(["change-bias", "m0.ckpt", "-s", "sys_a"]) == 1
    assert "model file 'm0.ckpt' does not exist" in capsys.readouterr().out
    assert main(["change-bias", "m0.pt", "-s", "nowhere"]) == 1
    assert "nowhere" in capsys.readouterr().out


def _dp_lines(name: str) -> list[str]:
    text = (FIX / name).read_text()
    return [m.group(1) for m in re.finditer(r"DEEPMD INFO {4}(.*)", text)]


@pytest.mark.parametrize(("model", "log"), [("m0.pt", "show_ckpt.log"), ("m0.pth", "show_pth.log")])
def test_show_as_deepmd(work, monkeypatch, capsys, model, log):
    monkeypatch.chdir(work)
    capsys.readouterr()
    assert main(["show", model, "type-map", "descriptor", "fitting-net", "size"]) == 0
    ours = [ln[len("DPA3 INFO    ") :] for ln in capsys.readouterr().out.splitlines()]
    assert ours == _dp_lines(log)


def test_show_of_a_dpa3_model(tmp_path, monkeypatch, capsys):
    """A model trained by dpa3: the sections as out.json writes them, sizes by counting."""
    monkeypatch.chdir(tmp_path)
    t = Trainer(tiny_input(steps=1), skip_neighbor_stat=True)
    t.run()
    capsys.readouterr()
    assert main(["show", "model.ckpt.pt", "type-map", "fitting-net", "size"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].endswith("The type_map is ['C', 'H', 'O']")
    assert "'neuron': [16, 16]" in lines[2]
    n_fit = sum(p.numel() for k, p in t.model.named_parameters() if k.startswith("fitting"))
    assert lines[5].endswith(f"Parameters in fitting-net: {n_fit:,}")
    with pytest.raises(SystemExit):  # argparse: not one of the attributes dpa3 shows
        main(["show", "model.ckpt.pt", "observed-type"])
    assert "invalid choice: 'observed-type'" in capsys.readouterr().err


def test_init_frz_model(tmp_path, monkeypatch, capsys):
    """--init-frz-model starts at step 0 from the frozen model's weights and energy bias."""
    monkeypatch.chdir(tmp_path)
    d = tiny_input(steps=2)
    Trainer(d, skip_neighbor_stat=True).run()
    assert main(["freeze", "model.ckpt.pt", "-o", "frozen.pth"]) == 0
    src = load_checkpoint(tmp_path / "model.ckpt-2.pt")["model"]
    t = Trainer(d, init_frz_model="frozen.pth", skip_neighbor_stat=True)
    assert t.start_step == 0
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, src[k]), k
    (tmp_path / "input.json").write_text(json.dumps(tiny_input(steps=1)))
    assert main(["train", "input.json", "--init-frz-model", "frozen.pth"]) == 0
    assert "init-frz-model from frozen.pth (step 0)" in capsys.readouterr().out
    assert load_checkpoint(tmp_path)["step"] == 1
    assert main(["train", "input.json", "--init-frz-model", "model.ckpt-1.pt"]) == 1
    assert "not a frozen dpa3 model" in capsys.readouterr().out
