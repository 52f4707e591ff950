"""``dpa3 model-devi`` against DeePMD-kit 3.2.0's ``dp model-devi`` and ``pair_style deepmd``.

Fixtures: tests/data/model_devi (made by tests/model_devi/generate_reference.py with DeePMD-kit;
see NOTES.md there).  The three DeePMD-kit checkpoints are converted with ``dpa3 convert-deepmd``
here, so DeePMD-kit is not needed to run these tests.

Comparison rules: files written in ``dp model-devi``'s format are compared byte for byte with
DeePMD-kit's (the models agree with DeePMD-kit to ~1e-13, far below the 7 printed significant
digits, so no rounding flips are expected).  DeePMD-kit's LAMMPS files have another layout; their
columns are compared by name, value by value, to one unit of the last printed digit of the
coarser of the two numbers.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dpa3.cli.main import main as dpa3_main

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "data" / "model_devi"
OUT_FREQ = 5


def _read(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Header lines, column names (from the last header line) and the values (rows x columns)."""
    lines = path.read_text().splitlines()
    head = [ln for ln in lines if ln.startswith("#")]
    names = head[-1].lstrip("#").split()
    rows = [[float(x) for x in ln.split()] for ln in lines if ln.strip() and ln[0] != "#"]
    return head, names, np.array(rows)


def _digits(path: Path) -> int:
    """Significant digits of the first non-step value of the first data row."""
    row = next(ln for ln in path.read_text().splitlines() if ln.strip() and ln[0] != "#")
    mant = row.split()[1].lower().split("e")[0].lstrip("-")
    return len(mant.replace(".", ""))


def _assert_printed_equal(a: np.ndarray, b: np.ndarray, digits: int, what: str) -> None:
    """|a - b| <= one unit of the ``digits``-th significant digit of the larger value."""
    scale = np.maximum(np.abs(a), np.abs(b))
    ulp = np.where(
        scale > 0, 10.0 ** (np.floor(np.log10(np.where(scale > 0, scale, 1))) - (digits - 1)), 0.0
    )
    bad = np.abs(a - b) > ulp * 1.0001 + 1e-300
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} values differ beyond the printed precision,"
        f" e.g. {a[bad][:3]} vs {b[bad][:3]}"
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[Path]:
    """The three DeePMD-kit checkpoints converted to dpa3 checkpoints."""
    d = tmp_path_factory.mktemp("devi_models")
    out = []
    for i in range(3):
        dst = d / f"m{i}.pt"
        assert dpa3_main(["convert-deepmd", str(FIX / f"m{i}.ckpt.pt"), str(dst)]) == 0
        out.append(dst)
    return out


@pytest.fixture(scope="module")
def ensemble_npy(models):
    """Energies, forces, virials of the three models on water_sys (library path)."""
    from dpa3.model_devi import evaluate_ensemble, load_models, read_frames

    ms, tmap = load_models(models)
    frames = read_frames(FIX / "water_sys", tmap)
    return evaluate_ensemble(ms, frames)


@pytest.fixture(scope="module")
def ensemble_dump(models):
    """Energies, forces, virials of the three models on the LAMMPS dump frames."""
    from dpa3.model_devi import evaluate_ensemble, load_models, read_frames

    ms, tmap = load_models(models)
    frames = read_frames(FIX / "traj.lammpstrj", tmap, lammps_types=["O", "H"])
    return evaluate_ensemble(ms, frames)


# ----------------------------------------------------------------------------- dp model-devi


def test_cli_equals_dp_model_devi(models, tmp_path, monkeypatch):
    """``dpa3 model-devi`` on water_sys (2 sets, 6 frames) == ``dp model-devi``'s file, byte
    for byte."""
    shutil.copytree(FIX / "water_sys", tmp_path / "water_sys")
    monkeypatch.chdir(tmp_path)
    argv = ["model-devi", "-m", *map(str, models), "-s", "water_sys", "-o", "ours.out"]
    assert dpa3_main(argv) == 0
    ref = (FIX / "dp_model_devi.out").read_text()
    ours = (tmp_path / "ours.out").read_text()
    assert ours.splitlines()[:2] == ref.splitlines()[:2]  # header lines
    _, _, ref_v = _read(FIX / "dp_model_devi.out")
    _, _, our_v = _read(tmp_path / "ours.out")
    assert our_v.shape == ref_v.shape == (6, 8)
    _assert_printed_equal(our_v, ref_v, 7, "dp_model_devi.out")
    assert ours == ref


