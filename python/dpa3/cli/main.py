"""``dpa3`` entry point: argparse subcommands, logging set-up and one-line error reports."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import DPA3Error
from ..malloc import keep_freed_memory
from . import (
    change_bias,
    convert,
    freeze,
    info,
    model_devi,
    neighbor_stat,
    plot,
    show,
    test,
    train,
)

log = logging.getLogger("dpa3")

_SUBCOMMANDS = (
    train,
    freeze,
    test,
    neighbor_stat,
    convert,
    info,
    plot,
    model_devi,
    change_bias,
    show,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``dpa3`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="dpa3",
        description="DPA3 interatomic potential: train, test, freeze and inspect models "
        "(DeePMD-kit input.json and data compatible).",
    )
    parser.add_argument("--version", action="version", version=f"dpa3 {__version__}")
    _add_log_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in _SUBCOMMANDS:
        mod.add_parser(sub)
    for p in sub.choices.values():  # also after the subcommand, as dp allows
        _add_log_options(p, top=False)
    return parser


#: ``-v`` values: dp's names and numbers (0 = ERROR ... 3 = DEBUG)
_LEVELS = {"0": "ERROR", "1": "WARNING", "2": "INFO", "3": "DEBUG"}


def _level(value: str) -> str:
    v = value.upper()
    v = _LEVELS.get(v, v)
    if v not in _LEVELS.values():
        raise argparse.ArgumentTypeError(
            f"invalid level {value!r} (DEBUG, INFO, WARNING, ERROR or 3, 2, 1, 0)"
        )
    return v


def _add_log_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """``-v/--log-level`` and ``-l/--log-path``; on a subcommand they override the ones given
    before it (their defaults are left to the top level)."""
    parser.add_argument(
        "-v",
        "--log-level",
        type=_level,
        default="INFO" if top else argparse.SUPPRESS,
        metavar="{DEBUG,3,INFO,2,WARNING,1,ERROR,0}",
        help="logging verbosity (default INFO)",
    )
    parser.add_argument(
        "-l",
        "--log-path",
        default=None if top else argparse.SUPPRESS,
        help="also write the log to this file",
    )


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
    why = keep_freed_memory()
    if why is not None:
        log.debug("malloc left as is: %s", why)
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
