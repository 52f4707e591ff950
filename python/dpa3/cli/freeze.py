"""``dpa3 freeze`` (registration only; the work is ``dpa3.export.freeze.freeze_main``)."""

from __future__ import annotations

import argparse

from ._common import delegate


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``freeze``."""
    p = sub.add_parser("freeze", help="freeze a checkpoint into a TorchScript model.pth")
    p.add_argument(
        "-c",
        "--checkpoint",
        default=".",
        help="checkpoint file, 'checkpoint' pointer or its folder (default .)",
    )
    p.add_argument("-o", "--output", default="model.pth", help="frozen model (model.pth)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Delegate to :mod:`dpa3.export.freeze`."""
    return delegate("dpa3.export.freeze", "freeze_main", args, "freeze")
