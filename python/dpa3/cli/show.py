"""``dpa3 show MODEL ATTRIBUTE...``: type map, descriptor and fitting-net parameters, parameter
counts of a checkpoint or frozen model, as ``dp --pt show``."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``show``."""
    from ..export.show import ATTRIBUTES

    p = sub.add_parser(
        "show",
        help="print a model's type map, descriptor, fitting net or size (as dp show)",
    )
    p.add_argument("model", metavar="INPUT", help="checkpoint (.pt) or frozen model (.pth)")
    p.add_argument("attributes", metavar="ATTRIBUTES", nargs="+", choices=ATTRIBUTES)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``dpa3 show`` (errors: :func:`dpa3.export.show.show_lines`)."""
    from ..export.show import show_lines

    for line in show_lines(args.model, args.attributes):
        log.info("%s", line)
    return 0
