"""ASE calculator: same numbers as the model, numerical stress, frozen model, MD."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from conftest import TYPE_MAP, alloy_frame, evaluate, make_model, molecule_frame


def _atoms(frame):
    coord, atype, box = frame
    symbols = [TYPE_MAP[t] for t in atype]
    if box is None:
        return Atoms(symbols, positions=coord, pbc=False)
    return Atoms(symbols, positions=coord, cell=box.reshape(3, 3), pbc=True)


@pytest.mark.parametrize("frame", [alloy_frame(), molecule_frame()], ids=["alloy", "molecule"])
def test_calculator_matches_model(frame):
    from dpa3.calculator import DPA3Calculator

    model = make_model(seed=31)
    atoms = _atoms(frame)
    atoms.calc = DPA3Calculator(model)
    ref = evaluate(model, *frame)
    assert abs(atoms.get_potential_energy() - ref["energy"][0]) < 1e-10
    assert np.abs(atoms.get_forces() - ref["force"]).max() < 1e-10
    assert abs(atoms.get_potential_energies().sum() - ref["energy"][0]) < 1e-10


def test_stress_matches_numerical_stress():
    from ase.calculators.fd import calculate_numerical_stress

    from dpa3.calculator import DPA3Calculator

    atoms = _atoms(alloy_frame())
    atoms.calc = DPA3Calculator(make_model(seed=32))
    analytic = atoms.get_stress()
    numeric = calculate_numerical_stress(atoms, eps=1e-5)
    assert np.abs(analytic - numeric).max() < 1e-7
    assert np.abs(analytic).max() > 1e-5


def _slab(vacuum_factor: float):
    """The alloy frame as a slab: periodic along a and b, its c vector lengthened so that
    the gap between the atoms and their images along c is ``vacuum_factor`` x the cutoff."""
    from dpa3.data.neighbor import face_distances

    coord, atype, box = alloy_frame()
    cell = box.reshape(3, 3).copy()
    rcut = make_model(seed=33).get_rcut()
    span = np.ptp(np.linalg.solve(cell.T, coord.T).T[:, 2]) * face_distances(cell)[2]
    h_c = face_distances(cell)[2]
    cell[2] *= (span + vacuum_factor * rcut) / h_c
    return coord, atype, cell


def test_slab_is_evaluated_with_its_vacuum():
    """pbc=(True, True, False): the same numbers as the fully periodic cell with twice the
    vacuum (evaluated by the model directly); the stress refers to the slab cell's volume."""
    from dpa3.calculator import DPA3Calculator

    model = make_model(seed=33)
    coord, atype, cell = _slab(1.05)
    big = cell.copy()
    big[2] *= 2.0
    ref = evaluate(model, coord, atype, big.reshape(9))
    symbols = [TYPE_MAP[t] for t in atype]
    atoms = Atoms(symbols, positions=coord, cell=cell, pbc=(True, True, False))
    atoms.calc = DPA3Calculator(model)
    assert abs(atoms.get_potential_energy() - ref["energy"][0]) < 1e-10
    assert np.abs(atoms.get_forces() - ref["force"]).max() < 1e-10
    virial = ref["virial"].reshape(3, 3)
    stress = -0.5 * (virial + virial.T) / abs(np.linalg.det(cell))
    assert np.abs(atoms.get_stress() - stress.flat[[0, 4, 8, 5, 2, 1]]).max() < 1e-10
    assert np.abs(atoms.get_stress()).max() > 1e-5


def test_slab_with_too_little_vacuum_is_refused():
    from dpa3.calculator import DPA3Calculator
    from dpa3.errors import DataError

    coord, atype, cell = _slab(0.9)
    symbols = [TYPE_MAP[t] for t in atype]
    atoms = Atoms(symbols, positions=coord, cell=cell, pbc=(True, True, False))
    atoms.calc = DPA3Calculator(make_model(seed=33))
    with pytest.raises(DataError, match="vacuum along cell vector c is .* the model's cutoff"):
        atoms.get_potential_energy()
    atoms.set_pbc((True, False, False))
    with pytest.raises(DataError, match="vacuum along cell vector b"):
        atoms.get_potential_energy()


