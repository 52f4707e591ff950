"""``dpa3 info`` (registration only; the work is ``dpa3.export.info.info_main``)."""

from __future__ import annotations

import argparse

from ._common import delegate


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``info``."""
    p = sub.add_parser(
        "info",
        help="versions, op library, MPI/CUDA, LAMMPS plugin; with a model also its metadata",
    )
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="optional frozen model (.pth) or checkpoint (.pt): also show its type map, "
        "cutoffs, sizes and precision",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Delegate to :mod:`dpa3.export.info`."""
    return delegate("dpa3.export.info", "info_main", args, "info")
