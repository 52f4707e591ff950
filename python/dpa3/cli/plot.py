"""``dpa3 plot`` (registration only; the work is ``dpa3.plot.plot_main``)."""

from __future__ import annotations

import argparse

from ._common import delegate


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``plot``."""
    p = sub.add_parser("plot", help="plot learning curves (lcurve.out) with matplotlib")
    p.add_argument("lcurve", nargs="*", default=["lcurve.out"], help="lcurve.out file(s)")
    p.add_argument("-o", "--output", default="lcurve.png", help="image to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Delegate to :mod:`dpa3.plot`."""
    return delegate("dpa3.plot", "plot_main", args, "plot")
