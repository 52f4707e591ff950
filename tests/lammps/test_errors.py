"""Clear errors, never a hang or a crash: bad model files, bad input commands, bad coordinates
(NaN/inf, overlapping atoms), bad freezes."""

from __future__ import annotations

import json
import re

import lmp_driver as L
import numpy as np
import pytest
import torch
from lmp_helpers import TYPE_MAP, make_system, mpirun, plugin  # noqa: F401
from torch import nn
from toy_model import ToyMessagePassing

TIMEOUT = 60


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    from dpa3.export import freeze

    model = ToyMessagePassing(TYPE_MAP, rcut=3.0, seed=3).eval()
    return freeze(model, tmp_path_factory.mktemp("toy") / "toy.pth")


@pytest.fixture
def water(tmp_path, frames):
    system = make_system(frames["water"])
    system.write(tmp_path / "data.lmp")
    return system


def _fails(tmp_path, script, message, nprocs=1):
    proc = L.run_input(tmp_path, script, nprocs=nprocs, timeout=TIMEOUT)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert message in out, out[-3000:]
    assert "Segmentation" not in out and "core dumped" not in out, out[-3000:]
    return out


# ---------------------------------------------------------------- model files


class Lower(nn.Module):
    """forward_lower without the getters (as if exported by hand, not by dpa3)."""

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
        return {"energy": extended_coord.sum().reshape(1, 1)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class BadOutput(ToyMessagePassing):
    """Getters fine, but forward_lower returns no energy."""

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
        return {"force": extended_coord}


def _save_script(module, path, metadata=True):
    extra = {}
    if metadata:
        extra["metadata.json"] = json.dumps({"format_version": 1})
    torch.jit.save(torch.jit.script(module), str(path), _extra_files=extra)
    return path


def _model_script(plugin, model):
    return L.make_script(plugin, model, "* * O H")


@pytest.mark.lammps
def test_missing_model_file(tmp_path, plugin, water):
    _fails(tmp_path, _model_script(plugin, tmp_path / "nope.pth"), "cannot open model file")


@pytest.mark.lammps
def test_corrupt_model_file(tmp_path, plugin, water):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a zip archive" * 100)
    _fails(tmp_path, _model_script(plugin, bad), "as a TorchScript model")


@pytest.mark.lammps
def test_truncated_model_file(tmp_path, plugin, water, toy_file):
    cut = tmp_path / "cut.pth"
    cut.write_bytes(toy_file.read_bytes()[:2000])
    _fails(tmp_path, _model_script(plugin, cut), "as a TorchScript model")


@pytest.mark.lammps
def test_not_a_dpa3_model(tmp_path, plugin, water):
    other = _save_script(nn.Linear(3, 3).double(), tmp_path / "linear.pth", metadata=False)
    _fails(tmp_path, _model_script(plugin, other), "has no method forward_lower")


@pytest.mark.lammps
def test_deepmd_kit_frozen_model_names_the_conversion(tmp_path, plugin, water):
    """A `dp --pt freeze` file (kept as a fixture, tests/deepmd_data/generate_reference.py)
    stops with the dpa3 convert-deepmd command, not a TorchScript error about its ops."""
    from pathlib import Path

    dp_frozen = Path(__file__).resolve().parents[1] / "data" / "deepmd_data" / "m0_frozen.pth"
    out = _fails(tmp_path, _model_script(plugin, dp_frozen), "is a DeePMD-kit frozen model")
    assert f"dpa3 convert-deepmd {dp_frozen} model.ckpt.pt" in out, out[-3000:]


@pytest.mark.lammps
def test_training_checkpoint_names_dpa3_freeze(tmp_path, plugin, water):
    """A torch.save file (what training writes) is named as such, with the freeze command."""
    ckpt = tmp_path / "model.ckpt.pt"
    torch.save({"model": ToyMessagePassing(TYPE_MAP).state_dict()}, ckpt)
    out = _fails(tmp_path, _model_script(plugin, ckpt), "is not a frozen model but a torch.save")
    assert f"dpa3 freeze -c {ckpt} -o model.pth" in out, out[-3000:]


@pytest.mark.lammps
def test_model_file_is_a_directory(tmp_path, plugin, water):
    (tmp_path / "models").mkdir()
    _fails(tmp_path, _model_script(plugin, tmp_path / "models"), "is a directory")


@pytest.mark.lammps
def test_model_without_getters(tmp_path, plugin, water):
    lower = _save_script(Lower(), tmp_path / "lower.pth")
    _fails(tmp_path, _model_script(plugin, lower), "has no method get_rcut")


@pytest.mark.lammps
def test_model_saved_without_freeze(tmp_path, plugin, water):
    model = ToyMessagePassing(TYPE_MAP, rcut=3.0).eval()
    raw = _save_script(model, tmp_path / "raw.pth", metadata=False)
    _fails(tmp_path, _model_script(plugin, raw), "has no metadata.json")


@pytest.mark.lammps
def test_model_from_a_newer_format(tmp_path, plugin, water):
    model = torch.jit.script(ToyMessagePassing(TYPE_MAP, rcut=3.0).eval())
    path = tmp_path / "future.pth"
    torch.jit.save(model, str(path), _extra_files={"metadata.json": '{"format_version": 99}'})
    _fails(tmp_path, _model_script(plugin, path), "has metadata format_version 99")


@pytest.mark.lammps
@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [1, 2])
def test_model_failing_at_run_time_aborts(tmp_path, plugin, mpirun, water, nprocs):
    bad = _save_script(BadOutput(TYPE_MAP, rcut=3.0).eval(), tmp_path / "bad.pth")
    _fails(
        tmp_path,
        L.make_script(plugin, bad, "* * O H", processors="2 1 1" if nprocs == 2 else None),
        "forward_lower returned no tensor 'energy'",
        nprocs=nprocs,
    )


