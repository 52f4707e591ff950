"""Shared test factories: small DPA3 configs and real frames from the bundled data."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
TYPE_MAP = ["O", "H", "Cu", "Al", "Ni", "C"]

SMALL_MODEL = {
    "type_map": TYPE_MAP,
    "descriptor": {
        "type": "dpa3",
        "precision": "float64",
        "activation_function": "silut:3.0",
        "repflow": {
            "n_dim": 16,
            "e_dim": 8,
            "a_dim": 8,
            "nlayers": 2,
            "e_rcut": 4.5,
            "e_rcut_smth": 3.5,
            "e_sel": 80,
            "a_rcut": 3.5,
            "a_rcut_smth": 3.0,
            "a_sel": 30,
            "axis_neuron": 4,
            "smooth_edge_update": True,
            "a_compress_rate": 1,
            "a_compress_e_rate": 2,
            "a_compress_use_split": True,
        },
    },
    "fitting_net": {"neuron": [24, 24], "precision": "float64", "activation_function": "tanh"},
}


def small_model_dict(**repflow) -> dict:
    """The small float64 test model section, with ``repflow`` overrides."""
    d = copy.deepcopy(SMALL_MODEL)
    d["descriptor"]["repflow"].update(repflow)
    return d


def make_model(seed: int = 0, **repflow):
    """A small float64 EnergyModel with random, non-trivial parameters and out_bias."""
    from dpa3.config import ModelConfig
    from dpa3.model import EnergyModel

    torch.manual_seed(seed)
    model = EnergyModel(ModelConfig.from_dict(small_model_dict(**repflow)))
    with torch.no_grad():
        for p in model.parameters():  # move residuals/idt away from constants
            p.add_(0.05 * torch.randn_like(p))
    model.set_out_bias(np.linspace(-3.0, 2.0, len(TYPE_MAP)))
    model.eval()
    return model


def _load_system(path: Path, frame: int):
    type_map = (path / "type_map.raw").read_text().split()
    s = path / "set.000"
    coord = np.load(s / "coord.npy")[frame].reshape(-1, 3).astype(np.float64)
    if (s / "real_atom_types.npy").exists():
        types = np.load(s / "real_atom_types.npy")[frame].astype(int)
    else:
        types = np.loadtxt(path / "type.raw", dtype=int).reshape(-1)
    box = np.load(s / "box.npy")[frame].astype(np.float64) if (s / "box.npy").exists() else None
    atype = np.array([TYPE_MAP.index(type_map[t]) for t in types])
    return coord, atype, box


def water_frame(n_molecules: int | None = None):
    """A 192-atom liquid water frame (or the first ``n_molecules`` ... kept whole)."""
    coord, atype, box = _load_system(DATA / "water" / "data_0", 0)
    return coord, atype, box


def alloy_frame():
    """A triclinic Cu-Al-Ni frame with virial labels (31 atoms)."""
    return _load_system(DATA / "alloy-emt-CuAlNi" / "natoms_31", 0)


def molecule_frame():
    """The non-periodic 7-atom C1H4O2 molecule."""
    return _load_system(DATA / "molecules-nopbc" / "C1H4O2", 0)


def small_cell_frame():
    """3 atoms in a skewed cell smaller than the cutoff (many self-images)."""
    box = np.array([2.9, 0.0, 0.0, 0.7, 3.1, 0.0, 0.4, -0.5, 3.3])
    frac = np.array([[0.1, 0.2, 0.3], [0.55, 0.45, 0.7], [0.8, 0.9, 0.15]])
    coord = frac @ box.reshape(3, 3)
    return coord, np.array([2, 3, 4]), box


@pytest.fixture(scope="session")
def frames():
    """Named test frames: ``(coord [N,3], atype [N], box [9] or None)``."""
    return {
        "water": water_frame(),
        "alloy": alloy_frame(),
        "small_cell": small_cell_frame(),
        "molecule": molecule_frame(),
    }


def evaluate(model, coord, atype, box, atomic: bool = False):
    """Run ``model.forward`` on one frame; returns numpy arrays without the frame axis."""
    c = torch.tensor(coord, dtype=torch.float64).reshape(1, -1, 3)
    t = torch.tensor(atype, dtype=torch.long).reshape(1, -1)
    b = None if box is None else torch.tensor(box, dtype=torch.float64).reshape(1, 9)
    out = model(c, t, b, do_atomic_virial=atomic)
    return {k: v.detach().numpy()[0] for k, v in out.items()}


@pytest.fixture(scope="session")
def malloc_shim(tmp_path_factory) -> Path:
    """A library to ``LD_PRELOAD`` that defines ``malloc`` (forwarding to glibc's
    ``__libc_malloc``): a stand-in for another allocator."""
    return _compile_shim(tmp_path_factory, "malloc_shim", "")


@pytest.fixture(scope="session")
def tcmalloc_shim(tmp_path_factory) -> Path:
    """Like :func:`malloc_shim`, and it exports gperftools tcmalloc's release-rate flag (a
    double of that symbol, 1.0 as tcmalloc's default): a stand-in for tcmalloc."""
    from dpa3.malloc import TCMALLOC_RELEASE_RATE

    return _compile_shim(
        tmp_path_factory, "tcmalloc_shim", f"double {TCMALLOC_RELEASE_RATE} = 1.0;\n"
    )


def _compile_shim(tmp_path_factory, name: str, extra: str) -> Path:
    import subprocess

    work = tmp_path_factory.mktemp(name)
    src = work / "shim.c"
    src.write_text(
        "#include <stddef.h>\n"
        "extern void *__libc_malloc(size_t);\n"
        "void *malloc(size_t n) { return __libc_malloc(n); }\n" + extra
    )
    lib = work / f"lib{name}.so"
    cc = subprocess.run(
        ["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], capture_output=True, text=True
    )
    assert cc.returncode == 0, cc.stderr
    return lib
