"""pair_style dpa3 with a float32 model: LAMMPS equals the Python model within 1e-4 relative."""

from __future__ import annotations

import lmp_driver as L
import numpy as np
import pytest
from conftest import evaluate, make_model
from lmp_helpers import make_system, mpirun, plugin  # noqa: F401

pytestmark = pytest.mark.lammps


def _float32_model():
    from dpa3.config import ModelConfig
    from dpa3.model import EnergyModel

    base = make_model(seed=41)
    cfg = base.cfg.to_dict()
    cfg["descriptor"]["precision"] = "float32"
    cfg["fitting"]["precision"] = "float32"
    model = EnergyModel(ModelConfig.from_typed_dict(cfg))
    model.load_state_dict(base.state_dict())
    model.eval()
    return model


@pytest.mark.parametrize("name,nprocs,grid", [("water", 1, None), ("alloy", 2, "2 1 1")])
def test_float32_model_in_lammps(request, tmp_path, plugin, frames, name, nprocs, grid):
    from dpa3.export import freeze

    if nprocs > 1:
        request.getfixturevalue("mpirun")
    model = _float32_model()
    path = freeze(model, tmp_path / "f32.pth")
    system = make_system(frames[name])
    system.write(tmp_path / "data.lmp")
    script = L.make_script(
        plugin, path, "* * " + " ".join(system.elements), boundary=system.boundary, processors=grid
    )
    res = L.run_lammps(tmp_path, script, nprocs=nprocs)
    box = None if system.cell is None else system.cell.reshape(9)
    ref = evaluate(model, system.coord, system.atype, box, atomic=True)
    fscale = np.abs(ref["force"]).max()
    assert fscale > 1e-3
    assert abs(res.energy - ref["energy"][0]) < 1e-4 * abs(ref["energy"][0])
    np.testing.assert_allclose(res.force, ref["force"], rtol=0, atol=1e-4 * fscale)
    vscale = np.abs(ref["virial"]).max()
    np.testing.assert_allclose(
        res.virial, ref["virial"][[0, 4, 8, 3, 6, 7]], rtol=0, atol=1e-4 * vscale
    )
    np.testing.assert_allclose(
        res.atom_energy,
        ref["atom_energy"][:, 0],
        rtol=0,
        atol=1e-4 * np.abs(ref["atom_energy"]).max(),
    )
