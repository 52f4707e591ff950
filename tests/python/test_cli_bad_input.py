"""Bad input to the commands other than ``train`` and to the ASE calculator: each ends in one
line naming the file or option and what is wrong, before any work, and leaves no output.

The model files are made here (a small eager model, saved as a checkpoint and frozen), the
damaged ones from them: cut in half, empty, text, or with the wrong content for their suffix.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_model

from dpa3.calculator import DPA3Calculator
from dpa3.cli.main import main
from dpa3.errors import CheckpointError, ModelFileError
from dpa3.export.freeze import freeze
from dpa3.export.load import load_model
from dpa3.train.checkpoint import make_checkpoint

ROOT = Path(__file__).resolve().parents[2]
MOLECULE = str(ROOT / "examples" / "data" / "molecules-nopbc" / "C1H4O2")  # C H O
DEEPMD_CKPT = ROOT / "tests" / "data" / "model_devi" / "m0.ckpt.pt"
DEEPMD_FROZEN = ROOT / "tests" / "data" / "deepmd_data" / "m0_frozen.pth"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """``ckpt`` (model.pt), ``frozen`` (model.pth) and damaged copies of them."""
    d = tmp_path_factory.mktemp("bad_input")
    model = make_model(seed=3)
    ckpt = make_checkpoint(
        step=0,
        model_config=model.cfg.to_dict(),
        input_config={},
        model_state=model.state_dict(),
        optimizer_state=None,
        rng_state=None,
        sampler_state=None,
    )
    torch.save(ckpt, d / "model.pt")
    freeze(model, d / "model.pth")
    out = {"ckpt": d / "model.pt", "frozen": d / "model.pth"}
    for name, src in (("cut_pth", "model.pth"), ("cut_pt", "model.pt")):
        data = (d / src).read_bytes()
        (d / f"{name}.bin").write_bytes(data[: len(data) // 2])
        out[name] = d / f"{name}.bin"
    (d / "empty.pth").write_bytes(b"")
    (d / "text.pth").write_text("hello\n")
    shutil.copy(d / "model.pth", d / "frozen_named.pt")  # content, not suffix, decides
    shutil.copy(d / "model.pt", d / "ckpt_named.pth")
    (d / "folder").mkdir()
    out.update(
        empty=d / "empty.pth",
        text=d / "text.pth",
        frozen_named_pt=d / "frozen_named.pt",
        ckpt_named_pth=d / "ckpt_named.pth",
        folder=d / "folder",
    )
    return out


def _one_line_error(capsys) -> str:
    out = capsys.readouterr().out
    assert "Traceback" not in out
    errors = [ln for ln in out.splitlines() if ln.startswith("DPA3 ERROR")]
    assert len(errors) == 1, out
    rest = out.split(errors[0], 1)[1]
    assert not rest.strip(), f"the error runs over several lines: {out}"
    return errors[0]


@pytest.mark.parametrize(
    ("name", "expect"),
    [
        ("cut_pth", "is truncated or corrupt"),
        ("cut_pt", "is truncated or corrupt"),
        ("empty", "is empty (0 bytes)"),
        ("text", "is not a model file"),
        ("folder", "is a folder without a 'checkpoint' file"),
    ],
)
def test_damaged_model_files_every_command(models, tmp_path, capsys, monkeypatch, name, expect):
    monkeypatch.chdir(tmp_path)
    bad = str(models[name])
    for argv in (
        ["freeze", bad, "-o", "out.pth"],
        ["test", "-m", bad, "-s", MOLECULE, "-n", "1"],
        ["show", bad, "type-map"],
        ["info", bad],
        ["change-bias", bad, "-b", "1", "2", "3", "4", "5", "6", "-o", "out.pth"],
        ["model-devi", "-m", bad, str(models["frozen"]), "-s", MOLECULE, "-o", "md.out"],
    ):
        assert main(argv) == 1, argv
        line = _one_line_error(capsys)
        assert expect in line and Path(bad).name in line, (argv, line)
        assert not list(tmp_path.iterdir()), argv  # nothing written
    with pytest.raises(CheckpointError, match=expect.replace("(", r"\(").replace(")", r"\)")):
        DPA3Calculator(bad, device="cpu")


def test_frozen_model_given_to_freeze(models, tmp_path, capsys):
    assert main(["freeze", str(models["frozen"]), "-o", str(tmp_path / "x.pth")]) == 1
    assert "is a model frozen by dpa3, not a training checkpoint" in _one_line_error(capsys)
    assert main(["freeze", str(DEEPMD_FROZEN), "-o", str(tmp_path / "x.pth")]) == 1
    assert "is a model frozen by DeePMD-kit, not a training checkpoint" in _one_line_error(capsys)
    assert not list(tmp_path.iterdir())


def test_deepmd_frozen_model_to_show_info_change_bias(tmp_path, capsys):
    for argv in (
        ["show", str(DEEPMD_FROZEN), "type-map"],
        ["info", str(DEEPMD_FROZEN)],
        ["change-bias", str(DEEPMD_FROZEN), "-b", "1", "2", "-o", str(tmp_path / "x.pth")],
    ):
        assert main(argv) == 1, argv
        line = _one_line_error(capsys)  # was TorchScript's many-line "Unknown builtin op"
        assert "frozen by DeePMD-kit, not by dpa3" in line and "dpa3 convert-deepmd" in line


def test_deepmd_checkpoint_names_the_conversion(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="is a DeePMD-kit checkpoint; convert it first"):
        load_model(DEEPMD_CKPT)
    # the commands that read checkpoints (freeze, show, info) give the command to run
    for argv in (
        ["freeze", "-c", str(DEEPMD_CKPT), "-o", str(tmp_path / "x.pth")],
        ["show", str(DEEPMD_CKPT), "type-map"],
        ["info", str(DEEPMD_CKPT)],
    ):
        assert main(argv) == 1, argv
        line = _one_line_error(capsys)
        assert f"dpa3 convert-deepmd {DEEPMD_CKPT} m0-dpa3.ckpt.pt" in line, line


def test_model_kind_by_content_not_suffix(models, tmp_path, capsys):
    """A frozen model named .pt and a checkpoint named .pth are read as what they hold."""
    for name in ("frozen_named_pt", "ckpt_named_pth"):
        out = tmp_path / f"{name}_out{models[name].suffix}"
        argv = ["change-bias", str(models[name]), "-b", "1", "2", "3", "4", "5", "6"]
        assert main([*argv, "-o", str(out)]) == 0, capsys.readouterr().out
        assert out.is_file()
        assert main(["show", str(models[name]), "type-map"]) == 0
    calc = DPA3Calculator(models["ckpt_named_pth"], device="cpu")
    assert calc.type_map[0] == "O"


def test_change_bias_refusals(models, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "model.pt"
    shutil.copy(models["ckpt"], src)
    before = src.read_bytes()
    base = ["change-bias", str(src)]
    for extra, expect in (
        (["-b", "nan", "1", "2", "3", "4", "5"], "the bias values must be finite numbers"),
        (["-b", "1", "inf", "2", "3", "4", "5"], "the bias values must be finite numbers"),
        (["-b", "1", "2", "3", "4", "5", "6", "-o", str(src)], "is the input model"),
    ):
        assert main([*base, *extra, *([] if "-o" in extra else ["-o", "x.pt"])]) == 1
        assert expect in _one_line_error(capsys)
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_change_bias_refuses_unsupported_metadata(models, tmp_path, capsys):
    """A frozen model of another metadata format was re-saved as the current one."""
    import json
    import zipfile

    old = tmp_path / "old.pth"
    with zipfile.ZipFile(models["frozen"]) as src, zipfile.ZipFile(old, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("extra/metadata.json"):
                meta = json.loads(data)
                meta["format_version"] = 0
                data = json.dumps(meta).encode()
            dst.writestr(info, data)
    out = tmp_path / "new.pth"
    assert main(["change-bias", str(old), "-b", "1", "2", "3", "4", "5", "6", "-o", str(out)]) == 1
    assert "metadata format_version 0 is not supported" in _one_line_error(capsys)
    assert not out.exists()


def test_convert_output_is_input(tmp_path, capsys):
    src = tmp_path / "m0.ckpt.pt"
    shutil.copy(DEEPMD_CKPT, src)
    assert main(["convert-deepmd", str(src), str(src)]) == 1
    assert "is the input model" in _one_line_error(capsys)
    assert src.read_bytes() == DEEPMD_CKPT.read_bytes()


def test_convert_dpa3_models(models, tmp_path, capsys):
    out = str(tmp_path / "x.pt")
    assert main(["convert-deepmd", str(models["ckpt"]), out]) == 1
    assert "a dpa3 checkpoint already" in _one_line_error(capsys)
    assert main(["convert-deepmd", str(models["frozen"]), out]) == 1
    assert "a dpa3 frozen model: no conversion needed" in _one_line_error(capsys)
    assert main(["convert-deepmd", str(models["cut_pt"]), out]) == 1
    assert "is truncated or corrupt" in _one_line_error(capsys)


def test_test_command_refuses_outputs_before_evaluating(models, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["test", "-m", str(models["frozen"]), "-s", MOLECULE]
    for extra, expect in (
        (["-n", "-1"], "-n/--numb-test must be >= 0"),
        (["-d", "nodir/detail"], "-d: cannot write the detail files 'nodir/detail.*.out'"),
        (["--plot", "parity.xyz"], "unknown format .xyz"),
        (["--plot", "parity"], "'parity': no suffix"),
    ):
        assert main([*base, *extra]) == 1, extra
        line = _one_line_error(capsys)
        assert expect in line, (extra, line)
        assert "number of test data" not in line
    assert not list(tmp_path.iterdir())


def test_system_list_not_text(models, tmp_path, capsys):
    for cmd in (
        ["test", "-m", str(models["frozen"])],
        ["change-bias", str(models["ckpt"]), "-o", str(tmp_path / "x.pt")],
    ):
        assert main([*cmd, "-f", str(models["cut_pth"])]) == 1
        assert "is not a text file" in _one_line_error(capsys)
        assert main([*cmd, "-f", str(tmp_path)]) == 1
        assert "-f: cannot read the system list" in _one_line_error(capsys)


@pytest.mark.parametrize("level", ["nan", "-1", "0", "inf"])
def test_model_devi_relative_level(models, tmp_path, capsys, level):
    out = tmp_path / "md.out"
    pair = [str(models["frozen"]), str(models["ckpt"])]
    for opt in ("--relative", "--relative-v"):
        argv = ["model-devi", "-m", *pair, "-s", MOLECULE, "-o", str(out), opt, level]
        assert main(argv) == 1
        assert f"{opt} L must be a finite number > 0" in _one_line_error(capsys)
    assert not out.exists()


def test_plot_bad_inputs(models, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lcurve = tmp_path / "lcurve.out"
    lcurve.write_text("# step rmse_val rmse_trn lr\n0 1.0 1.0 1e-3\n1 0.5 0.5 1e-3\n")
    for argv, expect in (
        (["plot", str(lcurve), "-o", "l.xyz"], "unknown format .xyz"),
        (["plot", str(models["cut_pth"]), "-o", "l.png"], "is not a text file"),
        (["plot", str(models["folder"]), "-o", "l.png"], "is a folder"),
    ):
        assert main(argv) == 1, argv
        assert expect in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lcurve.out"]
    assert main(["plot", str(lcurve), "-o", "l.png"]) == 0
    assert Path("l.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.png", "lcurve.out"]  # no temp


def test_frozen_model_errors_are_model_file_errors(models):
    from dpa3.export.freeze import load_frozen

    with pytest.raises(ModelFileError, match="is truncated or corrupt"):
        load_frozen(models["cut_pth"])
    with pytest.raises(ModelFileError, match="frozen by DeePMD-kit, not by dpa3"):
        load_frozen(DEEPMD_FROZEN)
