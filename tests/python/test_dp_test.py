"""``dpa3 test`` against DeePMD-kit 3.2.0's ``dp --pt test``: detail files and result lines.

Fixtures: tests/data/dp_test (made by tests/dp_test/generate_reference.py with DeePMD-kit; see
NOTES.md there).  The DeePMD-kit checkpoint tests/data/model_devi/m0.ckpt.pt is converted with
``dpa3 convert-deepmd`` here, so DeePMD-kit is not needed to run these tests.

Rules: every file DeePMD-kit wrote is written by dpa3 under the same name, with the same header
lines at the same rows (byte for byte) and the same number of columns; the numbers (``%.18e``)
agree to 1e-9 relative (the two implementations of the same function agree to ~1e-12).  The
result lines of dp's log (the text after ``DEEPMD INFO``) match dpa3's (after ``DPA3 INFO``,
less dpa3's first line, the device) with every number replaced by a placeholder; the numbers
agree to the 7 printed digits.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from dpa3.cli.main import main as dpa3_main

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "data" / "dp_test"
NUM = re.compile(r"[-+]?\d+\.\d+e[-+]\d+")

# case -> test arguments after -m, as the generator gave them to dp test (cases.json)
CASES: dict[str, list[str]] = json.loads((FIX / "cases.json").read_text())


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dp_test_model") / "m0.pt"
    assert (
        dpa3_main(["convert-deepmd", str(REPO / "tests/data/model_devi/m0.ckpt.pt"), str(out)]) == 0
    )
    return out


def _workdir(tmp: Path) -> Path:
    for name in ("sys_a", "sys_b"):
        shutil.copytree(FIX / name, tmp / name)
    (tmp / "systems.txt").write_text("sys_a\nsys_b\n")
    (tmp / "out").mkdir()
    return tmp


def _run(model: Path, work: Path, args: list[str], capsys, monkeypatch) -> list[str]:
    """Run ``dpa3 test`` in ``work``; its INFO messages (prefix removed)."""
    monkeypatch.chdir(work)
    capsys.readouterr()
    assert dpa3_main(["test", "-m", str(model), "--device", "cpu", *args]) == 0
    out = capsys.readouterr().out
    msgs = [ln.split("INFO    ", 1)[1] for ln in out.splitlines() if ln.startswith("DPA3 INFO")]
    assert msgs[0].startswith("device ")  # dpa3's one extra line, before dp's lines
    return msgs[1:]


def _dp_lines(case: str) -> list[str]:
    text = (FIX / case / "dp_test.log").read_text(encoding="utf-8")
    return [ln.split("DEEPMD INFO    ", 1)[1] for ln in text.splitlines() if "DEEPMD INFO" in ln]


def _compare_file(ours: Path, ref: Path) -> None:
    a = ours.read_text(encoding="utf-8").splitlines()
    b = ref.read_text(encoding="utf-8").splitlines()
    assert len(a) == len(b), f"{ours.name}: {len(a)} lines, DeePMD-kit {len(b)}"
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if y.startswith("#"):
            assert x == y, f"{ours.name}:{i + 1}: header {x!r} != {y!r}"
            continue
        assert not x.startswith("#"), f"{ours.name}:{i + 1}: unexpected header {x!r}"
        xs, ys = x.split(), y.split()
        assert len(xs) == len(ys), f"{ours.name}:{i + 1}: {len(xs)} columns, not {len(ys)}"
        np.testing.assert_allclose(
            np.array(xs, dtype=float),
            np.array(ys, dtype=float),
            rtol=1e-9,
            atol=1e-12,
            err_msg=f"{ours.name}:{i + 1}",
        )
        # same number format: numpy's %.18e
        assert all(re.fullmatch(r"-?\d\.\d{18}e[-+]\d\d", t) for t in xs), x


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_dp_test(case, model, tmp_path, capsys, monkeypatch):
    work = _workdir(tmp_path)
    before = {p.relative_to(work) for p in work.rglob("*") if p.is_file()}
    lines = _run(model, work, CASES[case], capsys, monkeypatch)
    written = {p.relative_to(work) for p in work.rglob("*") if p.is_file()} - before
    expected = {p.relative_to(FIX / case) for p in (FIX / case).rglob("*") if p.is_file()}
    expected.discard(Path("dp_test.log"))
    assert written == expected
    for rel in sorted(expected):
        _compare_file(work / rel, FIX / case / rel)
    dp = _dp_lines(case)
    assert [NUM.sub("<x>", ln) for ln in lines] == [NUM.sub("<x>", ln) for ln in dp]
    ours = np.array([float(m) for ln in lines for m in NUM.findall(ln)])
    ref = np.array([float(m) for ln in dp for m in NUM.findall(ln)])
    np.testing.assert_allclose(ours, ref, rtol=2e-6)


def test_result_lines_are_dp_format(model, tmp_path, capsys, monkeypatch):
    """Units and labels scripts grep for (a direct check, independent of the fixtures)."""
    lines = _run(model, _workdir(tmp_path), ["-s", "sys_a", "-n", "1"], capsys, monkeypatch)
    assert "# ---------------output of dp test--------------- " in lines
    assert "# number of test data : 1 " in lines
    assert any(re.fullmatch(r"Force  RMSE        : \d\.\d{6}e[-+]\d\d eV/Å", ln) for ln in lines)
    assert any(re.fullmatch(r"Stress MAE         : \d\.\d{6}e[-+]\d\d eV/Å³", ln) for ln in lines)
    assert lines[-1] == "# ----------------------------------------------- "


def test_second_run_replaces_detail_files(model, tmp_path, capsys, monkeypatch):
    """The first system of a run starts the files afresh (dp opens them with "w")."""
    work = _workdir(tmp_path)
    _run(model, work, ["-s", "sys_a", "-n", "1", "-d", "detail"], capsys, monkeypatch)
    first = (work / "detail.e.out").read_text()
    _run(model, work, ["-s", "sys_a", "-n", "1", "-d", "detail"], capsys, monkeypatch)
    assert (work / "detail.e.out").read_text() == first


def test_failed_run_leaves_earlier_detail_files(model, tmp_path, capsys, monkeypatch):
    """The detail files are put in place when every system has been tested: a run that stops
    at a later system (here one with an element the model lacks) leaves those of the run
    before intact, and no temporary file."""
    work = _workdir(tmp_path)
    _run(model, work, ["-s", "sys_a", "-n", "1", "-d", "detail"], capsys, monkeypatch)
    before = {p.name: p.read_text() for p in work.glob("detail.*")}
    assert "detail.e.out" in before and "detail.f.out" in before
    shutil.copytree(work / "sys_b", work / "sys_bad")
    names = (work / "sys_bad" / "type_map.raw").read_text().split()
    (work / "sys_bad" / "type_map.raw").write_text("\n".join(["Xx", *names[1:]]) + "\n")
    (work / "two.txt").write_text("sys_b\nsys_bad\n")
    argv = ["test", "-m", str(model), "--device", "cpu", "-f", "two.txt", "-n", "1"]
    assert dpa3_main([*argv, "-d", "detail"]) == 1
    assert "Xx" in capsys.readouterr().out
    assert {p.name: p.read_text() for p in work.glob("detail.*")} == before
    assert not list(work.glob(".detail.*"))


def test_atomic_needs_atom_ener(model, tmp_path, capsys, monkeypatch):
    work = _workdir(tmp_path)
    monkeypatch.chdir(work)
    assert dpa3_main(["test", "-m", str(model), "--device", "cpu", "-s", "sys_b", "-a"]) == 1
    assert "atom_ener.npy" in capsys.readouterr().out


def test_datafile_errors(model, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("\n")
    for name in ("missing.txt", "empty.txt"):
        assert dpa3_main(["test", "-m", str(model), "--device", "cpu", "-f", name]) == 1
        assert "-f:" in capsys.readouterr().out


def test_freeze_output_names_as_dp(model, tmp_path, monkeypatch):
    """``dpa3 freeze -o NAME`` writes the file ``dp --pt freeze -o NAME`` wrote (fixture)."""
    monkeypatch.chdir(tmp_path)
    for line in (FIX / "freeze_names.txt").read_text().splitlines():
        name, made = line.split(" ", 1)
        before = set(tmp_path.iterdir())
        assert dpa3_main(["freeze", str(model), "-o", name]) == 0
        assert sorted(p.name for p in set(tmp_path.iterdir()) - before) == made.split()


def test_out_json_as_dp(tmp_path, monkeypatch):
    """Every key of dpa3's out.json is in DeePMD-kit's out.json of the same input, with the same
    value (so dp accepts it and both say the same run), except the keys listed here, which
    DeePMD-kit's schema has without a default."""
    shutil.copytree(FIX / "sys_a", tmp_path / "sys_a")
    shutil.copy(FIX / "train_input.json", tmp_path / "input.json")
    monkeypatch.chdir(tmp_path)
    assert dpa3_main(["train", "input.json", "--skip-neighbor-stat"]) == 0
    ours = json.loads(Path("out.json").read_text())
    dp = json.loads((FIX / "dp_out.json").read_text())
    extra: list[str] = []

    def walk(a: dict, b: dict, path: str) -> None:
        for k, v in a.items():
            if k not in b:
                extra.append(path + k)
            elif isinstance(v, dict) and isinstance(b[k], dict):
                walk(v, b[k], f"{path}{k}.")
            else:
                assert v == b[k], f"{path}{k}: dpa3 {v!r}, DeePMD-kit {b[k]!r}"

    walk(ours, dp, "")
    assert extra == ["training.gradient_max_norm"]
    # defaults the input omitted, filled in by both
    assert ours["learning_rate"]["decay_steps"] == 5000
    assert ours["optimizer"]["type"] == "Adam"
    assert ours["model"]["descriptor"]["repflow"]["update_style"] == "res_residual"