def test_truncated_neighbours_are_reported_once(caplog):
    """More neighbours than e_sel (and, of those, more than a_sel within the angle cutoff):
    one warning per calculator with the largest counts (counted here by ASE's neighbour
    list); none from a model whose selections hold every neighbour."""
    from ase.neighborlist import neighbor_list

    from dpa3.calculator import DPA3Calculator

    atoms = _atoms(alloy_frame())
    e_counts = np.bincount(neighbor_list("i", atoms, 4.5), minlength=len(atoms))
    a_counts = np.bincount(neighbor_list("i", atoms, 3.5), minlength=len(atoms))
    assert e_counts.max() > 20 and a_counts.max() > 8
    assert e_counts.max() <= make_model().sel  # the default test model truncates nothing
    for model, said in (
        (make_model(seed=34), False),
        (make_model(seed=34, e_sel=20, a_sel=8), True),
    ):
        assert model.get_rcut() == 4.5 and model.get_graph_spec()[2] == 3.5
        atoms.calc = DPA3Calculator(model)
        caplog.clear()
        with caplog.at_level("WARNING", logger="dpa3"):
            atoms.get_potential_energy()
            atoms.positions[0, 0] += 0.01
            atoms.get_potential_energy()
        msgs = [r.getMessage() for r in caplog.records if "neighbours within" in r.getMessage()]
        if not said:
            assert msgs == []
            continue
        assert len(msgs) == 1, msgs
        assert f"{e_counts.max()} neighbours within 4.5 Å, more than e_sel 20" in msgs[0]
        # of the 20 kept, those within 3.5 Å (all of them when fewer than 20 are)
        assert f"{min(a_counts.max(), 20)} within 3.5 Å, more than a_sel 8" in msgs[0]


def test_frozen_model_in_calculator_and_md(tmp_path):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from dpa3.calculator import DPA3Calculator
    from dpa3.export.freeze import freeze

    model = make_model(seed=33)
    path = freeze(model, tmp_path / "model.pth")
    atoms = _atoms(alloy_frame())
    atoms.calc = DPA3Calculator(path)
    ref = evaluate(model, *alloy_frame())
    assert abs(atoms.get_potential_energy() - ref["energy"][0]) < 1e-10
    rng = np.random.default_rng(0)
    atoms.set_velocities(rng.normal(scale=0.01, size=(len(atoms), 3)))
    e0 = atoms.get_total_energy()
    VelocityVerlet(atoms, 0.5 * units.fs).run(20)
    assert abs(atoms.get_total_energy() - e0) < 1e-3 * len(atoms)


def test_unknown_element_is_named():
    from dpa3.calculator import DPA3Calculator

    atoms = Atoms("XeO", positions=[[0, 0, 0], [1.5, 0, 0]])
    atoms.calc = DPA3Calculator(make_model(seed=34))
    with pytest.raises(ValueError, match="Xe"):
        atoms.get_potential_energy()


def test_frozen_model_runs_without_profiling_executor(tmp_path):
    """Like pair_style dpa3, the calculator runs scripted graphs unoptimised, and leaves the
    process-wide executor setting as it found it."""
    import torch

    from dpa3.calculator import DPA3Calculator
    from dpa3.export.freeze import freeze

    model = make_model(seed=35)
    atoms = _atoms(alloy_frame())
    atoms.calc = DPA3Calculator(freeze(model, tmp_path / "model.pth"))
    seen = []
    forward_lower = atoms.calc.model.forward_lower

    def spy(*args):
        seen.append(torch._C._get_graph_executor_optimize())
        return forward_lower(*args)

    atoms.calc.model = type("Spy", (), {"forward_lower": staticmethod(spy)})()
    before = torch._C._get_graph_executor_optimize()
    ref = evaluate(model, *alloy_frame())
    assert abs(atoms.get_potential_energy() - ref["energy"][0]) < 1e-10
    assert seen == [False]
    assert torch._C._get_graph_executor_optimize() == before


def test_default_device_is_auto(tmp_path, monkeypatch):
    import torch

    from dpa3.calculator import DPA3Calculator
    from dpa3.device import DeviceError
    from dpa3.export.freeze import freeze

    model = make_model(seed=34)
    path = freeze(model, tmp_path / "model.pth")
    ref = evaluate(model, *alloy_frame())
    calc = DPA3Calculator(path)  # device="auto"
    assert calc.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    atoms = _atoms(alloy_frame())
    atoms.calc = calc
    assert abs(atoms.get_potential_energy() - ref["energy"][0]) < 1e-10
    # auto leaves a module where it is; an explicit device is checked
    assert DPA3Calculator(model).device == next(model.parameters()).device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert DPA3Calculator(path).device == torch.device("cpu")
    with pytest.raises(DeviceError, match="device 'cuda': no CUDA device is visible"):
        DPA3Calculator(path, device="cuda")
    with pytest.raises(DeviceError, match="unknown device"):
        DPA3Calculator(model, device="gpu")
