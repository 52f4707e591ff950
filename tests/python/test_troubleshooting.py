"""The error reference of ``docs/troubleshooting.md`` (issue 17, point 9) cannot drift.

Every row of its tables names a bad input, the message as printed, what to do and the test
that checks it (a pytest node id).  For every row: the cited test exists, the message is
asserted by that test (its source, with the module-level lists and helpers it uses), and the
message is in the code under ``python/`` or ``src/``.  Below: the tests of error paths that
had none (cheap, pure-Python ones).
"""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import make_model

from dpa3.cli.main import main
from dpa3.errors import CheckpointError, ConfigError, DataError

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "troubleshooting.md"
AREAS = ("LAMMPS", "dpa3 train", "Training data", "convert-deepmd", "freeze", "ASE calculator")
#: ``<placeholder>`` and ``…`` stand for text that varies (a file name, a key path, a value).
WILDCARD = re.compile(r"<[^<>]*>|…")


def _code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def parse_reference(text: str) -> dict[str, list[dict[str, str]]]:
    """The rows of each ``###`` table under ``## Error reference``, by heading."""
    section = text.split("\n## Error reference", 1)[1].split("\n## ", 1)[0]
    tables: dict[str, list[dict[str, str]]] = {}
    heading = None
    for line in section.splitlines():
        if line.startswith("### "):
            heading = line[4:].strip()
            tables[heading] = []
        elif line.startswith("|") and heading is not None:
            if set(line.strip()) <= set("|-: "):
                continue  # the header separator
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if cells[0] == "What you did":
                continue
            assert len(cells) == 4, f"{heading}: a row needs 4 cells: {line}"
            tables[heading].append(
                {"input": cells[0], "message": cells[1], "todo": cells[2], "test": cells[3]}
            )
    return tables


def message_pieces(message_cell: str) -> list[str]:
    """The literal parts of a row's message (its first code span, split at wildcards)."""
    spans = _code_spans(message_cell)
    assert spans, f"no `message` in {message_cell!r}"
    pieces = [p.strip(" '\"") for p in WILDCARD.split(spans[0])]
    return [p for p in pieces if len(p) >= 3]


