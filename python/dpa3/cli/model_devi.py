"""``dpa3 model-devi -m M1 M2 ... -s SYSTEM [-f FREQ] -o model_devi.out``, as ``dp model-devi``.

``--select LO HI -o DIR`` instead writes the frames whose ``max_devi_f`` lies in [LO, HI) as an
unlabelled DeePMD-kit npy system in DIR (plus DIR/model_devi.out with every frame's row).
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``model-devi``."""
    p = sub.add_parser(
        "model-devi",
        help="force/virial/energy deviation of an ensemble of models on frames (dp model-devi)",
        description="Model deviation of >= 2 models on a DeePMD-kit npy system (or a folder of "
        "systems) or an ASE-readable trajectory (extxyz, LAMMPS dump with -t), written in "
        "dp model-devi's format.",
    )
    p.add_argument(
        "-m",
        "--models",
        nargs="+",
        required=True,
        help="two or more models: dpa3 checkpoints (.pt) or frozen models (.pth)",
    )
    p.add_argument(
        "-s",
        "--system",
        required=True,
        help="npy system folder or HDF5 file (file.hdf5[#/group]), searched for "
        "systems as dp model-devi does, or a trajectory file",
    )
    p.add_argument("-S", "--set-prefix", default="set", help="set folder prefix (default set)")
    p.add_argument(
        "-o",
        "--output",
        default="model_devi.out",
        help="output file (default model_devi.out), replaced if it exists (dp "
        "model-devi appends); with --select the folder of the selected frames",
    )
    p.add_argument(
        "-f",
        "--frequency",
        type=int,
        default=1,
        help="steps between frames: the step column is frame index x FREQ (default 1)",
    )
    p.add_argument(
        "-a",
        "--atomic",
        action="store_true",
        help="append the per-atom force deviations to every row",
    )
    p.add_argument(
        "--relative",
        type=float,
        default=None,
        metavar="L",
        help="relative force deviation: divide by |mean force| + L",
    )
    p.add_argument(
        "--relative-v",
        "--relative_v",
        dest="relative_v",
        type=float,
        default=None,
        metavar="L",
        help="relative virial deviation: divide by |mean virial / N| + L",
    )
    p.add_argument(
        "-t",
        "--type-map",
        nargs="+",
        default=None,
        metavar="ELEMENT",
        help="element of LAMMPS type 1, 2, ... (for a LAMMPS dump)",
    )
    p.add_argument("--format", default=None, help="ASE format of a trajectory (default: guessed)")
    p.add_argument(
        "--select",
        nargs=2,
        type=float,
        default=None,
        metavar=("LO", "HI"),
        help="write the frames with LO <= max_devi_f < HI as an npy system to -o",
    )
    p.add_argument(
        "--device",
        default="auto",
        metavar="{auto,cpu,cuda}",
        help="torch device: auto (default) = a CUDA GPU if one is visible, else the CPU",
    )
    p.set_defaults(func=run)


def _systems(path: str) -> list[str]:
    """The systems of a folder or HDF5 file as ``dp model-devi -s`` finds them (the folder
    itself last if it is one), or a trajectory file."""
    from ..data.storage import is_hdf5_system_path
    from ..data.system import find_systems

    if Path(path).is_dir() or is_hdf5_system_path(path):
        return find_systems([path], where="-s")
    return [path]


def run(args: argparse.Namespace) -> int:
    """Run ``dpa3 model-devi``.

    Raises :class:`dpa3.errors.UsageError` for a frequency < 1, a ``--select`` range that is
    empty, or a ``--relative``/``--relative-v`` level that is not a finite number > 0 (the
    deviation is divided by ``|mean| + L``, which is 0 for L = 0 and an atom without force);
    :class:`dpa3.errors.DataError` for an output that cannot be written; those of
    :func:`dpa3.model_devi.load_models` and :func:`dpa3.model_devi.read_frames`.
    """
    from ..atomic_file import write_text
    from ..device import describe, resolve_device
    from ..errors import DataError, UsageError
    from ..model_devi import (
        deviation_table,
        evaluate_ensemble,
        format_block,
        load_models,
        read_frames,
        select,
        write_npy_system,
    )

    if args.frequency < 1:
        raise UsageError(f"-f/--frequency must be >= 1, got {args.frequency}")
    for opt, level in (("--relative", args.relative), ("--relative-v", args.relative_v)):
        if level is not None and not (0 < level < math.inf):  # also NaN: every row NaN
            raise UsageError(f"{opt} L must be a finite number > 0, got {level}")
    if args.select is not None and not args.select[0] < args.select[1]:
        raise UsageError(f"--select LO HI needs LO < HI, got {args.select}")
    out = Path(args.output)
    if args.select is None:
        if out.is_dir():
            raise DataError(f"output '{out}' is a folder, not a file")
        if not (out.parent if str(out.parent) else Path(".")).is_dir():
            raise DataError(f"cannot write '{out}': folder '{out.parent}' does not exist")
    elif not out.parent.is_dir() or (out.exists() and not out.is_dir()):
        raise DataError(
            f"cannot write the selected frames to '{out}': "
            f"{'not a folder' if out.exists() else 'its parent does not exist'}"
        )
    paths = _systems(args.system)
    device = resolve_device(args.device, option="--device")
    log.info("%s", describe(args.device, device))
    models, type_map = load_models(args.models, device)
    blocks: list[str] = []
    selected = 0
    for k, path in enumerate(paths):
        frames = read_frames(path, type_map, args.set_prefix, args.type_map, args.format)
        e, f, v = evaluate_ensemble(models, frames)
        table = deviation_table(
            e, f, v, args.frequency, args.relative, args.relative_v, args.atomic
        )
        blocks.append(format_block(table, frames.source, args.atomic))
        log.info(
            "%s: %d frames, max_devi_f %.4g .. %.4g eV/A",
            path,
            frames.nframes,
            table[:, 4].min(),
            table[:, 4].max(),
        )
        if args.select is not None:
            idx = select(table, *args.select)
            target = out if len(paths) == 1 else out / f"{k:03d}"
            if len(idx):
                if len(paths) > 1:
                    out.mkdir(exist_ok=True)
                write_npy_system(target, frames, idx)
            selected += len(idx)
            log.info(
                "%s: %d of %d frames selected (%g <= max_devi_f < %g)%s",
                path,
                len(idx),
                frames.nframes,
                *args.select,
                f" -> {target}" if len(idx) else "",
            )
    if args.select is not None:
        print(f"dpa3 model-devi: {selected} frames selected -> {out}")
        if out.is_dir():
            write_text(out / "model_devi.out", "".join(blocks))
    else:
        write_text(out, "".join(blocks))
        log.info("model deviation written to %s", out)
    return 0
