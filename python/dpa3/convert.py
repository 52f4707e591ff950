"""Import DeePMD-kit DPA3 energy models (training checkpoints or frozen ``.pth`` files).

:func:`convert_deepmd` (``dpa3 convert-deepmd IN OUT``) reads a DeePMD-kit PyTorch checkpoint
(``model.ckpt-*.pt``: a ``torch.save`` dict whose ``"model"`` entry is the trainer's state
dict, keys prefixed ``model.<head>.``, with the model parameters in ``_extra_state``) or a
frozen TorchScript ``.pth`` (parameters in its ``model_def_script`` attribute) and writes a
dpa3 checkpoint.
Only DeePMD-kit itself is *not* needed: the files are read with torch alone.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, ModelConfig
from .errors import UsageError
from .model import EnergyModel

# keys DeePMD-kit's normalisation adds to a model section that carry no model information
# (``spin``/``type_embedding`` stay: the model parser refuses them by name unless null)
_DEEPMD_INTERNAL_MODEL_KEYS = ("resuming", "ntypes", "srtab_add_bias")


def _clean_model_params(params: dict[str, Any]) -> dict[str, Any]:
    """Drop the DeePMD-kit bookkeeping keys our strict config parser would reject."""
    params = json.loads(json.dumps(params))
    for key in _DEEPMD_INTERNAL_MODEL_KEYS:
        params.pop(key, None)
    for sec in ("descriptor", "fitting_net"):
        sub = params.get(sec, {})
        for key in (
            "ntypes",
            "type_map",
            "dim_descrpt",
            "embedding_width",
            "mixed_types",
            "var_name",
            "dim_out",
            "type",
        ):
            if key == "type" and sec == "descriptor":
                continue
            if key == "type" and sub.get("type", "ener") == "ener":
                continue
            sub.pop(key, None)
    return params


# element type of each storage class name a pickled TorchScript archive refers to
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexDoubleStorage": torch.complex128,
    "ComplexFloatStorage": torch.complex64,
}


def _is_torchscript_archive(path: Path) -> bool:
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/data.pkl") for n in zf.namelist()) and any(
            "/code/__torch__/" in n for n in zf.namelist()
        )


def _is_dpa3_frozen(path: Path) -> bool:
    """Whether the TorchScript archive ``path`` was frozen by dpa3 (it holds dpa3's code)."""
    with zipfile.ZipFile(path) as zf:
        return any("/code/__torch__/dpa3/" in n for n in zf.namelist())


def _read_torchscript_state(path: Path) -> dict[str, Any]:
    """Tensors and string attributes of a TorchScript archive, without loading its code.

    ``torch.jit.load`` of a DeePMD-kit frozen model needs DeePMD-kit's custom ops; reading the
    pickled module state directly needs nothing but torch.  Returns ``{dotted.path: value}``
    for tensors, plus the top-level ``model_def_script`` string.
    """

    class _State:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.state: Any = None

        def __setstate__(self, state: Any) -> None:
            self.state = state

    with zipfile.ZipFile(path) as zf:
        pkl = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
        root = pkl[: -len("data.pkl")]

        class _Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                if module.startswith("__torch__"):
                    return _State
                if module == "torch" and name in _STORAGE_DTYPES:
                    # the legacy storage class names the element type: read it from the name
                    # (the class's .dtype warns that TypedStorage is deprecated)
                    return _STORAGE_DTYPES[name]
                return super().find_class(module, name)

            def persistent_load(self, pid: Any) -> Any:
                _, dtype, key, _, _ = pid
                if not isinstance(dtype, torch.dtype):
                    raise ConfigError(f"{path}: a tensor's storage has an unknown type {dtype!r}")
                raw = zf.read(f"{root}data/{key}")
                untyped = (
                    torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8)
                    if raw
                    else torch.UntypedStorage(0)
                )
                return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)

        with zf.open(pkl) as fh:
            top = _Unpickler(fh).load()

    out: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        state = obj.state if isinstance(obj, _State) else None
        if not isinstance(state, dict):
            return
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                out[prefix + key] = value
            elif isinstance(value, _State):
                walk(value, f"{prefix}{key}.")

    walk(top, "")
    if isinstance(top, _State) and isinstance(top.state, dict):
        script = top.state.get("model_def_script")
        if isinstance(script, str):
            out["model_def_script"] = script
    return out


