"""``dpa3 test -m MODEL -s SYSTEMS [-n N]``: errors of a model on labelled data, as ``dp test``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ..train.evaluate import DetailFiles, SystemErrors

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``test``."""
    p = sub.add_parser("test", help="MAE/RMSE of energy, force and virial on labelled systems")
    p.add_argument(
        "-m",
        "--model",
        default="model.pth",
        help="frozen model (.pth; NAME means NAME.pth if only that exists, as in dp test) "
        "or dpa3 checkpoint (.pt) (default model.pth)",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "-s",
        "--system",
        "--systems",
        dest="systems",
        nargs="+",
        default=["."],
        help="system folders or parent folders searched for systems (default .)",
    )
    src.add_argument(
        "-f",
        "--datafile",
        default=None,
        help="a file listing the systems to test, one folder a line (as dp test -f)",
    )
    p.add_argument(
        "-n", "--numb-test", type=int, default=0, help="frames per system to test (default 0 = all)"
    )
    p.add_argument("-S", "--set-prefix", default="set", help="set folder prefix (default set)")
    p.add_argument(
        "-d",
        "--detail-file",
        default=None,
        metavar="PREFIX",
        help="write dp test's detail files PREFIX.e.out, .e_peratom.out, .f.out, .v.out, "
        ".v_peratom.out and .s.out (a suffix of PREFIX is replaced; several systems are "
        "appended to the same files)",
    )
    p.add_argument(
        "-a",
        "--atomic",
        action="store_true",
        help="also test atomic energies against set.*/atom_ener.npy",
    )
    p.add_argument(
        "--device",
        default="auto",
        metavar="{auto,cpu,cuda}",
        help="torch device: auto (default) = a CUDA GPU if one is visible, else the CPU",
    )
    p.add_argument("--head", default=None, help="multi-task checkpoint: the head (task) to test")
    p.add_argument(
        "--plot",
        metavar="IMAGE",
        default=None,
        help="also write a parity plot (predicted vs reference energy/atom, force and virial "
        "components of all systems) to this image, e.g. parity.png",
    )
    p.set_defaults(func=run)


#: dp test's result lines, in its order: (error key, MAE line, RMSE line); ``{}`` = the value
_LINES: tuple[tuple[str, str, str], ...] = (
    ("e", "Energy MAE         : {} eV", "Energy RMSE        : {} eV"),
    ("ea", "Energy MAE/Natoms  : {} eV", "Energy RMSE/Natoms : {} eV"),
    ("f", "Force  MAE         : {} eV/\u00c5", "Force  RMSE        : {} eV/\u00c5"),
    ("v", "Virial MAE         : {} eV", "Virial RMSE        : {} eV"),
    ("va", "Virial MAE/Natoms  : {} eV", "Virial RMSE/Natoms : {} eV"),
    ("s", "Stress MAE         : {} eV/\u00c5\u00b3", "Stress RMSE        : {} eV/\u00c5\u00b3"),
    ("ae", "Atomic ener MAE    : {} eV", "Atomic ener RMSE   : {} eV"),
)
_RULE = "# ----------------------------------------------- "


def _report_errors(res: SystemErrors) -> None:
    """The result lines of ``dp test`` (same wording, order, units and ``%e`` numbers)."""
    for key, mae, rmse in _LINES:
        st = res.stats[key]
        if st.count:
            log.info(mae.format(f"{st.mae:e}"))
            log.info(rmse.format(f"{st.rmse:e}"))