def _python_strings(source: str) -> list[str]:
    """The string literals of a Python file as written at run time: implicitly concatenated
    parts joined, the ``{...}`` fields of f-strings cut out (as NUL)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            out.append(
                "".join(v.value if isinstance(v, ast.Constant) else "\0" for v in node.values)
            )
    return out


@cache
def source_text() -> str:
    """The code under ``python/`` and ``src/``, with its strings as printed (a message split
    over lines in the source is one string here)."""
    parts = []
    for p in sorted((ROOT / "python").rglob("*.py")):
        parts += _python_strings(p.read_text(encoding="utf-8"))
    for p in sorted((ROOT / "src").rglob("*")):
        if p.suffix in (".cpp", ".h", ".cu"):
            # adjacent C++ literals "..." "..." are one string
            parts.append(re.sub(r'"\s*\n\s*"', "", p.read_text(encoding="utf-8")))
    return "\n".join(parts)


def _unescape(text: str) -> str:
    """Regex escapes and string escapes as the user sees them: ``force\\.npy`` -> ``force.npy``."""
    return re.sub(r"\\(.)", r"\1", text)


def cited_test_source(node_id: str) -> str:
    """The source of the test function ``node_id`` names, with its decorators, and of the
    module-level assignments and functions it refers to (parametrize lists, helpers)."""
    path, _, name = node_id.partition("::")
    file = ROOT / path
    assert file.is_file(), f"{node_id}: no file {path}"
    source = file.read_text(encoding="utf-8")
    tree = ast.parse(source)
    top: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            top[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    top[t.id] = node
    func = top.get(name)
    assert isinstance(func, ast.FunctionDef), f"{node_id}: no test function {name} in {path}"
    seen, todo, parts = {name}, [func], []
    while todo:
        node = todo.pop()
        segment = ast.get_source_segment(source, node) or ""
        decorators = getattr(node, "decorator_list", [])
        parts += [ast.get_source_segment(source, d) or "" for d in decorators] + [segment]
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and sub.id in top and sub.id not in seen:
                seen.add(sub.id)
                todo.append(top[sub.id])
    return "\n".join(parts)


def _rows():
    tables = parse_reference(DOC.read_text(encoding="utf-8"))
    return [(area, row) for area, rows in tables.items() for row in rows]


def test_reference_has_every_area_and_30_rows():
    tables = parse_reference(DOC.read_text(encoding="utf-8"))
    for area in AREAS:
        matching = [h for h in tables if area in h]
        assert len(matching) == 1, f"one table for {area!r}, got {list(tables)}"
        assert tables[matching[0]], f"the table {matching[0]!r} is empty"
    assert sum(len(rows) for rows in tables.values()) >= 30


def check_row(area: str, row: dict[str, str]) -> None:
    """The assertions on one row of the error reference."""
    (node_id,) = _code_spans(row["test"]) or [row["test"]]
    assert re.fullmatch(r"tests/[\w/]+\.py::\w+", node_id), f"{area}: bad test id {node_id!r}"
    pieces = message_pieces(row["message"])
    assert any(len(p) >= 8 for p in pieces), f"{area}: message too short: {row['message']}"
    asserted = _unescape(cited_test_source(node_id))
    code = source_text()
    for piece in pieces:
        assert piece in asserted, f"{area}: {piece!r} is not asserted in {node_id}"
        assert piece in code, f"{area}: {piece!r} is in no source file under python/ or src/"
    assert row["input"] and row["todo"], f"{area}: a row needs the input and what to do"


@pytest.mark.parametrize(
    ("area", "row"),
    _rows(),
    ids=[re.sub(r"\W+", "_", area)[:24] + f"-{i}" for i, (area, _) in enumerate(_rows())],
)
def test_row_is_asserted_by_its_test_and_in_the_code(area, row):
    check_row(area, row)


def test_checker_catches_drifted_rows():
    """A row whose message its test does not assert, or that the code does not print, or
    whose test does not exist, is caught (the checker can fail)."""
    area, row = _rows()[0]
    with pytest.raises(AssertionError, match="is not asserted in"):
        check_row(area, {**row, "message": "`pair_style dpa3: the model is tired`"})
    node = "`tests/python/test_troubleshooting.py::test_calculator_missing_model_file`"
    with pytest.raises(AssertionError, match="is in no source file"):  # only in the test
        check_row(area, {**row, "message": "`def test_calculator_missing`", "test": node})
    with pytest.raises(AssertionError, match="no test function"):
        check_row(area, {**row, "test": node.replace("missing_model", "absent_model")})
    with pytest.raises(AssertionError, match="no file"):
        check_row(area, {**row, "test": "`tests/python/test_nothing.py::test_x`"})


# ------------------------------------------------------------------ errors without a test


def _calculator(**kwargs):
    from dpa3.calculator import DPA3Calculator

    return DPA3Calculator(make_model(seed=34), **kwargs)


def test_calculator_missing_model_file(tmp_path):
    from dpa3.calculator import DPA3Calculator

    with pytest.raises(FileNotFoundError, match="dpa3: no model file"):
        DPA3Calculator(tmp_path / "nope.pth")


def test_calculator_element_not_in_type_map():
    atoms = Atoms("XeO", positions=[[0, 0, 0], [1.5, 0, 0]])
    atoms.calc = _calculator()
    msg = "dpa3: element(s) ['Xe'] are not in the model's type map"
    with pytest.raises(DataError, match=re.escape(msg)):
        atoms.get_potential_energy()


def test_calculator_slab_without_enough_vacuum():
    calc = _calculator()
    cell = np.diag([8.0, 8.0, calc.rcut])  # the atoms span 0 along c: a gap of exactly rcut
    atoms = Atoms("OH", positions=[[1, 1, 1], [2, 1, 1]], cell=cell, pbc=[1, 1, 0])
    atoms.calc = calc
    msg = "the vacuum along cell vector c is .* Å, not more than the model's cutoff"
    with pytest.raises(DataError, match=msg):
        atoms.get_potential_energy()
    atoms.set_cell(np.diag([8.0, 8.0, calc.rcut + 1.0]))  # more than the cutoff: evaluated
    assert np.isfinite(atoms.get_potential_energy())


def test_calculator_overlapping_atoms():
    atoms = Atoms("OH", positions=[[1, 1, 1], [1.05, 1, 1]])
    atoms.calc = _calculator()
    msg = "Å apart (less than 0.1 Å): overlapping atoms; check the positions and their units"
    with pytest.raises(DataError, match=re.escape(msg)):
        atoms.get_potential_energy()


def test_calculator_non_finite_position():
    atoms = Atoms("OH", positions=[[np.nan, 1, 1], [2, 1, 1]])
    atoms.calc = _calculator()
    with pytest.raises(DataError, match=re.escape("coord contains non-finite values (NaN or inf")):
        atoms.get_potential_energy()


def test_checkpoint_errors_name_the_file(tmp_path):
    from dpa3.train.checkpoint import load_checkpoint

    with pytest.raises(CheckpointError, match="checkpoint '.*nope.pt' does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint '.*junk.pt'"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    msg = "is not a dpa3 checkpoint (DeePMD-kit checkpoints need 'dpa3 convert-deepmd' first)"
    with pytest.raises(CheckpointError, match=re.escape(msg)):
        load_checkpoint(other)


def test_train_input_not_json(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("input.json").write_text('{"model": {},}')
    assert main(["train", "input.json"]) == 1
    out = capsys.readouterr().out
    assert "'input.json' is not valid JSON" in out and "Traceback" not in out


def test_freeze_output_not_a_file_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["freeze", "-c", "model.ckpt.pt", "-o", "."]) == 1
    assert "freeze: -o '.' is not a file name" in capsys.readouterr().out


def test_convert_missing_and_unreadable_files(tmp_path, capsys):
    assert main(["convert-deepmd", str(tmp_path / "nope.pt"), str(tmp_path / "out.pt")]) == 1
    assert "DeePMD-kit model file not found" in capsys.readouterr().out
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    assert main(["convert-deepmd", str(junk), str(tmp_path / "out.pt")]) == 1
    out = capsys.readouterr().out
    assert "junk.pt' is not a model file" in out
    assert "Traceback" not in out and not (tmp_path / "out.pt").exists()


def test_convert_checkpoint_without_model_params(tmp_path):
    from dpa3.convert import load_deepmd_model

    bad = tmp_path / "bare.pt"
    torch.save({"model": {"_extra_state": {}}}, bad)
    with pytest.raises(ConfigError, match="checkpoint has no '_extra_state.model_params'"):
        load_deepmd_model(bad)


def test_train_input_missing_training_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("bad.json").write_text(json.dumps({"model": {}, "training": {"numb_steps": 1}}))
    assert main(["train", "bad.json"]) == 1
    assert "missing required key 'training.training_data'" in capsys.readouterr().out


def test_data_nan_label_and_no_system(tmp_path):
    import shutil

    from dpa3.data.system import find_systems, load_system

    sys_dir = tmp_path / "sys"
    shutil.copytree(ROOT / "examples" / "data" / "water" / "data_0", sys_dir)
    energy = sys_dir / "set.000" / "energy.npy"
    energy.chmod(0o644)
    e = np.load(energy).astype(np.float64)
    e[2] = np.inf
    np.save(energy, e)
    with pytest.raises(DataError, match=re.escape("contains NaN or inf (first at frame 2)")):
        load_system(sys_dir, ["O", "H"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=re.escape("no system (folder with type.raw) found")):
        find_systems([tmp_path / "empty"])
