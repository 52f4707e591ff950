"""Helpers shared by the subcommand modules."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable


class CLIError(RuntimeError):
    """An error reported to the user as one line, without a traceback."""


def delegate(module: str, func: str, args: argparse.Namespace, what: str) -> int:
    """Call ``module.func(args) -> int``; a clear error if that module is not there yet.

    The freeze/convert/info/plot subcommands are registered here so that ``dpa3 --help``
    lists them, while their work lives in the modules that own it.
    """
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is not None and module.startswith(err.name):
            raise CLIError(
                f"'dpa3 {what}' is not available in this build ({module} is missing)"
            ) from None
        raise
    fn: Callable[[argparse.Namespace], int] | None = getattr(mod, func, None)
    if fn is None:
        raise CLIError(f"'dpa3 {what}' is not available in this build ({module}.{func} is missing)")
    rc = fn(args)
    return 0 if rc is None else int(rc)
