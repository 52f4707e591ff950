"""What dpa3 does with every key of DeePMD-kit 3.2's input schema (the fixture
``tests/data/config_keys/deepmd_keys.json``, written by ``generate_keys.py``).

Each key path is one of

* **implemented** (:data:`IMPLEMENTED`: a non-default probe value, and where one exists the
  test that shows its effect): ``tests/config/test_config_keys.py`` parses an input with the
  probe and checks that the typed config differs from the default one;
* **refused** (:data:`REFUSED`: a probe value and the reason): parsing it raises
  ``ConfigError`` naming the key path and saying "not supported"; the children of a refused
  section are refused with it;
* **inert** (:data:`INERT`): accepted without effect *because DeePMD-kit's PyTorch backend
  gives it none either*; the evidence is checked against the fixture: the schema lists no
  PyTorch backend for it, or ``dp --pt``'s sources never read it, or it only acts together
  with a key dpa3 refuses;
* **owned elsewhere** (:data:`OWNED_ELSEWHERE`): implemented on another branch; until it is
  merged the key keeps the status given here.

``python tests/config/key_status.py`` rewrites the table in docs/training.md;
``test_docs_table_is_current`` checks that it is up to date.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "data" / "config_keys" / "deepmd_keys.json"
DOCS = ROOT / "docs" / "training.md"
BEGIN = "<!-- begin key table (tests/config/key_status.py) -->"
END = "<!-- end key table -->"

T_LR = "tests/python/test_lr.py::test_lr_equals_deepmd"
T_LOSS = "tests/python/test_loss.py::test_loss_equals_deepmd"
T_PARITY = "tests/python/test_parity_deepmd.py::test_checkpoint_parity"
T_OPT = "tests/python/test_train_options.py"
T_TRAIN = "tests/python/test_train.py"
T_STAT = "tests/python/test_stat_file_deepmd.py"

#: A small valid input every probe is applied to.
BASE: dict = {
    "model": {
        "type_map": ["O", "H"],
        "descriptor": {
            "type": "dpa3",
            "repflow": {
                "n_dim": 16,
                "e_dim": 8,
                "a_dim": 8,
                "nlayers": 2,
                "e_rcut": 6.0,
                "e_rcut_smth": 5.0,
                "e_sel": 40,
                "a_rcut": 4.0,
                "a_rcut_smth": 3.5,
                "a_sel": 10,
            },
        },
        "fitting_net": {"neuron": [16, 16]},
    },
    "training": {"training_data": {"systems": ["data"]}, "numb_steps": 10},
}

R = "model.descriptor.repflow."
#: key id -> (probe value, test showing the effect or "").  A key id is the path, with
#: `` [flag=value]`` for keys of a variant and ``path = value`` for a variant choice.
IMPLEMENTED: dict[str, tuple[object, str]] = {
    "model.type = standard": ("standard", ""),
    "model.type_map": (["H", "O"], T_PARITY),
    "model.data_stat_nbatch": (3, "tests/python/test_stats.py"),
    "model.preset_out_bias": ({"energy": [1.0, None]}, "tests/python/test_stats.py"),
    "model.finetune_head": ("water", "tests/python/test_multitask.py"),
    "model.descriptor.type = dpa3": ("dpa3", ""),
    R + "n_dim": (32, T_PARITY),
    R + "e_dim": (16, T_PARITY),
    R + "a_dim": (16, T_PARITY),
    R + "nlayers": (3, T_PARITY),
    R + "e_rcut": (5.5, T_PARITY),
    R + "e_rcut_smth": (4.0, T_PARITY),
    R + "e_sel": (48, T_PARITY),
    R + "a_rcut": (4.5, T_PARITY),
    R + "a_rcut_smth": (3.0, T_PARITY),
    R + "a_sel": (12, T_PARITY),
    R + "a_compress_rate": (1, T_PARITY),
    R + "a_compress_e_rate": (2, T_PARITY),
    R + "a_compress_use_split": (True, T_PARITY),
    R + "n_multi_edge_message": (2, T_PARITY),
    R + "axis_neuron": (8, T_PARITY),
    R + "fix_stat_std": (0.5, T_PARITY),
    R + "skip_stat": (True, "tests/python/test_train.py::test_fix_stat_std_zero_is_named"),
    R + "update_angle": (False, T_PARITY),
    R + "update_style": ("res_avg", T_PARITY),
    R + "update_residual": (0.2, T_PARITY),
    R + "update_residual_init": ("norm", T_PARITY),
    R + "optim_update": (False, T_PARITY),
    R + "smooth_edge_update": (True, T_PARITY),
    R + "edge_init_use_dist": (True, T_PARITY),
    R + "use_exp_switch": (True, T_PARITY),
    R + "use_dynamic_sel": (True, T_PARITY),  # probe also sets smooth_edge_update
    R + "sel_reduce_factor": (5.0, T_PARITY),
    R + "sequential_update": (True, T_PARITY),
    "model.descriptor.concat_output_tebd": (True, T_PARITY),
    "model.descriptor.activation_function": ("tanh", T_PARITY),
    "model.descriptor.precision": ("float32", T_PARITY),
    "model.descriptor.env_protection": (0.1, ""),
    "model.descriptor.trainable": (False, f"{T_OPT}::test_trainable_false_freezes_the_block"),
    "model.descriptor.seed": (7, ""),
    "model.descriptor.use_tebd_bias": (True, T_PARITY),
    "model.descriptor.use_loc_mapping": (False, T_PARITY),
    "model.fitting_net.type = ener": ("ener", ""),
    "model.fitting_net.neuron": ([8], T_PARITY),
    "model.fitting_net.activation_function": ("gelu", T_PARITY),
    "model.fitting_net.precision": ("float32", ""),
    "model.fitting_net.resnet_dt": (False, ""),
    "model.fitting_net.trainable": (False, f"{T_OPT}::test_trainable_false_freezes_the_block"),
    "model.fitting_net.seed": (7, ""),
    "learning_rate.start_lr": (2e-3, T_LR),
    "learning_rate.stop_lr": (1e-6, T_LR),
    "learning_rate.stop_lr_ratio": (1e-2, T_LR),
    "learning_rate.warmup_steps": (5, T_LR),
    "learning_rate.warmup_ratio": (0.1, T_LR),
    "learning_rate.warmup_start_factor": (0.1, T_LR),
    "learning_rate.type = exp": ("exp", T_LR),
    "learning_rate.decay_steps [learning_rate.type=exp]": (100, T_LR),
    "learning_rate.decay_rate [learning_rate.type=exp]": (0.9, T_LR),
    "learning_rate.smooth [learning_rate.type=exp]": (True, T_LR),
    "learning_rate.type = cosine": ("cosine", T_LR),
    "learning_rate.type = wsd": ("wsd", T_LR),
    "learning_rate.decay_phase_ratio [learning_rate.type=wsd]": (0.3, T_LR),
    "learning_rate.decay_type [learning_rate.type=wsd]": ("cosine", T_LR),
    "optimizer.type = Adam": ("Adam", ""),
    "optimizer.adam_beta1 [optimizer.type=Adam]": (0.8, ""),
    "optimizer.adam_beta2 [optimizer.type=Adam]": (0.99, ""),
    "optimizer.weight_decay [optimizer.type=Adam]": (0.01, ""),
    "optimizer.type = AdamW": ("AdamW", T_TRAIN),
    "optimizer.adam_beta1 [optimizer.type=AdamW]": (0.8, ""),
    "optimizer.adam_beta2 [optimizer.type=AdamW]": (0.99, ""),
    "optimizer.weight_decay [optimizer.type=AdamW]": (0.01, ""),
    "loss.type = ener": ("ener", T_LOSS),
    "loss.start_pref_e": (0.5, T_LOSS),
    "loss.limit_pref_e": (2.0, T_LOSS),
    "loss.start_pref_f": (10.0, T_LOSS),
    "loss.limit_pref_f": (2.0, T_LOSS),
    "loss.start_pref_v": (0.5, T_LOSS),
    "loss.limit_pref_v": (2.0, T_LOSS),
    "loss.start_pref_ae": (1.0, T_LOSS),
    "loss.limit_pref_ae": (1.0, T_LOSS),
    "loss.relative_f": (0.5, T_LOSS),
    "loss.enable_atom_ener_coeff": (True, T_LOSS),
    "loss.intensive_ener_virial": (True, T_LOSS),
    "training.training_data.systems": (["other"], T_TRAIN),
    "training.training_data.batch_size": (4, "tests/python/test_data_loader.py"),
    "training.training_data.auto_prob": ("prob_uniform", "tests/python/test_data_loader.py"),
    "training.training_data.sys_probs": ([1.0], "tests/python/test_data_loader.py"),
    "training.validation_data": ({"systems": ["v"]}, T_TRAIN),
    "training.validation_data.systems": (["w"], T_TRAIN),
    "training.validation_data.batch_size": (2, T_TRAIN),
    "training.validation_data.auto_prob": ("prob_uniform", ""),
    "training.validation_data.sys_probs": ([1.0], ""),
    "training.validation_data.numb_btch": (3, T_TRAIN),
    "training.stat_file": ("stat.hdf5", f"{T_STAT}::test_dpa3_reads_deepmd_stat_file"),
    "training.stat_file_mode": ("read", f"{T_OPT}::test_stat_file_mode_read"),
    "training.numb_steps": (20, T_TRAIN),
    "training.numb_epoch": (2.0, f"{T_TRAIN}::test_numb_epoch"),
    "training.seed": (3, f"{T_TRAIN}::test_restart_is_bit_identical"),
    "training.disp_file": ("lc.out", T_TRAIN),
    "training.disp_freq": (5, T_TRAIN),
    "training.save_freq": (5, T_TRAIN),
    "training.save_ckpt": (
        "m.ckpt",
        "tests/python/test_checkpoint.py::test_save_ckpt_in_a_folder_as_dp",
    ),
    "training.change_bias_after_training": (True, f"{T_TRAIN}::test_change_bias_after_training"),
    "training.disp_training": (False, f"{T_OPT}::test_disp_training_and_time_training"),
    "training.time_training": (False, f"{T_OPT}::test_disp_training_and_time_training"),
    "training.disp_avg": (True, f"{T_OPT}::test_disp_avg_as_dp"),
    "training.profiling": (True, f"{T_OPT}::test_profiling_writes_a_trace"),
    "training.profiling_file": ("t.json", f"{T_OPT}::test_profiling_writes_a_trace"),
    "training.enable_profiler": (True, ""),
    "training.tensorboard": (True, f"{T_OPT}::test_tensorboard_real_writer_as_dp"),
    "training.tensorboard_log_dir": ("tb", f"{T_OPT}::test_tensorboard_real_writer_as_dp"),
    "training.tensorboard_freq": (5, f"{T_OPT}::test_tensorboard_real_writer_as_dp"),
    "training.gradient_max_norm": (1.0, T_TRAIN),
}

#: Probes that need companion settings (added to the input together with the probe).
COMPANIONS: dict[str, dict[str, object]] = {
    R + "use_dynamic_sel": {R + "smooth_edge_update": True},
    R + "a_compress_e_rate": {R + "a_compress_rate": 1},
    R + "a_compress_use_split": {R + "a_compress_rate": 1},
    "training.stat_file_mode": {"training.stat_file": "stat.hdf5"},
    "loss.start_pref_ae": {"loss.limit_pref_ae": 1.0},
    "loss.limit_pref_ae": {"loss.start_pref_ae": 1.0},
    "training.numb_epoch": {"training.numb_steps": None},
    "learning_rate.stop_lr_ratio": {"learning_rate.stop_lr": None},
}
for _k in ("batch_size", "auto_prob", "sys_probs", "numb_btch", "rglob_patterns"):
    COMPANIONS[f"training.validation_data.{_k}"] = {"training.validation_data.systems": ["v"]}

_NS = "not supported"
#: key id -> (probe value, what dpa3 lacks).
REFUSED: dict[str, tuple[object, str]] = {
    "model.type = dpa4": ("dpa4", "other model types"),
    "model.type = frozen": ("frozen", "other model types"),
    "model.type = pairtab": ("pairtab", "other model types"),
    "model.type = pairwise_dprc": ("pairwise_dprc", "other model types"),
    "model.type = linear_ener": ("linear_ener", "linear combinations of models"),
    "model.use_srtab": ("table.txt", "ZBL / tabulated short-range models"),
    "model.smin_alpha": (0.1, "ZBL / tabulated short-range models"),
    "model.sw_rmin": (0.5, "ZBL / tabulated short-range models"),
    "model.sw_rmax": (1.0, "ZBL / tabulated short-range models"),
    "model.pair_exclude_types": ([[0, 1]], "type exclusion"),
    "model.atom_exclude_types": ([1], "type exclusion"),
    "model.srtab_add_bias": (False, "ZBL / tabulated short-range models"),
    "model.type_embedding": ({"neuron": [8]}, "a separate type embedding (TensorFlow models)"),
    "model.modifier": ({"type": "dipole_charge"}, "model modifiers"),
    "model.compress": ({"type": "se_e2_a"}, "TensorFlow compression"),
    "model.spin": ({"use_spin": [True, False]}, "spin models"),
    "model.bridging_method": ("linear", "model bridging"),
    "model.descriptor.add_chg_spin_ebd": (True, "charge/spin embedding"),
    "model.descriptor.default_chg_spin": ([0, 1], "charge/spin embedding"),
    "model.descriptor.exclude_types": ([[0, 1]], "type exclusion"),
    "model.descriptor.use_econf_tebd": (True, "electronic-configuration type embedding"),
    "model.fitting_net.numb_fparam": (2, "frame parameters"),
    "model.fitting_net.numb_aparam": (2, "atomic parameters"),
    "model.fitting_net.default_fparam": ([0.0], "frame parameters"),
    "model.fitting_net.dim_case_embd": (2, "case embedding"),
    "model.fitting_net.atom_ener": ([1.0, None], "fixed atomic energies"),
    "model.fitting_net.layer_name": (["a", "b", "c"], "shared fitting layers"),
    "model.fitting_net.use_aparam_as_mask": (True, "atomic parameters"),
    "model.fitting_net.rcond": (1e-3, "a custom least-squares cut-off for the energy bias"),
    "optimizer.type = LKF": ("LKF", "other optimizers"),
    "optimizer.type = AdaMuon": ("AdaMuon", "other optimizers"),
    "optimizer.type = HybridMuon": ("HybridMuon", "other optimizers"),
    "loss.start_pref_h": (1.0, "the Hessian term"),
    "loss.limit_pref_h": (1.0, "the Hessian term"),
    "loss.start_pref_pf": (1.0, "the atom-prefactor force term"),
    "loss.limit_pref_pf": (1.0, "the atom-prefactor force term"),
    "loss.use_default_pf": (True, "the atom-prefactor force term"),
    "loss.start_pref_gf": (1.0, "the generalized-force term"),
    "loss.limit_pref_gf": (1.0, "the generalized-force term"),
    "loss.numb_generalized_coord": (2, "the generalized-force term"),
    "loss.use_huber": (True, "the Huber loss"),
    "loss.loss_func": ("mae", "the MAE loss"),
    "loss.f_use_norm": (True, "the force-norm loss"),
    "training.training_data.min_pair_dist": (0.5, "frame filtering by distance"),
    "training.mixed_precision": ({"compute_prec": "float16"}, "mixed precision"),
    "training.save_dir": ("ckpt", "a checkpoint folder (use a path in save_ckpt)"),
    "training.ckpt_keep_ratio": (0.5, "ratio-based checkpoint keeping"),
    "training.enable_ema": (True, "EMA weights"),
    "training.ema_decay": (0.99, "EMA weights"),
    "training.ema_ckpt_keep": (2, "EMA weights"),
    "training.acc_freq": (4, "gradient accumulation"),
    "training.zero_stage": (2, "ZeRO sharding"),
    "training.neighbor_graph_method": ("dense", "PyTorch-Exportable options"),
    "training.enable_compile": (True, "torch.compile"),
    "training.enable_tf32": (True, "TF32"),
    "validating.full_validation": (True, "DeePMD-kit's full validation"),
    "validating.ema_full_validation": (True, "DeePMD-kit's full validation"),
    "validating.validation_freq": (100, "DeePMD-kit's full validation"),
    "validating.save_best": (False, "DeePMD-kit's full validation"),
    "validating.save_best_dir": ("best", "DeePMD-kit's full validation"),
    "validating.max_best_ckpt": (3, "DeePMD-kit's full validation"),
    "validating.validation_metric": ("F:RMSE", "DeePMD-kit's full validation"),
    "validating.full_val_file": ("v.log", "DeePMD-kit's full validation"),
    "validating.full_val_start": (0.1, "DeePMD-kit's full validation"),
    "validating.compiled_infer": (True, "DeePMD-kit's full validation"),
    "validating.tf32_infer": (True, "DeePMD-kit's full validation"),
    "validating.amp_infer": (True, "DeePMD-kit's full validation"),
    "nvnmd": ({"enable": True}, "NVNMD (TensorFlow only)"),
}
for _tag in ("dos", "population", "property", "polar", "dipole", "dpa4_ener"):
    REFUSED[f"model.fitting_net.type = {_tag}"] = (_tag, "non-energy fitting nets")
for _tag in ("dens", "ener_spin", "dos", "population", "property", "tensor"):
    REFUSED[f"loss.type = {_tag}"] = (_tag, "non-energy losses")
for _tag in (
    "loc_frame", "se_e2_a", "dpa4c", "dpa4", "se_e3", "se_a_tpe", "se_e2_r", "hybrid",
    "se_atten", "se_e3_tebd", "se_atten_v2", "dpa2", "se_a_ebd_v2", "se_a_mask",
):  # fmt: skip
    REFUSED[f"model.descriptor.type = {_tag}"] = (_tag, "other descriptors")

#: key id -> (probe, evidence, reason).  Evidence: ``"no-pt-backend"`` (the schema lists no
#: PyTorch backend), ``"pt-unread"`` (``dp --pt``'s sources never read it), ``"only-with
#: <key id>"`` (acts only together with a key dpa3 refuses) or ``"explained"`` (the reason
#: says why DeePMD-kit's PyTorch backend gives it no effect on a DPA3 energy model).
INERT: dict[str, tuple[object, str, str]] = {
    "model.data_bias_nsample": (5, "pt-unread", "DeePMD-kit 3.2's PyTorch trainer never reads it"),
    "learning_rate.scale_by_worker": ("sqrt", "pt-unread", "dp --pt never reads it"),
    "model.data_stat_protect": (
        0.1,
        "explained",
        "protects descriptor statistics computed from data; DPA3 fixes them (fix_stat_std)",
    ),
    "model.model_branch_alias": (["x"], "explained", "names of multi-task branches (metadata)"),
    "model.info": ({"note": 1}, "explained", "free-form metadata of a branch"),
    "model.bridging_r_inner": (0.3, "only-with model.bridging_method", "bridging only"),
    "model.bridging_r_outer": (0.9, "only-with model.bridging_method", "bridging only"),
    "loss.huber_delta": (0.1, "only-with loss.use_huber", "used only by the Huber loss"),
}

#: key id -> the branch that implements it while it is not merged (none at present).
OWNED_ELSEWHERE: dict[str, str] = {}
IMPLEMENTED["training.max_ckpt_keep"] = (
    2,
    "tests/python/test_checkpoint.py::test_max_ckpt_keep_as_dp",
)
_T_RGLOB = "tests/python/test_deepmd_data.py::test_rglob_patterns_key"
IMPLEMENTED["training.training_data.rglob_patterns"] = (["*"], _T_RGLOB)
IMPLEMENTED["training.validation_data.rglob_patterns"] = (["*"], _T_RGLOB)


def load_entries() -> list[dict]:
    """The fixture's entries, each with its key id (``id``)."""
    doc = json.loads(FIXTURE.read_text())
    out = []
    for e in doc["keys"]:
        if e["kind"] == "variant":
            e["id"] = f"{e['path']} = {e['value']}"
        else:
            ctx = {k: v for k, v in e["context"].items() if k.split(".")[0] in _VARIANT_TOPS}
            e["id"] = e["path"] + "".join(f" [{k}={v}]" for k, v in ctx.items())
        out.append(e)
    return out