@pytest.mark.parametrize(
    ("fixture", "kwargs"),
    [
        ("dp_model_devi_f5.out", {"frequency": 5}),
        ("dp_model_devi_atomic.out", {"atomic": True}),
        ("dp_model_devi_relative.out", {"relative": 1.0}),
        ("dp_model_devi_relative_v.out", {"relative": 1.0, "relative_v": 1.0}),
    ],
)
def test_variants_equal_dp_model_devi(ensemble_npy, fixture, kwargs):
    """-f 5, --atomic, --relative and --relative_v, formatted as dpa3 writes them == DeePMD-kit's
    files.  The --relative_v fixture is on water_sys_1f = frames 0-2 of water_sys, one per set
    (dp model-devi 3.2.0 fails on sets of more frames)."""
    from dpa3.model_devi import deviation_table, format_block

    e, f, v = ensemble_npy
    source = "water_sys"
    if fixture == "dp_model_devi_relative_v.out":
        e, f, v, source = e[:, :3], f[:, :3], v[:, :3], "water_sys_1f"
    atomic = kwargs.get("atomic", False)
    text = format_block(deviation_table(e, f, v, **kwargs), source, atomic)
    assert text == (FIX / fixture).read_text()


def test_formulas_against_fixture(ensemble_npy):
    """The deviation columns recomputed here from the raw model outputs with numpy."""
    e, f, v = ensemble_npy
    nat = f.shape[2]
    _, names, ref = _read(FIX / "dp_model_devi.out")
    d_f = np.sqrt(((f - f.mean(0)) ** 2).mean(0).sum(-1))  # (nf, N)
    s_v = np.sqrt(((v / nat - (v / nat).mean(0)) ** 2).mean(0))  # (nf, 9)
    mine = {
        "max_devi_f": d_f.max(1),
        "min_devi_f": d_f.min(1),
        "avg_devi_f": d_f.mean(1),
        "max_devi_v": s_v.max(1),
        "min_devi_v": s_v.min(1),
        "avg_devi_v": np.sqrt((s_v**2).sum(1)) / 3,
        "devi_e": (e / nat).std(0),
    }
    for k, col in mine.items():
        _assert_printed_equal(col, ref[:, names.index(k)], 7, k)


# ----------------------------------------------------------------------------- LAMMPS frames


def _compare_with_lammps(
    ours: np.ndarray, our_names: list[str], fixture: str, atomic: bool = False
) -> None:
    path = FIX / fixture
    _, names, ref = _read(path)
    assert ref.shape[0] == ours.shape[0] == 5
    assert list(ref[:, 0]) == [0, 5, 10, 15, 20]
    assert np.array_equal(ours[:, 0], ref[:, 0])
    digits = min(_digits(path), 7)
    common = [n for n in names if n in our_names and n != "step"]
    assert {
        "max_devi_v",
        "min_devi_v",
        "avg_devi_v",
        "max_devi_f",
        "min_devi_f",
        "avg_devi_f",
    } <= set(common)
    for n in common:
        _assert_printed_equal(
            ours[:, our_names.index(n)], ref[:, names.index(n)], digits, f"{fixture}:{n}"
        )
    if atomic:
        nat = ours.shape[1] - 8
        assert nat == 192 and ref.shape[1] == len(names) - 1 + nat
        _assert_printed_equal(ours[:, 8:], ref[:, -nat:], digits, f"{fixture}: per-atom")


def test_cli_on_lammps_dump_equals_pair_deepmd(models, tmp_path):
    """``dpa3 model-devi`` on the dump of DeePMD-kit's LAMMPS run == its model_devi.out (1 rank)."""
    out = tmp_path / "dump.out"
    argv = [
        "model-devi",
        "-m",
        *map(str, models),
        "-s",
        str(FIX / "traj.lammpstrj"),
        "-t",
        "O",
        "H",
        "-f",
        str(OUT_FREQ),
        "-o",
        str(out),
    ]
    assert dpa3_main(argv) == 0
    _, names, ours = _read(out)
    _compare_with_lammps(ours, names, "lmp_np1.out")


def test_cli_on_extxyz_equals_pair_deepmd(models, tmp_path):
    """The dumped frames re-written as extxyz (symbols, cell, pbc): same values as LAMMPS's file."""
    import ase.io

    images = ase.io.read(
        FIX / "traj.lammpstrj", index=":", format="lammps-dump-text", specorder=["O", "H"]
    )
    xyz = tmp_path / "traj.extxyz"
    ase.io.write(xyz, images, format="extxyz")
    out = tmp_path / "xyz.out"
    argv = [
        "model-devi",
        "-m",
        *map(str, models),
        "-s",
        str(xyz),
        "-f",
        str(OUT_FREQ),
        "-o",
        str(out),
    ]
    assert dpa3_main(argv) == 0
    _, names, ours = _read(out)
    _compare_with_lammps(ours, names, "lmp_np1.out")


