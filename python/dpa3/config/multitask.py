"""Typed configuration of multi-task training, parsed from DeePMD-kit's multi-task ``input.json``.

Layout (DeePMD-kit PyTorch backend)::

    "model": {
      "shared_dict": {"type_map_all": ["O", "H", "Cu"], "dpa3_descriptor": {...}},
      "model_dict": {
        "water": {"type_map": "type_map_all", "descriptor": "dpa3_descriptor",
                  "fitting_net": {...}},
        "alloy": {"type_map": "type_map_all", "descriptor": "dpa3_descriptor",
                  "fitting_net": {...}}}},
    "learning_rate": {...}, "optimizer": {...},
    "loss_dict": {"water": {...}, "alloy": {...}},
    "training": {"data_dict": {"water": {"training_data": {...}, "validation_data": {...},
                                         "stat_file": "..."}, "alloy": {...}},
                 "model_prob": {"water": 1.0, "alloy": 2.0}, "numb_steps": ..., ...}

Rules (what dpa3 implements):

* Every task names the *same* shared descriptor (``"descriptor": "<key>"`` or ``"<key>:0"``);
  one descriptor instance, type embedding included, serves every task.  Other share levels,
  per-task descriptors and shared fitting nets are rejected by name.
* ``type_map`` of a task is a list or the name of a list in ``shared_dict``.  The shared
  descriptor uses the *union* of the tasks' type maps (in order of first appearance), and
  every head is a model over that union type map (DeePMD-kit requires one shared type map,
  which is the special case where all tasks name the same list).
* ``loss_dict`` gives each task its ``ener`` loss (a task left out gets the default loss);
  ``learning_rate`` and ``optimizer`` are shared.
* ``training.data_dict.<task>`` holds ``training_data``, ``validation_data``, ``stat_file``
  and ``stat_file_mode`` of that task (as in DeePMD-kit 3.2's schema); every other
  ``training`` key is shared by all tasks.
* ``training.model_prob``: a weight >= 0 for *every* task (normalised to probabilities);
  without it, tasks are drawn in proportion to their number of training systems (what
  DeePMD-kit's code does).  ``numb_steps`` is required (``numb_epoch`` is single-task).

Each task is turned into a complete single-task ``input.json`` (shared references
expanded) and parsed by :class:`dpa3.config.train.InputConfig`, so every check of the
single-task path applies; error messages are rewritten to the multi-task key paths.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from ._base import ConfigError, Section
from .model import ModelConfig
from .train import InputConfig

#: ``--model-branch`` value that asks for a freshly initialised fitting net.
RANDOM_BRANCH = "RANDOM"

_DATA_KEYS = ("training_data", "validation_data", "stat_file", "stat_file_mode")


def is_multitask_input(data: Any) -> bool:
    """Whether a parsed ``input.json`` is a multi-task input (``model.model_dict``)."""
    return (
        isinstance(data, dict)
        and isinstance(data.get("model"), dict)
        and "model_dict" in data["model"]
    )


def _shared_ref(value: str, shared: dict[str, Any], where: str) -> tuple[str, Any]:
    """Resolve ``"key"`` / ``"key:level"`` in ``shared_dict``; only level 0 is supported."""
    key, _, level = value.partition(":")
    if level not in ("", "0"):
        raise ConfigError(
            f"'{where}' = {value!r}: share level {level} is not supported by dpa3 (only 0: "
            "the whole descriptor is shared)"
        )
    if key not in shared:
        known = ", ".join(sorted(shared)) or "(none)"
        raise ConfigError(f"'{where}' = {value!r} is not a key of 'model.shared_dict' ({known})")
    return key, shared[key]


def _type_map_of(value: Any, shared: dict[str, Any], where: str) -> list[str]:
    if isinstance(value, str):
        _, value = _shared_ref(value, shared, where)
    if not isinstance(value, list) or not value or not all(isinstance(t, str) and t for t in value):
        raise ConfigError(f"'{where}' must be a non-empty list of element names")
    if len(set(value)) != len(value):
        raise ConfigError(f"'{where}' has duplicate names: {value}")
    return list(value)


def task_error(msg: str, task: str, desc_key: str) -> str:
    """Map key paths of a task's expanded single-task input back to the multi-task input."""
    table = (
        ("training.training_data", f"training.data_dict.{task}.training_data"),
        ("training.validation_data", f"training.data_dict.{task}.validation_data"),
        ("training.stat_file_mode", f"training.data_dict.{task}.stat_file_mode"),
        ("training.stat_file", f"training.data_dict.{task}.stat_file"),
        ("loss", f"loss_dict.{task}"),
        ("model.descriptor", f"model.shared_dict.{desc_key}"),
        ("model", f"model.model_dict.{task}"),
    )

    def sub(m: re.Match[str]) -> str:
        path = m.group(1)
        for old, new in table:
            if path == old or path.startswith(old + "."):
                return "'" + new + path[len(old) :]
        return m.group(0)

    return f"task '{task}': " + re.sub(r"'([A-Za-z_][\w.]*)", sub, msg)


