"""Clear errors, never a hang or a crash: bad model files, bad input commands, bad freezes."""

from __future__ import annotations

import json

import lmp_driver as L
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