@pytest.mark.lammps
@pytest.mark.mpi
def test_missing_model_on_two_ranks(tmp_path, plugin, mpirun, water):
    _fails(tmp_path, _model_script(plugin, tmp_path / "nope.pth"), "cannot open model file", 2)


# ---------------------------------------------------------------- input commands


@pytest.mark.lammps
def test_element_not_in_type_map(tmp_path, plugin, water, toy_file):
    script = L.make_script(plugin, toy_file, "* * O Xx")
    _fails(tmp_path, script, "element Xx (atom type 2) is not in the model's type map")


@pytest.mark.lammps
def test_wrong_number_of_elements(tmp_path, plugin, water, toy_file):
    script = L.make_script(plugin, toy_file, "* * O H Cu")
    _fails(tmp_path, script, "needs 2 element names (one per atom type, NULL to skip a type)")


@pytest.mark.lammps
def test_pair_coeff_needs_stars(tmp_path, plugin, water, toy_file):
    script = L.make_script(plugin, toy_file, "1 2 O H")
    _fails(tmp_path, script, "Pair_coeff must start with * * for pair style dpa3")


@pytest.mark.lammps
def test_newton_off(tmp_path, plugin, water, toy_file):
    script = L.make_script(plugin, toy_file, "* * O H", newton="off")
    _fails(tmp_path, script, "requires newton pair on")


@pytest.mark.lammps
def test_comm_style_tiled(tmp_path, plugin, water, toy_file):
    script = L.make_script(plugin, toy_file, "* * O H", pre="comm_style tiled")
    _fails(tmp_path, script, "requires comm_style brick")


@pytest.mark.lammps
def test_units_lj(tmp_path, plugin, water, toy_file):
    script = L.make_script(plugin, toy_file, "* * O H", units="lj")
    _fails(tmp_path, script, "does not support units lj")


@pytest.mark.lammps
def test_unknown_keyword(tmp_path, plugin, water, toy_file):
    script = L.make_script(plugin, toy_file, "* * O H", pair_extra="speed fast")
    _fails(tmp_path, script, "Unknown pair_style dpa3 keyword: speed")


@pytest.mark.lammps
def test_keyword_instead_of_model(tmp_path, plugin, water):
    # the model file forgotten: not "Unknown keyword: cpu"
    script = L.make_script(plugin, "device", "* * O H", pair_extra="cpu")
    _fails(tmp_path, script, "missing model file (the first argument, device, is a keyword")


@pytest.mark.lammps
@pytest.mark.parametrize(
    ("pre", "named"),
    [
        ("neigh_modify exclude type 1 2", "exclude type 1 2 (O H)"),
        ("group a id 1:10\nneigh_modify exclude group a a", "exclude group a a"),
        ("group a id 1:96\natom_modify first a\nneigh_modify include a", "include a leaves"),
    ],
)
def test_neigh_modify_removing_pairs(tmp_path, plugin, water, toy_file, pre, named):
    # these change every pair list, dpa3's too: the energy would silently be another one
    script = L.make_script(plugin, toy_file, "* * O H", pre=pre)
    _fails(tmp_path, script, f"pair_style dpa3: neigh_modify {named}")