def _read_deepmd_file(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Return ``(model_params, state)`` with state keys relative to the atomic model."""
    from .export.load import check_archive, is_deepmd_frozen

    if not path.is_file():
        raise FileNotFoundError(f"DeePMD-kit model file not found: {path}")
    check_archive(path)
    if _is_torchscript_archive(path):
        if not is_deepmd_frozen(path):
            raise ConfigError(
                f"{path}: a TorchScript file, but not a DeePMD-kit frozen model"
                + (" (a dpa3 frozen model: no conversion needed)" if _is_dpa3_frozen(path) else "")
            )
        top = _read_torchscript_state(path)
        if "model_def_script" not in top:
            raise ConfigError(f"{path}: a TorchScript file, but not a DeePMD-kit frozen model")
        params = json.loads(top.pop("model_def_script"))
        state = top
        prefix = "atomic_model."
    else:
        try:
            ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ConfigError(
                f"{path}: neither a DeePMD-kit checkpoint nor a frozen .pth "
                f"({type(exc).__name__}: {exc})"
            ) from None
        from .train.checkpoint import CHECKPOINT_FORMAT

        if isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT:
            raise ConfigError(f"{path}: a dpa3 checkpoint already, not a DeePMD-kit one")
        state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict):
            raise ConfigError(f"{path}: no model state dict found")
        extra = state.get("_extra_state", {})
        params = extra.get("model_params") if isinstance(extra, dict) else None
        if params is None:
            raise ConfigError(f"{path}: checkpoint has no '_extra_state.model_params'")
        heads = sorted({k.split(".")[1] for k in state if k.startswith("model.")})
        if "model_dict" in params:
            raise ConfigError(
                f"{path}: multi-task checkpoints are not supported by "
                "convert-deepmd yet (heads: " + ", ".join(heads) + ")"
            )
        if len(heads) != 1:
            raise ConfigError(f"{path}: expected one model head, found {heads}")
        prefix = f"model.{heads[0]}.atomic_model."
    _check_model_kind(params, path)
    rel = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return params, rel


def _check_model_kind(params: dict[str, Any], path: Path) -> None:
    """Refuse, naming the key, models that are not a single DPA3 energy model."""
    kind = params.get("type", "standard")
    if kind not in ("standard", "ener"):
        raise ConfigError(
            f"{path}: 'model.type' = {kind!r} is not supported by dpa3 convert-deepmd (only a "
            "standard DPA3 energy model; ZBL, linear and frozen combinations are not)"
        )
    if params.get("use_srtab") is not None:
        raise ConfigError(
            f"{path}: 'model.use_srtab' (a ZBL/tabulated model) is not supported "
            "by dpa3 convert-deepmd"
        )
    if params.get("spin") is not None:
        raise ConfigError(f"{path}: 'model.spin' (a spin model) is not supported by dpa3")
    desc = params.get("descriptor", {})
    if desc.get("type") != "dpa3":
        raise ConfigError(
            f"{path}: 'model.descriptor.type' = {desc.get('type')!r} is not supported by dpa3 "
            "convert-deepmd (only DPA3 models)"
        )
    fit = params.get("fitting_net", {})
    if fit.get("type", "ener") != "ener":
        raise ConfigError(
            f"{path}: 'model.fitting_net.type' = {fit.get('type')!r} is not supported by dpa3 "
            "convert-deepmd (only energy models)"
        )


def _map_state(rel: dict[str, torch.Tensor], model: EnergyModel) -> dict[str, torch.Tensor]:
    """Translate DeePMD-kit state keys to ours; every DeePMD tensor must be accounted for."""
    cfg = model.cfg
    ntypes = cfg.ntypes
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in rel:
            raise ConfigError(f"DeePMD-kit state lacks '{key}'")
        used.add(key)
        return rel[key].detach().to(torch.float64)

    out: dict[str, torch.Tensor] = {}
    target = model.state_dict()
    d = "descriptor.repflows."
    tebd = "descriptor.type_embedding.embedding.embedding_net.layers.0."
    out["descriptor.type_embedding.layer.matrix"] = take(tebd + "matrix")
    if "descriptor.type_embedding.layer.bias" in target:
        out["descriptor.type_embedding.layer.bias"] = take(tebd + "bias")
    for k in ("matrix", "bias"):
        out[f"descriptor.edge_embd.{k}"] = take(f"{d}edge_embd.{k}")
    out["descriptor.angle_embd.matrix"] = take(f"{d}angle_embd.matrix")
    mean, std = take(d + "mean"), take(d + "stddev")
    if mean.abs().max() != 0:
        raise ConfigError("DeePMD-kit descriptor has a non-zero mean; DPA3 fixes it at 0")
    std = std.reshape(ntypes, -1, 4)
    if (std - std[:, :1, :]).abs().max() > 0:
        raise ConfigError("DeePMD-kit descriptor std varies over neighbour slots")
    out["descriptor.stddev"] = std[:, 0, :]
    for name in target:
        if not name.startswith("descriptor.layers."):
            continue
        parts = name.split(".")
        layer, leaf = parts[2], ".".join(parts[3:])
        src = f"{d}layers.{layer}.{leaf}"
        if leaf.endswith("_residual"):
            vecs = []
            k = 0
            while f"{src}.{k}" in rel:
                vecs.append(take(f"{src}.{k}"))
                k += 1
            out[name] = torch.stack(vecs)
        else:
            out[name] = take(src)
    nhidden = len(cfg.fitting.neuron)
    f = "fitting_net.filter_layers.networks.0.layers."
    for name in target:
        if name.startswith("fitting.layers."):
            _, _, k, leaf = name.split(".")
            out[name] = take(f"{f}{k}.{leaf}")
        elif name.startswith("fitting.out."):
            out[name] = take(f"{f}{nhidden}.{name.split('.')[-1]}")
    bias_atom_e = take("fitting_net.bias_atom_e").reshape(ntypes)
    out["out_bias"] = take("out_bias").reshape(-1)[:ntypes] + bias_atom_e
    out["out_std"] = take("out_std").reshape(-1)[:ntypes]
    for key in [k for k in rel if k.endswith("emask.type_mask")]:
        if not bool(take(key).to(torch.bool).all()):  # exclusion masks of a frozen model
            raise ConfigError(f"DeePMD-kit model excludes types ('{key}'); not supported by dpa3")
    ignorable = (
        "fitting_net.filter_layers._networks.",
        "_extra_state",
        "fitting_net.case_embd",
        "fitting_net.fparam",
        "fitting_net.aparam",
    )
    left = [k for k in rel if k not in used and not k.startswith(ignorable)]
    if left:
        raise ConfigError(f"DeePMD-kit state has tensors dpa3 does not use: {left[:8]}")
    missing = set(target) - set(out)
    if missing:
        raise ConfigError(f"internal: no DeePMD-kit source for {sorted(missing)}")
    return {k: v.to(target[k].dtype).reshape(target[k].shape) for k, v in out.items()}


def load_deepmd_model(path: str | Path) -> EnergyModel:
    """Build an :class:`EnergyModel` with the weights of a DeePMD-kit DPA3 model file."""
    path = Path(path)
    params, rel = _read_deepmd_file(path)
    try:
        cfg = ModelConfig.from_dict(_clean_model_params(params))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    model = EnergyModel(cfg)
    model.load_state_dict(_map_state(rel, model))
    return model


def convert_deepmd(src: str | Path, output: str | Path) -> EnergyModel:
    """Write a dpa3 checkpoint (step 0) with the weights of a DeePMD-kit DPA3 model file.

    ``src`` is a DeePMD-kit checkpoint or frozen ``.pth``; ``output`` the dpa3 checkpoint
    written (atomically).  Returns the converted model.

    Raises
    ------
    FileNotFoundError
        If ``src`` does not exist.
    CheckpointError
        If ``src`` cannot hold a model (:func:`dpa3.export.load.check_archive`).
    ConfigError
        If ``src`` is not a single-task DeePMD-kit DPA3 energy model that dpa3 can represent
        (a dpa3 checkpoint or frozen model is named as one).
    UsageError
        If ``output`` is ``src``.
    """
    from .train.checkpoint import atomic_torch_save, make_checkpoint

    src = Path(src)
    out = Path(output)
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise UsageError(
            f"convert-deepmd: the output '{output}' is the input model; write the dpa3 "
            "checkpoint to another file so that the DeePMD-kit one stays"
        )
    params, _ = _read_deepmd_file(src)
    model = load_deepmd_model(src)
    ckpt = make_checkpoint(
        step=0,
        model_config=model.cfg.to_dict(),
        input_config={"model": _clean_model_params(params), "converted_from": str(src)},
        model_state=model.state_dict(),
        optimizer_state=None,
        rng_state=None,
        sampler_state=None,
    )
    atomic_torch_save(ckpt, output)
    return model
