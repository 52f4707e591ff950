"""DeePMD-kit settings dpa3 does not implement are refused by name, in ``dpa3 train`` (the
input parser) and in ``dpa3 convert-deepmd`` (the model parameters a DeePMD-kit checkpoint
embeds); wrongly typed or out-of-range values name the key path (issue 17, point 3)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from test_train import tiny_input

from dpa3.config._base import ConfigError
from dpa3.config.train import InputConfig
from dpa3.convert import load_deepmd_model

PARITY = Path(__file__).resolve().parents[1] / "data" / "parity"

#: (key path under ``model``, value): settings of a DeePMD-kit model dpa3 refuses.
MODEL_REFUSALS = [
    ("descriptor.exclude_types", [[0, 1]]),
    ("atom_exclude_types", [1]),
    ("pair_exclude_types", [[0, 1]]),
    ("fitting_net.numb_fparam", 2),
    ("fitting_net.numb_aparam", 1),
    ("fitting_net.dim_case_embd", 2),
    ("fitting_net.atom_ener", [1.0, None]),
    ("use_srtab", "table.txt"),  # a ZBL model
    ("smin_alpha", 0.1),
    ("type", "linear_ener"),
    ("type", "frozen"),
    ("type", "dpa4"),
    ("spin", {"use_spin": [True, False]}),
    ("fitting_net.type", "dipole"),
    ("fitting_net.type", "polar"),
    ("fitting_net.type", "dos"),
    ("fitting_net.type", "property"),
    ("descriptor.type", "se_e2_a"),
    ("descriptor.type", "dpa2"),
    ("type_embedding", {"neuron": [8]}),
    ("descriptor.use_econf_tebd", True),
    ("descriptor.add_chg_spin_ebd", True),
    ("modifier", {"type": "dipole_charge"}),
    ("compress", {"type": "se_e2_a"}),
    ("bridging_method", "linear"),
]


def _set(d: dict, dotted: str, value) -> None:
    *head, last = dotted.split(".")
    for k in head:
        d = d[k]
    d[last] = value


def _not_supported(key: str) -> str:
    return rf"'{re.escape(key)}'.*not supported"


@pytest.mark.parametrize(("key", "value"), MODEL_REFUSALS, ids=lambda x: str(x)[:30])
def test_train_refuses_by_name(key, value):
    d = tiny_input()
    _set(d["model"], key, value)
    with pytest.raises(ConfigError, match=_not_supported(f"model.{key}")):
        InputConfig.from_dict(d)


@pytest.fixture(scope="module")
def deepmd_checkpoint():
    return torch.load(PARITY / "poly_switch" / "model.ckpt.pt", weights_only=False)


@pytest.mark.parametrize(("key", "value"), MODEL_REFUSALS, ids=lambda x: str(x)[:30])
def test_convert_refuses_by_name(tmp_path, deepmd_checkpoint, key, value):
    ckpt = copy.deepcopy(deepmd_checkpoint)
    _set(ckpt["model"]["_extra_state"]["model_params"], key, value)
    bad = tmp_path / "model.pt"
    torch.save(ckpt, bad)
    with pytest.raises(ConfigError, match=_not_supported(f"model.{key}")) as err:
        load_deepmd_model(bad)
    assert str(bad) in str(err.value)


def test_convert_cli_reports_one_line(tmp_path, deepmd_checkpoint, capsys):
    from dpa3.cli.main import main

    ckpt = copy.deepcopy(deepmd_checkpoint)
    ckpt["model"]["_extra_state"]["model_params"]["atom_exclude_types"] = [0]
    bad = tmp_path / "model.pt"
    torch.save(ckpt, bad)
    assert main(["convert-deepmd", str(bad), str(tmp_path / "out.pt")]) == 1
    out = capsys.readouterr().out  # dpa3 logs to stdout
    assert "'model.atom_exclude_types'" in out and "not supported" in out
    assert "Traceback" not in out and not (tmp_path / "out.pt").exists()


#: (section, key path, value, expected message): refused settings outside ``model``.
OTHER_REFUSALS = [
    ("loss.type", "tensor", "'loss.type' = 'tensor' is not supported"),
    ("loss.use_huber", True, "'loss.use_huber' = True is not supported"),
    ("loss.loss_func", "mae", "'loss.loss_func' = 'mae' is not supported"),
    ("loss.start_pref_pf", 1.0, "'loss.start_pref_pf' = 1.0 is not supported"),
    ("loss.start_pref_h", 1.0, "'loss.start_pref_h' = 1.0 is not supported"),
    ("learning_rate.type", "step", "'learning_rate.type' = 'step' is not supported"),
    ("optimizer.type", "LKF", "'optimizer.type' = 'LKF' is not supported"),
    ("optimizer.type", "HybridMuon", "'optimizer.type' = 'HybridMuon' is not supported"),
    ("training.enable_ema", True, "'training.enable_ema' = True is not supported"),
    ("training.zero_stage", 2, "'training.zero_stage' = 2 is not supported"),
    ("training.save_dir", "ckpt", "'training.save_dir' = 'ckpt' is not supported"),
    ("training.acc_freq", 4, "'training.acc_freq' = 4 is not supported"),
    ("training.mixed_precision", {"compute_prec": "float16"}, "'training.mixed_precision'"),
    ("validating.full_validation", True, "'validating.full_validation' = True is not supported"),
    ("nvnmd", {"enable": True}, "'nvnmd' is not supported"),
]


@pytest.mark.parametrize(("key", "value", "msg"), OTHER_REFUSALS, ids=lambda x: str(x)[:30])
def test_other_sections_refuse_by_name(key, value, msg):
    d = tiny_input()
    section, _, rest = key.partition(".")
    d.setdefault(section, {})
    if rest:
        _set(d[section], rest, value)
    else:
        d[section] = value
    with pytest.raises(ConfigError, match=re.escape(msg)):
        InputConfig.from_dict(d)


#: (key path under ``model``, value, expected message): wrong types and ranges.
BAD_VALUES = [
    ("descriptor.repflow.e_sel", "many", "'model.descriptor.repflow.e_sel' = 'many'"),
    ("descriptor.repflow.e_sel", 12.5, "'model.descriptor.repflow.e_sel' must be an integer"),
    ("descriptor.repflow.e_rcut", -4.0, "'model.descriptor.repflow.e_rcut': e_rcut must be"),
    ("descriptor.repflow.a_rcut", -1.0, "'model.descriptor.repflow.a_rcut': a_rcut must be"),
    ("descriptor.repflow.a_rcut_smth", -0.5, "'model.descriptor.repflow.a_rcut_smth'"),
    ("descriptor.repflow.e_rcut", "6", "'model.descriptor.repflow.e_rcut' must be a number"),
    ("descriptor.repflow.a_rcut", 5.0, "'model.descriptor.repflow.a_rcut': a_rcut (5.0) must"),
    ("descriptor.repflow.e_rcut_smth", 4.0, "'model.descriptor.repflow.e_rcut_smth'"),
    ("descriptor.repflow.a_rcut_smth", 3.0, "'model.descriptor.repflow.a_rcut_smth'"),
    ("descriptor.repflow.nlayers", 0, "'model.descriptor.repflow.nlayers': nlayers must be"),
    ("descriptor.repflow.n_dim", "big", "'model.descriptor.repflow.n_dim' must be an integer"),
    ("descriptor.repflow.a_sel", -3, "'model.descriptor.repflow.a_sel'"),
    ("descriptor.repflow.update_style", "res_x", "'model.descriptor.repflow.update_style'"),
    ("descriptor.repflow.smooth_edge_update", "yes", "'model.descriptor.repflow.smooth_edge"),
    ("descriptor.repflow.fix_stat_std", -1.0, "'model.descriptor.repflow.fix_stat_std'"),
    ("descriptor.activation_function", "swish", "'model.descriptor.activation_function'"),
    ("descriptor.activation_function", "silut:x", "'model.descriptor.activation_function'"),
    ("fitting_net.activation_function", "foo", "'model.fitting_net.activation_function'"),
    ("fitting_net.neuron", [16, 0], "'model.fitting_net.neuron'"),
    ("descriptor.precision", "float16", "'model.descriptor.precision'"),
    ("type_map", ["O", "O"], "'model.type_map' has duplicate"),
]


@pytest.mark.parametrize(("key", "value", "msg"), BAD_VALUES, ids=lambda x: str(x)[:30])
def test_bad_values_name_the_key_path(key, value, msg):
    d = tiny_input()
    _set(d["model"], key, value)
    with pytest.raises(ConfigError, match=re.escape(msg)):
        InputConfig.from_dict(d)


def test_bad_values_name_the_key_path_in_convert(tmp_path, deepmd_checkpoint):
    ckpt = copy.deepcopy(deepmd_checkpoint)
    ckpt["model"]["_extra_state"]["model_params"]["descriptor"]["repflow"]["nlayers"] = 0
    bad = tmp_path / "model.pt"
    torch.save(ckpt, bad)
    with pytest.raises(ConfigError, match=re.escape("'model.descriptor.repflow.nlayers'")):
        load_deepmd_model(bad)