@pytest.mark.lammps
def test_neigh_modify_exclude_of_a_null_type_is_allowed(tmp_path, plugin, frames, toy_file):
    # a third atom type that dpa3 does not handle (NULL; 11 H atoms moved to it), excluded
    # from the lists: the dpa3 energy is the one without the exclusion
    system = make_system(frames["water"])
    system.elements = ["O", "H", "Cu"]
    system.write(tmp_path / "data.lmp")
    energies = []
    for exclude in ["", "neigh_modify exclude type 1 3 exclude type 3 3"]:
        pre = f"set atom 150*160 type 3\n{exclude}"
        script = L.make_script(plugin, toy_file, "* * O H NULL", pre=pre)
        energies.append(L.run_lammps(tmp_path, script).energy)
    assert energies[0] == energies[1] and energies[0] != 0.0, energies


@pytest.mark.lammps
@pytest.mark.parametrize("option", ["shift", "tail"])
def test_pair_modify_shift_or_tail_warns(tmp_path, plugin, water, toy_file, option):
    script = L.make_script(plugin, toy_file, "* * O H")
    script = script.replace("neighbor 1.0 bin", f"neighbor 1.0 bin\npair_modify {option} yes")
    proc = L.run_input(tmp_path, script, timeout=TIMEOUT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert f"WARNING: pair_modify {option} yes has no effect on pair_style dpa3" in out, out[-3000:]


@pytest.mark.lammps
@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [1, 2])
@pytest.mark.parametrize(("atom", "new_type"), [(150, 1), (1, 2)])
def test_type_changed_to_or_from_null_without_reneighbouring(
    tmp_path, plugin, mpirun, water, toy_file, nprocs, atom, new_type
):
    # water: types 1 (O, atoms 1-64) and 2 (H, NULL here); `run 1 pre no` after `set type`
    # evaluates without re-neighbouring, where dpa3 decides which atoms it handles
    script = L.make_script(
        plugin,
        toy_file,
        "* * O NULL",
        processors="2 1 1" if nprocs == 2 else None,
        run=f"run 0\nset atom {atom} type {new_type}\nrun 1 pre no",
    )
    message = f"pair_style dpa3: atom ID {atom} has type {new_type}, "
    _fails(tmp_path, script, message, nprocs=nprocs)


@pytest.mark.lammps
def test_device_cuda_without_cuda(tmp_path, plugin, water, toy_file):
    # the plugin here is built with the CPU torch wheel, so `device cuda` must be refused clearly
    assert not torch.cuda.is_available()
    script = L.make_script(plugin, toy_file, "* * O H", pair_extra="device cuda")
    _fails(tmp_path, script, "built without CUDA support")


@pytest.mark.lammps
def test_device_bad_value(tmp_path, plugin, water, toy_file):
    script = L.make_script(plugin, toy_file, "* * O H", pair_extra="device gpu")
    _fails(tmp_path, script, "Illegal pair_style dpa3 keyword device: gpu (use auto, cpu or cuda)")


