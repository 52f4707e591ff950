"""The option combinations of the DeePMD-kit parity fixtures (``tests/data/parity/<combo>/``).

Read by ``generate_reference.py`` (needs DeePMD-kit); each entry is a ``repflow`` block, extra
descriptor and fitting keys, the precision and what the combination exercises.  The first twelve
are the model options of the DPA3 recipes; the rest each pin one option that is accepted by
``dpa3`` but is not in a recipe, together with one of the activation functions DeePMD-kit
accepts, so that every activation is checked against DeePMD-kit too.
"""

from __future__ import annotations

SMALL = {"n_dim": 16, "e_dim": 8, "a_dim": 8, "nlayers": 2, "axis_neuron": 4}
SMALL_FIT = {"neuron": [24, 24]}

WATER_RECIPE_REPFLOW = {
    "n_dim": 128,
    "e_dim": 64,
    "a_dim": 32,
    "nlayers": 6,
    "e_rcut": 6.0,
    "e_rcut_smth": 5.3,
    "e_sel": 120,
    "a_rcut": 4.0,
    "a_rcut_smth": 3.5,
    "a_sel": 30,
    "axis_neuron": 4,
    "fix_stat_std": 0.3,
    "a_compress_rate": 1,
    "a_compress_e_rate": 2,
    "a_compress_use_split": True,
    "update_angle": True,
    "smooth_edge_update": True,
    "edge_init_use_dist": True,
    "use_exp_switch": True,
    "update_style": "res_residual",
    "update_residual": 0.1,
    "update_residual_init": "const",
}
WATER_RECIPE_DESC = {
    "activation_function": "silut:10.0",
    "use_tebd_bias": False,
    "concat_output_tebd": False,
}
WATER_RECIPE_FIT = {
    "neuron": [240, 240, 240],
    "resnet_dt": True,
    "activation_function": "silut:10.0",
}


def _combo(
    repflow,
    desc=None,
    fit=None,
    precision="float64",
    freeze=False,
    random_stddev=False,
    allow_truncation=False,
    doc="",
):
    return {
        "repflow": repflow,
        "desc": desc or {},
        "fit": fit or dict(SMALL_FIT),
        "precision": precision,
        "freeze": freeze,
        "random_stddev": random_stddev,
        "allow_truncation": allow_truncation,
        "doc": doc,
    }


COMBOS: dict[str, dict] = {
    "water_recipe": _combo(
        dict(WATER_RECIPE_REPFLOW),
        dict(WATER_RECIPE_DESC),
        dict(WATER_RECIPE_FIT),
        allow_truncation=True,
        doc="water recipe (docs/dpa3-spec.md §6.1) in float64; a_sel=30 truncates in the water "
        "frame",
    ),
    "poly_switch": _combo(
        {
            **SMALL,
            "e_rcut": 5.0,
            "e_rcut_smth": 3.0,
            "e_sel": 72,
            "a_rcut": 3.5,
            "a_rcut_smth": 2.5,
            "a_sel": 24,
            "use_exp_switch": False,
            "smooth_edge_update": True,
            "fix_stat_std": 0.0,
        },
        freeze=True,
        random_stddev=True,
        doc="polynomial switch, smooth edge update; fix_stat_std=0 with a random per-type "
        "stddev buffer [s_r, s_a, s_a, s_a] (as data statistics would leave it)",
    ),
    "nonsmooth_edge": _combo(
        {
            **SMALL,
            "e_rcut": 4.5,
            "e_rcut_smth": 4.0,
            "e_sel": 40,
            "a_rcut": 3.2,
            "a_rcut_smth": 2.8,
            "a_sel": 9,
            "use_exp_switch": True,
            "smooth_edge_update": False,
        },
        allow_truncation=True,
        doc="legacy non-smooth edge update; e_sel=40 and a_sel=9 truncate (no ties at the cut)",
    ),
    "compress_linear": _combo(
        {
            **SMALL,
            "e_rcut": 5.5,
            "e_rcut_smth": 4.5,
            "e_sel": 88,
            "a_rcut": 4.0,
            "a_rcut_smth": 3.5,
            "a_sel": 36,
            "use_exp_switch": True,
            "smooth_edge_update": True,
            "a_compress_rate": 1,
            "a_compress_e_rate": 2,
            "a_compress_use_split": False,
        },
        doc="angle compression with linear projections (a_compress_n/e_linear)",
    ),
    "multi_edge": _combo(
        {
            **SMALL,
            "e_rcut": 4.0,
            "e_rcut_smth": 3.0,
            "e_sel": 36,
            "a_rcut": 3.0,
            "a_rcut_smth": 2.0,
            "a_sel": 16,
            "smooth_edge_update": True,
            "n_multi_edge_message": 2,
            "update_residual": 0.2,
            "update_residual_init": "norm",
        },
        {"activation_function": "silut:3.0"},
        doc="two edge-message heads, residual init 'norm', silut:3 descriptor activation",
    ),
    "dynamic_sel": _combo(
        {
            **SMALL,
            "e_rcut": 5.0,
            "e_rcut_smth": 4.5,
            "e_sel": 160,
            "a_rcut": 4.0,
            "a_rcut_smth": 3.5,
            "a_sel": 60,
            "use_exp_switch": True,
            "smooth_edge_update": True,
            "use_dynamic_sel": True,
            "sel_reduce_factor": 10.0,
        },
        doc="dynamic selection (flattened graph), normalisers e_sel/10=16, a_sel/10=6",
    ),
    "sequential": _combo(
        {
            **SMALL,
            "n_dim": 12,
            "e_rcut": 4.8,
            "e_rcut_smth": 3.8,
            "e_sel": 60,
            "a_rcut": 3.6,
            "a_rcut_smth": 3.0,
            "a_sel": 28,
            "sequential_update": True,
            "smooth_edge_update": False,
        },
        doc="sequential update (non-smooth padding uses the updated edge); n_dim=12=2*ntypes "
        "triggers the type-embedding [I, I] residual",
    ),
    "res_avg": _combo(
        {
            **SMALL,
            "e_rcut": 5.0,
            "e_rcut_smth": 4.4,
            "e_sel": 72,
            "a_rcut": 3.8,
            "a_rcut_smth": 3.2,
            "a_sel": 32,
            "use_exp_switch": True,
            "smooth_edge_update": True,
            "edge_init_use_dist": True,
            "update_style": "res_avg",
        },
        doc="update_style res_avg, edge_init_use_dist",
    ),
    "res_incr": _combo(
        {
            **SMALL,
            "e_rcut": 4.5,
            "e_rcut_smth": 3.5,
            "e_sel": 52,
            "a_rcut": 3.5,
            "a_rcut_smth": 3.0,
            "a_sel": 24,
            "smooth_edge_update": True,
            "update_style": "res_incr",
            "update_residual_init": "norm",
        },
        doc="update_style res_incr (update_residual_init has no effect: no residual params)",
    ),
    "concat_tebd_bias": _combo(
        {
            **SMALL,
            "e_rcut": 5.0,
            "e_rcut_smth": 4.4,
            "e_sel": 72,
            "a_rcut": 3.4,
            "a_rcut_smth": 3.0,
            "a_sel": 24,
            "use_exp_switch": True,
            "smooth_edge_update": True,
        },
        {"concat_output_tebd": True, "use_tebd_bias": True, "activation_function": "tanh"},
        {"neuron": [64, 64, 32], "resnet_dt": False},
        doc="concat_output_tebd (dim_descrpt 32) + tebd bias, tanh; fitting 32->64 ([x,x] "
        "residual), 64->64 (identity residual), 64->32 (plain), resnet_dt false",
    ),
    "no_angle_update": _combo(
        {
            **SMALL,
            "e_rcut": 6.0,
            "e_rcut_smth": 5.0,
            "e_sel": 104,
            "a_rcut": 4.0,
            "a_rcut_smth": 3.0,
            "a_sel": 36,
            "smooth_edge_update": True,
            "update_angle": False,
        },
        doc="update_angle false",
    ),
    "water_recipe_f32": _combo(
        dict(WATER_RECIPE_REPFLOW),
        dict(WATER_RECIPE_DESC),
        dict(WATER_RECIPE_FIT),
        precision="float32",
        freeze=True,
        allow_truncation=True,
        doc="water recipe (docs/dpa3-spec.md §6.1) in float32 (descriptor and fitting)",
    ),
}

