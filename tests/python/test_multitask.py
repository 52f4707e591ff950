"""Multi-task training: config layout, shared descriptor, heads, freeze/test --head, fine-tuning."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import DATA, MOLECULE, WATER, tiny_input

from dpa3.cli.main import main
from dpa3.config._base import ConfigError
from dpa3.config.multitask import MultiTaskConfig, is_multitask_input
from dpa3.data.system import load_system
from dpa3.train.checkpoint import load_checkpoint
from dpa3.train.evaluate import evaluate_system, predict
from dpa3.train.multitask import head_model, is_multitask_checkpoint
from dpa3.train.multitask_trainer import MultiTaskTrainer
from dpa3.train.trainer import Trainer

ALLOY = DATA / "alloy-emt-CuAlNi"
ALLOY_TRAIN = [str(ALLOY / f"natoms_{n}") for n in (31, 32, 47, 48, 71)]
ALLOY_VALID = [str(ALLOY / "natoms_72")]
FLAT_LOSS = {
    "type": "ener",
    "start_pref_e": 1,
    "limit_pref_e": 1,
    "start_pref_f": 1,
    "limit_pref_f": 1,
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread when the cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_multitask(steps: int = 40, tasks: dict | None = None, **training) -> dict:
    """Two heads on one tiny float64 descriptor: water (O, H) and alloy (Cu, Al, Ni).

    ``tasks`` maps a task name to ``(type map, training_data, validation_data)``.
    """
    base = tiny_input(steps=steps)
    if tasks is None:
        tasks = {
            "water": (
                ["O", "H"],
                {"systems": WATER[:1], "batch_size": 1},
                {"systems": WATER[3:], "batch_size": 1, "numb_btch": 1},
            ),
            "alloy": (
                ["Cu", "Al", "Ni"],
                {"systems": ALLOY_TRAIN, "batch_size": 2},
                {"systems": ALLOY_VALID, "batch_size": 2, "numb_btch": 1},
            ),
        }
    union: list[str] = []
    for tm, _, _ in tasks.values():
        union += [t for t in tm if t not in union]
    return {
        "model": {
            "shared_dict": {"type_map_all": union, "dpa3_descriptor": base["model"]["descriptor"]},
            "model_dict": {
                name: {
                    "type_map": "type_map_all",
                    "descriptor": "dpa3_descriptor",
                    "fitting_net": dict(base["model"]["fitting_net"], seed=i + 1),
                    "data_stat_nbatch": 4,
                }
                for i, name in enumerate(tasks)
            },
        },
        "learning_rate": {"type": "exp", "start_lr": 1e-2, "stop_lr": 1e-3, "decay_steps": 10},
        "loss_dict": {name: dict(FLAT_LOSS) for name in tasks},
        "optimizer": {"type": "AdamW", "weight_decay": 0.001},
        "training": {
            "model_prob": dict.fromkeys(tasks, 1.0),
            "data_dict": {
                name: {"training_data": trn, "validation_data": val}
                for name, (_, trn, val) in tasks.items()
            },
            "numb_steps": steps,
            "seed": 10,
            "disp_freq": 10,
            "save_freq": 20,
            "gradient_max_norm": 5.0,
            **training,
        },
    }


def head_errors(model: torch.nn.Module, system_path: str, n: int) -> tuple[float, float]:
    """(energy RMSE per atom, force RMSE) of ``model`` on the first ``n`` frames (0: all)."""
    was = model.training
    model.eval()
    try:
        res = evaluate_system(model, load_system(system_path, model.get_type_map()), n)
    finally:
        model.train(was)
    return res.stats["ea"].rmse, res.stats["f"].rmse


# ------------------------------------------------------------------------------- config
def test_config_expands_shared_parts_and_union_type_map():
    d = tiny_multitask()
    d["model"]["model_dict"]["water"]["type_map"] = ["O", "H"]  # a list of its own
    d["model"]["model_dict"]["alloy"]["type_map"] = "tm_alloy"
    d["model"]["shared_dict"]["tm_alloy"] = ["Cu", "Al", "Ni", "H"]
    assert is_multitask_input(d) and not is_multitask_input(tiny_input())
    cfg = MultiTaskConfig.from_dict(d)
    assert cfg.names == ["water", "alloy"]
    assert cfg.type_map == ("O", "H", "Cu", "Al", "Ni")
    assert cfg.task_type_maps["alloy"] == ("Cu", "Al", "Ni", "H")
    for n in cfg.names:
        single = cfg.inputs[n]
        assert single["model"]["type_map"] == list(cfg.type_map)
        assert single["model"]["descriptor"] == d["model"]["shared_dict"]["dpa3_descriptor"]
        assert cfg.tasks[n].training.numb_steps == 40
    assert cfg.tasks["alloy"].training.training_data.systems == tuple(ALLOY_TRAIN)
    assert cfg.model_prob == {"water": 1.0, "alloy": 1.0}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda d: d["training"]["model_prob"].update(watr=1.0),
            r"unknown task.*watr.*water, alloy",
        ),
        (lambda d: d["training"]["model_prob"].pop("alloy"), r"model_prob.*missing.*alloy"),
        (lambda d: d["training"]["data_dict"].pop("alloy"), r"data_dict.*alloy"),
        (lambda d: d["loss_dict"].update(allloy={}), r"loss_dict.*allloy.*water, alloy"),
        (
            lambda d: d["model"]["model_dict"]["alloy"].update(descriptor="dpa3_descriptor:1"),
            "share level 1",
        ),
        (
            lambda d: d["model"]["model_dict"]["alloy"].update(
                descriptor=copy.deepcopy(d["model"]["shared_dict"]["dpa3_descriptor"])
            ),
            "must name the shared descriptor",
        ),
        (
            lambda d: d["model"]["model_dict"]["alloy"].update(fitting_net="fit"),
            "sharing a fitting",
        ),
        (lambda d: d["model"]["model_dict"]["alloy"].update(type_map="nope"), "not a key"),
        (lambda d: d.update(loss={}), "loss_dict"),
        (lambda d: d["training"].update(training_data={}), "data_dict.<task>.training_data"),
        (lambda d: d["training"].update(numb_epoch=1), "numb_epoch"),
        (
            lambda d: d["training"]["data_dict"]["water"]["training_data"].update(batch_szie=1),
            r"training\.data_dict\.water\.training_data\.batch_szie",
        ),
        (
            lambda d: d["loss_dict"]["alloy"].update(start_pref_q=1),
            r"loss_dict\.alloy\.start_pref_q",
        ),
    ],
)
def test_config_errors_name_the_key(edit, match):
    d = tiny_multitask()
    edit(d)
    with pytest.raises(ConfigError, match=match):
        MultiTaskConfig.from_dict(d)


def test_model_errors_name_the_shared_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tiny_multitask(steps=0)
    d["model"]["shared_dict"]["dpa3_descriptor"]["repflow"]["nlayer"] = 1
    with pytest.raises(
        ConfigError, match=r"'model\.shared_dict\.dpa3_descriptor\.repflow\.nlayer'"
    ):
        MultiTaskTrainer(d, skip_neighbor_stat=True)
    d = tiny_multitask(steps=0)
    d["model"]["model_dict"]["alloy"]["fitting_net"]["neurons"] = [4]
    with pytest.raises(ConfigError, match=r"'model\.model_dict\.alloy\.fitting_net\.neurons'"):
        MultiTaskTrainer(d, skip_neighbor_stat=True)


def test_default_model_prob_follows_number_of_systems(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tiny_multitask(steps=0)
    del d["training"]["model_prob"]
    t = MultiTaskTrainer(d, skip_neighbor_stat=True)
    np.testing.assert_allclose(t.model_prob, [1 / 6, 5 / 6])  # 1 water, 5 alloy systems
    d["training"]["model_prob"] = {"water": 3, "alloy": 1}
    assert MultiTaskTrainer(d, skip_neighbor_stat=True).model_prob.tolist() == [0.75, 0.25]


# ------------------------------------------------------------------------------- training
def first_frames(src: str, dst: Path, n: int) -> str:
    """A copy of the first ``n`` frames of the DeePMD-kit system ``src`` at ``dst``."""
    (dst / "set.000").mkdir(parents=True)
    for f in Path(src).iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    for f in (Path(src) / "set.000").glob("*.npy"):
        np.save(dst / "set.000" / f.name, np.load(f)[:n])
    return str(dst)


def water_alloy_input(valid: dict[str, str]) -> dict:
    """The input of ``water_alloy_run``: 200 steps, validation on the whole of ``valid``.

    Forces are learnt in so few steps only with DeePMD-kit's prefactors (``start_pref_f``
    1000, ``start_pref_e`` 0.02), a high learning rate (2e-2 -> 2e-3) and the edge features
    initialised from the environment matrix (``edge_init_use_dist`` false): with the flat loss
    of ``tiny_multitask`` the force RMSE does not move in 200 steps, nor the water forces with
    ``edge_init_use_dist`` true.  Every validation sees the same frames (batch size 1, one
    pass), so the lcurve rows compare.
    """
    d = tiny_multitask(steps=200, disp_freq=50, save_freq=50)
    d["model"]["shared_dict"]["dpa3_descriptor"]["repflow"]["edge_init_use_dist"] = False
    d["learning_rate"].update(start_lr=2e-2, stop_lr=2e-3)
    for n, loss in d["loss_dict"].items():
        loss.update(start_pref_e=0.02, limit_pref_e=1, start_pref_f=1000, limit_pref_f=1)
        nframes = len(np.load(Path(valid[n]) / "set.000" / "energy.npy"))
        d["training"]["data_dict"][n]["validation_data"] = {
            "systems": [valid[n]],
            "batch_size": 1,
            "numb_btch": nframes,
        }
    return d


@pytest.fixture(scope="module")
def water_alloy_run(tmp_path_factory):
    """200 steps of water + alloy multi-task training (about 6 s on one thread).

    Returns the run directory, the trainer, ``dpa3 test``'s (energy RMSE per atom, force
    RMSE) of each head on its validation frames before and after training, and the input.
    """
    wd = tmp_path_factory.mktemp("mt")
    valid = {
        "water": first_frames(WATER[3], wd / "valid_water", 4),
        "alloy": first_frames(ALLOY_VALID[0], wd / "valid_alloy", 12),
    }
    d = water_alloy_input(valid)
    import os

    cwd = os.getcwd()
    os.chdir(wd)
    try:
        torch.set_num_threads(1)
        t = MultiTaskTrainer(copy.deepcopy(d), skip_neighbor_stat=True)
        before = {n: head_errors(t.model.heads[n], p, 0) for n, p in valid.items()}
        t.run()
    finally:
        os.chdir(cwd)
    after = {n: head_errors(t.model.heads[n], p, 0) for n, p in valid.items()}
    return wd, t, before, after, d


def test_two_heads_train_and_validation_errors_drop(water_alloy_run):
    wd, t, before, after, d = water_alloy_run
    assert t.model.heads["water"].descriptor is t.model.heads["alloy"].descriptor
    n_shared = sum(p.numel() for p in t.model.descriptor.parameters())
    n_all = sum(p.numel() for p in t.model.parameters())
    n_fit = sum(p.numel() for p in t.model.heads["water"].fitting.parameters())
    assert n_all == n_shared + 2 * n_fit  # the descriptor is counted (and optimized) once
    # ``dpa3 test``'s errors on the validation frames, untrained (energy bias from the
    # statistics) -> trained.  Seeds 1-4 and 10, with fitting/descriptor seeds shifted by 0,
    # 7 and 13, gave ratios of at most 0.44 (energy) and 0.91 (force).
    for n in ("water", "alloy"):
        (e0, f0), (e1, f1) = before[n], after[n]
        assert e1 < 0.5 * e0, (n, before[n], after[n])  # energy RMSE per atom
        assert f1 < 0.95 * f0, (n, before[n], after[n])  # force RMSE
    lines = (wd / "lcurve.out").read_text().splitlines()
    header = lines[0].split()[1:]
    assert header[:4] == ["step", "rmse_val_water", "rmse_trn_water", "rmse_e_val_water"]
    assert "rmse_f_trn_alloy" in header and header[-1] == "lr"
    rows = [ln.split() for ln in lines if ln[0] != "#"]
    assert [int(r[0]) for r in rows] == [1, 50, 100, 150, 200]
    for n in t.names:
        e_val, f_val = (
            [float(r[header.index(f"{k}_val_{n}")]) for r in rows] for k in ("rmse_e", "rmse_f")
        )
        # the same frames at every row: the force error after step 1 vs after step 200
        assert f_val[-1] < 0.95 * f_val[0], (n, f_val)
        # a one-frame batch's rmse_e is |dE|/N: the last row is dpa3 test's MAE per atom
        system = load_system(
            d["training"]["data_dict"][n]["validation_data"]["systems"][0], t.mt.type_map
        )
        mae = evaluate_system(t.model.heads[n].eval(), system).stats["ea"].mae
        t.model.heads[n].train()
        assert math.isclose(e_val[-1], mae, rel_tol=1e-2), (n, e_val[-1], mae)


def test_head_not_drawn_does_not_move(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = MultiTaskTrainer(tiny_multitask(steps=2), skip_neighbor_stat=True)
    t.model_prob = np.array([1.0, 0.0])  # always water
    alloy = {k: v.clone() for k, v in t.model.heads["alloy"].state_dict().items()}
    water = {k: v.clone() for k, v in t.model.heads["water"].fitting.state_dict().items()}
    t.train_step(0)
    for k, v in t.model.heads["alloy"].state_dict().items():
        if not k.startswith("descriptor."):
            assert torch.equal(v, alloy[k]), k  # alloy fitting and bias: no gradient, no decay
    fit = t.model.heads["water"].fitting.state_dict()
    assert any(not torch.equal(v, water[k]) for k, v in fit.items())
    desc = t.model.descriptor.state_dict()
    assert any(not torch.equal(v, alloy["descriptor." + k]) for k, v in desc.items())


def test_checkpoint_holds_all_heads_and_freeze_head(water_alloy_run, tmp_path, capsys):
    wd, t, *_ = water_alloy_run
    ck = load_checkpoint(wd / "model.ckpt-200.pt")
    assert is_multitask_checkpoint(ck) and ck["multitask"]["heads"] == ["water", "alloy"]
    assert set(ck["model"]["heads"]) == {"water", "alloy"}
    assert all(k.startswith("descriptor.") for k in ck["model"]["shared"])
    assert not any(k.startswith("descriptor.") for h in ck["model"]["heads"].values() for k in h)

    outs = {}
    for head in ("water", "alloy"):
        out = tmp_path / f"{head}.pth"
        assert (
            main(["freeze", "-c", str(wd / "model.ckpt-200.pt"), "-o", str(out), "--head", head])
            == 0
        )
        outs[head] = out
    from dpa3.export.freeze import load_frozen

    frozen = {h: load_frozen(p)[0] for h, p in outs.items()}
    meta = {h: load_frozen(p)[1] for h, p in outs.items()}
    assert meta["water"]["head"] == "water" and meta["alloy"]["type_map"] == list(t.mt.type_map)
    # the shared descriptor weights are bit-identical in both frozen models
    sd = {h: dict(m.state_dict()) for h, m in frozen.items()}
    desc_keys = [k for k in sd["water"] if k.startswith("descriptor.")]
    assert desc_keys
    for k in desc_keys:
        assert torch.equal(sd["water"][k], sd["alloy"][k]), k
    assert not torch.equal(sd["water"]["out_bias"], sd["alloy"]["out_bias"])
    # frozen heads == the checkpoint's heads
    for head, path in (("water", WATER[3]), ("alloy", ALLOY_VALID[0])):
        sys_ = load_system(path, t.mt.type_map)
        args = (sys_.coord[:2], sys_.atype[:2], sys_.box[:2])
        ref = predict(head_model(ck, head), *args)
        got = predict(frozen[head], *args)
        for key in ("energy", "force", "virial"):
            np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=1e-10)
        # and the trainer's in-memory head gives the same energies
        mem = predict(t.model.heads[head].eval(), *args)
        t.model.heads[head].train()
        np.testing.assert_allclose(mem["energy"], ref["energy"], rtol=0, atol=1e-10)

    # errors name the heads
    capsys.readouterr()
    assert (
        main(
            [
                "freeze",
                "-c",
                str(wd / "model.ckpt-200.pt"),
                "-o",
                str(tmp_path / "x.pth"),
                "--head",
                "watr",
            ]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert "unknown head 'watr'" in out and "did you mean 'water'" in out and "water, alloy" in out
    assert main(["freeze", "-c", str(wd / "model.ckpt-200.pt"), "-o", str(tmp_path / "x.pth")]) == 1
    assert "--head" in capsys.readouterr().out


def test_test_head(water_alloy_run, capsys):
    wd, *_ = water_alloy_run
    ckpt = str(wd / "model.ckpt-200.pt")
    capsys.readouterr()
    assert main(["test", "-m", ckpt, "--head", "alloy", "-s", ALLOY_VALID[0], "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "number of test data : 2" in out and "Virial RMSE" in out
    assert main(["test", "-m", ckpt, "--head", "Alloy", "-s", ALLOY_VALID[0], "-n", "2"]) == 1
    assert "water, alloy" in capsys.readouterr().out
    assert main(["test", "-m", ckpt, "-s", ALLOY_VALID[0], "-n", "2"]) == 1
    assert "--head" in capsys.readouterr().out


def test_restart_is_bit_identical(water_alloy_run, tmp_path, monkeypatch):
    wd, *_, d = water_alloy_run
    monkeypatch.chdir(tmp_path)
    t = MultiTaskTrainer(
        copy.deepcopy(d), restart=str(wd / "model.ckpt-150.pt"), skip_neighbor_stat=True
    )
    assert t.start_step == 150
    t.run()
    full = load_checkpoint(wd / "model.ckpt-200.pt")["model"]
    rest = load_checkpoint(tmp_path / "model.ckpt-200.pt")["model"]
    for k, v in full["shared"].items():
        assert torch.equal(v, rest["shared"][k]), k
    for h in full["heads"]:
        for k, v in full["heads"][h].items():
            assert torch.equal(v, rest["heads"][h][k]), (h, k)
    # training columns of the last line (the restart validates once more, at step 151)
    header = (wd / "lcurve.out").read_text().splitlines()[0].split()[1:]
    trn = [i for i, h in enumerate(header) if "_trn_" in h]
    last = [(p / "lcurve.out").read_text().splitlines()[-1].split() for p in (wd, tmp_path)]
    assert [last[0][i] for i in trn] == [last[1][i] for i in trn]
    with pytest.raises(ConfigError, match="multi-task checkpoint"):
        Trainer(tiny_input(steps=1), restart=str(wd / "model.ckpt-150.pt"))
    bad = tiny_multitask(steps=1)
    bad["model"]["model_dict"]["alloy2"] = bad["model"]["model_dict"].pop("alloy")
    for sec in (bad["loss_dict"], bad["training"]["data_dict"], bad["training"]["model_prob"]):
        sec["alloy2"] = sec.pop("alloy")
    with pytest.raises(ConfigError, match="heads"):
        MultiTaskTrainer(bad, init_model=str(wd / "model.ckpt-150.pt"), skip_neighbor_stat=True)


# ------------------------------------------------------------------------------- fine-tuning
def _split_molecule(dst: Path) -> dict[str, str]:
    """Disjoint random frame sets of the molecule: pre-training, fine-tuning, validation."""
    src = Path(MOLECULE)
    perm = np.random.default_rng(0).permutation(1562)
    parts = {"pre": perm[:600], "train": perm[600:1200], "valid": perm[1200:]}
    out = {}
    for name, idx in parts.items():
        d = dst / name
        (d / "set.000").mkdir(parents=True)
        for f in ("type.raw", "type_map.raw", "nopbc"):
            (d / f).write_bytes((src / f).read_bytes())
        for f in ("coord", "energy", "force"):
            np.save(d / "set.000" / f"{f}.npy", np.load(src / "set.000" / f"{f}.npy")[idx])
        out[name] = str(d)
    return out


def _molecule_input(train: str, steps: int) -> dict:
    d = tiny_input([train], ("C", "H", "O"), steps=steps, disp_freq=steps, save_freq=steps)
    d["model"]["data_stat_nbatch"] = 4
    d["training"]["training_data"]["batch_size"] = 8
    d["learning_rate"].update(start_lr=1e-3, stop_lr=1e-4, decay_steps=max(1, steps // 10))
    d["loss"].update(start_pref_e=1, limit_pref_e=1, start_pref_f=100, limit_pref_f=100)
    return d


def test_finetune_from_head_beats_scratch(tmp_path, monkeypatch):
    """Pre-train water + molecule heads (300 steps, mostly molecule frames of a disjoint set),
    then train the single-task molecule model 20 steps from the ``mol`` head and from scratch
    (same input, lr 1e-3).  The cross-domain comparison (water + alloy pre-training, 100
    steps) is ``benchmarks/finetune_vs_scratch.py``."""
    mol = _split_molecule(tmp_path / "data")
    pre = tiny_multitask(
        steps=300,
        tasks={
            "water": (["O", "H"], {"systems": WATER[:1], "batch_size": 1}, None),
            "mol": (["C", "H", "O"], {"systems": [mol["pre"]], "batch_size": 8}, None),
        },
        model_prob={"water": 1.0, "mol": 4.0},
        disp_freq=100,
        save_freq=300,
    )
    for loss in pre["loss_dict"].values():
        loss.update(start_pref_f=100, limit_pref_f=100)
    pre["learning_rate"].update(decay_steps=30)
    (tmp_path / "pre").mkdir()
    monkeypatch.chdir(tmp_path / "pre")
    ckpt = str(tmp_path / "pre" / MultiTaskTrainer(pre, skip_neighbor_stat=True).run())
    pre_f = head_errors(head_model(load_checkpoint(ckpt), "mol"), mol["valid"], 0)[1]

    results = {}
    for name, kw in (("scratch", {}), ("finetune", {"finetune": ckpt, "model_branch": "mol"})):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        t = Trainer(_molecule_input(mol["train"], 20), skip_neighbor_stat=True, **kw)
        start = head_errors(t.model, mol["valid"], 0)[1]
        t.run()
        results[name] = (start, head_errors(t.model, mol["valid"], 0)[1])
    # the fine-tuned model starts from the head's forces (the type map is remapped exactly)
    assert math.isclose(results["finetune"][0], pre_f, rel_tol=1e-9)
    assert results["finetune"][1] < 0.95 * results["scratch"][1], results

    # RANDOM: the descriptor only; unknown heads are listed
    (tmp_path / "random").mkdir()
    monkeypatch.chdir(tmp_path / "random")
    inp = _molecule_input(mol["train"], 1)
    t = Trainer(inp, skip_neighbor_stat=True, finetune=ckpt, model_branch="RANDOM")
    scratch = Trainer(inp, skip_neighbor_stat=True)
    from dpa3.train.finetune import type_dims

    dims = type_dims(t.factory, t.model_cfg)
    shared = load_checkpoint(ckpt)["model"]["shared"]
    plain = [k for k in shared if not dims[k]]
    assert plain
    for k in plain:  # descriptor weights without a type dimension: copied
        assert torch.equal(t.model.state_dict()[k], shared[k]), k
    for k, v in t.model.fitting.state_dict().items():
        assert torch.equal(v, scratch.model.fitting.state_dict()[k]), k  # fresh fitting net
    with pytest.raises(ConfigError, match=r"unknown head 'water2'.*water, mol"):
        Trainer(
            _molecule_input(mol["train"], 1),
            finetune=ckpt,
            model_branch="water2",
            skip_neighbor_stat=True,
        )


def test_example_input_is_accepted(tmp_path, monkeypatch):
    root = Path(__file__).resolve().parents[2] / "examples"
    (tmp_path / "examples" / "multitask").mkdir(parents=True)
    (tmp_path / "examples" / "data").symlink_to(root / "data")
    src = root / "multitask" / "input.json"
    (tmp_path / "examples" / "multitask" / "input.json").write_text(src.read_text())
    monkeypatch.chdir(tmp_path / "examples" / "multitask")
    d = json.loads(src.read_text())
    t = MultiTaskTrainer(d, skip_neighbor_stat=True)
    assert t.names == ["water", "alloy"]
    assert t.mt.type_map == ("O", "H", "Cu", "Al", "Ni")


def test_cli_stat_files_and_change_bias_after_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    d = tiny_multitask(steps=2, disp_freq=1, change_bias_after_training=True)
    for n in ("water", "alloy"):
        d["training"]["data_dict"][n]["stat_file"] = f"stat_{n}.hdf5"
    Path("input.json").write_text(json.dumps(d))
    assert main(["train", "input.json", "--skip-neighbor-stat"]) == 0
    assert Path("stat_water.hdf5").is_file() and Path("stat_alloy.hdf5").is_file()
    assert "[water] energy bias changed by" in capsys.readouterr().out
    ck = load_checkpoint(tmp_path / "model.ckpt-2.pt")
    assert ck["step"] == 2 and ck["multitask"]["heads"] == ["water", "alloy"]
    # a multi-task checkpoint is not a single model: clear errors where one is expected
    from dpa3.export.load import load_model
    from dpa3.train.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=r"multi-task checkpoint \(heads: water, alloy\)"):
        load_model(tmp_path / "model.ckpt-2.pt")
    assert main(["train", "input.json", "--finetune", "model.ckpt-2.pt"]) == 1
    assert "fine-tuning into a multi-task input is not supported" in capsys.readouterr().out


def test_multitask_trainer_is_the_trainer_with_one_task_per_head(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # no second constructor, statistics or bias re-fit: those of Trainer serve every head
    for name in ("__init__", "_compute_stat", "_refit_bias", "run", "train_step"):
        assert name not in MultiTaskTrainer.__dict__, name
    d = tiny_multitask(steps=0)
    d["model"]["shared_dict"]["dpa3_descriptor"]["repflow"]["e_sel"] = "auto"
    with pytest.raises(
        ConfigError, match=r"task 'water': 'model\.shared_dict\.dpa3_descriptor\.repflow\.e_sel'"
    ):
        MultiTaskTrainer(d, skip_neighbor_stat=True)
    d = tiny_multitask(steps=0)
    d["model"]["shared_dict"]["dpa3_descriptor"]["repflow"]["fix_stat_std"] = 0.0
    with pytest.raises(ConfigError, match=r"shared_dict\.dpa3_descriptor\.repflow\.fix_stat_std"):
        MultiTaskTrainer(d, skip_neighbor_stat=True)
    cfg = MultiTaskConfig.from_dict(d := tiny_multitask(steps=0))
    d["model"]["model_dict"]["alloy"]["fitting_net"]["neuron"] = [4]  # after parsing: no effect
    t = MultiTaskTrainer(cfg, skip_neighbor_stat=True)
    assert [task.name for task in t.tasks] == ["water", "alloy"]
    assert t.model_cfgs["alloy"].fitting.neuron == (16, 16)
