"""``dpa3 train`` on a multi-task input writes ``out.json`` as ``dp --pt train`` does
(tests/data/dp_train/mt_out.json, made by tests/dp_train/generate_reference.py), and training
from it again repeats the run."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from test_train import read_lcurve

from dpa3.cli.main import main
from dpa3.errors import ConfigError

FIX = Path(__file__).resolve().parents[1] / "data" / "dp_train"


def _resolve(out: dict) -> dict:
    """``out`` with the ``model_dict`` references to ``shared_dict`` replaced by their values
    (what DeePMD-kit writes in its multi-task out.json)."""
    out = copy.deepcopy(out)
    shared = out["model"]["shared_dict"]
    for model in out["model"]["model_dict"].values():
        for key in ("type_map", "descriptor"):
            if isinstance(model[key], str):
                model[key] = copy.deepcopy(shared[model[key].partition(":")[0]])
    return out


def _walk(ours: dict, theirs: dict, path: str, extra: list[str]) -> None:
    """Assert that every key of ``ours`` has DeePMD-kit's value; collect those dp lacks."""
    for k, v in ours.items():
        if k not in theirs:
            extra.append(path + k)
        elif isinstance(v, dict) and isinstance(theirs[k], dict):
            _walk(v, theirs[k], f"{path}{k}.", extra)
        else:
            assert v == theirs[k], f"{path}{k}: dpa3 {v!r}, DeePMD-kit {theirs[k]!r}"


def _train(where: Path, input_file: Path) -> dict:
    where.mkdir()
    for name in ("mol", "water"):
        shutil.copytree(FIX / name, where / name)
    shutil.copy(input_file, where / "input.json")
    return json.loads((where / "input.json").read_text())


def test_multitask_out_json_as_dp(tmp_path, monkeypatch):
    """DeePMD-kit's layout (model.shared_dict/model_dict, loss_dict, optimizer, learning_rate,
    training.model_prob/data_dict with stat_file_mode per task); every key dpa3 writes has
    dp's value once the references are resolved, gradient_max_norm aside (dp's schema has
    no default for it, as in the single-task out.json)."""
    _train(tmp_path / "a", FIX / "mt_input.json")
    monkeypatch.chdir(tmp_path / "a")
    assert main(["train", "input.json", "--skip-neighbor-stat"]) == 0
    ours = json.loads(Path("out.json").read_text())
    dp = json.loads((FIX / "mt_out.json").read_text())
    assert set(ours) == set(dp) - {"validating"}  # dp adds an empty 'validating'
    assert dp["validating"] == {}
    assert set(ours["model"]) == set(dp["model"]) == {"shared_dict", "model_dict"}
    assert list(ours["model"]["model_dict"]) == list(dp["model"]["model_dict"])
    assert list(ours["loss_dict"]) == list(dp["loss_dict"]) == ["mol", "water"]
    assert list(ours["training"])[:2] == list(dp["training"])[:2] == ["model_prob", "data_dict"]
    for task, data in ours["training"]["data_dict"].items():
        assert (
            set(data)
            == set(dp["training"]["data_dict"][task])
            == {"training_data", "validation_data", "stat_file", "stat_file_mode"}
        )
    # the references dpa3 keeps, resolved, are dp's expanded copies
    mdl = ours["model"]["model_dict"]["mol"]
    assert (mdl["type_map"], mdl["descriptor"]) == ("type_map_all", "dpa3_descriptor")
    extra: list[str] = []
    _walk(_resolve(ours), dp, "", extra)
    # dp keeps shared_dict as written; dpa3 writes the normalised descriptor there
    shared_extra = [e for e in extra if e.startswith("model.shared_dict.")]
    assert [e for e in extra if e not in shared_extra] == ["training.gradient_max_norm"]
    desc = ours["model"]["shared_dict"]["dpa3_descriptor"]
    assert _resolve(ours)["model"]["model_dict"]["water"]["descriptor"] == desc
    missing: list[str] = []  # everything of dp's shared_dict is in dpa3's, with its value
    _walk(dp["model"]["shared_dict"], ours["model"]["shared_dict"], "", missing)
    assert missing == []
    assert ours["training"]["data_dict"]["water"]["stat_file_mode"] == "update"
    assert ours["loss_dict"]["water"]["start_pref_v"] == 0.0


def test_multitask_out_json_trains_again(tmp_path, monkeypatch):
    """Training from dpa3's out.json repeats the run (same lcurve) and writes the same
    out.json; it is the file DeePMD-kit trained from with the descriptor shared
    (tests/data/dp_train/mt_dp_from_dpa3.log), while dp cannot train from its own
    multi-task out.json (expanded copies: "Multitask model must have only one type_map!")."""
    _train(tmp_path / "a", FIX / "mt_input.json")
    monkeypatch.chdir(tmp_path / "a")
    assert main(["train", "input.json", "--skip-neighbor-stat"]) == 0
    out = json.loads(Path("out.json").read_text())
    _train(tmp_path / "b", tmp_path / "a" / "out.json")
    monkeypatch.chdir(tmp_path / "b")
    assert main(["train", "input.json", "--skip-neighbor-stat"]) == 0
    assert read_lcurve("lcurve.out") == read_lcurve(tmp_path / "a" / "lcurve.out")
    assert json.loads(Path("out.json").read_text()) == out  # a fixed point
    assert out == json.loads((FIX / "mt_out_dpa3.json").read_text())
    log = (FIX / "mt_dp_from_dpa3.log").read_text()
    assert "Shared params of mol.descriptor and water.descriptor!" in log
    assert "Trained model has been saved" in log


def test_stat_file_mode_is_per_task(tmp_path):
    """As in dp's multi-task schema, stat_file_mode sits in data_dict.<task>."""
    from dpa3.config.multitask import MultiTaskConfig

    d = json.loads((FIX / "mt_input.json").read_text())
    d["training"]["data_dict"]["water"]["stat_file_mode"] = "read"
    mt = MultiTaskConfig.from_dict(d)
    assert mt.tasks["water"].training.stat_file_mode == "read"
    assert mt.tasks["mol"].training.stat_file_mode == "update"
    del d["training"]["data_dict"]["water"]["stat_file"]
    with pytest.raises(ConfigError, match=r"training\.data_dict\.water\.stat_file_mode"):
        MultiTaskConfig.from_dict(d)
    d = json.loads((FIX / "mt_input.json").read_text())
    d["training"]["stat_file_mode"] = "read"
    with pytest.raises(ConfigError, match=r"data_dict\.<task>\.stat_file_mode"):
        MultiTaskConfig.from_dict(d)
