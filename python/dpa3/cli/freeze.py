"""``dpa3 freeze`` (registration only; the work is ``dpa3.export.freeze.freeze_main``, and
``dpa3.train.multitask.freeze_main`` for one head of a multi-task checkpoint)."""

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
    p.add_argument(
        "--head",
        default=None,
        help="multi-task checkpoint: the head (task) to freeze into a single-task model",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Delegate to :mod:`dpa3.train.multitask` (which hands single-task checkpoints on to
    :mod:`dpa3.export.freeze`)."""
    return delegate("dpa3.train.multitask", "freeze_main", args, "freeze")
