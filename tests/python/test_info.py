"""``dpa3 info [MODEL]``: installation report and model metadata."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from dpa3 import _ops
from dpa3.cli.main import main
from dpa3.errors import CheckpointError
from dpa3.export.info import (
    _same_release,
    cuda_compiled_in,
    environment_report,
    model_report,
    plugin_lammps_version,
)


def _rows(out: str) -> dict[str, str]:
    """``key: value`` rows of the ``dpa3 info`` log output."""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"DPA3 INFO\s+(.+?):\s{2,}(.*)$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_info_without_model(capsys):
    assert main(["info"]) == 0
    rows = _rows(capsys.readouterr().out)
    for key in (
        "dpa3",
        "python",
        "torch",
        "numpy",
        "op library",
        "op library loaded",
        "LAMMPS plugin",
        "lammps Python module",
    ):
        assert key in rows, key
    assert rows["torch"] == torch.__version__
    lib = _ops.library_path()
    if lib is None:
        assert rows["op library"].startswith("not built")
        assert rows["op library loaded"] == "no"
    else:
        assert rows["op library"] == str(lib)
        assert rows["op library loaded"] == "yes"
        build = json.loads((lib.parent / _ops.BUILD_INFO_NAME).read_text())
        mpi = "yes" if bool(torch.ops.dpa3.enable_mpi()) else "no"
        assert rows["MPI compiled in"].split()[0] == mpi
        assert rows["MPI compiled in"].startswith("yes") == (build["mpi"] == "ON")
        assert rows["CUDA compiled in"].split()[0] == ("yes" if build["cuda"] == "ON" else "no")


def test_info_plugin_rows():
    from dpa3.lammps import plugin_dir, plugin_path

    rep = environment_report()
    plugin = plugin_path()
    if plugin is None:
        assert rep["LAMMPS plugin"] == "not built"
        pytest.fail("the LAMMPS plugin is not built")
    assert rep["LAMMPS plugin"] == str(plugin)
    assert rep["LAMMPS_PLUGIN_PATH"] == plugin_dir() == str(plugin.parent)
    date, _ = plugin_lammps_version(plugin)
    assert date is not None and rep["plugin built for LAMMPS"].startswith(date)


def test_plugin_lammps_version_parsing(tmp_path):
    fake = tmp_path / "libfake.so"
    fake.write_bytes(
        b"\x7fELF junk (only 22 Jul 2025\x00pair\x00dpa3\x00"
        b"stable_22Jul2025_update4\x00dpa3 developers\x00"
    )
    assert plugin_lammps_version(fake) == ("22 Jul 2025", "stable_22Jul2025_update4")
    none = tmp_path / "libnone.so"
    none.write_bytes(b"\x00nothing here\x00")
    assert plugin_lammps_version(none) == (None, None)
    assert plugin_lammps_version(tmp_path / "missing.so") == (None, None)
    assert _same_release("22 Jul 2025", "2025.7.22.4.0") is True
    assert _same_release("4 Feb 2025", "2025.7.22.4.0") is False
    assert _same_release("22 Jul 2025", "dev") is None


def _tiny_checkpoint(tmp_path: Path, monkeypatch) -> Path:
    from test_train import tiny_input

    monkeypatch.chdir(tmp_path)
    Path("input.json").write_text(json.dumps(tiny_input(steps=1)))
    assert main(["train", "input.json", "--skip-neighbor-stat"]) == 0
    return tmp_path / "model.ckpt.pt"


def test_info_with_checkpoint_and_frozen_model(tmp_path, capsys, monkeypatch):
    ckpt = _tiny_checkpoint(tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(["info", str(ckpt)]) == 0
    rows = _rows(capsys.readouterr().out)
    assert "op library loaded" in rows
    assert rows["type map"] == "C H O"
    assert rows["rcut"].startswith("4.0 A")
    assert rows["layers"] == "1"
    assert rows["precision"].startswith("float64")
    assert "step 1" in rows["model"]

    if not _ops.ops_available():
        pytest.fail("freezing needs the op library")
    assert main(["freeze", "-c", str(ckpt), "-o", "model.pth"]) == 0
    capsys.readouterr()
    assert main(["info", "model.pth"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["type map"] == "C H O"
    assert rows["rcut"] == "4.0 A"
    assert rows["sel"] == "[40]"
    assert rows["layers"] == "1" and rows["n_dim (exchange width)"] == "16"
    assert rows["precision"] == "float64 (fitting float64)"
    assert rows["step"] == "1"


def test_info_bad_model(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.pth")]) == 1
    junk = tmp_path / "junk.pth"
    junk.write_text("not a model")
    assert main(["info", str(junk)]) == 1
    out = capsys.readouterr().out
    assert "does not exist" in out and "is not a model file" in out and "Traceback" not in out
    with pytest.raises(CheckpointError, match="model file '.*missing.pth' does not exist"):
        model_report(tmp_path / "missing.pth")


def test_cuda_compiled_in_row():
    assert cuda_compiled_in({}) is None
    assert cuda_compiled_in({"cuda": "OFF"}) == "no"
    assert cuda_compiled_in({"cuda": "ON"}) == "yes"
    build = {"cuda": "ON", "cuda_compiler": "13.0.88", "cuda_architectures": "8.0 9.0+PTX"}
    assert cuda_compiled_in(build) == "yes (nvcc 13.0.88, architectures 8.0 9.0+PTX)"
