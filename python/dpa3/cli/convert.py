"""``dpa3 convert-deepmd IN OUT``: a DeePMD-kit DPA3 model as a dpa3 checkpoint."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``convert-deepmd``."""
    p = sub.add_parser(
        "convert-deepmd", help="convert a DeePMD-kit DPA3 checkpoint or frozen model to dpa3"
    )
    p.add_argument("input", help="DeePMD-kit model.ckpt-*.pt or frozen .pth")
    p.add_argument("output", help="dpa3 checkpoint to write (.pt)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``dpa3 convert-deepmd`` (errors: see :func:`dpa3.convert.convert_deepmd`)."""
    from ..convert import convert_deepmd

    model = convert_deepmd(args.input, args.output)
    print(
        f"dpa3: converted {args.input} ({len(model.type_map)} types: "
        f"{' '.join(model.type_map)}, {model.nlayers} layers) -> {args.output}"
    )
    return 0
