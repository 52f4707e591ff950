"""Schema of ``metadata.json``, the extra file stored inside every frozen model.

The LAMMPS plugin reads it at load time (``format_version`` must be one it knows) and logs
versions and precision; :func:`dpa3.export.load_frozen` returns it as a dict.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from ..errors import ModelFileError

#: Version of this schema; bump when a field changes meaning or a required field is added.
FORMAT_VERSION = 1
#: Name of the extra file inside the TorchScript archive.
METADATA_FILE = "metadata.json"

#: Fields computed by :func:`build_metadata` (user metadata cannot override them).
REQUIRED_FIELDS = (
    "format_version",
    "dpa3_version",
    "torch_version",
    "precision",
    "type_map",
    "rcut",
    "n_layers",
    "n_dim",
)


def _precision_of(module: torch.nn.Module, declared: dict[str, str]) -> str:
    """Precision name declared by the model, else the dtype of its floating parameters."""
    if "precision" in declared:
        return str(declared["precision"])
    for p in module.parameters():
        if p.is_floating_point():
            return {torch.float64: "float64", torch.float32: "float32"}.get(p.dtype, str(p.dtype))
    return "float64"


def build_metadata(
    scripted: torch.jit.ScriptModule,
    module: torch.nn.Module,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Metadata of a model about to be frozen.

    Parameters
    ----------
    scripted
        The scripted model; its getters (``get_type_map``, ``get_rcut``, ``get_num_layers``,
        ``get_exchange_width``, optional ``get_metadata``) provide the values.
    module
        The eager module (used to infer the precision if the model does not declare one).
    extra
        Additional JSON-serialisable fields (e.g. training provenance); they cannot replace
        the fields in :data:`REQUIRED_FIELDS` except ``precision``.

    Raises
    ------
    ModelFileError
        If ``extra`` tries to set a computed field.
    TypeError
        If a value is not JSON-serialisable.
    """
    from .. import __version__

    declared: dict[str, str] = {}
    if hasattr(scripted, "get_metadata"):
        declared = dict(scripted.get_metadata())
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "dpa3_version": __version__,
        "torch_version": torch.__version__,
        "precision": _precision_of(module, declared),
        "type_map": list(scripted.get_type_map()),
        "rcut": float(scripted.get_rcut()),
        "n_layers": int(scripted.get_num_layers()),
        "n_dim": int(scripted.get_exchange_width()),
    }
    for key, value in (extra or {}).items():
        if key in REQUIRED_FIELDS and key != "precision":
            raise ModelFileError(f"metadata field {key!r} is computed by freeze and cannot be set")
        meta[key] = value
    json.dumps(meta)  # fail here, not halfway through writing, if a value is not serialisable
    return meta


def parse_metadata(text: str | bytes, source: str = "model") -> dict[str, Any]:
    """Parse and check the ``metadata.json`` of a frozen model.

    Raises :class:`dpa3.errors.ModelFileError` if it is missing, not a JSON object, of another
    ``format_version`` or lacks a field of :data:`REQUIRED_FIELDS`.
    """
    if not text:
        raise ModelFileError(
            f"{source} has no {METADATA_FILE}: it was not frozen with dpa3.export.freeze"
        )
    try:
        meta = json.loads(text)
    except ValueError as err:
        raise ModelFileError(f"{source}: {METADATA_FILE} is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{source}: {METADATA_FILE} is not a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{source}: metadata format_version {version!r} is not supported "
            f"(this dpa3 reads version {FORMAT_VERSION})"
        )
    missing = [k for k in REQUIRED_FIELDS if k not in meta]
    if missing:
        raise ModelFileError(f"{source}: {METADATA_FILE} lacks {', '.join(missing)}")
    return meta
