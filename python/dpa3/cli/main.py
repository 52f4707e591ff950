"""``dpa3`` entry point: argparse subcommands, logging set-up and one-line error reports."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import DPA3Error
from . import convert, freeze, info, model_devi, neighbor_stat, plot, test, train

log = logging.getLogger("dpa3")

_SUBCOMMANDS = (train, freeze, test, neighbor_stat, convert, info, plot, model_devi)


def build_parser() -> argparse.ArgumentParser:
    """The ``dpa3`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="dpa3",
        description="DPA3 interatomic potential: train, test, freeze and inspect models "
        "(DeePMD-kit input.json and data compatible).",
    )
    parser.add_argument("--version", action="version", version=f"dpa3 {__version__}")
    parser.add_argument(
        "-v",
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging verbosity (default INFO)",
    )
    parser.add_argument("-l", "--log-path", default=None, help="also write the log to this file")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in _SUBCOMMANDS:
        mod.add_parser(sub)
    return parser


def _setup_logging(level: str, path: str | None) -> None:
    fmt = logging.Formatter("DPA3 %(levelname)-7s %(message)s")
    root = logging.getLogger("dpa3")
    root.setLevel(level)
    root.handlers.clear()
    h = logging.StreamHandler(sys.stdout)
    h.setFormatter(fmt)
    root.addHandler(h)
    if path:
        fh = logging.FileHandler(path)
        fh.setFormatter(logging.Formatter("%(asctime)s " + fmt._fmt))
        root.addHandler(fh)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dpa3``; returns the exit code.

    A :class:`dpa3.errors.DPA3Error` (any error dpa3 raises for something the user can fix),
    a missing file or a diverged training (``FloatingPointError``) is reported as one line
    and gives 1; an interrupt gives 130.  Argument errors exit through argparse (2).
    """
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level, args.log_path)
    try:
        return args.func(args)
    except (DPA3Error, FileNotFoundError, FloatingPointError) as err:
        log.error("%s", err)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
