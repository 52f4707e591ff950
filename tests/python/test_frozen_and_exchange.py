"""Frozen (TorchScript) model == eager model, and the exchange-op path == the mapping path.

For every DeePMD-kit parity combination (DeePMD-kit 3.2 itself cannot script ``res_avg`` and
``res_incr`` models; ours must), the converted model is frozen with ``dpa3.export.freeze`` and
evaluated through ``forward_lower`` both with a ``mapping`` (single process) and with a
self-swap ``comm_dict`` that drives the C++ ``border_exchange`` op once per layer, forward and
backward, exactly as one LAMMPS rank does.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import alloy_frame, make_model, small_cell_frame

PARITY = Path(__file__).resolve().parents[1] / "data" / "parity"
COMBOS = sorted(p.name for p in PARITY.iterdir() if (p / "model.ckpt.pt").exists())


def _lower_inputs(coord, atype, box, rcut, sel):
    from dpa3.data.neighbor import build_neighbor_batch

    nb = build_neighbor_batch(coord[None], None if box is None else box[None], rcut, sel)
    ext_atype = torch.tensor(atype)[nb.mapping]
    return nb.ext_coord, ext_atype, nb.nlist, nb.mapping


def _fold(x, mapping, nloc):
    out = torch.zeros(x.shape[0], nloc, x.shape[2], dtype=x.dtype)
    return out.index_add(1, mapping[0], x)


def _compare_paths(eager, frozen, frame, atol, frozen_context=contextlib.nullcontext):
    """``frozen_context()`` is entered around the frozen model's calls only."""
    from exchange_reference import self_swap_comm_dict

    coord, atype, box = frame
    nloc = len(atype)
    ext, ext_t, nlist, mapping = _lower_inputs(
        coord, atype, box, eager.get_rcut(), eager.get_sel()[0]
    )
    ref = eager.forward_lower(ext, ext_t, nlist, mapping, True, None)
    comm = self_swap_comm_dict(mapping, nloc, n_swaps=4)
    with frozen_context():
        got_map = frozen.forward_lower(ext, ext_t, nlist, mapping, True, None)
        got_comm = frozen.forward_lower(ext, ext_t, nlist, None, True, comm)
    assert ref["extended_force"].abs().max() > 1e-6
    for got in (got_map, got_comm):
        for k in ("energy", "atom_energy", "virial"):
            assert (got[k] - ref[k]).abs().max().item() < atol, k
        for k in ("extended_force", "extended_virial"):
            a = _fold(got[k], mapping, nloc)
            b = _fold(ref[k], mapping, nloc)
            assert (a - b).abs().max().item() < atol, k


@pytest.mark.parametrize("combo", COMBOS)
def test_frozen_equals_eager_for_every_parity_combo(combo, tmp_path):
    from dpa3.convert import load_deepmd_model
    from dpa3.export.freeze import freeze, load_frozen

    eager = load_deepmd_model(PARITY / combo / "model.ckpt.pt")
    eager.eval()
    path = freeze(eager, tmp_path / "model.pth")
    frozen, meta = load_frozen(path)
    assert meta["type_map"] == list(eager.get_type_map())
    atol = 1e-5 if "f32" in combo else 1e-12
    _compare_paths(eager, frozen, small_cell_frame(), atol)
    if not combo.startswith("water_recipe"):  # keep the float64 recipe to one small frame
        _compare_paths(eager, frozen, alloy_frame(), atol)


@pytest.mark.parametrize("combo", ["water_recipe_f32", "sequential", "compress_linear"])
def test_frozen_model_through_generic_kernels(combo, tmp_path):
    """One frozen file for every device: the same model.pth through the device-generic kernels
    (mapping and exchange paths) equals the eager model on the fused CPU kernels."""
    from dpa3 import _ops
    from dpa3.convert import load_deepmd_model
    from dpa3.export.freeze import freeze, load_frozen

    eager = load_deepmd_model(PARITY / combo / "model.ckpt.pt")
    eager.eval()
    frozen, _ = load_frozen(freeze(eager, tmp_path / "model.pth"))
    atol = 1e-5 if "f32" in combo else 1e-12
    _compare_paths(eager, frozen, small_cell_frame(), atol, _ops.generic_kernels)


def test_exchange_path_gradients_reach_the_owners_in_eager_mode():
    """Eager forward_lower with a comm_dict equals the mapping path (op autograd in Python)."""
    model = make_model(seed=21)
    _compare_paths(model, model, alloy_frame(), 1e-12)


def test_exchange_path_needs_the_schedule_to_fill_every_ghost():
    """A comm_dict whose swaps leave ghosts unfilled changes the result: the op is really used."""
    from exchange_reference import self_swap_comm_dict

    model = make_model(seed=22)
    coord, atype, box = small_cell_frame()
    ext, ext_t, nlist, mapping = _lower_inputs(coord, atype, box, 4.5, 80)
    comm = self_swap_comm_dict(mapping, len(atype), n_swaps=2)
    good = model.forward_lower(ext, ext_t, nlist, None, False, comm)["energy"]
    # point every ghost at atom 0 instead of its owner
    comm_bad = dict(comm)
    comm_bad["send_idx"] = torch.zeros_like(comm["send_idx"])
    bad = model.forward_lower(ext, ext_t, nlist, None, False, comm_bad)["energy"]
    assert abs((good - bad).item()) > 1e-6
    ref = model.forward_lower(ext, ext_t, nlist, mapping, False, None)["energy"]
    assert abs((good - ref).item()) < 1e-12


def test_freeze_refuses_without_ops(monkeypatch, tmp_path):
    import importlib

    fz = importlib.import_module("dpa3.export.freeze")
    monkeypatch.setattr("dpa3._ops.load_ops", lambda: False)
    with pytest.raises(RuntimeError, match="op library"):
        fz.freeze(make_model(seed=23), tmp_path / "m.pth")
    assert not (tmp_path / "m.pth").exists()


def test_float32_model_outputs_are_float64(tmp_path):
    model = make_model(seed=24)
    from dpa3.config import ModelConfig
    from dpa3.model import EnergyModel

    d = model.cfg.to_dict()
    d["descriptor"]["precision"] = "float32"
    d["fitting"]["precision"] = "float32"
    m32 = EnergyModel(ModelConfig.from_typed_dict(d))
    m32.load_state_dict(model.state_dict())
    m32.eval()
    coord, atype, box = alloy_frame()
    o32 = m32(torch.tensor(coord)[None], torch.tensor(atype)[None], torch.tensor(box)[None])
    o64 = model(torch.tensor(coord)[None], torch.tensor(atype)[None], torch.tensor(box)[None])
    for k in ("energy", "force", "virial"):
        assert o32[k].dtype == torch.float64
        rel = (o32[k] - o64[k]).abs().max() / o64[k].abs().max()
        assert 0 < rel < 1e-4, k  # float32 really is float32, and close
    np.testing.assert_allclose(o32["energy"].item(), o64["energy"].item(), rtol=1e-5)
