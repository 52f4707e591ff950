"""The inputs of examples/lammps run (a few steps, small model, plugin auto-loaded)."""

from __future__ import annotations

import re
import shutil

import lmp_driver as L
import numpy as np
import pytest
from conftest import make_model
from lmp_helpers import ROOT, mpirun, plugin  # noqa: F401

pytestmark = pytest.mark.lammps
EXAMPLES = ROOT / "examples" / "lammps"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from dpa3.export import freeze

    return freeze(make_model(seed=3), tmp_path_factory.mktemp("ex") / "model.pth")


def _plugin_dir(plugin, tmp_path):
    """A folder where LAMMPS finds dpa3plugin.so (auto-load)."""
    if (plugin.parent / "dpa3plugin.so").exists():
        return plugin.parent
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "dpa3plugin.so").symlink_to(plugin)
    return folder


def _thermo(log: str) -> np.ndarray:
    """Rows of the thermo table of the last run."""
    block = log.split("Step")[-1].split("Loop time")[0]
    rows = [line.split() for line in block.strip().splitlines()[1:]]
    return np.array([[float(x) for x in r] for r in rows if r and re.match(r"^-?\d", r[0])])


@pytest.mark.parametrize(
    "name,data,nprocs",
    [
        ("in.water", "data.water", 1),
        pytest.param("in.alloy", "data.alloy", 2, marks=pytest.mark.mpi),
    ],
)
def test_example_runs(request, tmp_path, plugin, model_file, name, data, nprocs):
    if nprocs > 1:
        request.getfixturevalue("mpirun")
    shutil.copy(EXAMPLES / data, tmp_path / data)
    script = (EXAMPLES / name).read_text().replace("thermo          10", "thermo          2")
    script = script.replace("dump            traj", "# dump traj")
    cmd_vars = f"variable model index {model_file}\nvariable nsteps index 4\n"
    proc = L.run_input(
        tmp_path,
        cmd_vars + script,
        nprocs=nprocs,
        env={"LAMMPS_PLUGIN_PATH": str(_plugin_dir(plugin, tmp_path))},
        timeout=180,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    table = _thermo(log)
    assert table.shape[0] == 3 and np.all(np.isfinite(table)), log[-2000:]
    if name == "in.alloy":
        vol = table[:, 10]  # step time temp pe etotal press pxx pyy pzz pxy vol ...
        assert np.all(vol > 0) and vol[-1] != vol[0]  # the barostat moves the box
