"""``dpa3 train input.json [--restart CKPT | --init-model CKPT | --init-frz-model PTH |
--finetune CKPT]``.

A multi-task input (``model.model_dict``) trains one head per task on a shared descriptor
(:mod:`dpa3.train.multitask_trainer`).  Started by ``torchrun`` (``RANK``/``WORLD_SIZE``
set, more than one rank) it trains data-parallel (:mod:`dpa3.train.distributed`); only rank
0 logs below WARNING and writes files.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..atomic_file import write_text
from ..errors import ConfigError

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``train``."""
    p = sub.add_parser(
        "train",
        help="train a model from a DeePMD-kit style input.json",
        description="Train a DPA3 model. Data paths and outputs (lcurve.out, "
        "model.ckpt-*.pt, checkpoint) are relative to the working directory.",
    )
    p.add_argument("input", help="DeePMD-kit input.json")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "-r",
        "--restart",
        metavar="CKPT",
        help="continue a run (optimizer, step and RNG states included)",
    )
    g.add_argument(
        "-i",
        "--init-model",
        metavar="CKPT",
        help="start a new run from these weights and statistics",
    )
    g.add_argument(
        "-f",
        "--init-frz-model",
        metavar="MODEL",
        help="start a new run from the weights and statistics of a frozen model (.pth)",
    )
    g.add_argument(
        "-t",
        "--finetune",
        metavar="CKPT",
        help="fine-tune a pretrained model (type maps may differ; the energy bias is re-fitted)",
    )
    p.add_argument(
        "--use-pretrain-script",
        action="store_true",
        help="with --finetune: take the descriptor/fitting of the pretrained model",
    )
    p.add_argument(
        "--model-branch",
        metavar="HEAD",
        default=None,
        help="with --finetune from a multi-task checkpoint: the head to start from "
        "(descriptor + its fitting net); RANDOM keeps only the descriptor",
    )
    p.add_argument(
        "--skip-neighbor-stat",
        action="store_true",
        help="do not scan the data for neighbour counts (e_sel 'auto' needs it)",
    )
    p.add_argument(
        "--device",
        default="auto",
        metavar="{auto,cpu,cuda}",
        help="torch device: auto (default) = a CUDA GPU if one is visible, else the CPU; "
        "under torchrun a CUDA rank uses GPU LOCAL_RANK mod (visible GPUs), with NCCL",
    )
    p.set_defaults(func=run)


#: the normalised input, written at the start of training (as dp train's out.json)
OUT_JSON = "out.json"


def _write_out_json(data: dict | None) -> None:
    """Write ``out.json`` in the working folder atomically (temporary file, then rename)."""
    if data is None:
        return
    path = Path(OUT_JSON)
    write_text(path, json.dumps(data, indent=4))
    log.info("wrote %s (the input with every default filled in)", path)


def run(args: argparse.Namespace) -> int:
    """Run ``dpa3 train``.

    Raises :class:`dpa3.errors.ConfigError` for an input file that is missing, not JSON or
    not a JSON object; otherwise the errors of the trainer (config, data, checkpoint, device).
    """
    from ..config.multitask import is_multitask_input
    from ..train.distributed import init_distributed, shutdown_distributed

    path = Path(args.input)
    if path.is_dir():
        raise ConfigError(f"input file '{path}' is a folder, not a file")
    if not path.is_file():
        raise ConfigError(f"input file '{path}' does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"'{path}' is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"'{path}' must hold a JSON object (model, training, ...), got {type(data).__name__}"
        )
    if is_multitask_input(data):
        from ..train.multitask_trainer import MultiTaskTrainer as TrainerClass
    else:
        from ..train.trainer import Trainer as TrainerClass
    ctx, device = init_distributed(args.device)
    if not ctx.is_main:
        logging.getLogger("dpa3").setLevel(logging.WARNING)
    try:
        trainer = TrainerClass(
            data,
            restart=args.restart,
            init_model=args.init_model,
            init_frz_model=args.init_frz_model,
            finetune=args.finetune,
            use_pretrain_script=args.use_pretrain_script,
            model_branch=args.model_branch,
            skip_neighbor_stat=args.skip_neighbor_stat,
            device=device,
        )
        if ctx.is_main:
            _write_out_json(trainer.normalized_input())
        ckpt = trainer.run()
    finally:
        shutdown_distributed()
    log.info("final checkpoint: %s", ckpt)
    return 0
