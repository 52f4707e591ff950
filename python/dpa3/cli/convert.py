"""``dpa3 convert-deepmd`` (registration only; the work is ``dpa3.convert.convert_main``)."""

from __future__ import annotations

import argparse

from ._common import delegate


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``convert-deepmd``."""
    p = sub.add_parser(
        "convert-deepmd", help="convert a DeePMD-kit DPA3 checkpoint or frozen model to dpa3"
    )
    p.add_argument("input", help="DeePMD-kit model.ckpt-*.pt or frozen .pth")
    p.add_argument("output", help="dpa3 checkpoint to write (.pt)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Delegate to :mod:`dpa3.convert`."""
    return delegate("dpa3.convert", "convert_main", args, "convert-deepmd")
