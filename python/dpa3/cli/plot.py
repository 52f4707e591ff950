"""``dpa3 plot lcurve.out [...] -o lcurve.png``: learning curves with matplotlib."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``plot``."""
    p = sub.add_parser("plot", help="plot learning curves (lcurve.out) with matplotlib")
    p.add_argument("lcurve", nargs="*", default=["lcurve.out"], help="lcurve.out file(s)")
    p.add_argument("-o", "--output", default="lcurve.png", help="image to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``dpa3 plot`` (errors: see :func:`dpa3.plot.plot_lcurves`)."""
    from ..plot import plot_lcurves

    log.info("wrote %s", plot_lcurves(args.lcurve, args.output))
    return 0