@pytest.mark.parametrize(
    ("fixture", "kwargs"),
    [
        ("lmp_np1_atomic.out", {"atomic": True}),
        (
            "lmp_np1_relative.out",
            {"relative": 1.0, "relative_v": 1.0, "relative_v_per_component": True},
        ),
    ],
)
def test_lammps_variants(ensemble_dump, fixture, kwargs):
    """``atomic`` and ``relative 1.0 relative_v 1.0`` of pair_style deepmd on the same frames
    (DeePMD-kit's LAMMPS plugin divides each virial component by its own |mean| + L)."""
    from dpa3.model_devi import COLUMNS, deviation_table

    e, f, v = ensemble_dump
    table = deviation_table(e, f, v, OUT_FREQ, **kwargs)
    _compare_with_lammps(table, ["step", *COLUMNS], fixture, kwargs.get("atomic", False))


def test_lammps_relative_v_differs_from_dp_model_devi(ensemble_dump):
    """The two DeePMD-kit definitions of relative_v really differ on these frames (so the
    per-component choice above is what makes the LAMMPS comparison pass)."""
    from dpa3.model_devi import COLUMNS, deviation_table

    e, f, v = ensemble_dump
    vec = deviation_table(e, f, v, OUT_FREQ, relative_v=1.0)
    _, names, ref = _read(FIX / "lmp_np1_relative.out")
    k = COLUMNS.index("max_devi_v") + 1
    assert not np.allclose(vec[:, k], ref[:, names.index("max_devi_v")], rtol=1e-5)


def test_lammps_ranks_fixtures_agree():
    """The 2- and 4-rank DeePMD-kit files hold the same steps as the 1-rank one (sanity of the
    fixtures the LAMMPS tests use), values equal to the printed precision."""
    _, n1, r1 = _read(FIX / "lmp_np1.out")
    for k in (2, 4):
        _, nk, rk = _read(FIX / f"lmp_np{k}.out")
        assert nk == n1 and rk.shape == r1.shape
        _assert_printed_equal(rk, r1, min(_digits(FIX / "lmp_np1.out"), 7), f"np{k}")


# ----------------------------------------------------------------------------- --select


def test_select_writes_expected_frames(models, tmp_path):
    """--select LO HI writes exactly the frames with LO <= max_devi_f < HI (from the fixture)."""
    from dpa3.data.system import load_system

    _, names, ref = _read(FIX / "dp_model_devi.out")
    col = ref[:, names.index("max_devi_f")]
    s = np.sort(col)
    assert np.all(np.diff(s) > 0), "fixture frames need distinct max_devi_f"
    lo, hi = (s[0] + s[1]) / 2, (s[3] + s[4]) / 2  # midpoints: rounding cannot move a frame
    expect = np.nonzero((col >= lo) & (col < hi))[0]
    assert len(expect) == 3
    out = tmp_path / "candidates"
    argv = [
        "model-devi",
        "-m",
        *map(str, models),
        "-s",
        str(FIX / "water_sys"),
        "--select",
        repr(float(lo)),
        repr(float(hi)),
        "-o",
        str(out),
    ]
    assert dpa3_main(argv) == 0
    got = load_system(out, ["O", "H"])
    src = load_system(FIX / "water_sys", ["O", "H"])
    assert got.nframes == 3
    assert np.array_equal(got.coord, src.coord[expect])
    assert np.array_equal(got.box, src.box[expect])
    assert np.array_equal(got.atype, src.atype[expect])
    assert (out / "type_map.raw").read_text().split() == ["O", "H"]
    assert not (out / "set.000" / "force.npy").exists()


# ----------------------------------------------------------------------------- errors


def _error(argv: list[str], capsys) -> str:
    rc = dpa3_main(argv)
    text = capsys.readouterr()
    msg = (text.out + text.err).strip()
    assert rc != 0, msg
    assert "Traceback" not in msg
    lines = [ln for ln in msg.splitlines() if "ERROR" in ln]
    assert len(lines) == 1, msg
    return lines[0]


def test_error_type_maps(models, tmp_path, capsys):
    other = tmp_path / "other.pt"
    parity = REPO / "tests" / "data" / "parity" / "poly_switch" / "model.ckpt.pt"
    assert dpa3_main(["convert-deepmd", str(parity), str(other)]) == 0
    capsys.readouterr()
    msg = _error(
        [
            "model-devi",
            "-m",
            str(models[0]),
            str(other),
            "-s",
            str(FIX / "water_sys"),
            "-o",
            str(tmp_path / "x.out"),
        ],
        capsys,
    )
    assert "different type maps" in msg and "O H Cu" in msg
    assert not (tmp_path / "x.out").exists()