def read_datafile(path: str) -> list[str]:
    """The systems listed in the ``-f`` file ``path``, one folder a line (blank lines skipped).

    Raises :class:`dpa3.errors.DataError` for a file that cannot be read, is not text or lists
    no system.  Used by ``dpa3 test -f`` and ``dpa3 change-bias -f``.
    """
    from ..errors import DataError

    try:
        with open(path, encoding="utf-8") as fh:
            lines = [ln.strip() for ln in fh.read().splitlines()]
    except OSError as err:
        raise DataError(f"-f: cannot read the system list '{path}': {err.strerror}") from None
    except UnicodeDecodeError:
        raise DataError(
            f"-f: '{path}' is not a text file (a list of system folders, one a line)"
        ) from None
    systems = [ln for ln in lines if ln]
    if not systems:
        raise DataError(f"-f: '{path}' lists no system")
    return systems


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse the outputs that cannot be written before any model is evaluated."""
    from ..errors import DataError, UsageError

    if args.numb_test < 0:
        raise UsageError(f"-n/--numb-test must be >= 0 (0 = all frames), got {args.numb_test}")
    if args.detail_file is not None:
        folder = Path(args.detail_file).parent
        if not folder.is_dir():
            raise DataError(
                f"-d: cannot write the detail files '{args.detail_file}.*.out': folder "
                f"'{folder}' does not exist"
            )
    if args.plot:
        from ..plot import image_format

        image_format(args.plot)


def _test_systems(
    args: argparse.Namespace,
    model: torch.nn.Module,
    paths: list[str],
    type_map: list[str],
    total: SystemErrors,
    samples: dict | None,
    details: DetailFiles | None,
) -> None:
    """Evaluate and report every system of ``paths``, merging its errors into ``total``;
    their rows go to ``details`` when given."""
    from ..data.system import load_system
    from ..train.evaluate import evaluate_system, load_atom_ener

    for path in paths:
        log.info("# ---------------output of dp test--------------- ")
        log.info("# testing system : %s", path)
        system = load_system(path, type_map, args.set_prefix)
        atom_ener = load_atom_ener(system, args.set_prefix) if args.atomic else None
        res = evaluate_system(
            model,
            system,
            args.numb_test,
            collect=samples,
            atom_ener=atom_ener,
            details=details is not None,
        )
        if details is not None:
            details.add(str(path), res, system.natoms)
        log.info("# number of test data : %d ", res.nframes)
        _report_errors(res)
        log.info(_RULE)
        total.merge(res)


def run(args: argparse.Namespace) -> int:
    """Run ``dpa3 test``.

    Errors: those of :func:`dpa3.device.resolve_device`, :func:`dpa3.export.load.load_model`,
    :func:`dpa3.data.system.find_systems`/``load_system``, :func:`dpa3.plot.parity_plot`;
    :class:`dpa3.errors.DataError` for an unreadable ``-f`` list (:func:`read_datafile`), a
    ``-d`` prefix in a missing folder or a missing ``atom_ener.npy`` with ``-a``;
    :class:`dpa3.errors.UsageError` for a negative ``-n``; a ``--plot`` image of an unknown
    format (:func:`dpa3.plot.image_format`).  The outputs are checked before the model runs.
    """
    from ..data.system import find_systems
    from ..device import describe, resolve_device
    from ..export.load import load_model
    from ..train.evaluate import DetailFiles, SystemErrors

    _check_outputs(args)
    device = resolve_device(args.device, option="--device")
    log.info("%s", describe(args.device, device))
    model_path = args.model
    if not Path(model_path).exists() and Path(model_path + ".pth").is_file():
        model_path += ".pth"  # as dp test -m NAME, which reads NAME.pth
    model = load_model(model_path, device, head=args.head)
    type_map = list(model.get_type_map())
    if args.datafile is not None:
        paths = read_datafile(args.datafile)
    else:
        paths = find_systems(args.systems, where="-s")
    total = SystemErrors()
    samples: dict | None = {} if args.plot else None
    details = DetailFiles(args.detail_file) if args.detail_file is not None else None
    try:
        _test_systems(args, model, paths, type_map, total, samples, details)
    except BaseException:
        if details is not None:
            details.discard()  # the detail files of an earlier run stay as they were
        raise
    if details is not None:
        details.commit()
    log.info("# ----------weighted average of errors----------- ")
    log.info("# number of systems : %d", len(paths))
    _report_errors(total)
    log.info(_RULE)
    if args.plot:
        from ..plot import parity_plot

        log.info("parity plot: %s", parity_plot(samples, args.plot, title=str(args.model)))
    return 0
