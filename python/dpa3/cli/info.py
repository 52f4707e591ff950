"""``dpa3 info [MODEL]``: the installation, and with a model also its metadata."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


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
    """Run ``dpa3 info`` (errors: see :func:`dpa3.export.info.model_report`)."""
    from ..export.info import environment_report, model_report

    _rows(environment_report())
    if args.model:
        _rows(model_report(args.model))
    return 0


def _rows(report: dict[str, object]) -> None:
    for key, value in report.items():
        log.info("%-26s %s", key + ":", value)
