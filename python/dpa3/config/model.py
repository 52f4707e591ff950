"""Typed configuration of a DPA3 energy model, parsed from DeePMD-kit's ``model`` section.

Defaults are DeePMD-kit's *schema* defaults (``deepmd/utils/argcheck.py``), which is what
``dp train`` sees after normalisation (not the class-constructor defaults).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ._base import ConfigError, Section, parse_activation, parse_precision

#: ``e_sel``/``a_sel`` value asking for the neighbour count of the data (``"auto[:factor]"``).
AUTO_SEL = "auto"
#: The repflow selections and the cut-off radius each counts neighbours within.
SEL_KEYS = (("e_sel", "e_rcut"), ("a_sel", "a_rcut"))

_REPFLOW_ALIASES = {
    "edge_use_dist": "edge_init_use_dist",
    "use_env_envelope": "use_exp_switch",
}


@dataclass(frozen=True)
class AutoSel:
    """``e_sel``/``a_sel`` = ``"auto"`` or ``"auto:factor"``: resolved from the training data.

    The value becomes the largest neighbour count within the cut-off times ``factor``
    (DeePMD-kit's default 1.1), rounded up to a multiple of 4.
    """

    factor: float = 1.1

    @staticmethod
    def parse(value: str, where: str) -> AutoSel:
        """Parse ``"auto"``/``"auto:f"`` (``f`` > 0); raises :class:`ConfigError` otherwise."""
        kind, _, f = value.partition(":")
        if kind != AUTO_SEL:
            raise ConfigError(
                f"'{where}' = {value!r}: expected an integer, '{AUTO_SEL}' or '{AUTO_SEL}:factor'"
            )
        if not f:
            return AutoSel()
        try:
            factor = float(f)
        except ValueError:
            raise ConfigError(f"'{where}' = {value!r}: bad factor") from None
        if not factor > 0:
            raise ConfigError(f"'{where}' = {value!r}: the factor must be positive")
        return AutoSel(factor)


@dataclass(frozen=True)
class RepflowConfig:
    """Hyper-parameters of the RepFlow block (``model.descriptor.repflow``)."""

    e_rcut: float
    e_rcut_smth: float
    e_sel: int
    a_rcut: float
    a_rcut_smth: float
    a_sel: int
    n_dim: int = 128
    e_dim: int = 64
    a_dim: int = 64
    nlayers: int = 6
    a_compress_rate: int = 0
    a_compress_e_rate: int = 1
    a_compress_use_split: bool = False
    n_multi_edge_message: int = 1
    axis_neuron: int = 4
    fix_stat_std: float = 0.3
    skip_stat: bool = False
    update_angle: bool = True
    update_style: str = "res_residual"
    update_residual: float = 0.1
    update_residual_init: str = "const"
    optim_update: bool = True
    smooth_edge_update: bool = False
    edge_init_use_dist: bool = False
    use_exp_switch: bool = False
    use_dynamic_sel: bool = False
    sel_reduce_factor: float = 10.0
    sequential_update: bool = False

    @property
    def e_norm(self) -> float:
        """Edge normaliser (capacity ``S_e``, or ``e_sel / sel_reduce_factor`` if dynamic)."""
        return self.e_sel / self.sel_reduce_factor if self.use_dynamic_sel else float(self.e_sel)

    @property
    def a_norm(self) -> float:
        """Angle normaliser (capacity ``S_a``, or ``a_sel / sel_reduce_factor`` if dynamic)."""
        return self.a_sel / self.sel_reduce_factor if self.use_dynamic_sel else float(self.a_sel)

    @property
    def n_comp_dim(self) -> int:
        """Width of the compressed node view used by the angle messages."""
        if self.a_compress_rate == 0:
            return self.n_dim
        return self.a_dim // self.a_compress_rate

    @property
    def e_comp_dim(self) -> int:
        """Width of the compressed edge view used by the angle messages."""
        if self.a_compress_rate == 0:
            return self.e_dim
        return (self.a_dim // (2 * self.a_compress_rate)) * self.a_compress_e_rate

    @staticmethod
    def parse(sec: Section, auto: dict[str, AutoSel] | None = None) -> RepflowConfig:
        """Parse and validate the ``repflow`` section.

        With ``auto`` (a dict to fill), ``e_sel``/``a_sel`` may be ``"auto[:f]"``: they are
        recorded in ``auto`` and set to 0 in the result, whose selection checks are left to
        :meth:`validate` after resolution.  Without it they must be integers.
        """
        kw: dict[str, Any] = {}
        for name in ("e_rcut", "e_rcut_smth", "a_rcut", "a_rcut_smth"):
            kw[name] = sec.get_float(name, required=True)
        for name, _ in SEL_KEYS:
            v = sec.get(name, required=True)
            if isinstance(v, str):
                if auto is None:
                    raise ConfigError(
                        f"'{sec.key(name)}' = {v!r}: resolve '{AUTO_SEL}' selections with "
                        "'dpa3 neighbor-stat' first (dpa3 train does this for you)"
                    )
                auto[name] = AutoSel.parse(v, sec.key(name))
                kw[name] = 0
                continue
            kw[name] = sec.get_int(name)
        d = RepflowConfig.__dataclass_fields__
        for name in (
            "n_dim",
            "e_dim",
            "a_dim",
            "nlayers",
            "a_compress_rate",
            "a_compress_e_rate",
            "n_multi_edge_message",
            "axis_neuron",
        ):
            kw[name] = sec.get_int(name, d[name].default)
        for name in ("fix_stat_std", "update_residual", "sel_reduce_factor"):
            kw[name] = sec.get_float(name, d[name].default)
        for name in (
            "a_compress_use_split",
            "skip_stat",
            "update_angle",
            "optim_update",
            "smooth_edge_update",
            "edge_init_use_dist",
            "use_exp_switch",
            "use_dynamic_sel",
            "sequential_update",
        ):
            kw[name] = sec.get_bool(name, d[name].default)
        kw["update_style"] = sec.choice(
            "update_style", ("res_residual", "res_avg", "res_incr"), "res_residual"
        )
        kw["update_residual_init"] = sec.choice("update_residual_init", ("const", "norm"), "const")
        sec.finish()
        cfg = RepflowConfig(**kw)
        cfg.validate(sec.path, check_sel=not auto)
        return cfg

    def validate(self, path: str = "repflow", check_sel: bool = True) -> None:
        """Check the cross-field constraints DeePMD-kit asserts (``e_sel``/``a_sel`` too
        unless ``check_sel`` is false: they are still ``"auto"``)."""

        def bad(name: str, msg: str) -> ConfigError:
            return ConfigError(f"'{path}.{name}': {name} {msg}")

        sels = ("e_sel", "a_sel") if check_sel else ()
        for name in (
            "n_dim",
            "e_dim",
            "a_dim",
            "nlayers",
            *sels,
            "axis_neuron",
            "n_multi_edge_message",
        ):
            if getattr(self, name) <= 0:
                raise bad(name, f"must be positive, got {getattr(self, name)}")
        for name in ("e_rcut", "a_rcut"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise bad(name, f"must be a positive distance, got {getattr(self, name)}")
        for name in ("e_rcut_smth", "a_rcut_smth"):
            if not getattr(self, name) >= 0:
                raise bad(name, f"must be >= 0, got {getattr(self, name)}")
        if self.e_rcut_smth >= self.e_rcut:
            raise bad(
                "e_rcut_smth", f"({self.e_rcut_smth}) must be smaller than e_rcut ({self.e_rcut})"
            )
        if self.a_rcut_smth >= self.a_rcut:
            raise bad(
                "a_rcut_smth", f"({self.a_rcut_smth}) must be smaller than a_rcut ({self.a_rcut})"
            )
        if self.a_rcut > self.e_rcut:
            raise bad("a_rcut", f"({self.a_rcut}) must not exceed e_rcut ({self.e_rcut})")
        if check_sel and self.a_sel > self.e_sel:
            raise bad("a_sel", f"({self.a_sel}) must not exceed e_sel ({self.e_sel})")
        if self.axis_neuron > self.e_dim or self.axis_neuron > self.n_dim:
            raise bad("axis_neuron", f"({self.axis_neuron}) must not exceed e_dim and n_dim")
        if self.a_compress_rate < 0:
            raise bad("a_compress_rate", "must be >= 0")
        if self.a_compress_rate > 0:
            if (self.a_dim * self.a_compress_e_rate) % (2 * self.a_compress_rate) != 0:
                raise bad(
                    "a_compress_rate",
                    "and a_compress_e_rate: a_dim * a_compress_e_rate must be divisible by "
                    f"2 * a_compress_rate ({self.a_dim} * {self.a_compress_e_rate} vs "
                    f"{2 * self.a_compress_rate})",
                )
            if self.a_compress_use_split and (
                self.n_comp_dim > self.n_dim or self.e_comp_dim > self.e_dim
            ):
                raise bad("a_compress_use_split", "needs the compressed widths within n_dim/e_dim")
        if self.a_compress_e_rate <= 0:
            raise bad("a_compress_e_rate", f"must be positive, got {self.a_compress_e_rate}")
        if self.use_dynamic_sel and not self.smooth_edge_update:
            raise bad("use_dynamic_sel", "requires smooth_edge_update = true")
        if self.sequential_update and (
            self.update_style != "res_residual" or not self.update_angle
        ):
            raise bad("sequential_update", "requires update_style 'res_residual' and update_angle")
        if self.use_dynamic_sel and self.sel_reduce_factor <= 0:
            raise bad("sel_reduce_factor", "must be positive")
        if not self.fix_stat_std >= 0:
            raise bad("fix_stat_std", f"must be >= 0, got {self.fix_stat_std}")


@dataclass(frozen=True)
class DescriptorConfig:
    """``model.descriptor`` of type ``dpa3``."""

    repflow: RepflowConfig
    activation: str = "silu"
    activation_threshold: float = 0.0
    precision: str = "float64"
    concat_output_tebd: bool = False
    use_tebd_bias: bool = False
    use_loc_mapping: bool = True
    env_protection: float = 0.0
    trainable: bool = True
    seed: int | None = None

    @staticmethod
    def parse(sec: Section, auto: dict[str, AutoSel] | None = None) -> DescriptorConfig:
        """Parse the descriptor section; only ``type: "dpa3"`` is accepted (``auto``: as for
        :meth:`RepflowConfig.parse`)."""
        kind = sec.get("type", required=True)
        if kind != "dpa3":
            raise ConfigError(
                f"'{sec.key('type')}' = {kind!r} is not supported by dpa3 (only the 'dpa3' "
                "descriptor)"
            )
        repflow = RepflowConfig.parse(sec.sub("repflow", _REPFLOW_ALIASES, required=True), auto)
        act, thr = parse_activation(
            sec.get_str("activation_function", "silu"), sec.key("activation_function")
        )
        prec = parse_precision(sec.get_str("precision", "default"), sec.key("precision"))
        kw = dict(
            repflow=repflow,
            activation=act,
            activation_threshold=thr,
            precision=prec,
            concat_output_tebd=sec.get_bool("concat_output_tebd", False),
            use_tebd_bias=sec.get_bool("use_tebd_bias", False),
            use_loc_mapping=sec.get_bool("use_loc_mapping", True),
            env_protection=sec.get_float("env_protection", 0.0),
            trainable=sec.get_bool("trainable", True),
            seed=sec.get("seed", None),
        )
        sec.reject_unless_default("exclude_types", [])
        sec.reject_unless_default("use_econf_tebd", False)
        sec.reject_unless_default("add_chg_spin_ebd", False)
        sec.reject_unless_default("default_chg_spin", None)
        sec.get("type_map")  # DeePMD-kit fills this from model.type_map
        sec.finish()
        return DescriptorConfig(**kw)


@dataclass(frozen=True)
class FittingConfig:
    """``model.fitting_net`` of type ``ener`` (one net shared by all types)."""

    neuron: tuple[int, ...] = (120, 120, 120)
    activation: str = "tanh"
    activation_threshold: float = 0.0
    precision: str = "float64"
    resnet_dt: bool = True
    trainable: bool = True
    seed: int | None = None

    ALIASES: ClassVar[dict[str, str]] = {"n_neuron": "neuron"}

    @staticmethod
    def parse(sec: Section) -> FittingConfig:
        """Parse the fitting section; options dpa3 does not implement are rejected by name."""
        kind = sec.get("type", "ener")
        if kind != "ener":
            raise ConfigError(
                f"'{sec.key('type')}' = {kind!r} is not supported by dpa3 (only 'ener' fitting)"
            )
        neuron = sec.get("neuron", [120, 120, 120])
        if not isinstance(neuron, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in neuron
        ):
            raise ConfigError(f"'{sec.key('neuron')}' must be a list of positive integers")
        act, thr = parse_activation(
            sec.get_str("activation_function", "tanh"), sec.key("activation_function")
        )
        prec = parse_precision(sec.get_str("precision", "default"), sec.key("precision"))
        trainable = sec.get("trainable", True)
        if isinstance(trainable, list):
            if not all(isinstance(t, bool) for t in trainable) or len(set(trainable)) > 1:
                raise ConfigError(f"'{sec.key('trainable')}': per-layer trainable is not supported")
            trainable = trainable[0] if trainable else True
        kw = dict(
            neuron=tuple(neuron),
            activation=act,
            activation_threshold=thr,
            precision=prec,
            resnet_dt=sec.get_bool("resnet_dt", True),
            trainable=bool(trainable),
            seed=sec.get("seed", None),
        )
        for name, default in (
            ("numb_fparam", 0),
            ("numb_aparam", 0),
            ("dim_case_embd", 0),
            ("atom_ener", []),
            ("use_aparam_as_mask", False),
            ("layer_name", None),
            ("default_fparam", None),
            ("rcond", None),
        ):
            sec.reject_unless_default(name, default)
        sec.finish()
        return FittingConfig(**kw)


@dataclass(frozen=True)
class ModelConfig:
    """A DPA3 energy model: type map, descriptor, fitting and statistics options."""

    type_map: tuple[str, ...]
    descriptor: DescriptorConfig
    fitting: FittingConfig = field(default_factory=FittingConfig)
    data_stat_nbatch: int = 10
    data_stat_protect: float = 1e-2
    preset_out_bias: tuple[float | None, ...] | None = None

    @property
    def ntypes(self) -> int:
        """Number of element types."""
        return len(self.type_map)

    @staticmethod
    def from_dict(data: dict[str, Any], path: str = "model") -> ModelConfig:
        """Parse a DeePMD-kit ``model`` section (raises :class:`ConfigError` naming the key)."""
        return ModelConfig.parse(Section(data, path))

    @staticmethod
    def parse(sec: Section, auto: dict[str, AutoSel] | None = None) -> ModelConfig:
        """Parse a ``model`` section (``auto``: as for :meth:`RepflowConfig.parse`).

        Keys that steer training, not the model (``finetune_head``, ``bias_adjust_mode``,
        ...), are accepted here; :class:`dpa3.config.train.ModelSection` reads them.
        """
        kind = sec.get("type", "standard")
        if kind not in ("standard", "ener"):
            raise ConfigError(
                f"'{sec.key('type')}' = {kind!r} is not supported by dpa3 (only the standard "
                "energy model; ZBL, linear and frozen combinations are not implemented)"
            )
        type_map = sec.get("type_map", required=True)
        if (
            not isinstance(type_map, list)
            or not type_map
            or not all(isinstance(t, str) and t for t in type_map)
        ):
            raise ConfigError(f"'{sec.key('type_map')}' must be a non-empty list of element names")
        if len(set(type_map)) != len(type_map):
            raise ConfigError(f"'{sec.key('type_map')}' has duplicate names: {type_map}")
        descriptor = DescriptorConfig.parse(sec.sub("descriptor", required=True), auto)
        fitting = FittingConfig.parse(sec.sub("fitting_net", FittingConfig.ALIASES, required=True))
        preset = sec.get("preset_out_bias", None)
        preset_bias = None
        if preset is not None:
            if not isinstance(preset, dict) or set(preset) - {"energy"}:
                raise ConfigError(f"'{sec.key('preset_out_bias')}' must be {{'energy': [...]}}")
            vals = preset.get("energy")
            if not isinstance(vals, list) or len(vals) != len(type_map):
                raise ConfigError(
                    f"'{sec.key('preset_out_bias')}.energy' needs one value (or null) per type"
                )
            preset_bias = tuple(None if v is None else float(v) for v in vals)
        for name, default in (
            ("pair_exclude_types", []),
            ("atom_exclude_types", []),
            ("srtab_add_bias", True),
            ("use_srtab", None),
            ("smin_alpha", None),
            ("sw_rmin", None),
            ("sw_rmax", None),
            ("type_embedding", None),
            ("modifier", None),
            ("compress", None),
            ("spin", None),
            ("bridging_method", "None"),
        ):
            sec.reject_unless_default(name, default)
        # accepted; used by the trainer / multi-task bookkeeping, not by the model itself
        for name in (
            "finetune_head",
            "bias_adjust_mode",
            "data_bias_nsample",
            "model_branch_alias",
            "info",
            "bridging_r_inner",
            "bridging_r_outer",
        ):
            sec.get(name)
        cfg = ModelConfig(
            type_map=tuple(type_map),
            descriptor=descriptor,
            fitting=fitting,
            data_stat_nbatch=sec.get_int("data_stat_nbatch", 10),
            data_stat_protect=sec.get_float("data_stat_protect", 1e-2),
            preset_out_bias=preset_bias,
        )
        sec.finish()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the *typed* config (stored in checkpoints and frozen models)."""
        return asdict(self)

    @staticmethod
    def from_typed_dict(d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`."""
        desc = dict(d["descriptor"])
        desc["repflow"] = RepflowConfig(**desc["repflow"])
        fit = dict(d["fitting"])
        fit["neuron"] = tuple(fit["neuron"])
        return ModelConfig(
            type_map=tuple(d["type_map"]),
            descriptor=DescriptorConfig(**desc),
            fitting=FittingConfig(**fit),
            data_stat_nbatch=d.get("data_stat_nbatch", 10),
            data_stat_protect=d.get("data_stat_protect", 1e-2),
            preset_out_bias=None
            if d.get("preset_out_bias") is None
            else tuple(d["preset_out_bias"]),
        )


def descriptor_dim_out(cfg: DescriptorConfig) -> int:
    """Width of the descriptor output (``n_dim``, doubled by ``concat_output_tebd``)."""
    return cfg.repflow.n_dim * (2 if cfg.concat_output_tebd else 1)


__all__ = [
    "AUTO_SEL",
    "SEL_KEYS",
    "AutoSel",
    "ConfigError",
    "DescriptorConfig",
    "FittingConfig",
    "ModelConfig",
    "RepflowConfig",
    "descriptor_dim_out",
]
