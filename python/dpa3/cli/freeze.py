"""``dpa3 freeze`` (registration only; the work is ``dpa3.export.freeze.freeze_main``, and
``dpa3.train.multitask.freeze_main`` for one head of a multi-task checkpoint)."""

from __future__ import annotations

import argparse

from ._common import CLIError, delegate


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``freeze``."""
    p = sub.add_parser("freeze", help="freeze a checkpoint into a TorchScript model.pth")
    p.add_argument(
        "checkpoint_arg",
        nargs="?",
        metavar="CHECKPOINT",
        help="the checkpoint, as a positional argument (same as -c)",
    )
    p.add_argument(
        "-c",
        "--checkpoint",
        default=None,
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
    positional = args.checkpoint_arg
    if positional is not None and args.checkpoint is not None and positional != args.checkpoint:
        raise CLIError(f"freeze: two checkpoints given ({positional} and -c {args.checkpoint}); "
                       "give one")
    args.checkpoint = positional or args.checkpoint or "."
    return delegate("dpa3.train.multitask", "freeze_main", args, "freeze")