# variant flags of these sections change the key set (lr decay keys, optimizer keys)
_VARIANT_TOPS = ("learning_rate", "optimizer")


def refused_ancestor(path: str) -> str | None:
    """The closest ancestor of ``path`` refused as a whole, if any."""
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        anc = ".".join(parts[:i])
        if anc in REFUSED:
            return anc
    return None


def status(e: dict) -> tuple[str, str]:
    """(status, detail) of a fixture entry for the docs table."""
    kid = e["id"]
    owner = OWNED_ELSEWHERE.get(kid)
    note = f" (branch `{owner}`)" if owner else ""
    if kid in IMPLEMENTED:
        test = IMPLEMENTED[kid][1]
        return "implemented" + note, f"`{test}`" if test else "typed config"
    if kid in REFUSED:
        return "refused" + note, REFUSED[kid][1]
    if kid in INERT:
        return "no effect (as dp --pt)", INERT[kid][2]
    anc = refused_ancestor(e["path"])
    if anc is not None:
        return "refused", f"with `{anc}`"
    if e.get("types") == ["dict"]:
        return "section", ""
    return "UNACCOUNTED", ""


def table() -> str:
    """The Markdown table of every key and its status."""
    rows = ["| key | status | detail |", "|---|---|---|"]
    for e in load_entries():
        st, detail = status(e)
        rows.append(f"| `{e['id']}` | {st} | {detail} |")
    return "\n".join(rows) + "\n"


def docs_block() -> str:
    return f"{BEGIN}\n{table()}{END}"


def write_docs() -> None:
    text = DOCS.read_text()
    a, b = text.index(BEGIN), text.index(END) + len(END)
    DOCS.write_text(text[:a] + docs_block() + text[b:])


if __name__ == "__main__":
    write_docs()
    sys.exit(0)
