"""``pair_style dpa3 m0 m1 m2 out_freq N ...`` (model deviation) against DeePMD-kit 3.2.0.

Fixtures: tests/data/model_devi (see NOTES.md there): three DeePMD-kit DPA3 checkpoints, the
LAMMPS inputs DeePMD-kit ran with ``pair_style deepmd m0.pth m1.pth m2.pth out_freq 5 ...`` on
1, 2 and 4 ranks (plain, ``atomic``, ``relative 1.0 relative_v 1.0``) and the model_devi files it
wrote.  Here the checkpoints are converted with ``dpa3 convert-deepmd`` and frozen, and the same
inputs run with ``pair_style dpa3`` instead of ``pair_style deepmd`` (same data, velocities,
steps), so DeePMD-kit is not needed.

Comparison rules:
- the header line must be identical, byte for byte, and every row must have DeePMD-kit's layout
  (the same field widths);
- the step column must be identical; every value must equal DeePMD-kit's to its printed
  precision: parsed numbers, |ours - theirs| <= one unit of the 7th significant digit of the
  larger one (models agree with DeePMD-kit to ~1e-13, so a rounding flip of the last digit is
  the only expected difference; the tests report how many rows are byte-identical);
- ``out_digits 15`` (a dpa3 extension): the files of 2 and 4 ranks equal the 1-rank file to
  1e-10 relative.
"""

from __future__ import annotations

import re
from pathlib import Path

import lmp_driver as L
import numpy as np
import pytest
import torch
from lmp_helpers import make_system, mpirun, plugin  # noqa: F401
from toy_model import ToyMessagePassing, _exchange

pytestmark = pytest.mark.lammps

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "data" / "model_devi"
OUT_FREQ = 5
NSTEPS = 20
TIMEOUT = 300


# ------------------------------------------------------------------ models and inputs


@pytest.fixture(scope="module")
def frozen(tmp_path_factory) -> list[Path]:
    """The three DeePMD-kit checkpoints, converted and frozen (m0.pth, m1.pth, m2.pth)."""
    from dpa3.convert import convert_deepmd
    from dpa3.export import freeze

    d = tmp_path_factory.mktemp("devi_frozen")
    out = []
    for i in range(3):
        model = convert_deepmd(FIX / f"m{i}.ckpt.pt", d / f"m{i}.pt")
        out.append(freeze(model.eval(), d / f"m{i}.pth"))
    return out


def _script(
    fixture_input: str, plugin: Path, models: list[Path], out_file: str, extra: str = ""
) -> str:
    """A DeePMD-kit fixture input with pair_style deepmd replaced by pair_style dpa3.

    The plugin line loads the plugin under test; the models are ours; ``out_file`` and
    ``extra`` (appended keywords) replace the fixture's out_file; the trajectory dump goes.
    """
    text = (FIX / fixture_input).read_text()
    lines = []
    for line in text.splitlines():
        if line.startswith("plugin load"):
            lines += ["plugin unload pair dpa3", f"plugin load {plugin}"]
        elif line.startswith("pair_style"):
            words = line.split()
            assert words[1] == "deepmd" and words[2:5] == ["m0.pth", "m1.pth", "m2.pth"], line
            keys = words[5:]
            i = keys.index("out_file")
            keys[i + 1] = out_file
            lines.append(" ".join(["pair_style", "dpa3", *map(str, models), *keys, extra]))
        elif line.startswith(("dump", "dump_modify")):
            continue
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def _run(tmp_path: Path, script: str, nprocs: int = 1) -> str:
    (tmp_path / "data.water").write_text((FIX / "data.water").read_text())
    proc = L.run_input(tmp_path, script, nprocs=nprocs, timeout=TIMEOUT)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


def _rows(path: Path) -> tuple[str, list[str], np.ndarray]:
    """Header line, data lines, values (rows x columns, step first)."""
    lines = path.read_text().splitlines()
    assert lines and lines[0].startswith("#"), path
    data = lines[1:]
    return lines[0], data, np.array([[float(x) for x in ln.split()] for ln in data])


