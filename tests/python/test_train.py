"""Trainer: short runs, restart identity, atomic checkpoints, interrupts, fine-tuning."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dpa3.config._base import ConfigError
from dpa3.config.train import InputConfig
from dpa3.train.checkpoint import load_checkpoint
from dpa3.train.trainer import Trainer, model_forward

DATA = Path(__file__).resolve().parents[2] / "examples" / "data"
MOLECULE = str(DATA / "molecules-nopbc" / "C1H4O2")
WATER = [str(DATA / "water" / f"data_{i}") for i in range(4)]


def tiny_input(systems=None, type_map=("C", "H", "O"), steps=6, **training) -> dict:
    """A tiny DPA3 input (nlayers 1, n_dim 16, e_dim 8, a_dim 8, e_sel 40, a_sel 10)."""
    d = {
        "model": {
            "type_map": list(type_map),
            "descriptor": {
                "type": "dpa3",
                "precision": "float64",
                "activation_function": "silut:10.0",
                "seed": 1,
                "repflow": {
                    "n_dim": 16,
                    "e_dim": 8,
                    "a_dim": 8,
                    "nlayers": 1,
                    "e_rcut": 4.0,
                    "e_rcut_smth": 3.5,
                    "e_sel": 40,
                    "a_rcut": 3.0,
                    "a_rcut_smth": 2.5,
                    "a_sel": 10,
                    "a_compress_rate": 1,
                    "a_compress_e_rate": 2,
                    "a_compress_use_split": True,
                    "smooth_edge_update": True,
                    "edge_init_use_dist": True,
                    "use_exp_switch": True,
                },
            },
            "fitting_net": {"neuron": [16, 16], "precision": "float64", "seed": 1},
            "data_stat_nbatch": 4,
        },
        "learning_rate": {"type": "exp", "start_lr": 2e-3, "stop_lr": 1e-4, "decay_steps": 2},
        "loss": {
            "type": "ener",
            "start_pref_e": 0.2,
            "limit_pref_e": 20,
            "start_pref_f": 100,
            "limit_pref_f": 60,
        },
        "optimizer": {"type": "AdamW", "weight_decay": 0.001},
        "training": {
            "training_data": {"systems": systems or [MOLECULE], "batch_size": 2},
            "numb_steps": steps,
            "seed": 10,
            "disp_freq": 2,
            "save_freq": 3,
            "gradient_max_norm": 5.0,
            "disp_training": True,
            "time_training": True,
            "profiling": False,
            "tensorboard": False,
            "_comment": "DeePMD-kit keys that are harmless",
        },
    }
    d["training"].update(training)
    return d


def read_lcurve(path) -> list[list[str]]:
    return [ln.split() for ln in Path(path).read_text().splitlines() if not ln.startswith("#")]


# ------------------------------------------------------------------------------- config
def test_input_config_errors():
    d = tiny_input()
    d["training"]["disp_frq"] = 1
    with pytest.raises(ConfigError, match="did you mean 'disp_freq'"):
        InputConfig.from_dict(d)
    d = tiny_input()
    d["trainig"] = {}
    with pytest.raises(ConfigError, match="did you mean 'training'"):
        InputConfig.from_dict(d)
    d = tiny_input()
    d["training"]["training_data"]["batch_szie"] = 1
    with pytest.raises(ConfigError, match="training.training_data.batch_szie"):
        InputConfig.from_dict(d)
    d = tiny_input()
    d["optimizer"] = {"type": "LKF"}
    with pytest.raises(ConfigError, match="LKF"):
        InputConfig.from_dict(d)
    d = tiny_input()
    del d["training"]["numb_steps"]
    d["training"]["stop_batch"] = 7  # DeePMD-kit alias
    assert InputConfig.from_dict(d).training.numb_steps == 7
    d["training"]["opt_type"] = "Adam"
    d.pop("optimizer")
    assert InputConfig.from_dict(d).optimizer.type == "Adam"


def test_fix_stat_std_zero_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tiny_input()
    d["model"]["descriptor"]["repflow"]["fix_stat_std"] = 0.0
    with pytest.raises(ConfigError, match="fix_stat_std"):
        Trainer(d)


def test_auto_sel_resolved_from_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tiny_input(steps=0)
    d["model"]["descriptor"]["repflow"].update(e_sel="auto", a_sel="auto:1.0")
    t = Trainer(d)
    rf = t.model_cfg.descriptor.repflow
    assert rf.e_sel % 4 == 0 and 6 <= rf.e_sel <= 8  # a 7-atom molecule
    assert rf.a_sel % 4 == 0 and rf.a_sel <= rf.e_sel
    t.run()
    ck = load_checkpoint(tmp_path / "model.ckpt.pt")
    assert ck["step"] == 0
    assert ck["input"]["model"]["descriptor"]["repflow"]["e_sel"] == rf.e_sel
    with pytest.raises(ConfigError, match="skip-neighbor-stat"):
        Trainer(d, skip_neighbor_stat=True)


# ------------------------------------------------------------------------------- training
def test_short_water_training_loss_drops(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tiny_input(
        WATER[:1],
        ("O", "H"),
        steps=8,
        disp_freq=4,
        save_freq=4,
        max_ckpt_keep=2,
        validation_data={"systems": [WATER[3]], "batch_size": 1, "numb_btch": 1},
    )
    d["learning_rate"].update(start_lr=1e-2, stop_lr=1e-3, decay_steps=4)
    d["loss"].update(start_pref_e=1, limit_pref_e=1, start_pref_f=1, limit_pref_f=1)
    d["training"]["training_data"]["batch_size"] = 1
    t = Trainer(d)
    probe = [t.train_data.batchers[0].next(np.random.default_rng(0)) for _ in range(2)]

    def probe_loss() -> float:
        t.model.eval()
        vals = [float(t.loss(model_forward(t.model, b), b, 1e-2)[0].detach()) for b in probe]
        t.model.train()
        return float(np.mean(vals))

    before = probe_loss()
    t.run()
    after = probe_loss()
    assert after < 0.5 * before
    rows = read_lcurve(tmp_path / "lcurve.out")
    header = (tmp_path / "lcurve.out").read_text().splitlines()[0].split()
    assert header == [
        "#",
        "step",
        "rmse_val",
        "rmse_trn",
        "rmse_e_val",
        "rmse_e_trn",
        "rmse_f_val",
        "rmse_f_trn",
        "lr",
    ]
    assert [int(r[0]) for r in rows] == [1, 4, 8]
    assert sorted(p.name for p in tmp_path.glob("model.ckpt-*.pt")) == [
        "model.ckpt-4.pt",
        "model.ckpt-8.pt",
    ]
    assert (tmp_path / "checkpoint").read_text().strip() == "model.ckpt-8.pt"
    assert os.readlink(tmp_path / "model.ckpt.pt") == "model.ckpt-8.pt"
    assert not list(tmp_path.glob("*.hdf5"))  # no stat_file requested


def test_restart_is_bit_identical(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    d = tiny_input(steps=6, save_freq=3, disp_freq=1)
    monkeypatch.chdir(a)
    Trainer(d).run()
    monkeypatch.chdir(b)
    t = Trainer(d, restart=str(a / "model.ckpt-3.pt"))
    assert t.start_step == 3
    t.run()
    full = load_checkpoint(a / "model.ckpt-6.pt")
    rest = load_checkpoint(b / "model.ckpt-6.pt")
    for k, v in full["model"].items():
        assert torch.equal(v, rest["model"][k]), k
    for k, st in full["optimizer"]["state"].items():
        for name, v in st.items():
            assert torch.equal(
                torch.as_tensor(v), torch.as_tensor(rest["optimizer"]["state"][k][name])
            ), (k, name)
    assert read_lcurve(a / "lcurve.out")[3:] == read_lcurve(b / "lcurve.out")


def test_keyboard_interrupt_saves_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = Trainer(tiny_input(steps=10, save_freq=100))
    real = t.train_step
    calls = []

    def step(i):
        calls.append(i)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(i)

    t.train_step = step
    with pytest.raises(KeyboardInterrupt):
        t.run()
    ck = load_checkpoint(tmp_path)
    assert ck["step"] == 2
    t2 = Trainer(tiny_input(steps=4, save_freq=100), restart=str(tmp_path / "model.ckpt-2.pt"))
    assert t2.start_step == 2
    t2.run()
    assert load_checkpoint(tmp_path)["step"] == 4


def test_stat_file_written_and_reused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tiny_input(steps=0, stat_file="./dpa3.hdf5")
    t = Trainer(d)
    assert (tmp_path / "dpa3.hdf5").is_file()
    bias = t.model.out_bias.clone()
    assert bias[0] != 0  # carbon bias from the lstsq on molecule energies
    d2 = copy.deepcopy(d)
    d2["training"]["seed"] = 99  # other stat sample, but the cache wins
    assert torch.equal(Trainer(d2).model.out_bias, bias)


def test_restart_with_another_architecture_warns(tmp_path, monkeypatch, caplog):
    """--restart / --init-model continue the checkpoint's model: an input that describes
    another one is named option by option (the same input: no warning; "auto" selections and
    seeds are not differences)."""
    monkeypatch.chdir(tmp_path)
    pre = tiny_input(WATER[:1], ("O", "H"), steps=1)
    pre["training"]["training_data"]["batch_size"] = 1
    Trainer(pre).run()
    ckpt = str(tmp_path / "model.ckpt-1.pt")

    def warnings_for(d: dict, **how) -> list[str]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="dpa3"):
            Trainer(d, **how)
        return [r.getMessage() for r in caplog.records if "in the checkpoint" in r.getMessage()]

    same = copy.deepcopy(pre)
    same["model"]["descriptor"]["repflow"]["e_sel"] = "auto"
    same["model"]["descriptor"]["seed"] = 7
    assert warnings_for(same, init_model=ckpt) == []
    other = copy.deepcopy(pre)
    other["model"]["descriptor"]["repflow"]["n_dim"] = 8
    other["model"]["fitting_net"]["neuron"] = [16]
    got = warnings_for(other, restart=ckpt)
    assert got == [
        "model.descriptor.repflow.n_dim is 8 in the input but 16 in the checkpoint: "
        "its model is used",
        "model.fitting_net.neuron is (16,) in the input but (16, 16) in the checkpoint: "
        "its model is used",
    ]


def test_init_model_and_finetune_new_type_map(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pre = tiny_input(WATER[:1], ("O", "H"), steps=2)
    pre["training"]["training_data"]["batch_size"] = 1
    Trainer(pre).run()
    old = load_checkpoint(tmp_path / "model.ckpt-2.pt")
    init = Trainer(pre, init_model=str(tmp_path / "model.ckpt-2.pt"))
    assert init.start_step == 0
    for k, v in init.model.state_dict().items():
        assert torch.equal(v, old["model"][k])

    ft = tiny_input(steps=1, type_map=("C", "H", "O"))
    t = Trainer(ft, finetune=str(tmp_path / "model.ckpt-2.pt"))
    new = t.model.state_dict()
    from dpa3.train.finetune import type_dims

    dims = type_dims(t.factory, t.model_cfg)
    n_typed = 0
    for k, v in new.items():
        if k == "out_bias" or k == "out_std":
            continue
        if not dims[k]:
            assert torch.equal(v, old["model"][k]), k
        else:
            n_typed += 1
            d0 = dims[k][0]
            for name, oi in (("O", 0), ("H", 1)):
                ni = ["C", "H", "O"].index(name)
                assert torch.equal(v.select(d0, ni), old["model"][k].select(d0, oi)), k
    assert n_typed >= 1  # at least the type embedding
    # the energy bias was re-fitted on the molecule: C, H, O all changed
    ob = old["model"]["out_bias"]
    nb = t.model.out_bias
    assert not math.isclose(float(nb[2]), float(ob[0]))
    t.run()


# ------------------------------------------------------------------------------- examples
def _example_dir(tmp_path: Path, name: str) -> Path:
    root = tmp_path / "examples"
    (root / name).mkdir(parents=True)
    (root / "data").symlink_to(DATA)
    src = Path(__file__).resolve().parents[2] / "examples" / name / "input.json"
    (root / name / "input.json").write_text(src.read_text())
    return root / name


@pytest.mark.parametrize("name", ["water", "alloy", "molecule"])
def test_example_inputs_are_accepted_unchanged(tmp_path, monkeypatch, name):
    wd = _example_dir(tmp_path, name)
    monkeypatch.chdir(wd)
    data = json.loads((wd / "input.json").read_text())
    # integer e_sel/a_sel need no neighbour scan (the alloy/molecule "auto" values do)
    t = Trainer(data, skip_neighbor_stat=name == "water")
    assert t.numb_steps == data["training"]["numb_steps"]
    if name == "alloy":
        assert t.loss.cfg.has_v and len(t.train_data.systems) == 5
        assert all(s.has_label("virial") for s in t.train_data.systems)
    if name == "molecule":
        assert t.train_data.systems[0].box is None
        rf = t.model_cfg.descriptor.repflow
        assert isinstance(rf.e_sel, int) and isinstance(rf.a_sel, int)


# a real training step of the production configs (alloy example, full water recipe): ~25 s of
# CPU and ~4 GB of memory together, so they run in CI
@pytest.mark.parametrize("name", ["alloy", "molecule"])
def test_small_examples_train_one_step(tmp_path, monkeypatch, name):
    wd = _example_dir(tmp_path, name)
    monkeypatch.chdir(wd)
    data = json.loads((wd / "input.json").read_text())
    t = Trainer(data)
    loss, metrics, lr = t.train_step(0)
    assert math.isfinite(loss) and lr == data["learning_rate"]["start_lr"]
    if name == "alloy":
        assert math.isfinite(metrics["rmse_v"])


def test_water_recipe_trains_one_step(tmp_path, monkeypatch):
    wd = _example_dir(tmp_path, "water")
    monkeypatch.chdir(wd)
    t = Trainer(json.loads((wd / "input.json").read_text()), skip_neighbor_stat=True)
    loss, _, _ = t.train_step(0)
    assert math.isfinite(loss)


def test_training_sorts_the_neighbour_list_once(tmp_path, monkeypatch):
    """A training step builds sorted lists in the data layer and never re-sorts them in the
    model; the result equals the model's own sorting path (forward_lower on a shuffled, wider,
    uncut list)."""
    import dpa3.model.model as model_module
    from dpa3.data.loader import make_batch
    from dpa3.data.neighbor import build_neighbor_batch

    monkeypatch.chdir(tmp_path)
    t = Trainer(tiny_input(steps=1))
    calls = []
    real = model_module.format_nlist
    monkeypatch.setattr(model_module, "format_nlist", lambda *a: calls.append(1) or real(*a))
    t.train_step(0)
    assert calls == []

    system = t.train_data.systems[0]
    batch = make_batch(system, np.array([0, 5]))
    t.model.eval()
    a = model_forward(t.model, batch)
    rc = t.model_cfg.descriptor.repflow.e_rcut
    nb = build_neighbor_batch(batch.coord, batch.box, rc + 1.0, 200)  # wider, beyond rcut
    shuffled = nb.nlist[:, :, torch.randperm(200, generator=torch.Generator().manual_seed(0))]
    ext_atype = torch.gather(batch.atype, 1, nb.mapping)
    low = t.model.forward_lower(nb.ext_coord, ext_atype, shuffled, nb.mapping)
    assert calls == [1]
    torch.testing.assert_close(a["energy"], low["energy"], rtol=1e-12, atol=1e-12)
    force = torch.zeros_like(batch.coord).scatter_add(
        1, nb.mapping.unsqueeze(-1).expand(-1, -1, 3), low["extended_force"]
    )
    torch.testing.assert_close(a["force"], force, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a["virial"], low["virial"], rtol=1e-12, atol=1e-12)


def test_numb_epoch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tiny_input()
    del d["training"]["numb_steps"]
    d["training"]["numb_epoch"] = 0.01
    t = Trainer(d)
    assert t.numb_steps == math.ceil(0.01 * t.train_data.total_batches)  # 781 batches


def test_change_bias_after_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = Trainer(tiny_input(steps=2, change_bias_after_training=True))
    t.run()
    from dpa3.data.stats import fit_energy_bias, stat_frames
    from dpa3.train.finetune import predict_energies

    batches = t._stat_batches()
    preds = predict_energies(t.model, batches, model_forward)
    e, c = stat_frames(batches, 3)
    resid = e - np.concatenate([p for per in preds for p in per])
    delta, _ = fit_energy_bias(resid, c)
    np.testing.assert_allclose(delta, 0.0, atol=1e-6)  # bias already re-fitted
    assert load_checkpoint(tmp_path)["step"] == 2


def test_virial_loss_on_alloy_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    alloy = str(DATA / "alloy-emt-CuAlNi" / "natoms_31")
    d = tiny_input([alloy], ("Cu", "Al", "Ni"), steps=1)
    d["loss"].update(start_pref_v=0.02, limit_pref_v=1)
    t = Trainer(d, skip_neighbor_stat=True)
    _loss, metrics, _ = t.train_step(0)
    assert list(metrics) == ["rmse", "rmse_e", "rmse_f", "rmse_v"]
    assert math.isfinite(metrics["rmse_v"]) and metrics["rmse_v"] > 0


def test_ctrl_c_stops_cleanly_after_the_step(tmp_path, monkeypatch):
    import signal

    monkeypatch.chdir(tmp_path)
    t = Trainer(tiny_input(steps=10, save_freq=100))
    real = t.train_step

    def step(i):
        if i == 1:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step: deferred
        return real(i)

    t.train_step = step
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup/&
    with pytest.raises(KeyboardInterrupt):
        t.run()
    assert load_checkpoint(tmp_path)["step"] == 2  # the interrupted step completed
    assert signal.getsignal(signal.SIGINT) is before  # the handler found is restored


# ------------------------------------------------------------------------------- typed input
def test_model_section_keys_reach_the_typed_config():
    from dpa3.config.model import AutoSel
    from dpa3.config.model_section import BiasAdjustMode

    d = tiny_input()
    d["model"].update(finetune_head="mol", bias_adjust_mode="set-by-statistic")
    d["model"]["descriptor"]["repflow"]["e_sel"] = "auto:1.5"
    m = InputConfig.from_dict(d).model
    assert m.finetune_head == "mol" and m.bias_adjust_mode is BiasAdjustMode.SET
    assert m.sel("e_sel") == AutoSel(1.5) and m.sel("a_sel") == 10
    assert m.resolve(44, 10).descriptor.repflow.e_sel == 44
    with pytest.raises(ConfigError, match=r"a_sel \(10\) must not exceed e_sel \(8\)"):
        m.resolve(8, 10)
    assert InputConfig.from_dict(tiny_input()).model.bias_adjust_mode is BiasAdjustMode.CHANGE
    # every model key is checked when the input is parsed, before any data is read
    for key, value, match in (
        ("bias_adjust_mode", "change", r"'model\.bias_adjust_mode' must be one of"),
        ("finetune_head", 3, r"'model\.finetune_head' must be a string"),
        ("e_sel", "automatic", r"'model\.descriptor\.repflow\.e_sel' = 'automatic'"),
        ("e_sel", "auto:-1", "the factor must be positive"),
        ("a_rcut_smth", 3.5, "a_rcut_smth"),
        ("nlayer", 1, r"'model\.descriptor\.repflow\.nlayer'"),
    ):
        d = tiny_input()
        d["model"]["descriptor"]["repflow"]["e_sel"] = "auto"
        where = d["model"] if key in ("bias_adjust_mode", "finetune_head") else None
        (where or d["model"]["descriptor"]["repflow"])[key] = value
        with pytest.raises(ConfigError, match=match):
            InputConfig.from_dict(d)


def test_trainer_uses_the_parsed_config_not_the_dict(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tiny_input(steps=1)
    d["model"]["descriptor"]["repflow"]["a_sel"] = "auto"
    cfg = InputConfig.from_dict(d)
    original = copy.deepcopy(d)
    # edits after parsing must not reach training
    d["model"]["type_map"].append("Cu")
    d["model"]["descriptor"]["repflow"].update(e_sel=12, nlayers=3)
    d["model"]["fitting_net"]["neuron"] = [4]
    d["training"]["numb_steps"] = 99
    t = Trainer(cfg)
    assert t.model_cfg.type_map == ("C", "H", "O") and t.numb_steps == 1
    rf = t.model_cfg.descriptor.repflow
    assert (rf.e_sel, rf.nlayers, t.model_cfg.fitting.neuron) == (40, 1, (16, 16))
    t.run()
    stored = load_checkpoint(tmp_path)["input"]
    original["model"]["descriptor"]["repflow"]["a_sel"] = rf.a_sel  # "auto" resolved
    assert stored == original and isinstance(rf.a_sel, int) and rf.a_sel > 0


def test_train_package_reads_no_raw_input_and_spells_modes_once():
    import re

    import dpa3

    root = Path(dpa3.__file__).parent
    # (``ckpt["model"]``, ``ckpt["optimizer"]``, ``meta["type_map"]``: checkpoint entries)
    raw = re.compile(
        r"""\[\s*["'](training|learning_rate|loss|descriptor|repflow|fitting_net|"""
        r"""shared_dict|model_dict|data_dict|loss_dict)["']\s*\]"""
        r"""|\.get\(\s*["'](finetune_head|bias_adjust_mode|type_map|descriptor|repflow)["']"""
        r"""|input_dict"""
    )
    for path in sorted((root / "train").glob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not raw.search(line), f"{path.name}:{n} reads the raw input: {line.strip()}"
    for const in ("change-by-statistic", "set-by-statistic", "RANDOM"):
        code = re.compile(f'(?<!`)"{const}"(?!`)')  # a string literal, not a docstring ``"..."``
        hits = [p.name for p in root.rglob("*.py") if code.search(p.read_text())]
        assert len(hits) == 1 and hits[0].startswith(("model_section", "multitask")), (const, hits)


def test_finetune_head_and_bias_adjust_mode_from_the_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pre = tiny_input(WATER[:1], ("O", "H"), steps=1)
    pre["training"]["training_data"]["batch_size"] = 1
    ckpt = str(Trainer(pre).run())
    scratch = Trainer(tiny_input(steps=1))
    ft = tiny_input(steps=1)
    ft["model"]["bias_adjust_mode"] = "set-by-statistic"
    t = Trainer(ft, finetune=ckpt)  # the statistics of the new data, as from scratch
    assert torch.equal(t.model.out_bias, scratch.model.out_bias)
    ft["model"]["bias_adjust_mode"] = "change-by-statistic"
    assert not torch.equal(Trainer(ft, finetune=ckpt).model.out_bias, scratch.model.out_bias)
    ft["model"]["finetune_head"] = "RANDOM"  # descriptor only: the fitting net starts fresh
    t = Trainer(ft, finetune=ckpt)
    for k, v in t.model.fitting.state_dict().items():
        assert torch.equal(v, scratch.model.fitting.state_dict()[k]), k
    ft["model"]["finetune_head"] = "water"
    with pytest.raises(ConfigError, match="single-task checkpoint"):
        Trainer(ft, finetune=ckpt)