def test_error_one_model(models, tmp_path, capsys):
    msg = _error(
        [
            "model-devi",
            "-m",
            str(models[0]),
            "-s",
            str(FIX / "water_sys"),
            "-o",
            str(tmp_path / "x.out"),
        ],
        capsys,
    )
    assert "at least 2 models" in msg


def test_error_missing_files(models, tmp_path, capsys):
    msg = _error(
        [
            "model-devi",
            "-m",
            str(models[0]),
            str(tmp_path / "nope.pt"),
            "-s",
            str(FIX / "water_sys"),
            "-o",
            str(tmp_path / "x.out"),
        ],
        capsys,
    )
    assert "nope.pt" in msg and "does not exist" in msg
    msg = _error(
        [
            "model-devi",
            "-m",
            *map(str, models[:2]),
            "-s",
            str(tmp_path / "nosys"),
            "-o",
            str(tmp_path / "x.out"),
        ],
        capsys,
    )
    assert "nosys" in msg and "does not exist" in msg


@pytest.mark.parametrize("case", ["no_parent", "is_dir", "parent_is_file"])
def test_error_unwritable_output(models, tmp_path, capsys, case):
    (tmp_path / "afile").write_text("x")
    out = {
        "no_parent": tmp_path / "missing" / "x.out",
        "is_dir": tmp_path,
        "parent_is_file": tmp_path / "afile" / "x.out",
    }[case]
    msg = _error(
        ["model-devi", "-m", *map(str, models[:2]), "-s", str(FIX / "water_sys"), "-o", str(out)],
        capsys,
    )
    assert str(out) in msg


def test_error_dump_without_type_map(models, tmp_path, capsys):
    msg = _error(
        [
            "model-devi",
            "-m",
            *map(str, models[:2]),
            "-s",
            str(FIX / "traj.lammpstrj"),
            "-o",
            str(tmp_path / "x.out"),
        ],
        capsys,
    )
    assert "-t/--type-map" in msg


def test_error_subprocess_exit_code(tmp_path):
    """As a real command: exit code 1, one line, no traceback."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dpa3",
            "model-devi",
            "-m",
            str(tmp_path / "a.pt"),
            str(tmp_path / "b.pt"),
            "-s",
            str(FIX / "water_sys"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "a.pt' does not exist" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--select", "0.5", "0.1"], ["--select LO HI needs LO < HI"]),
        (["--select", "0.1", "0.1"], ["--select LO HI needs LO < HI"]),
        (["-f", "0"], ["-f/--frequency must be >= 1"]),
    ],
)
def test_error_bad_options(models, tmp_path, capsys, extra, words):
    out = tmp_path / "cand"
    msg = _error(
        [
            "model-devi",
            "-m",
            *map(str, models[:2]),
            "-s",
            str(FIX / "water_sys"),
            "-o",
            str(out),
            *extra,
        ],
        capsys,
    )
    assert all(w in msg for w in words), msg
    assert not out.exists()


@pytest.mark.parametrize("case", ["is_file", "no_parent", "holds_system"])
def test_error_select_unwritable(models, tmp_path, capsys, case):
    out = {
        "is_file": tmp_path / "afile",
        "no_parent": tmp_path / "missing" / "cand",
        "holds_system": tmp_path / "cand",
    }[case]
    if case == "is_file":
        out.write_text("x")
    if case == "holds_system":
        out.mkdir()
        (out / "type.raw").write_text("0\n")
    msg = _error(
        [
            "model-devi",
            "-m",
            *map(str, models[:2]),
            "-s",
            str(FIX / "water_sys"),
            "--select",
            "0",
            "1e9",
            "-o",
            str(out),
        ],
        capsys,
    )
    assert str(out) in msg
    assert {
        "is_file": "not a folder",
        "no_parent": "parent does not exist",
        "holds_system": "already holds a system",
    }[case] in msg


def test_error_element_not_in_type_map(models, tmp_path, capsys):
    import ase
    import ase.io

    xyz = tmp_path / "cu.extxyz"
    ase.io.write(xyz, ase.Atoms("OHCu", positions=[[0, 0, 0], [1, 0, 0], [0, 2, 0]]))
    msg = _error(
        ["model-devi", "-m", *map(str, models[:2]), "-s", str(xyz), "-o", str(tmp_path / "x.out")],
        capsys,
    )
    assert "['Cu']" in msg and "not in the models' type map" in msg and str(xyz) in msg
