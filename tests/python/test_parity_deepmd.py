"""Parity with DeePMD-kit's DPA3: converted weights give DeePMD-kit's numbers.

The fixtures under ``tests/data/parity/<combo>/`` were written by DeePMD-kit 3.2.0 itself
(``tests/parity/generate_reference.py``, re-runnable where deepmd-kit is installed): its
training checkpoint (``model.ckpt.pt``), for some combos its frozen ``frozen_model.pth``, and
``reference.npz`` with DeePMD-kit's energy, forces, virial, atomic energies and atomic virials
on a water frame, a triclinic alloy frame, a cell smaller than the cutoff and a molecule.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

PARITY = Path(__file__).resolve().parents[1] / "data" / "parity"
COMBOS = sorted(p.name for p in PARITY.iterdir() if (p / "reference.npz").exists())
KEYS = ("energy", "force", "virial", "atom_energy", "atom_virial")


def _frames(ref):
    return [str(f) for f in ref["frames"]]


def _evaluate(model, ref, frame):
    coord = torch.tensor(ref[f"{frame}.coord"], dtype=torch.float64)
    atype = torch.tensor(ref[f"{frame}.atype"], dtype=torch.long)
    key = f"{frame}.box"
    box = torch.tensor(ref[key], dtype=torch.float64) if key in ref.files else None
    out = model(coord, atype, box, do_atomic_virial=True)
    return {k: out[k].detach().numpy() for k in KEYS}


def _check(model, ref, combo):
    f32 = "f32" in combo  # a float32 descriptor or fitting net
    for frame in _frames(ref):
        out = _evaluate(model, ref, frame)
        for k in KEYS:
            want = ref[f"{frame}.{k}"].reshape(out[k].shape)
            err = np.abs(out[k] - want).max()
            if f32:  # float32 recipe: relative to the magnitude of the quantity
                tol = 1e-5 * max(np.abs(want).max(), 1.0)
            else:
                tol = 1e-10
            assert err < tol, f"{combo}/{frame}/{k}: max |diff| {err:.3e} > {tol:.1e}"


def test_fixture_set_is_complete():
    """All 19 option combinations of the fixture set are present and parametrise the tests
    (guards against a silently shrunken set); the list is written out here on purpose: the
    recipe options, then one combination per further option, each with another activation."""
    needed = {
        "water_recipe",
        "water_recipe_f32",
        "poly_switch",
        "nonsmooth_edge",
        "compress_linear",
        "multi_edge",
        "dynamic_sel",
        "sequential",
        "res_avg",
        "res_incr",
        "no_angle_update",
        "concat_tebd_bias",
        "no_optim_update",
        "no_loc_mapping",
        "compress_rate2",
        "compress_e_rate1",
        "axis_neuron6",
        "dynamic_sel_factor4",
        "desc_f32_fit_f64",
    }
    assert set(COMBOS) == needed, (sorted(needed - set(COMBOS)), sorted(set(COMBOS) - needed))
    manifest = json.loads((PARITY / "manifest.json").read_text())
    assert needed <= set(manifest["combos"]), sorted(needed - set(manifest["combos"]))


@pytest.mark.parametrize("combo", COMBOS)
def test_checkpoint_parity(combo):
    from dpa3.convert import load_deepmd_model

    model = load_deepmd_model(PARITY / combo / "model.ckpt.pt")
    model.eval()
    ref = np.load(PARITY / combo / "reference.npz")
    assert np.abs(model.out_bias.numpy()).max() > 0  # the random non-zero bias carried over
    _check(model, ref, combo)


@pytest.mark.parametrize("combo", [c for c in COMBOS if (PARITY / c / "frozen_model.pth").exists()])
def test_frozen_model_parity(combo):
    from dpa3.convert import load_deepmd_model

    # reading the archive's storages must not go through torch's deprecated TypedStorage API
    # (which warns, and will go away): any warning here is an error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = load_deepmd_model(PARITY / combo / "frozen_model.pth")
    model.eval()
    _check(model, np.load(PARITY / combo / "reference.npz"), combo)


@pytest.mark.parametrize(
    "combo,mode",
    [(c, "eval") for c in COMBOS]
    # training mode keeps every [angles, width] intermediate for the double backward: the full
    # water recipes (6 layers, 192 atoms) need ~20 GB that way, so they are checked in eval only
    + [(c, "train") for c in COMBOS if not c.startswith("water_recipe")],
)
def test_generic_kernels_parity(combo, mode):
    """Through the device-generic kernels (what the CUDA build runs), evaluation (angle block
    kernel) and training mode (forces with create_graph) give DeePMD-kit's numbers."""
    from dpa3 import _ops
    from dpa3.convert import load_deepmd_model

    model = load_deepmd_model(PARITY / combo / "model.ckpt.pt")
    model.train(mode == "train")
    ref = np.load(PARITY / combo / "reference.npz")
    with _ops.generic_kernels():
        _check(model, ref, combo)


