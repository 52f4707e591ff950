"""Write the key paths of DeePMD-kit's input schema for a DPA3 energy model as a fixture.

Walks ``deepmd.utils.argcheck.gen_args()`` (the schema ``dp train`` checks an ``input.json``
against) and writes ``tests/data/config_keys/deepmd_keys.json``: one entry per key path, with
its type, default, aliases, the backends its documentation names (``"Supported Backend:
..."``; ``null`` when the documentation names none, i.e. every backend) and ``pt_mentions``:
whether the quoted key name occurs in DeePMD-kit's PyTorch runtime sources (``deepmd/pt``,
``deepmd/dpmodel``), i.e. whether ``dp --pt`` can read it at all.  Variants are walked
where a DPA3 energy model can use them (model ``standard``, descriptor ``dpa3``, fitting
``ener``, loss ``ener``, every learning rate, optimizers ``Adam``/``AdamW``); for the other
choices of a variant flag only the choice itself is listed (dpa3 must refuse it by name).

Needs DeePMD-kit (``/work/main/.venv-deepmd/bin/python tests/config/generate_keys.py``);
``tests/config/test_config_keys.py`` reads the fixture without it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from deepmd import __version__ as dp_version
from deepmd.utils import argcheck

OUT = Path(__file__).resolve().parents[1] / "data" / "config_keys" / "deepmd_keys.json"

#: Variant choices walked (flag path -> choices); other choices are listed, not walked.
WALK = {
    "model.type": ("standard",),
    "model.descriptor.type": ("dpa3",),
    "model.fitting_net.type": ("ener",),
    "loss.type": ("ener",),
    "learning_rate.type": ("exp", "cosine", "wsd"),
    "optimizer.type": ("Adam", "AdamW"),
}

_BACKENDS = re.compile(r"\(Supported Backend: ([^)]*)\)")

#: DeePMD-kit's PyTorch runtime: where ``dp --pt`` reads its input keys.
_PT_SOURCES = ("pt", "dpmodel")


def _pt_source_text() -> str:
    root = Path(argcheck.__file__).resolve().parents[1]
    return "\n".join(
        f.read_text(errors="replace") for sub in _PT_SOURCES for f in (root / sub).rglob("*.py")
    )


def _jsonable(v):
    if type(v).__name__ == "_Flags":  # dargs' "no default": the key is left absent
        return {"absent": True}
    try:
        json.dumps(v)
        return v
    except TypeError:
        return repr(v)


def _types(arg) -> list[str]:
    dt = arg.dtype if isinstance(arg.dtype, (tuple, list, set, frozenset)) else [arg.dtype]
    out = []
    for t in dt:
        out.append("None" if t is type(None) else t.__name__ if isinstance(t, type) else str(t))
    return sorted(out)


def _backends(doc: str | None) -> list[str] | None:
    m = _BACKENDS.search(doc or "")
    return None if m is None else [b.strip() for b in m.group(1).split(",")]


def walk(arg, prefix: str, ctx: dict[str, str], out: list[dict]) -> None:
    """Append ``arg`` (at ``prefix``) and everything below it to ``out``."""
    path = f"{prefix}.{arg.name}" if prefix else arg.name
    out.append(
        {
            "path": path,
            "context": dict(ctx),
            "kind": "key",
            "types": _types(arg),
            "optional": bool(arg.optional),
            "default": _jsonable(arg.default),
            "aliases": sorted(arg.alias),
            "backends": _backends(arg.doc),
            "pt_mentions": any(
                f"{q}{n}{q}" in _PT_TEXT for n in (arg.name, *arg.alias) for q in "\"'"
            ),
        }
    )
    _children(arg.sub_fields.values(), arg.sub_variants.values(), path, ctx, out)


def _children(fields, variants, path: str, ctx: dict[str, str], out: list[dict]) -> None:
    for sub in fields:
        walk(sub, path, ctx, out)
    for var in variants:
        flag = f"{path}.{var.flag_name}" if path else var.flag_name
        for tag, choice in var.choice_dict.items():
            walked = tag in WALK.get(flag, ())
            out.append(
                {
                    "path": flag,
                    "context": dict(ctx),
                    "kind": "variant",
                    "value": tag,
                    "default": var.default_tag == tag,
                    "walked": walked,
                    "backends": _backends(choice.doc),
                }
            )
            if walked:
                sub_ctx = dict(ctx, **{flag: tag})
                _children(
                    choice.sub_fields.values(), choice.sub_variants.values(), path, sub_ctx, out
                )


_PT_TEXT = ""


def main() -> int:
    global _PT_TEXT
    _PT_TEXT = _pt_source_text()
    out: list[dict] = []
    for arg in argcheck.gen_args(multi_task=False):
        walk(arg, "", {}, out)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "generator": "tests/config/generate_keys.py",
        "deepmd_version": dp_version,
        "keys": out,
    }
    OUT.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"{len(out)} entries -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