@pytest.mark.lammps
@pytest.mark.mpi
@pytest.mark.parametrize(
    ("extra", "line"),
    [("", "dpa3: device cpu (auto: plugin built without CUDA)\n"), ("device cpu", "device cpu\n")],
)
def test_device_auto_and_cpu_run_on_the_cpu(tmp_path, plugin, mpirun, water, toy_file, extra, line):
    # auto (the default) falls back to the CPU in this CPU-only build; printed once, by rank 0
    script = L.make_script(plugin, toy_file, "* * O H", pair_extra=extra, processors="2 1 1")
    proc = L.run_input(tmp_path, script, nprocs=2, timeout=TIMEOUT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert proc.stdout.count("dpa3: device cpu") == 1 and line in proc.stdout, proc.stdout
    assert "loaded" in proc.stdout and " on cpu " in proc.stdout, proc.stdout
    assert "ghost-feature exchange" not in proc.stdout  # printed for CUDA runs only


# ---------------------------------------------------------------- bad coordinates
# On 2 ranks (processors 2 1 1), the bad atoms are owned by rank 1: the rank that sees them
# stops the job with error->one naming the atom IDs; rank 0, waiting in the exchange, is
# aborted with it (no hang: the timeout of _fails would fail the test).


def _on_rank1(system, count):
    """Indices of ``count`` atoms well inside rank 1's half (x in [0.6 L, 0.9 L))."""
    length = system.cell[0, 0]
    x = system.coord[:, 0]
    inside = np.nonzero((x >= 0.6 * length) & (x < 0.9 * length))[0]
    assert len(inside) >= count
    return [int(i) for i in inside[:count]]


@pytest.mark.lammps
@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [1, 2])
def test_overlapping_atoms(tmp_path, plugin, mpirun, frames, toy_file, nprocs):
    system = make_system(frames["water"])
    a, b = _on_rank1(system, 2)
    system.coord[b] = system.coord[a] + np.array([0.05, 0.0, 0.0])
    system.write(tmp_path / "data.lmp")
    grid = "2 1 1" if nprocs == 2 else None
    out = _fails(
        tmp_path,
        L.make_script(plugin, toy_file, "* * O H", processors=grid),
        "Angstrom apart (less than 0.1 Angstrom): overlapping atoms",
        nprocs=nprocs,
    )
    ids = sorted(int(m) for m in re.findall(r"atoms ID (\d+) and ID (\d+) are 0.05 ", out)[0])
    assert ids == sorted([a + 1, b + 1]), out[-3000:]
    if nprocs == 2:
        assert "ERROR on proc 1: pair_style dpa3: atoms ID" in out, out[-3000:]


@pytest.mark.lammps
@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [1, 2])
def test_non_finite_position(tmp_path, plugin, mpirun, frames, toy_file, nprocs):
    # LAMMPS itself stops at re-neighbouring ("Non-numeric positions"); between two
    # re-neighbourings only the pair style sees the positions: set one to NaN, then
    # `run 1 pre no` evaluates the forces without re-neighbouring (a NaN displacement does
    # not trigger LAMMPS's distance check)
    system = make_system(frames["water"])
    system.write(tmp_path / "data.lmp")
    (bad,) = _on_rank1(system, 1)
    script = L.make_script(
        plugin,
        toy_file,
        "* * O H",
        processors="2 1 1" if nprocs == 2 else None,
        pre=f'variable nan atom "1e308*10-1e308*10"\ngroup bad id {bad + 1}',
        run="run 0\nset group bad x v_nan\nrun 1 pre no",
    )
    message = f"pair_style dpa3: atom ID {bad + 1} has a non-finite position ("
    out = _fails(tmp_path, script, message, nprocs=nprocs)
    assert "nan, " in out.split(message, 1)[1][:8], out[-3000:]
    if nprocs == 2:
        assert "ERROR on proc 1: " + message in out, out[-3000:]


# ---------------------------------------------------------------- freeze


class NoExchange(ToyMessagePassing):
    """Has message-passing layers but never exchanges (would be wrong on several ranks)."""

    def _atomic_energy(
        self,
        coord: torch.Tensor,
        atype: torch.Tensor,
        nlist: torch.Tensor,
        mapping: torch.Tensor | None,
        comm_dict: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        return self.e_bias[atype[:, : nlist.shape[1]]]


def test_freeze_needs_the_op_library(tmp_path, monkeypatch):
    from dpa3 import _ops
    from dpa3.export import freeze

    monkeypatch.setattr(_ops, "load_ops", lambda: False)
    with pytest.raises(RuntimeError, match="op library libdpa3_ops.so"):
        freeze(ToyMessagePassing(TYPE_MAP), tmp_path / "m.pth")
    assert not list(tmp_path.iterdir())


def test_freeze_rejects_model_without_getters(tmp_path):
    from dpa3 import _ops
    from dpa3.export import freeze

    if not _ops.load_ops():
        pytest.fail("dpa3 is not built")
    with pytest.raises(ValueError, match="get_rcut"):
        freeze(Lower(), tmp_path / "m.pth")
    assert not list(tmp_path.iterdir())


def test_freeze_rejects_message_passing_without_exchange(tmp_path):
    from dpa3 import _ops
    from dpa3.export import freeze

    if not _ops.load_ops():
        pytest.fail("dpa3 is not built")
    with pytest.raises(RuntimeError, match="never calls torch.ops.dpa3.border_exchange"):
        freeze(NoExchange(TYPE_MAP), tmp_path / "m.pth")
