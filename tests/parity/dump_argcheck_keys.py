"""Print the config keys DeePMD-kit's argcheck accepts for a DPA3 energy model.

Needs deepmd-kit (scripts/install_deepmd.sh). Output is Markdown (used in NOTES.md):
one table per section (model, descriptor `dpa3`, its `repflow` block, fitting `ener`),
with type, required/optional, default and aliases, read from the dargs `Argument`
objects, not guessed.

    python tests/parity/dump_argcheck_keys.py > /tmp/keys.md
"""

from __future__ import annotations

import sys

from deepmd.utils import argcheck


def _typestr(arg) -> str:
    dt = arg.dtype
    names = []
    for t in dt if isinstance(dt, (set, frozenset, tuple, list)) else [dt]:
        if t is type(None):
            names.append("None")
        elif isinstance(t, type):
            names.append(t.__name__)
        else:  # typing generics such as list[str]
            names.append(str(t))
    return " or ".join(n.replace("|", "\\|") for n in names)


def _row(arg, prefix: str = "") -> str:
    name = prefix + arg.name
    if arg.optional:
        req = "optional"
        d = getattr(arg, "default", None)
        # dargs uses a sentinel (_Flags.NONE) for "no default": the key is then left absent
        default = "(absent)" if type(d).__name__ == "_Flags" else repr(d)
    else:
        req = "**required**"
        default = ""
    alias = ", ".join(arg.alias) if arg.alias else ""
    return f"| `{name}` | {_typestr(arg)} | {req} | `{default}` | {alias} |"


def _table(title: str, args, prefix: str = "") -> list[str]:
    header = "| key | type | req. | default | aliases |"
    lines = [f"#### {title}", "", header, "|---|---|---|---|---|"]
    for a in args:
        lines.append(_row(a, prefix))
        for var in a.sub_variants.values() if a.sub_variants else []:
            lines.append(
                f"| `{prefix}{a.name}` variant flag `{var.flag_name}` | | | `{var.default_tag}` | |"
            )
    lines.append("")
    return lines


def main() -> int:
    out: list[str] = []
    model = argcheck.model_args()
    # model_args(): top-level `model` Argument; standard models live in a variant on "type"
    out += _table("`model` (top level, common to all model types)", model.sub_fields.values())
    for var in model.sub_variants.values():
        for tag, choice in var.choice_dict.items():
            if tag == "standard":
                out += _table(
                    f"`model` variant `{var.flag_name}={tag}` (default `{var.default_tag}`)",
                    choice.sub_fields.values(),
                )
    dpa3 = argcheck.descrpt_dpa3_args()
    out += _table("descriptor `type: dpa3`", dpa3)
    repflow = next(a for a in dpa3 if a.name == "repflow")
    out += _table("descriptor `dpa3` → `repflow`", repflow.sub_fields.values(), "repflow.")
    out += _table("fitting_net `type: ener`", argcheck.fitting_ener())
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