def _assert_printed_equal(a: np.ndarray, b: np.ndarray, digits: int, what: str) -> None:
    """|a - b| <= one unit of the ``digits``-th significant digit of the larger value."""
    scale = np.maximum(np.abs(a), np.abs(b))
    safe = np.where(scale > 0, scale, 1.0)
    ulp = np.where(scale > 0, 10.0 ** (np.floor(np.log10(safe)) - (digits - 1)), 0.0)
    bad = np.abs(a - b) > ulp * 1.0001 + 1e-300
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} values differ beyond the printed precision,"
        f" e.g. {a[bad][:3]} vs {b[bad][:3]}"
    )


def _layout(line: str) -> list[int]:
    """End positions of the whitespace-separated fields of a line."""
    return [m.end() for m in re.finditer(r"\S+", line)]


def _compare_with_deepmd(ours: Path, fixture: str) -> int:
    """Our file against DeePMD-kit's; returns the number of byte-identical rows."""
    head, lines, vals = _rows(ours)
    ref_head, ref_lines, ref_vals = _rows(FIX / fixture)
    assert head == ref_head, (head, ref_head)
    assert vals.shape == ref_vals.shape, (vals.shape, ref_vals.shape)
    np.testing.assert_array_equal(vals[:, 0], ref_vals[:, 0])
    assert list(vals[:, 0]) == list(range(0, NSTEPS + 1, OUT_FREQ))
    for a, b in zip(lines, ref_lines, strict=True):
        assert _layout(a) == _layout(b), (a, b)
    _assert_printed_equal(vals[:, 1:], ref_vals[:, 1:], 7, f"{ours.name} vs {fixture}")
    return sum(a == b for a, b in zip(lines, ref_lines, strict=True))


def _thermo(log: str) -> list[str]:
    """The thermo rows (step pe ke etotal press) of a log, as printed."""
    rows = []
    for line in log.splitlines():
        words = line.split()
        if len(words) == 5 and words[0].isdigit():
            rows.append(line.strip())
    return rows


# ------------------------------------------------------------------ against DeePMD-kit


def _ranks(n):
    return pytest.param(n, marks=[pytest.mark.mpi] if n > 1 else [], id=f"np{n}")


@pytest.mark.parametrize("nprocs", [_ranks(1), _ranks(2), _ranks(4)])
def test_equals_pair_deepmd(request, tmp_path, plugin, frozen, nprocs):
    """model_devi.out of 1, 2 and 4 ranks equals DeePMD-kit's file of the same run."""
    if nprocs > 1:
        request.getfixturevalue("mpirun")
    script = _script(f"in.lmp_np{nprocs}", plugin, frozen, "devi.out")
    log = _run(tmp_path, script, nprocs)
    same = _compare_with_deepmd(tmp_path / "devi.out", f"lmp_np{nprocs}.out")
    print(f"np{nprocs}: {same} of 5 rows byte-identical to DeePMD-kit's")
    assert "dpa3: model deviation of 3 models every 5 steps" in log


@pytest.mark.parametrize(
    ("fixture", "keywords"),
    [
        ("in.lmp_np1_atomic", "atomic"),
        ("in.lmp_np1_relative", "relative 1.0 relative_v 1.0"),
    ],
)
def test_variants_equal_pair_deepmd(tmp_path, plugin, frozen, fixture, keywords):
    """``atomic`` (per-atom deviations in ID order) and ``relative``/``relative_v``."""
    script = _script(fixture, plugin, frozen, "devi.out")
    assert keywords in script
    _run(tmp_path, script)
    same = _compare_with_deepmd(tmp_path / "devi.out", fixture.replace("in.lmp", "lmp") + ".out")
    print(f"{fixture}: {same} of 5 rows byte-identical to DeePMD-kit's")


