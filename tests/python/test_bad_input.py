"""Bad input to ``dpa3 train`` and ``dpa3 neighbor-stat`` ends in one clear error naming the
file or key (no traceback, no silent garbage): data files, the input file, checkpoints, output
paths, loss and learning-rate values, labels the loss needs."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import tiny_input

from dpa3.cli.main import main
from dpa3.config._base import ConfigError
from dpa3.config.train import InputConfig
from dpa3.errors import CheckpointError, DataError
from dpa3.train.checkpoint import frozen_checkpoint, load_checkpoint
from dpa3.train.trainer import Trainer

TYPE_MAP = ("O", "H")


def make_system(root: Path, nframes: int = 2, labels=("energy", "force")) -> Path:
    """A periodic 3-atom water system (types O H H) with ``nframes`` frames."""
    root.mkdir(parents=True)
    (root / "type.raw").write_text("0 1 1\n")
    (root / "type_map.raw").write_text("O\nH\n")
    s = root / "set.000"
    s.mkdir()
    base = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]) + 2.0
    rng = np.random.default_rng(0)
    coord = base[None] + 0.01 * rng.standard_normal((nframes, 3, 3))
    np.save(s / "coord.npy", coord.reshape(nframes, 9))
    np.save(s / "box.npy", np.tile(np.eye(3).reshape(9) * 6.0, (nframes, 1)))
    if "energy" in labels:
        np.save(s / "energy.npy", -14.0 + 0.01 * rng.standard_normal(nframes))
    if "force" in labels:
        np.save(s / "force.npy", 0.1 * rng.standard_normal((nframes, 9)))
    return root


def load(root: Path):
    from dpa3.data.system import load_system

    return load_system(root, TYPE_MAP)


# ------------------------------------------------------------------------ data files
def test_generated_system_loads(tmp_path):
    s = load(make_system(tmp_path / "sys"))  # the cases below break one thing each
    assert s.nframes == 2 and s.natoms == 3 and s.has_label("force")


@pytest.mark.parametrize(
    ("array", "what"),
    [
        (np.array([["1.0"] * 9] * 2), "<U3"),
        (np.zeros((2, 9), dtype=complex), "complex128"),
        (np.ones((2, 9), dtype=bool), "bool"),
    ],
    ids=["str", "complex", "bool"],
)
def test_npy_of_other_dtype_is_refused(tmp_path, array, what):
    root = make_system(tmp_path / "sys")
    np.save(root / "set.000" / "coord.npy", array)
    msg = f"set.000/coord.npy' holds {what} values; expected integers or floats"
    with pytest.raises(DataError, match=re.escape(msg)):
        load(root)


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"", "it is empty"), (b"0.0 1.0 2.0\n", "it does not start with the .npy signature")],
    ids=["empty", "text"],
)
def test_file_that_is_not_npy(tmp_path, content, why):
    root = make_system(tmp_path / "sys")
    (root / "set.000" / "energy.npy").write_bytes(content)
    msg = f"energy.npy' is not a NumPy .npy file ({why})"
    with pytest.raises(DataError, match=re.escape(msg)):
        load(root)


def test_set_without_frames(tmp_path):
    root = make_system(tmp_path / "sys")
    for name, width in (("coord", 9), ("box", 9), ("force", 9)):
        np.save(root / "set.000" / f"{name}.npy", np.zeros((0, width)))
    np.save(root / "set.000" / "energy.npy", np.zeros(0))
    with pytest.raises(DataError, match=re.escape("coord.npy' has no frames (shape (0, 9))")):
        load(root)


def test_type_map_raw_not_text(tmp_path):
    root = make_system(tmp_path / "sys")
    (root / "type_map.raw").write_bytes(b"\xff\xfeO\x00H\x00")
    with pytest.raises(DataError, match=r"type_map\.raw' must be a text file of element names"):
        load(root)


def test_negative_type_names_type_raw(tmp_path):
    root = make_system(tmp_path / "sys")
    (root / "type.raw").write_text("0 -1 1\n")
    with pytest.raises(DataError, match=r"type\.raw' has the type -1: types are 0-based"):
        load(root)


def test_real_atom_types_must_be_integers(tmp_path):
    root = make_system(tmp_path / "sys")
    np.save(root / "set.000" / "real_atom_types.npy", np.array([[0, 1, 1], [0, 0.5, 1]]))
    with pytest.raises(DataError, match=r"real_atom_types\.npy' holds non-integer types"):
        load(root)
    np.save(root / "set.000" / "real_atom_types.npy", np.array([[0.0, 1, 1], [0, 1, 1]]))
    assert load(root).atype.tolist() == [[0, 1, 1], [0, 1, 1]]  # integral floats, as dp


def test_systems_entry_that_is_a_plain_file(tmp_path):
    from dpa3.data.system import find_systems

    (tmp_path / "notes.txt").write_text("data/sys0\n")
    msg = "systems: 'notes.txt' is a file but not an HDF5 file (no HDF5 signature)"
    with pytest.raises(DataError, match=re.escape(msg)):
        find_systems(["notes.txt"], base=tmp_path)


# ------------------------------------------------------------------------ the input file
@pytest.mark.parametrize(
    ("write", "msg"),
    [
        (lambda p: p.write_bytes(b"\xff\xfe{\x00}\x00"), "'input.json' is not valid JSON"),
        (lambda p: p.write_text("[1, 2]"), "'input.json' must hold a JSON object"),
        (lambda p: p.mkdir(), "input file 'input.json' is a folder, not a file"),
    ],
    ids=["binary", "list", "folder"],
)
def test_bad_input_file_is_one_line(tmp_path, monkeypatch, capsys, write, msg):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "input.json")
    assert main(["train", "input.json"]) == 1
    out = capsys.readouterr().out
    assert msg in out and "Traceback" not in out


# ------------------------------------------------------------------------ checkpoints
def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.pt"
    torch.save({"format": "dpa3.checkpoint", "x": torch.zeros(3)}, good)
    files = {
        "empty": b"",
        "text": b"hello\n",
        "json": b'{"model": {}}',
        "truncated": good.read_bytes()[: good.stat().st_size // 2],
    }
    out = {}
    for name, content in files.items():
        out[name] = tmp_path / f"{name}.pt"
        out[name].write_bytes(content)
    return out


WHY = {
    "empty": "the file is empty",
    "text": "not the zip archive torch writes",
    "json": "not the zip archive torch writes",
    "truncated": "not the zip archive torch writes",
}


@pytest.mark.parametrize("kind", list(WHY))
def test_unreadable_checkpoint_says_why(tmp_path, kind):
    p = _bad_files(tmp_path)[kind]
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint '.*{kind}.pt': {WHY[kind]}"):
        load_checkpoint(p)
    msg = f"cannot read the weights of '.*{kind}.pt': not a frozen dpa3 model \\({WHY[kind]}"
    with pytest.raises(CheckpointError, match=msg):
        frozen_checkpoint(p)


def test_frozen_model_error_without_miniz_advice(tmp_path):
    p = tmp_path / "dict.pt"
    torch.save({"a": torch.zeros(2)}, p)  # a zip archive, but no TorchScript module
    with pytest.raises(CheckpointError, match="not a frozen dpa3 model") as err:
        frozen_checkpoint(p)
    assert "miniz" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("option", ["--restart", "--init-model", "--finetune"])
def test_bad_checkpoint_on_the_command_line(tmp_path, monkeypatch, capsys, option):
    monkeypatch.chdir(tmp_path)
    make_system(tmp_path / "sys")
    Path("input.json").write_text(json.dumps(tiny_input(["sys"], TYPE_MAP, steps=1)))
    for kind, p in _bad_files(tmp_path).items():
        assert main(["train", "input.json", option, str(p)]) == 1
        out = capsys.readouterr().out
        assert WHY[kind] in out and "Traceback" not in out, out


# ------------------------------------------------------------------------ config values
BAD_VALUES = [
    ("loss.start_pref_e", -1.0, "'loss.start_pref_e' must be >= 0, got -1.0"),
    ("loss.limit_pref_f", float("nan"), "'loss.limit_pref_f' must be >= 0, got nan"),
    ("loss.start_pref_v", float("inf"), "'loss.start_pref_v' must be >= 0, got inf"),
    ("learning_rate.stop_lr", 1.0, "'learning_rate.stop_lr' gives stop_lr 1 above start_lr"),
    ("learning_rate.stop_lr_ratio", 2.0, "'learning_rate.stop_lr_ratio' gives stop_lr 0.004"),
    ("learning_rate.stop_lr", float("nan"), "'learning_rate.stop_lr' must be positive, got nan"),
    ("training.disp_file", "", "'training.disp_file' = '' must name a file"),
    ("training.save_ckpt", "", "'training.save_ckpt' = '' must name a file"),
]


@pytest.mark.parametrize(("key", "value", "msg"), BAD_VALUES, ids=lambda x: str(x)[:30])
def test_bad_values_name_the_key(key, value, msg):
    d = tiny_input()
    section, name = key.split(".")
    if name == "stop_lr_ratio":
        del d[section]["stop_lr"]  # one of the two
    d[section][name] = value
    with pytest.raises(ConfigError, match=re.escape(msg)):
        InputConfig.from_dict(d)


def test_equal_start_and_stop_lr_is_kept():
    d = tiny_input()
    d["learning_rate"].update(start_lr=1e-3, stop_lr=1e-3)  # a constant rate
    assert InputConfig.from_dict(d).learning_rate.stop_lr == 1e-3


# ------------------------------------------------------------------------ output paths
def _write(path: Path) -> None:
    path.write_text("x")


BAD_OUTPUTS = [
    ("save_ckpt", "run/model.ckpt", _write, "'training.save_ckpt' = 'run/model.ckpt': cannot"),
    ("disp_file", "nodir/lcurve.out", None, "folder 'nodir' does not exist"),
    ("disp_file", "lcurve.out", Path.mkdir, "'lcurve.out' is a folder, not a file"),
    ("stat_file", "run/stat", _write, "'training.stat_file' = 'run/stat': cannot write in folder"),
]


@pytest.mark.parametrize(("key", "value", "make", "msg"), BAD_OUTPUTS, ids=lambda x: str(x)[:20])
def test_bad_output_path_fails_before_training(tmp_path, monkeypatch, key, value, make, msg):
    """Found before any step (it used to fail at the first save, losing the run)."""
    monkeypatch.chdir(tmp_path)
    make_system(tmp_path / "sys")
    if make is not None:
        make(tmp_path / value.split("/")[0])  # a file named as the folder, or a folder
    d = tiny_input(["sys"], TYPE_MAP, steps=1, **{key: value})
    with pytest.raises(ConfigError, match=re.escape(msg)):
        Trainer(d, skip_neighbor_stat=True)
    assert not list(tmp_path.glob("*.pt"))


def test_checkpoint_pointer_that_is_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_system(tmp_path / "sys")
    (tmp_path / "checkpoint").mkdir()
    with pytest.raises(ConfigError, match="'checkpoint' .* is a folder, not a file"):
        Trainer(tiny_input(["sys"], TYPE_MAP, steps=1), skip_neighbor_stat=True)


# ------------------------------------------------------------------------ labels
def test_no_label_for_any_loss_term(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_system(tmp_path / "sys", labels=())
    msg = "training_data: no system has a label for any loss term in use; looked for energy.npy"
    with pytest.raises(DataError, match=re.escape(msg)):
        Trainer(tiny_input(["sys"], TYPE_MAP, steps=1), skip_neighbor_stat=True)


def test_loss_term_without_labels_is_warned(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    make_system(tmp_path / "sys")
    d = tiny_input(["sys"], TYPE_MAP, steps=1)
    d["loss"].update(start_pref_v=1.0, limit_pref_v=1.0)
    with caplog.at_level(logging.WARNING, logger="dpa3"):
        Trainer(d, skip_neighbor_stat=True)
    assert "no system of training_data has virial.npy: that term is skipped" in caplog.text


# ------------------------------------------------------------------------ neighbor-stat
@pytest.mark.parametrize("rcut", ["nan", "inf"])
def test_neighbor_stat_non_finite_rcut(tmp_path, capsys, rcut):
    root = make_system(tmp_path / "sys")
    assert main(["neighbor-stat", "-s", str(root), "-r", rcut]) == 1
    out = capsys.readouterr().out
    assert f"-r/--rcut must be positive, got {rcut}" in out and "Traceback" not in out
