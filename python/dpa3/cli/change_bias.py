"""``dpa3 change-bias MODEL (-s SYSTEMS | -f FILE | -b BIAS...) [-m change|set] [-n N] [-o OUT]``:
the energy bias of a checkpoint or frozen model re-fitted on data or set, as
``dp --pt change-bias``."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``change-bias``."""
    p = sub.add_parser(
        "change-bias",
        help="re-fit the energy bias of a model on data, or set it (as dp change-bias)",
        description="Change the per-type energy bias of a dpa3 checkpoint (.pt) or frozen "
        "model (.pth): fitted by least squares on labelled systems (-m change: added to the "
        "current bias; -m set: replaces it) or given (-b).",
    )
    p.add_argument("model", metavar="INPUT", help="checkpoint (.pt) or frozen model (.pth)")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "-s",
        "--system",
        default=".",
        help="system folder, or a folder searched for systems (default .)",
    )
    src.add_argument(
        "-f", "--datafile", default=None, help="a file listing the systems, one a line"
    )
    src.add_argument(
        "-b",
        "--bias-value",
        type=float,
        nargs="+",
        default=None,
        metavar="BIAS",
        help="the bias of every type of the type map (eV), instead of fitting it",
    )
    p.add_argument(
        "-n",
        "--numb-batch",
        type=int,
        default=0,
        help="frames used per system (batch size 1; default 0: all)",
    )
    p.add_argument(
        "-m",
        "--mode",
        choices=("change", "set"),
        default="change",
        help="change: add the fit of (label - prediction); set: fit the labels (default change)",
    )
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="output model (default INPUT with _updated before the suffix)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``dpa3 change-bias`` (errors: :func:`dpa3.export.change_bias.change_bias`, and
    :func:`dpa3.cli.test.read_datafile` for ``-f``)."""
    from ..export.change_bias import change_bias
    from .test import read_datafile

    if args.bias_value is not None:
        systems = None
    elif args.datafile is not None:
        systems = read_datafile(args.datafile)
    else:
        systems = [args.system]
    res = change_bias(
        args.model,
        systems=systems,
        bias=args.bias_value,
        mode=args.mode,
        numb_batch=args.numb_batch,
        output=args.output,
    )
    log.info("saved model to %s", res.output)
    return 0
