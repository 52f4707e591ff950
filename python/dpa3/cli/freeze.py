"""``dpa3 freeze [CHECKPOINT | -c CHECKPOINT] [-o model.pth] [--head HEAD]``: a training
checkpoint (or one head of a multi-task one) as the TorchScript model LAMMPS loads."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import UsageError

log = logging.getLogger(__name__)


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
    p.add_argument(
        "-o",
        "--output",
        default="model.pth",
        help="frozen model (default model.pth); as dp --pt freeze, its suffix is made .pth "
        "(-o model gives model.pth)",
    )
    p.add_argument(
        "--head",
        default=None,
        help="multi-task checkpoint: the head (task) to freeze into a single-task model",
    )
    p.add_argument(
        "--memory-budget",
        type=float,
        default=None,
        metavar="GIB",
        help="per process: above this estimate (GiB) of the layers' autograd graph, evaluation "
        "recomputes the layers one at a time instead of keeping them (less memory, about 1.4x "
        "the time of a step; default 4; 0 always recomputes)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``dpa3 freeze``.

    Raises :class:`dpa3.errors.UsageError` for two different checkpoints (positional and
    ``-c``) or an ``-o`` that is no file name; otherwise the errors of
    :func:`dpa3.export.freeze.freeze_checkpoint`.
    """
    from ..export.freeze import freeze_checkpoint

    positional = args.checkpoint_arg
    if positional is not None and args.checkpoint is not None and positional != args.checkpoint:
        raise UsageError(
            f"freeze: two checkpoints given ({positional} and -c {args.checkpoint}); give one"
        )
    checkpoint = positional or args.checkpoint or "."
    if Path(args.output).name in ("", ".", ".."):
        raise UsageError(f"freeze: -o '{args.output}' is not a file name")
    output = str(Path(args.output).with_suffix(".pth"))  # as dp --pt freeze
    budget = args.memory_budget
    if budget is not None and not budget >= 0:  # also NaN
        raise UsageError(f"freeze: --memory-budget {budget} must be a number of GiB >= 0")
    out, meta = freeze_checkpoint(
        checkpoint,
        output,
        head=args.head,
        graph_budget_bytes=None if budget is None else int(budget * 1024**3),
    )
    log.info(
        "wrote %s%s (type map %s, rcut %s A, %d layers, %s)",
        out,
        f" from head '{args.head}'" if args.head is not None else "",
        " ".join(meta["type_map"]),
        meta["rcut"],
        meta["n_layers"],
        meta["precision"],
    )
    return 0
