"""The ``model`` section of a training input, typed: the model, its ``"auto"`` selections and
the keys that steer training rather than the model (``finetune_head``, ``bias_adjust_mode``).

:class:`dpa3.config.model.ModelConfig` describes a model completely, so it needs integer
``e_sel``/``a_sel``; a training input may leave them ``"auto"`` until the trainer has counted
the neighbours in the data.  :class:`ModelSection` holds what the section says, and
:meth:`ModelSection.resolve` gives the model config once the selections are known.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

from ._base import Section
from .model import SEL_KEYS, AutoSel, ModelConfig


class BiasAdjustMode(str, Enum):
    """``model.bias_adjust_mode``: how fine-tuning re-fits the energy bias on the new data
    (``training.change_bias_after_training`` always uses :attr:`CHANGE`)."""

    #: Add the per-type least-squares fit of (label - prediction) to the bias.
    CHANGE = "change-by-statistic"
    #: Replace the bias by the statistics of the data, as a run from scratch does.
    SET = "set-by-statistic"


@dataclass(frozen=True)
class ModelSection:
    """A parsed ``model`` section of a (single-task) training input.

    Attributes
    ----------
    template
        The model config, with ``e_sel``/``a_sel`` set to 0 where they are ``"auto"``
        (use :meth:`resolve`, never the template, to build a model).
    auto_sel
        The ``"auto"`` selections by key (``"e_sel"``/``"a_sel"``).
    finetune_head
        ``model.finetune_head``: the head of a multi-task checkpoint to fine-tune from.
    bias_adjust_mode
        ``model.bias_adjust_mode`` (default change-by-statistic).
    path
        Key path of the section, for messages.
    """

    template: ModelConfig
    auto_sel: Mapping[str, AutoSel] = field(default_factory=dict)
    finetune_head: str | None = None
    bias_adjust_mode: BiasAdjustMode = BiasAdjustMode.CHANGE
    path: str = "model"

    @property
    def type_map(self) -> tuple[str, ...]:
        """The element names of the section."""
        return self.template.type_map

    def sel(self, key: str) -> int | AutoSel:
        """``e_sel``/``a_sel`` as written: an integer or an :class:`AutoSel`."""
        return self.auto_sel.get(key, getattr(self.template.descriptor.repflow, key))

    def rcut(self, sel_key: str) -> float:
        """The cut-off radius the selection ``sel_key`` counts neighbours within."""
        return float(getattr(self.template.descriptor.repflow, dict(SEL_KEYS)[sel_key]))

    def key(self, name: str) -> str:
        """Key path of a repflow option, for messages."""
        return f"{self.path}.descriptor.repflow.{name}"

    def resolve(self, e_sel: int, a_sel: int) -> ModelConfig:
        """The model config with these selections (checked as the parser checks them)."""
        rf = replace(self.template.descriptor.repflow, e_sel=e_sel, a_sel=a_sel)
        rf.validate(f"{self.path}.descriptor.repflow")
        return replace(self.template, descriptor=replace(self.template.descriptor, repflow=rf))

    def differences(self, other: ModelConfig) -> list[tuple[str, Any, Any]]:
        """Where the model this section describes differs from ``other`` (a checkpoint's):
        ``(key path, value here, value in other)`` for every option that changes the model.
        ``"auto"`` selections take ``other``'s values; the type map (compared by the caller),
        the seeds and the statistics options (``data_stat_*``, ``preset_out_bias``: read only
        when statistics are computed) are not compared."""
        rf = other.descriptor.repflow
        sel = {k: self.sel(k) for k in ("e_sel", "a_sel")}
        mine = replace(
            self.template,
            type_map=other.type_map,
            descriptor=replace(
                self.template.descriptor,
                repflow=replace(
                    self.template.descriptor.repflow,
                    **{k: getattr(rf, k) if isinstance(v, AutoSel) else v for k, v in sel.items()},
                ),
            ),
            data_stat_nbatch=other.data_stat_nbatch,
            data_stat_protect=other.data_stat_protect,
            preset_out_bias=other.preset_out_bias,
        )
        out: list[tuple[str, Any, Any]] = []

        def walk(a: Any, b: Any, path: str) -> None:
            if isinstance(a, dict) and isinstance(b, dict):
                for k in a:
                    if k != "seed":  # the input's key names (fitting: fitting_net)
                        name = "fitting_net" if path == self.path and k == "fitting" else k
                        walk(a[k], b.get(k), f"{path}.{name}")
            elif a != b:
                out.append((path, a, b))

        walk(asdict(mine), asdict(other), self.path)
        return out

    def to_input(self, model: ModelConfig | None = None) -> dict[str, Any]:
        """The section as a DeePMD-kit ``model`` dict with every key dpa3 reads at its
        effective value (``model``: the resolved config to write instead of the template,
        e.g. with the ``"auto"`` selections counted); :meth:`parse` of it gives back the
        same section (selections as integers)."""
        cfg = model or self.template
        desc, fit = cfg.descriptor, cfg.fitting
        out: dict[str, Any] = {
            "type": "standard",
            "type_map": list(cfg.type_map),
            "descriptor": {
                "type": "dpa3",
                "repflow": asdict(desc.repflow),
                "activation_function": _activation(desc.activation, desc.activation_threshold),
                "precision": desc.precision,
                "concat_output_tebd": desc.concat_output_tebd,
                "use_tebd_bias": desc.use_tebd_bias,
                "use_loc_mapping": desc.use_loc_mapping,
                "env_protection": desc.env_protection,
                "trainable": desc.trainable,
                "seed": desc.seed,
            },
            "fitting_net": {
                "type": "ener",
                "neuron": list(fit.neuron),
                "activation_function": _activation(fit.activation, fit.activation_threshold),
                "precision": fit.precision,
                "resnet_dt": fit.resnet_dt,
                "trainable": fit.trainable,
                "seed": fit.seed,
            },
            "data_stat_nbatch": cfg.data_stat_nbatch,
            "data_stat_protect": cfg.data_stat_protect,
            "preset_out_bias": None
            if cfg.preset_out_bias is None
            else {"energy": list(cfg.preset_out_bias)},
        }
        if self.bias_adjust_mode is not BiasAdjustMode.CHANGE:  # not a key of dp's schema
            out["bias_adjust_mode"] = self.bias_adjust_mode.value
        if self.finetune_head is not None:
            out["finetune_head"] = self.finetune_head
        return out

    @staticmethod
    def parse(sec: Section) -> ModelSection:
        """Parse the section (raises :class:`dpa3.config.ConfigError` naming the key)."""
        head = sec.get_str("finetune_head", None)
        mode = sec.choice(
            "bias_adjust_mode", [m.value for m in BiasAdjustMode], BiasAdjustMode.CHANGE.value
        )
        auto: dict[str, AutoSel] = {}
        template = ModelConfig.parse(sec, auto)
        return ModelSection(template, auto, head, BiasAdjustMode(mode), sec.path)


def _activation(name: str, threshold: float) -> str:
    """The DeePMD-kit spelling of a parsed activation (``silut:10.0``, ``tanh``, ...)."""
    return f"{name}:{threshold!r}" if name == "silut" else name


__all__ = ["BiasAdjustMode", "ModelSection"]