def test_model_with_another_graph_spec_builds_its_own(tmp_path, plugin, frozen):
    """Model 1 with e_sel 128 instead of 96 (other weights unchanged) cannot evaluate model 0's
    neighbour graph: the plugin says so and lets it build its own; model 2 evaluates model 0's.
    The file equals the Python model deviation of the same three models on the trajectory
    (model 0 drives it, as in DeePMD-kit's run: traj.lammpstrj)."""
    from dpa3.convert import convert_deepmd
    from dpa3.export import freeze
    from dpa3.model import EnergyModel
    from dpa3.model_devi import deviation_table, evaluate_ensemble, load_models, read_frames

    state = convert_deepmd(FIX / "m1.ckpt.pt", tmp_path / "m1.pt").serialize()
    state["config"]["descriptor"]["repflow"]["e_sel"] = 128
    wide = EnergyModel.deserialize(state).eval()
    assert wide.get_sel() == [128]
    models = [frozen[0], freeze(wide, tmp_path / "m1_wide.pth"), frozen[2]]
    log = _run(tmp_path, _script("in.lmp_np1", plugin, models, "devi.out"))
    assert f"model 1 ('{models[1]}') builds its own neighbour graph" in log, log[-3000:]
    assert "[5, 128, 3.5, 40" in log and "model 2 (" not in log, log[-3000:]

    ms, tmap = load_models(models)
    frames = read_frames(FIX / "traj.lammpstrj", tmap, lammps_types=["O", "H"])
    ref = deviation_table(*evaluate_ensemble(ms, frames), OUT_FREQ)
    _, _, vals = _rows(tmp_path / "devi.out")
    np.testing.assert_array_equal(vals[:, 0], ref[:, 0])
    assert np.abs(vals[:, 1:] - _rows(FIX / "lmp_np1.out")[2][:, 1:]).max() > 1e-4  # not m1's
    _assert_printed_equal(vals[:, 1:7], ref[:, 1:7], 7, "devi.out vs Python model deviation")


def test_model0_drives_the_dynamics(tmp_path, plugin, frozen):
    """The committee run follows the trajectory of model 0 alone (thermo rows identical), and
    the file has exactly the rows of steps 0, 5, ..., 20."""
    committee = _run(tmp_path, _script("in.lmp_np1", plugin, frozen, "devi.out"))
    single_dir = tmp_path / "single"
    single_dir.mkdir()
    script = _script("in.lmp_np1", plugin, frozen, "unused.out")
    script = re.sub(r"pair_style dpa3 .*", f"pair_style dpa3 {frozen[0]}", script)
    single = _run(single_dir, script)
    rows, ref = _thermo(committee), _thermo(single)
    assert len(ref) == NSTEPS // 5 + 1 and rows == ref, (rows, ref)
    _, _, vals = _rows(tmp_path / "devi.out")
    assert list(vals[:, 0]) == [0, 5, 10, 15, 20]
    assert not (single_dir / "unused.out").exists()


# ------------------------------------------------------------------ N ranks vs 1 rank


@pytest.mark.mpi
def test_ranks_equal_one_rank_to_1e10(tmp_path, plugin, mpirun, frozen):
    """``out_digits 15``: 2 and 4 ranks equal 1 rank to 1e-10 relative, before the rounding to
    DeePMD-kit's 7 digits; the 15-digit values also round to DeePMD-kit's within one unit."""
    files = {}
    for n in (1, 2, 4):
        d = tmp_path / f"np{n}"
        d.mkdir()
        _run(d, _script(f"in.lmp_np{n}", plugin, frozen, "devi.out", "out_digits 15"), n)
        files[n] = d / "devi.out"
    head, lines, one = _rows(files[1])
    assert head.split() == [
        "#",
        "step",
        "max_devi_v",
        "min_devi_v",
        "avg_devi_v",
        "max_devi_f",
        "min_devi_f",
        "avg_devi_f",
    ]
    assert len(lines[0].split()[1].split("e")[0].replace(".", "")) == 15
    assert len(head) == 12 + 6 * 27 and all(len(ln) == 12 + 6 * 27 for ln in lines)
    for n in (2, 4):
        _, _, vals = _rows(files[n])
        np.testing.assert_array_equal(vals[:, 0], one[:, 0])
        np.testing.assert_allclose(
            vals[:, 1:], one[:, 1:], rtol=1e-10, atol=0, err_msg=f"{n} ranks vs 1 rank"
        )
    _, _, ref = _rows(FIX / "lmp_np1.out")
    _assert_printed_equal(one[:, 1:], ref[:, 1:], 7, "15 digits vs DeePMD-kit")


# ------------------------------------------------------------------ only model 0 between outputs