@dataclass(frozen=True)
class MultiTaskConfig:
    """A parsed multi-task input.

    Attributes
    ----------
    tasks
        Per task (in ``model_dict`` order) the equivalent single-task input, parsed (its
        ``source`` is the single-task ``input.json`` dict: shared references expanded,
        ``type_map`` = the union; stored with each head in checkpoints).
    type_map
        The union type map used by the shared descriptor and every head.
    task_type_maps
        Each task's own type map as written.
    descriptor_key
        The ``shared_dict`` key of the shared descriptor.
    model_prob
        Raw task weights (``None``: proportional to the number of training systems).
    source
        A copy of the multi-task ``input.json`` dict; only written out (:meth:`record`).
    """

    tasks: dict[str, InputConfig]
    type_map: tuple[str, ...]
    task_type_maps: dict[str, tuple[str, ...]]
    descriptor_key: str
    model_prob: dict[str, float] | None
    source: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def names(self) -> list[str]:
        """Task names in ``model_dict`` order."""
        return list(self.tasks)

    @property
    def inputs(self) -> dict[str, dict[str, Any]]:
        """Per task the equivalent single-task ``input.json`` dict (as written)."""
        return {n: t.source for n, t in self.tasks.items()}

    def record(self, model: ModelConfig) -> dict[str, Any]:
        """The input as a checkpoint stores it: ``source`` with the shared descriptor's
        ``"auto"`` selections replaced by ``model``'s integers."""
        out = copy.deepcopy(self.source)
        repflow = out["model"]["shared_dict"][self.descriptor_key]["repflow"]
        for key in self.tasks[self.names[0]].model.auto_sel:
            repflow[key] = getattr(model.descriptor.repflow, key)
        return out

    def normalized(self, models: dict[str, ModelConfig]) -> dict[str, Any]:
        """The input with every key dpa3 reads at its effective value, as ``out.json``, in
        DeePMD-kit's multi-task layout (``model.shared_dict``/``model_dict``, ``loss_dict``,
        ``training.model_prob``/``data_dict``), built from each task's single-task
        :meth:`InputConfig.normalized` (``models``: each head's resolved model config).

        One difference from ``dp``'s out.json: a ``model_dict`` entry keeps the references
        to ``shared_dict`` that the input has (``"descriptor": "<key>"``, and ``type_map``
        when given by name) and ``shared_dict`` holds the normalised descriptor.  ``dp``
        writes expanded copies there, from which neither dpa3 nor ``dp`` itself can train
        (``dp``: "Multitask model must have only one type_map!"); with the references both
        train from this file, with the shared descriptor.
        """
        per = {n: cfg.normalized(models[n]) for n, cfg in self.tasks.items()}
        first = per[self.names[0]]
        src = self.source["model"]
        shared = copy.deepcopy(src.get("shared_dict", {}))
        shared[self.descriptor_key] = first["model"]["descriptor"]
        model_dict: dict[str, Any] = {}
        for n, d in per.items():
            given = src["model_dict"][n]
            model = {
                "type_map": given["type_map"]
                if isinstance(given["type_map"], str)
                else list(self.task_type_maps[n]),
                "descriptor": given["descriptor"],
            }
            model.update((k, v) for k, v in d["model"].items() if k not in model)
            model_dict[n] = model
        training = {
            "model_prob": dict(self.model_prob or {}),
            "data_dict": {
                n: {k: d["training"][k] for k in _DATA_KEYS if k in d["training"]}
                for n, d in per.items()
            },
        }
        training.update((k, v) for k, v in first["training"].items() if k not in _DATA_KEYS)
        return {
            "model": {"shared_dict": shared, "model_dict": model_dict},
            "learning_rate": first["learning_rate"],
            "loss_dict": {n: d["loss"] for n, d in per.items()},
            "optimizer": first["optimizer"],
            "training": training,
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> MultiTaskConfig:
        """Parse a multi-task ``input.json`` dict (raises :class:`ConfigError` naming the key)."""
        top = Section(data, "")
        msec = top.sub("model", required=True)
        shared = msec.get("shared_dict", {})
        if not isinstance(shared, dict):
            raise ConfigError("'model.shared_dict' must be a JSON object")
        model_dict = msec.get("model_dict", required=True)
        if not isinstance(model_dict, dict) or not model_dict:
            raise ConfigError("'model.model_dict' must be a non-empty JSON object (task -> model)")
        msec.finish()
        names = list(model_dict)
        for name in names:
            if not isinstance(name, str) or not name or name == RANDOM_BRANCH:
                raise ConfigError(f"'model.model_dict': {name!r} cannot be a task name")
        heads = ", ".join(names)

        def check_names(given: dict[str, Any], where: str) -> None:
            unknown = [k for k in given if k not in model_dict and not k.startswith("_")]
            if unknown:
                raise ConfigError(
                    f"'{where}' names unknown task(s) {unknown}; the tasks are: {heads}"
                )

        # --- top level ----------------------------------------------------------------
        if top.has("loss"):
            raise ConfigError(
                "a multi-task input gives one loss per task in 'loss_dict', not 'loss'"
            )
        if top.has("learning_rate_dict"):
            raise ConfigError(
                "'learning_rate_dict' is not supported by dpa3 (one shared learning_rate)"
            )
        loss_dict = top.get("loss_dict", {})
        if not isinstance(loss_dict, dict):
            raise ConfigError("'loss_dict' must be a JSON object (task -> loss)")
        check_names(loss_dict, "loss_dict")
        training = top.get("training", required=True)
        if not isinstance(training, dict):
            raise ConfigError("'training' must be a JSON object")
        lr = top.get("learning_rate")
        opt = top.get("optimizer")
        validating = top.get("validating")  # checked by the single-task parser below
        nvnmd = top.get("nvnmd")  # rejected by the single-task parser below
        top.finish()

        # --- training: data_dict / model_prob / shared loop options ----------------------
        tsec = Section(training, "training")
        data_dict = tsec.get("data_dict", required=True)
        if not isinstance(data_dict, dict):
            raise ConfigError("'training.data_dict' must be a JSON object (task -> data)")
        check_names(data_dict, "training.data_dict")
        missing = [n for n in names if n not in data_dict]
        if missing:
            raise ConfigError(f"'training.data_dict' has no entry for task(s) {missing}")
        prob = tsec.get("model_prob", None)
        model_prob: dict[str, float] | None = None
        if prob not in (None, {}):
            if not isinstance(prob, dict):
                raise ConfigError("'training.model_prob' must be a JSON object (task -> weight)")
            check_names(prob, "training.model_prob")
            missing = [n for n in names if n not in prob]
            if missing:
                raise ConfigError(f"'training.model_prob' must give every task; missing: {missing}")
            model_prob = {}
            for n in names:
                w = prob[n]
                if (
                    isinstance(w, bool)
                    or not isinstance(w, (int, float))
                    or not w >= 0
                    or w == float("inf")
                ):
                    raise ConfigError(
                        f"'training.model_prob.{n}' must be a finite number >= 0, got {w!r}"
                    )
                model_prob[n] = float(w)
            if sum(model_prob.values()) <= 0:
                raise ConfigError("'training.model_prob' weights sum to zero")
        for key in _DATA_KEYS:
            if tsec.has(key):
                raise ConfigError(
                    f"'training.{key}': a multi-task input gives it per task in "
                    f"'training.data_dict.<task>.{key}'"
                )
        for key in ("numb_epoch", "num_epoch", "num_epoch_dict"):
            if tsec.has(key):
                raise ConfigError(
                    f"'training.{key}' is not supported in multi-task training; give numb_steps"
                )
        loop = {k: v for k, v in training.items() if k not in ("data_dict", "model_prob")}

        # --- tasks --------------------------------------------------------------------------
        desc_key: str | None = None
        descriptor: Any = None
        task_maps: dict[str, tuple[str, ...]] = {}
        union: list[str] = []
        for name in names:
            tm = model_dict[name]
            where = f"model.model_dict.{name}"
            if not isinstance(tm, dict):
                raise ConfigError(f"'{where}' must be a JSON object")
            if "type_map" not in tm:
                raise ConfigError(f"missing required key '{where}.type_map'")
            tmap = _type_map_of(tm["type_map"], shared, f"{where}.type_map")
            task_maps[name] = tuple(tmap)
            union += [t for t in tmap if t not in union]
            d = tm.get("descriptor")
            if not isinstance(d, str):
                raise ConfigError(
                    f"'{where}.descriptor' must name the shared descriptor in 'model.shared_dict' "
                    "(dpa3 shares one descriptor between all tasks)"
                )
            key, value = _shared_ref(d, shared, f"{where}.descriptor")
            if desc_key is None:
                desc_key, descriptor = key, value
            elif key != desc_key:
                raise ConfigError(
                    f"'{where}.descriptor' = {d!r}, but task '{names[0]}' uses {desc_key!r}: "
                    "all tasks must share one descriptor"
                )
            if not isinstance(descriptor, dict):
                raise ConfigError(f"'model.shared_dict.{desc_key}' must be a descriptor object")
            if isinstance(tm.get("fitting_net"), str):
                raise ConfigError(
                    f"'{where}.fitting_net' = {tm['fitting_net']!r}: sharing a fitting net between "
                    "tasks is not supported by dpa3 (give each task its own fitting_net)"
                )

        tasks: dict[str, InputConfig] = {}
        for name in names:
            model = {
                k: copy.deepcopy(v)
                for k, v in model_dict[name].items()
                if k not in ("type_map", "descriptor")
            }
            model["type_map"] = list(union)
            model["descriptor"] = copy.deepcopy(descriptor)
            dd = data_dict[name]
            if not isinstance(dd, dict):
                raise ConfigError(f"'training.data_dict.{name}' must be a JSON object")
            extra = [k for k in dd if k not in _DATA_KEYS and not k.startswith("_")]
            if extra:
                raise ConfigError(
                    f"unknown key 'training.data_dict.{name}.{extra[0]}' (expected "
                    f"{', '.join(_DATA_KEYS)})"
                )
            tr = copy.deepcopy(loop)
            for k in _DATA_KEYS:
                if dd.get(k) is not None:
                    tr[k] = copy.deepcopy(dd[k])
            single: dict[str, Any] = {"model": model, "training": tr}
            if lr is not None:
                single["learning_rate"] = copy.deepcopy(lr)
            if opt is not None:
                single["optimizer"] = copy.deepcopy(opt)
            for key, value in (("validating", validating), ("nvnmd", nvnmd)):
                if value is not None:
                    single[key] = copy.deepcopy(value)
            if loss_dict.get(name) is not None:
                single["loss"] = copy.deepcopy(loss_dict[name])
            try:
                tasks[name] = InputConfig.from_dict(single)
            except ConfigError as err:
                raise ConfigError(task_error(str(err), name, desc_key or "")) from None
        return MultiTaskConfig(
            tasks=tasks,
            type_map=tuple(union),
            task_type_maps=task_maps,
            descriptor_key=desc_key or "",
            model_prob=model_prob,
            source=copy.deepcopy(data),
        )


def unknown_head_error(name: str, heads: list[str], what: str = "head") -> ConfigError:
    """The error for a task name that is not one of ``heads`` (lists them, suggests one)."""
    import difflib

    hint = difflib.get_close_matches(name, heads, n=1)
    extra = f"; did you mean '{hint[0]}'?" if hint else ""
    return ConfigError(f"unknown {what} {name!r}{extra} (the heads are: {', '.join(heads)})")


__all__ = [
    "RANDOM_BRANCH",
    "MultiTaskConfig",
    "is_multitask_input",
    "task_error",
    "unknown_head_error",
]
