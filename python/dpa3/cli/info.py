"""``dpa3 info`` (registration only; the work is ``dpa3.export.info.info_main``)."""

from __future__ import annotations

import argparse

from ._common import delegate


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``info``."""
    p = sub.add_parser("info", help="show type map, cutoffs, sizes and metadata of a model")
    p.add_argument("model", help="frozen model (.pth) or checkpoint (.pt)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Delegate to :mod:`dpa3.export.info`."""
    return delegate("dpa3.export.info", "info_main", args, "info")