class Raising(ToyMessagePassing):
    """A toy model that loads but fails whenever it is evaluated."""

    @torch.jit.export
    def forward_lower(
        self,
        extended_coord: torch.Tensor,
        extended_atype: torch.Tensor,
        nlist: torch.Tensor,
        mapping: torch.Tensor | None = None,
        do_atomic_virial: bool = False,
        comm_dict: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        if extended_coord.numel() > 0:
            raise RuntimeError("raising model evaluated")
        # never reached; freeze requires a message-passing model to call the exchange op
        assert comm_dict is not None
        h = _exchange(extended_coord[0, :0], extended_coord.shape[1], comm_dict)
        return {"energy": h.sum().reshape(1, 1)}


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    """A toy model, a second one with the same type map and cutoff that raises when evaluated,
    and a third with another cutoff."""
    from lmp_helpers import TYPE_MAP

    from dpa3.export import freeze

    d = tmp_path_factory.mktemp("devi_toys")
    good = freeze(ToyMessagePassing(TYPE_MAP, rcut=3.0, seed=3).eval(), d / "good.pth")
    bad = freeze(Raising(TYPE_MAP, rcut=3.0, seed=4).eval(), d / "raising.pth")
    other = freeze(ToyMessagePassing(TYPE_MAP, rcut=3.5, seed=5).eval(), d / "rcut35.pth")
    return good, bad, other


@pytest.fixture
def water(tmp_path, frames):
    system = make_system(frames["water"])
    system.write(tmp_path / "data.lmp")
    return system


def _toy_script(plugin, pair_style: str, run: str) -> str:
    return f"""plugin unload pair dpa3
plugin load {plugin}
units metal
atom_style atomic
boundary p p p
read_data data.lmp
pair_style {pair_style}
pair_coeff * * O H
neighbor 1.0 bin
velocity all create 300.0 12345
fix 1 all nve
timestep 0.0005
thermo 1
{run}
"""


def test_only_model0_between_outputs(tmp_path, plugin, toys, water):
    """Model 1 raises whenever it runs: steps 1..9 with out_freq 10 never evaluate it; step 10
    does, and the run stops with its error."""
    good, bad, _ = toys
    ps = f"dpa3 {good} {bad} out_freq 10 out_file devi.out"
    proc = L.run_input(
        tmp_path, _toy_script(plugin, ps, "reset_timestep 1\nrun 8"), timeout=TIMEOUT
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert (tmp_path / "devi.out").read_text().count("\n") == 1  # the header only
    proc = L.run_input(
        tmp_path, _toy_script(plugin, ps, "reset_timestep 1\nrun 9"), timeout=TIMEOUT
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "raising model evaluated" in out and f"model 1 ({bad})" in out, out[-3000:]


# ------------------------------------------------------------------ errors


def _fails(tmp_path, script, message, nprocs=1):
    proc = L.run_input(tmp_path, script, nprocs=nprocs, timeout=TIMEOUT)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert message in out, out[-3000:]
    assert "Segmentation" not in out and "core dumped" not in out, out[-3000:]
    return out


@pytest.fixture(scope="module")
def six_types(tmp_path_factory):
    """A converted DeePMD-kit model with another type map (6 types)."""
    from dpa3.convert import convert_deepmd
    from dpa3.export import freeze

    d = tmp_path_factory.mktemp("devi_six")
    src = REPO / "tests" / "data" / "parity" / "poly_switch" / "model.ckpt.pt"
    return freeze(convert_deepmd(src, d / "six.pt").eval(), d / "six.pth")


def test_error_type_maps(tmp_path, plugin, frozen, six_types):
    (tmp_path / "data.lmp").write_text((FIX / "data.water").read_text())
    ps = f"dpa3 {frozen[0]} {six_types} out_freq 5"
    out = _fails(tmp_path, _toy_script(plugin, ps, "run 0"), "have different type maps")
    assert str(frozen[0]) in out and str(six_types) in out and "[O, H]" in out


def test_error_cutoffs(tmp_path, plugin, toys, water):
    good, _, other = toys
    out = _fails(
        tmp_path,
        _toy_script(plugin, f"dpa3 {good} {other}", "run 0"),
        "have different cutoffs (3 and 3.5 A)",
    )
    assert str(good) in out and str(other) in out


@pytest.mark.parametrize(
    "keywords",
    ["out_freq 10", "out_file x.out", "atomic", "relative 1.0", "relative_v 1.0", "out_digits 10"],
)
def test_error_keyword_needs_several_models(tmp_path, plugin, toys, water, keywords):
    good = toys[0]
    key = keywords.split()[0]
    _fails(
        tmp_path,
        _toy_script(plugin, f"dpa3 {good} {keywords}", "run 0"),
        f"pair_style dpa3 keyword {key} needs several models",
    )


def test_error_unknown_keyword(tmp_path, plugin, toys, water):
    good, _, _ = toys
    ps = f"dpa3 {good} {good} out_freq 10 bogus 1"
    _fails(tmp_path, _toy_script(plugin, ps, "run 0"), "Unknown pair_style dpa3 keyword: bogus")
    # right after the models: neither a keyword nor an existing file
    ps = f"dpa3 {good} {good} speed 1"
    _fails(tmp_path, _toy_script(plugin, ps, "run 0"), "Unknown pair_style dpa3 keyword: speed")


def test_error_bad_values(tmp_path, plugin, toys, water):
    good, _, _ = toys
    _fails(
        tmp_path,
        _toy_script(plugin, f"dpa3 {good} {good} out_freq 0", "run 0"),
        "Illegal pair_style dpa3 keyword out_freq: 0 (must be >= 1)",
    )
    _fails(
        tmp_path,
        _toy_script(plugin, f"dpa3 {good} {good} out_freq", "run 0"),
        "missing value after keyword out_freq",
    )


@pytest.mark.parametrize("nprocs", [_ranks(1), _ranks(2)])
def test_error_unwritable_out_file(request, tmp_path, plugin, toys, water, nprocs):
    if nprocs > 1:
        request.getfixturevalue("mpirun")
    good, _, _ = toys
    path = tmp_path / "no_such_dir" / "devi.out"
    _fails(
        tmp_path,
        _toy_script(plugin, f"dpa3 {good} {good} out_file {path}", "run 0"),
        f"cannot open out_file '{path}' for writing: No such file or directory",
        nprocs,
    )


def test_error_out_file_is_a_folder(tmp_path, plugin, toys, water):
    good, _, _ = toys
    (tmp_path / "adir").mkdir()
    path = tmp_path / "adir"
    _fails(
        tmp_path,
        _toy_script(plugin, f"dpa3 {good} {good} out_file {path}", "run 0"),
        f"cannot open out_file '{path}' for writing: Is a directory",
    )


def test_error_second_model_missing(tmp_path, plugin, toys, water):
    """A misspelt second model file is named, not silently taken for a keyword."""
    good, _, _ = toys
    missing = tmp_path / "m2.pht"
    _fails(
        tmp_path,
        _toy_script(plugin, f"dpa3 {good} {missing} out_freq 10", "run 0"),
        f"Unknown pair_style dpa3 keyword: {missing} (nor an existing model file)",
    )


def test_error_more_bad_values(tmp_path, plugin, toys, water):
    good, _, _ = toys
    _fails(
        tmp_path,
        _toy_script(plugin, f"dpa3 {good} {good} out_freq ten", "run 0"),
        "Expected integer parameter instead of 'ten'",
    )
    _fails(
        tmp_path,
        _toy_script(plugin, f"dpa3 {good} {good} relative -1", "run 0"),
        "Illegal pair_style dpa3 keyword relative: -1 (must be >= 0)",
    )
    _fails(
        tmp_path,
        _toy_script(plugin, f"dpa3 {good} {good} relative_v -1", "run 0"),
        "Illegal pair_style dpa3 keyword relative_v: -1 (must be >= 0)",
    )


def test_error_atomic_without_atom_ids(tmp_path, plugin, toys, water):
    good, _, _ = toys
    script = _toy_script(plugin, f"dpa3 {good} {good} out_freq 1 atomic", "run 0")
    script = (
        script.replace("units metal", "atom_modify id no\nunits metal")
        .replace(
            "read_data data.lmp",
            "lattice sc 2.5\nregion box block 0 3 0 3 0 3\ncreate_box 2 box\n"
            "create_atoms 1 box\nmass * 1.0\nset type 1 type/fraction 2 0.5 7",
        )
        .replace("velocity all create 300.0 12345", "velocity all create 300.0 12345 loop local")
    )
    _fails(tmp_path, script, "pair_style dpa3 atomic requires atom IDs")
