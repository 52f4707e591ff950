"""dpa3.export: freeze / load_frozen round trip, metadata, and the exchange path of the
frozen model (what LAMMPS calls) against the eager model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import reference
import torch
from conftest import make_model
from lmp_helpers import TYPE_MAP, make_system
from toy_model import ToyMessagePassing


@pytest.fixture(scope="module", autouse=True)
def _ops():
    from dpa3 import _ops

    if not _ops.load_ops():
        pytest.fail("dpa3 is not built (no libdpa3_ops.so)")


def _models():
    return {
        "toy": ToyMessagePassing(TYPE_MAP, rcut=4.0, seed=5).eval(),
        "dpa3": make_model(seed=4),
    }


@pytest.mark.parametrize("kind", ["toy", "dpa3"])
def test_frozen_equals_eager_on_both_paths(tmp_path, frames, kind):
    from dpa3.export import freeze, load_frozen

    model = _models()[kind]
    frozen, _ = load_frozen(freeze(model, tmp_path / "m.pth"))
    s = make_system(frames["small_cell"])
    coord, atype, nlist, mapping = reference.extended_inputs(model, s.coord, s.atype, s.cell)
    nloc = nlist.shape[1]
    m = torch.from_numpy(mapping)[None]
    cd = reference.self_swap_comm_dict(mapping, nloc)
    eager = model.forward_lower(coord, atype, nlist, m, True, None)
    for out in (
        frozen.forward_lower(coord, atype, nlist, m, True, None),
        frozen.forward_lower(coord, atype, nlist, None, True, cd),
        frozen.forward_lower(coord, atype, nlist, None, True, cd),  # optimised re-run
    ):
        assert set(out) == set(eager)
        for key, value in eager.items():
            torch.testing.assert_close(out[key], value, rtol=0, atol=1e-12, msg=key)


def test_metadata(tmp_path):
    from dpa3.export import FORMAT_VERSION, freeze, load_frozen

    model = make_model(seed=1)
    model.train()
    path = freeze(model, tmp_path / "sub" / "m.pth", metadata={"note": "test", "step": 7})
    assert model.training  # left as it was
    frozen, meta = load_frozen(path)
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["type_map"] == TYPE_MAP == list(frozen.get_type_map())
    assert meta["rcut"] == pytest.approx(frozen.get_rcut())
    assert meta["n_layers"] == frozen.get_num_layers() == 2
    assert meta["n_dim"] == frozen.get_exchange_width() == 16
    assert meta["precision"] == "float64"
    assert meta["torch_version"] == torch.__version__
    assert meta["note"] == "test" and meta["step"] == 7
    assert [p.name for p in path.parent.iterdir()] == ["m.pth"]  # no temporary left


def test_metadata_cannot_override_computed_fields(tmp_path):
    from dpa3.export import freeze

    with pytest.raises(ValueError, match="rcut"):
        freeze(_models()["toy"], tmp_path / "m.pth", metadata={"rcut": 1.0})
    assert not (tmp_path / "m.pth").exists()


def test_failed_freeze_keeps_previous_file(tmp_path):
    from dpa3.export import freeze

    path = freeze(_models()["toy"], tmp_path / "m.pth")
    before = path.read_bytes()
    with pytest.raises(ValueError):
        freeze(_models()["toy"], path, metadata={"n_dim": 5})
    assert path.read_bytes() == before


def test_load_frozen_rejects_other_files(tmp_path):
    from dpa3.export import load_frozen

    with pytest.raises(FileNotFoundError):
        load_frozen(tmp_path / "missing.pth")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "lin.pth"))
    with pytest.raises(ValueError, match="metadata.json"):
        load_frozen(tmp_path / "lin.pth")


def test_load_in_fresh_process(tmp_path):
    """A new interpreter that imports only dpa3.export can load and run the file."""
    from dpa3.export import freeze

    path = freeze(_models()["toy"], tmp_path / "m.pth")
    code = (
        "import torch; from dpa3.export import load_frozen\n"
        f"m, meta = load_frozen({str(path)!r})\n"
        "x = torch.tensor([[[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]]], dtype=torch.float64)\n"
        "out = m.forward_lower(x, torch.tensor([[0, 1]]), torch.tensor([[[1], [0]]]), "
        "torch.tensor([[0, 1]]))\n"
        "print(meta['type_map'][0], float(out['energy']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("O ")
    assert np.isfinite(float(proc.stdout.split()[1]))


def test_dpa3_freeze_command(tmp_path):
    """``dpa3 freeze -c CHECKPOINT -o model.pth`` on a training checkpoint."""
    from dpa3.export import load_frozen
    from dpa3.train.checkpoint import make_checkpoint, save_checkpoint

    model = make_model(seed=6)
    ckpt = make_checkpoint(
        step=12,
        model_config=model.cfg.to_dict(),
        input_config={},
        model_state={k: v.detach().cpu() for k, v in model.state_dict().items()},
        optimizer_state=None,
        rng_state=None,
        sampler_state=None,
    )
    save_checkpoint(ckpt, str(tmp_path / "model.ckpt"), 1)
    proc = subprocess.run(
        [sys.executable, "-m", "dpa3", "freeze", "-c", str(tmp_path), "-o", "frozen.pth"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    frozen, meta = load_frozen(tmp_path / "frozen.pth")
    assert meta["step"] == 12 and meta["type_map"] == TYPE_MAP
    x = torch.tensor([[[0.0, 0.0, 0.0], [1.2, 0.3, 0.0], [0.1, 1.4, 0.2]]], dtype=torch.float64)
    t = torch.tensor([[0, 1, 1]])
    nl = torch.tensor([[[1, 2], [0, 2], [0, 1]]])
    m = torch.tensor([[0, 1, 2]])
    a = frozen.forward_lower(x, t, nl, m, True, None)
    b = model.forward_lower(x, t, nl, m, True, None)
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-12)


def test_dpa3_freeze_command_reports_bad_checkpoint(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"nothing")
    proc = subprocess.run(
        [sys.executable, "-m", "dpa3", "freeze", "-c", "bad.pt", "-o", "frozen.pth"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode != 0
    assert "bad.pt" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
