"""DeePMD-kit's learning rates and energy-loss terms on fixed inputs, kept as fixtures.

Writes ``tests/data/deepmd_train/lr.json`` (per case: the ``learning_rate`` section as
written, ``numb_steps``, and ``lr(t)`` of DeePMD-kit's schedule at chosen steps, after
``dp``'s input normalisation) and ``tests/data/deepmd_train/loss.json`` (per case: the ``loss``
section, a fixed batch of predictions and labels, the learning rate, and the loss and RMSE
values of DeePMD-kit's ``EnergyStdLoss``).  tests/python/test_lr.py and test_loss.py compare
dpa3 with them, so CI does not need DeePMD-kit.

    /work/main/.venv-deepmd/bin/python tests/config/generate_train_reference.py
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from deepmd import __version__ as dp_version
from deepmd.pt.loss.ener import EnergyStdLoss
from deepmd.pt.utils.learning_rate import BaseLR
from deepmd.utils.argcheck import normalize

OUT = Path(__file__).resolve().parents[1] / "data" / "deepmd_train"

BASE = {
    "model": {
        "type_map": ["O", "H"],
        "descriptor": {
            "type": "dpa3",
            "repflow": {
                "e_rcut": 6.0,
                "e_rcut_smth": 5.0,
                "e_sel": 20,
                "a_rcut": 4.0,
                "a_rcut_smth": 3.5,
                "a_sel": 10,
            },
        },
        "fitting_net": {"neuron": [8]},
    },
    "training": {"training_data": {"systems": ["."]}, "numb_steps": 100},
}

LR_CASES = {
    "exp_default": ({"start_lr": 1e-3, "stop_lr": 3e-5, "decay_steps": 50}, 1000),
    "exp_short_run": ({"start_lr": 1e-3, "stop_lr": 1e-6}, 700),
    "exp_smooth_ratio": (
        {"start_lr": 2e-3, "stop_lr_ratio": 1e-3, "decay_steps": 40, "smooth": True},
        1000,
    ),
    "exp_rate_warmup": (
        {
            "start_lr": 1e-3,
            "stop_lr": 1e-4,
            "decay_steps": 30,
            "decay_rate": 0.8,
            "warmup_steps": 25,
            "warmup_start_factor": 0.1,
        },
        600,
    ),
    "cosine": ({"type": "cosine", "start_lr": 1e-3, "stop_lr": 1e-5}, 1000),
    "cosine_warmup_ratio": (
        {"type": "cosine", "start_lr": 5e-4, "stop_lr_ratio": 0.01, "warmup_ratio": 0.1},
        777,
    ),
    "cosine_default_stop": ({"type": "cosine", "start_lr": 1e-3}, 300),
    "wsd_inverse_linear": ({"type": "wsd", "start_lr": 1e-3, "stop_lr": 1e-5}, 1000),
    "wsd_cosine_warmup": (
        {
            "type": "wsd",
            "start_lr": 1e-3,
            "stop_lr": 1e-5,
            "decay_phase_ratio": 0.3,
            "decay_type": "cosine",
            "warmup_steps": 50,
        },
        1000,
    ),
    "wsd_linear": (
        {
            "type": "wsd",
            "start_lr": 1e-3,
            "stop_lr_ratio": 0.02,
            "decay_phase_ratio": 0.25,
            "decay_type": "linear",
        },
        401,
    ),
}

LOSS_CASES = {
    "plain_efv": {
        "start_pref_e": 0.2,
        "limit_pref_e": 20,
        "start_pref_f": 100,
        "limit_pref_f": 60,
        "start_pref_v": 0.02,
        "limit_pref_v": 1,
    },
    "relative_f": {
        "start_pref_e": 0.02,
        "limit_pref_e": 1,
        "start_pref_f": 1000,
        "limit_pref_f": 1,
        "relative_f": 0.5,
    },
    "atom_ener_coeff": {
        "start_pref_e": 1,
        "limit_pref_e": 3,
        "start_pref_f": 10,
        "limit_pref_f": 1,
        "enable_atom_ener_coeff": True,
    },
    "atomic_energy": {
        "start_pref_e": 0.02,
        "limit_pref_e": 1,
        "start_pref_f": 1000,
        "limit_pref_f": 1,
        "start_pref_ae": 2.0,
        "limit_pref_ae": 0.5,
    },
    "ae_only_intensive": {
        "start_pref_e": 0,
        "limit_pref_e": 0,
        "start_pref_f": 0,
        "limit_pref_f": 0,
        "start_pref_v": 1,
        "limit_pref_v": 2,
        "start_pref_ae": 1.0,
        "limit_pref_ae": 1.0,
        "intensive_ener_virial": True,
    },
    "all_options": {
        "start_pref_e": 0.5,
        "limit_pref_e": 2,
        "start_pref_f": 50,
        "limit_pref_f": 5,
        "start_pref_v": 0.1,
        "limit_pref_v": 0.3,
        "start_pref_ae": 0.7,
        "limit_pref_ae": 0.2,
        "relative_f": 1.5,
        "enable_atom_ener_coeff": True,
    },
}


def normalized(section: str, value: dict) -> dict:
    data = copy.deepcopy(BASE)
    data[section] = copy.deepcopy(value)
    return normalize(data)[section]


def lr_cases() -> dict:
    out = {}
    for name, (lr, nsteps) in LR_CASES.items():
        params = normalized("learning_rate", lr)
        sched = BaseLR(**dict(params, num_steps=nsteps))
        steps = sorted(
            {
                0,
                1,
                7,
                24,
                25,
                26,
                49,
                50,
                51,
                99,
                100,
                101,
                150,
                333,
                nsteps // 2,
                nsteps - 101,
                nsteps - 100,
                nsteps - 2,
                nsteps - 1,
                nsteps,
                nsteps + 5,
            }
            & set(range(nsteps + 6))
        )
        out[name] = {
            "learning_rate": lr,
            "numb_steps": nsteps,
            "steps": steps,
            "lr": [float(sched.value(s)) for s in steps],
        }
    return out


def batch(seed: int, nf: int = 3, n: int = 5) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "pred": {
            "atom_energy": rng.normal(size=(nf, n)).tolist(),
            "force": rng.normal(size=(nf, n, 3)).tolist(),
            "virial": rng.normal(size=(nf, 9)).tolist(),
        },
        "label": {
            "energy": rng.normal(size=(nf,)).tolist(),
            "force": rng.normal(size=(nf, n, 3)).tolist(),
            "virial": rng.normal(size=(nf, 9)).tolist(),
            "atom_ener": rng.normal(size=(nf, n)).tolist(),
            "atom_ener_coeff": rng.uniform(-1, 2, size=(nf, n)).tolist(),
        },
    }


def loss_cases() -> dict:
    out = {}
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    for i, (name, loss) in enumerate(LOSS_CASES.items()):
        params = normalized("loss", loss)
        b = batch(i)
        nf, n = np.shape(b["pred"]["atom_energy"])
        ae = t(b["pred"]["atom_energy"])
        pred = {
            "energy": ae.sum(dim=1, keepdim=True),
            "atom_energy": ae.unsqueeze(-1),
            "force": t(b["pred"]["force"]),
            "virial": t(b["pred"]["virial"]),
        }
        lab = b["label"]
        label = {
            "energy": t(lab["energy"]).reshape(nf, 1),
            "force": t(lab["force"]),
            "virial": t(lab["virial"]),
            "atom_ener": t(lab["atom_ener"]),
            "atom_ener_coeff": t(lab["atom_ener_coeff"]),
        }
        for k in ("energy", "force", "virial", "atom_ener"):
            label[f"find_{k}"] = 1.0
        start_lr = 1e-3
        res = {}
        for lr in (1e-3, 2.5e-4, 1e-5):
            mod = EnergyStdLoss(**dict(params, starter_learning_rate=start_lr))
            _, value, more = mod(
                {"atype": torch.zeros(nf, n, dtype=torch.long)},
                lambda _p=pred, **_: {k: v.clone() for k, v in _p.items()},
                label,
                n,
                lr,
            )
            res[repr(lr)] = {
                "loss": float(value),
                **{
                    k: float(v)
                    for k, v in more.items()
                    if not k.startswith("l2_") and not math.isnan(float(v))
                },
            }
        out[name] = {"loss": loss, "start_lr": start_lr, **b, "results": res}
    return out


def main() -> int:
    torch.set_default_dtype(torch.float64)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"generator": "tests/config/generate_train_reference.py", "deepmd_version": dp_version}
    (OUT / "lr.json").write_text(json.dumps({**meta, "cases": lr_cases()}, indent=1) + "\n")
    (OUT / "loss.json").write_text(json.dumps({**meta, "cases": loss_cases()}, indent=1) + "\n")
    print(f"wrote {OUT}/lr.json, loss.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
