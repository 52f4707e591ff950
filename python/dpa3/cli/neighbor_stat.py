"""``dpa3 neighbor-stat -s SYSTEMS -r RCUT [-t TYPE ...]``: largest neighbour count, as ``dp``."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``neighbor-stat``."""
    p = sub.add_parser(
        "neighbor-stat", help="largest neighbour count and smallest distance within a cutoff"
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
    p.add_argument("-r", "--rcut", type=float, required=True, help="cutoff radius (A)")
    p.add_argument(
        "-t",
        "--type-map",
        nargs="+",
        default=None,
        help="element names (default: the union of the systems' type_map.raw)",
    )
    p.add_argument("--set-prefix", default="set", help="set folder prefix (default set)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``dpa3 neighbor-stat``.

    Raises :class:`dpa3.errors.UsageError` for a cutoff that is not positive and
    :class:`dpa3.errors.DataError` for systems that cannot be read or give no type map.
    """
    import math
    from pathlib import Path

    from ..data.stats import auto_sel, neighbor_stat
    from ..data.system import find_systems, load_system
    from ..errors import DataError, UsageError

    if not (args.rcut > 0 and math.isfinite(args.rcut)):  # NaN fails the first test
        raise UsageError(f"-r/--rcut must be positive, got {args.rcut}")
    paths = find_systems(args.systems, where="-s")
    type_map = args.type_map
    if type_map is None:
        type_map = []
        for p in paths:
            f = Path(p) / "type_map.raw"
            if not f.is_file():
                raise DataError(f"'{p}' has no type_map.raw: give -t/--type-map")
            type_map += [t for t in f.read_text().split() if t not in type_map]
    systems = [load_system(p, type_map, args.set_prefix) for p in paths]
    st = neighbor_stat(systems, args.rcut, len(type_map))
    nfr = sum(s.nframes for s in systems)
    log.info("%d systems, %d frames, type map %s, rcut %g", len(systems), nfr, type_map, args.rcut)
    log.info("min_nbor_dist: %.6f", st.min_nbor_dist)
    log.info("max_nbor_size: %s", st.max_nbor_size_per_type.tolist())
    log.info(
        "max neighbour count (all types): %d  -> e_sel 'auto' would give %d",
        st.max_nbor_size,
        auto_sel(st.max_nbor_size),
    )
    return 0