# Options accepted by dpa3 outside the recipes, each with one more activation function
# (tanh and silut are in the combos above).  Small model, float64 unless the name says f32.
_OPTS = {
    **SMALL,
    "e_rcut": 4.8,
    "e_rcut_smth": 4.0,
    "e_sel": 64,
    "a_rcut": 3.6,
    "a_rcut_smth": 3.0,
    "a_sel": 28,
    "use_exp_switch": True,
    "smooth_edge_update": True,
}


def _act(name):
    return {"activation_function": name}


COMBOS.update(
    {
        "no_optim_update": _combo(
            {**_OPTS, "optim_update": False},
            _act("relu"),
            {**SMALL_FIT, **_act("relu")},
            doc="optim_update false (edge/angle inputs concatenated, not split matmuls); relu",
        ),
        "no_loc_mapping": _combo(
            dict(_OPTS),
            {**_act("relu6"), "use_loc_mapping": False},
            {**SMALL_FIT, **_act("relu6")},
            doc="use_loc_mapping false (node features over all extended atoms); relu6",
        ),
        "compress_rate2": _combo(
            {**_OPTS, "a_compress_rate": 2, "a_compress_e_rate": 2, "a_compress_use_split": True},
            _act("softplus"),
            {**SMALL_FIT, **_act("softplus")},
            doc="a_compress_rate 2 (split views of n and e); softplus",
        ),
        "compress_e_rate1": _combo(
            {**_OPTS, "a_compress_rate": 1, "a_compress_e_rate": 1, "a_compress_use_split": False},
            _act("sigmoid"),
            {**SMALL_FIT, **_act("sigmoid")},
            doc="a_compress_e_rate 1 with linear compression; sigmoid",
        ),
        "axis_neuron6": _combo(
            {**_OPTS, "axis_neuron": 6},
            _act("gelu"),
            {**SMALL_FIT, **_act("gelu")},
            doc="axis_neuron 6 (descriptor width n_dim * 6); gelu",
        ),
        "dynamic_sel_factor4": _combo(
            {**_OPTS, "e_sel": 120, "a_sel": 48, "use_dynamic_sel": True, "sel_reduce_factor": 4.0},
            _act("silu"),
            {**SMALL_FIT, **_act("silu")},
            doc="dynamic selection with sel_reduce_factor 4 (normalisers e_sel/4, a_sel/4); silu",
        ),
        "desc_f32_fit_f64": _combo(
            dict(_OPTS),
            _act("linear"),
            {**SMALL_FIT, **_act("linear"), "precision": "float64"},
            precision="float32",
            doc="float32 descriptor with a float64 fitting net; linear activation",
        ),
    }
)