# The 192-atom water frame in training mode with the full recipes is slow on 2 cores (and
# needed ~20 GB when the composite angle path kept every [angles, width] intermediate for the
# double backward); their other three frames (alloy, small cell, molecule) run the same code
# paths.
_TRAIN_SKIP_FRAMES = {"water_recipe": {"water"}, "water_recipe_f32": {"water"}}


@pytest.mark.parametrize("combo", COMBOS)
def test_training_mode_parity(combo):
    """Training mode (forces with create_graph through the twice-differentiable fused angle
    kernel, as ``dpa3 train`` evaluates the model) gives DeePMD-kit's numbers and agrees with
    evaluation mode to 1e-10 in float64, for every parity combination."""
    from dpa3.convert import load_deepmd_model

    model = load_deepmd_model(PARITY / combo / "model.ckpt.pt")
    ref = np.load(PARITY / combo / "reference.npz")
    f32 = "f32" in combo  # a float32 descriptor or fitting net
    frames = [f for f in _frames(ref) if f not in _TRAIN_SKIP_FRAMES.get(combo, set())]
    assert len(frames) >= 3
    for frame in frames:
        model.train(True)
        train = _evaluate(model, ref, frame)
        model.eval()
        evaluation = _evaluate(model, ref, frame)
        for k in ("energy", "force", "virial"):
            want = ref[f"{frame}.{k}"].reshape(train[k].shape)
            scale = max(np.abs(want).max(), 1.0)
            tol_ref = 1e-5 * scale if f32 else 1e-10
            tol_modes = 1e-5 * scale if f32 else 1e-10
            err = np.abs(train[k] - want).max()
            assert err < tol_ref, f"{combo}/{frame}/{k}: train vs DeePMD-kit {err:.3e}"
            err = np.abs(train[k] - evaluation[k]).max()
            assert err < tol_modes, f"{combo}/{frame}/{k}: train vs eval {err:.3e}"


def test_convert_cli_writes_a_checkpoint_that_evaluates_identically(tmp_path):
    from dpa3.cli.main import main
    from dpa3.export.load import load_model

    src = PARITY / "poly_switch" / "model.ckpt.pt"
    out = tmp_path / "converted.pt"
    assert main(["convert-deepmd", str(src), str(out)]) == 0
    model = load_model(out)
    model.eval()
    _check(model, np.load(PARITY / "poly_switch" / "reference.npz"), "poly_switch")


def test_convert_refuses_other_descriptors(tmp_path):
    from dpa3.config import ConfigError
    from dpa3.convert import load_deepmd_model

    ckpt = torch.load(PARITY / "poly_switch" / "model.ckpt.pt", weights_only=False)
    ckpt["model"]["_extra_state"]["model_params"]["descriptor"]["type"] = "se_e2_a"
    bad = tmp_path / "se_e2_a.pt"
    torch.save(ckpt, bad)
    with pytest.raises(ConfigError, match="se_e2_a"):
        load_deepmd_model(bad)
