"""``dpa3 test -m MODEL -s SYSTEMS [-n N]``: errors of a model on labelled data, as ``dp test``."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..train.evaluate import SystemErrors

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``test``."""
    p = sub.add_parser("test", help="MAE/RMSE of energy, force and virial on labelled systems")
    p.add_argument(
        "-m",
        "--model",
        default="model.pth",
        help="frozen model (.pth) or dpa3 checkpoint (.pt) (default model.pth)",
    )
    p.add_argument(
        "-s",
        "--system",
        "--systems",
        dest="systems",
        nargs="+",
        default=["."],
        help="system folders or parent folders searched for systems (default .)",
    )
    p.add_argument(
        "-n", "--numb-test", type=int, default=0, help="frames per system to test (default 0 = all)"
    )
    p.add_argument("--set-prefix", default="set", help="set folder prefix (default set)")
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


def _report(title: str, res: SystemErrors) -> None:
    s = res.stats
    log.info("# ---------------%s---------------", title)
    log.info("# number of test data : %d", res.nframes)
    rows = [
        ("Energy MAE        ", s["e"].mae, "eV"),
        ("Energy RMSE       ", s["e"].rmse, "eV"),
        ("Energy MAE/Natoms ", s["ea"].mae, "eV"),
        ("Energy RMSE/Natoms", s["ea"].rmse, "eV"),
        ("Force  MAE        ", s["f"].mae, "eV/A"),
        ("Force  RMSE       ", s["f"].rmse, "eV/A"),
    ]
    if s["v"].count:
        rows += [
            ("Virial MAE        ", s["v"].mae, "eV"),
            ("Virial RMSE       ", s["v"].rmse, "eV"),
            ("Virial MAE/Natoms ", s["va"].mae, "eV"),
            ("Virial RMSE/Natoms", s["va"].rmse, "eV"),
        ]
    for name, v, unit in rows:
        log.info("%s : %e %s", name, v, unit)
    log.info("# -----------------------------------------------")


def run(args: argparse.Namespace) -> int:
    """Run ``dpa3 test``.

    Errors: those of :func:`dpa3.device.resolve_device`, :func:`dpa3.export.load.load_model`,
    :func:`dpa3.data.system.find_systems`/``load_system`` and :func:`dpa3.plot.parity_plot`.
    """
    from ..data.system import find_systems, load_system
    from ..device import describe, resolve_device
    from ..export.load import load_model
    from ..train.evaluate import SystemErrors, evaluate_system

    device = resolve_device(args.device, option="--device")
    log.info("%s", describe(args.device, device))
    model = load_model(args.model, device, head=args.head)
    type_map = list(model.get_type_map())
    paths = find_systems(args.systems, where="-s")
    total = SystemErrors()
    samples: dict | None = {} if args.plot else None
    for path in paths:
        system = load_system(path, type_map, args.set_prefix)
        log.info("# testing system : %s", path)
        res = evaluate_system(model, system, args.numb_test, collect=samples)
        _report("output of dpa3 test", res)
        total.merge(res)
    if len(paths) > 1:
        _report("weighted average of errors", total)
    if args.plot:
        from ..plot import parity_plot

        log.info("parity plot: %s", parity_plot(samples, args.plot, title=str(args.model)))
    return 0
