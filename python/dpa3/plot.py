"""Learning curves (``dpa3 plot``) and parity plots (``dpa3 test --plot``) with matplotlib.

Figures are drawn on a :class:`matplotlib.figure.Figure` and saved directly, without pyplot,
so nothing here selects a backend or needs a display, and an interactive session that imports
this module keeps its own backend.

``lcurve.out`` is read by the names in its header line, so the files written by ``dpa3 train``
and by DeePMD-kit (TensorFlow and PyTorch backends: ``rmse_val rmse_trn rmse_e_val ... lr``, also
the older ``l2_tst l2_trn ...`` and multi-task ``rmse_e_val_<task>`` columns) are all understood.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PlotError

log = logging.getLogger(__name__)

#: ``<metric>_<split>[_<task>]``; ``tst`` is the validation split of old DeePMD-kit files.
_COLUMN = re.compile(r"^(?P<metric>.+?)_(?P<split>val|trn|tst)(?P<task>_.+)?$")
_STEP_NAMES = ("step", "batch")

#: Panel titles of the metrics ``dpa3 train`` and DeePMD-kit's ener loss write.
_TITLES = {
    "rmse": "loss",
    "l2": "loss",
    "rmse_e": "energy RMSE (eV/atom)",
    "l2_e": "energy RMSE (eV/atom)",
    "rmse_f": "force RMSE (eV/Å)",
    "l2_f": "force RMSE (eV/Å)",
    "rmse_v": "virial RMSE (eV/atom)",
    "l2_v": "virial RMSE (eV/atom)",
}

#: Largest number of points drawn per parity panel (the RMSE always uses all of them).
MAX_PARITY_POINTS = 100_000


@dataclass
class LCurve:
    """The numeric content of one ``lcurve.out``.

    Attributes
    ----------
    path
        The file read.
    columns
        Column names from the header line, e.g. ``["step", "rmse_val", ..., "lr"]``.
    data
        ``[nrows, len(columns)]`` float64; ``nan`` where the file printed ``nan``.
    """

    path: Path
    columns: list[str]
    data: np.ndarray

    def column(self, name: str) -> np.ndarray:
        """The values of column ``name``."""
        return self.data[:, self.columns.index(name)]

    @property
    def step(self) -> np.ndarray:
        """The step (or ``batch``) column."""
        return self.data[:, 0]

    def metrics(self) -> dict[str, dict[str, str]]:
        """``{metric: {"trn": column, "val": column}}`` in file order (``tst`` -> ``val``)."""
        out: dict[str, dict[str, str]] = {}
        for name in self.columns[1:]:
            m = _COLUMN.match(name)
            if m is None:
                continue
            key = m["metric"] + (m["task"] or "")
            split = "trn" if m["split"] == "trn" else "val"
            out.setdefault(key, {})[split] = name
        return out

    def lr_columns(self) -> list[str]:
        """The learning-rate column(s): ``lr`` (or ``lr_<task>`` in multi-task files)."""
        return [c for c in self.columns[1:] if c == "lr" or c.startswith("lr_")]


def read_lcurve(path: str | Path) -> LCurve:
    """Read an ``lcurve.out`` of ``dpa3 train`` or DeePMD-kit.

    The column names come from the first comment line whose first word is ``step`` (or
    ``batch``); later comment lines (DeePMD-kit's ``nan`` note, headers of appended
    restarts) are skipped, as are rows with the wrong number of fields (a line cut short by
    a killed run).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    PlotError
        If it is a folder or not a text file, or there is no header line or no data row.
    """
    p = Path(path)
    if p.is_dir():
        raise PlotError(f"learning-curve file '{p}' is a folder (give its lcurve.out)")
    if not p.is_file():
        raise FileNotFoundError(f"learning-curve file '{p}' does not exist")
    try:
        text_lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise PlotError(f"'{p}' is not a text file (not an lcurve.out)") from None
    columns: list[str] | None = None
    rows: list[list[float]] = []
    skipped = 0
    for line in text_lines:
        text = line.strip()
        if not text:
            continue
        if text.startswith("#"):
            words = text.lstrip("#").split()
            if columns is None and words and words[0] in _STEP_NAMES:
                columns = ["step", *words[1:]]
            continue
        if columns is None:
            raise PlotError(
                f"'{p}' has no header line ('# step rmse_val rmse_trn ... lr') before its data"
            )
        fields = text.split()
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = []
        if len(values) != len(columns):
            skipped += 1
            continue
        rows.append(values)
    if columns is None:
        raise PlotError(f"'{p}' has no header line ('# step rmse_val rmse_trn ... lr')")
    if not rows:
        raise PlotError(f"'{p}' has no data rows yet")
    if skipped:
        log.warning("%s: skipped %d malformed line(s)", p, skipped)
    return LCurve(p, columns, np.asarray(rows, dtype=np.float64))


def _labels(paths: Sequence[Path]) -> list[str]:
    """Short, distinct legend labels: the file names, else the shortest distinct path tails."""
    parts = [p.resolve().parts for p in paths]
    for n in range(1, max(len(x) for x in parts) + 1):
        labels = ["/".join(x[-n:]) for x in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def _title(column: str) -> str:
    """Panel title of the metric of ``column`` (e.g. ``rmse_f_val_water``)."""
    m = _COLUMN.match(column)
    if m is None:
        return column
    title = _TITLES.get(m["metric"], m["metric"])
    return f"{title} [{m['task'][1:]}]" if m["task"] else title


def _log_y(ax: Any) -> None:
    """Log-scale y axis with plain tick labels (0.2, 0.5, 1e-05), also on minor ticks."""
    from matplotlib.ticker import LogFormatter

    class _Plain(LogFormatter):
        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
            return f"{x:g}"

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_Plain())
    ax.yaxis.set_minor_formatter(_Plain(labelOnlyBase=False))


def _positive(y: np.ndarray) -> np.ndarray:
    """``y`` with non-positive values masked (log axes cannot show them)."""
    return np.where(y > 0, y, np.nan)


def lcurve_figure(paths: Sequence[str | Path]) -> Any:
    """The learning-curve :class:`~matplotlib.figure.Figure` of one or more ``lcurve.out``.

    One panel per metric (loss, energy, force and, when any value is not ``nan``, virial
    RMSE) with training (solid) and validation (dashed) curves on a log scale, and a panel
    with the learning rate. With several files, each file has its own colour.
    """
    from matplotlib.figure import Figure

    if not paths:
        raise PlotError("no learning-curve file given")
    curves = [read_lcurve(p) for p in paths]
    labels = _labels([c.path for c in curves])

    metrics: list[str] = []
    titles: dict[str, str] = {}
    for c in curves:
        for key, cols in c.metrics().items():
            has_data = any(np.isfinite(c.column(col)).any() for col in cols.values())
            if has_data and key not in metrics:
                metrics.append(key)
                titles[key] = _title(next(iter(cols.values())))
    have_lr = any(c.lr_columns() for c in curves)
    npanel = len(metrics) + (1 if have_lr else 0)
    if npanel == 0:
        raise PlotError(
            "nothing to plot: no column named <metric>_trn/_val/_tst or lr has finite values"
        )
    ncols = 1 if npanel == 1 else 2 if npanel <= 4 else 3
    nrows = math.ceil(npanel / ncols)
    fig = Figure(figsize=(5.0 * ncols, 3.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True).ravel()
    colors = [f"C{i % 10}" for i in range(len(curves))]

    for ax, key in zip(axes, metrics, strict=False):
        for c, label, color in zip(curves, labels, colors, strict=True):
            cols = c.metrics().get(key, {})
            for split, style in (("trn", "-"), ("val", "--")):
                if split not in cols:
                    continue
                y = c.column(cols[split])
                if not np.isfinite(y).any():
                    continue
                name = "train" if split == "trn" else "validation"
                if len(curves) == 1:  # one file: colour by split; several: colour by file
                    color = "C0" if split == "trn" else "C1"
                ax.plot(
                    c.step,
                    _positive(y),
                    style,
                    color=color,
                    lw=1.2,
                    marker="o" if len(c.step) < 30 else None,  # short runs: show the points
                    ms=3,
                    label=f"{label}: {name}" if len(curves) > 1 else name,
                )
        _log_y(ax)
        ax.set_title(titles[key])
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize="small")
    if have_lr:
        ax = axes[len(metrics)]
        for c, label, color in zip(curves, labels, colors, strict=True):
            for col in c.lr_columns():
                name = label if len(curves) > 1 else col
                ax.plot(
                    c.step,
                    _positive(c.column(col)),
                    color=color,
                    lw=1.2,
                    label=name,
                    marker="o" if len(c.step) < 30 else None,
                    ms=3,
                )
        _log_y(ax)
        ax.set_title("learning rate")
        ax.grid(True, which="major", alpha=0.3)
        if len(curves) > 1 or len(curves[0].lr_columns()) > 1:
            ax.legend(fontsize="small")
    for ax in axes[npanel:]:
        ax.set_visible(False)
    # x labels on the lowest visible panel of each column
    for col in range(ncols):
        visible = list(range(col, npanel, ncols))
        if visible:
            axes[visible[-1]].set_xlabel("step")
            axes[visible[-1]].xaxis.set_tick_params(labelbottom=True)
    if len(curves) == 1:
        fig.suptitle(str(curves[0].path))
    return fig


def image_format(output: str | Path) -> str:
    """The matplotlib format of the image ``output`` by its suffix (``png``, ``pdf``, ``svg``...).

    Raises :class:`dpa3.errors.PlotError` for a suffix matplotlib cannot write, or none: call
    it before the work whose result is plotted.
    """
    from matplotlib.backend_bases import FigureCanvasBase

    known = FigureCanvasBase.get_supported_filetypes()
    fmt = Path(output).suffix.lstrip(".").lower()
    if fmt not in known:
        raise PlotError(
            f"cannot write the image '{output}': "
            f"{f'unknown format .{fmt}' if fmt else 'no suffix'} (use one of "
            f"{', '.join('.' + k for k in sorted(known))})"
        )
    return fmt


def _save(fig: Any, output: str | Path, **kwargs: Any) -> Path:
    """Save ``fig`` to ``output`` atomically (:mod:`dpa3.atomic_file`), making its folder."""
    from .atomic_file import atomic_open

    out = Path(output)
    fmt = image_format(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "wb") as fh:
        fig.savefig(fh, format=fmt, dpi=120, **kwargs)
    return out


def plot_lcurves(paths: Sequence[str | Path], output: str | Path) -> Path:
    """Write :func:`lcurve_figure` of ``paths`` to ``output`` (PNG, PDF, SVG... by suffix).

    Returns the path written.  Raises :class:`FileNotFoundError` for a missing file and
    :class:`dpa3.errors.PlotError` for one that cannot be plotted or an ``output`` of a format
    matplotlib does not write (:func:`image_format`); nothing is written then.
    """
    image_format(output)
    return _save(lcurve_figure(paths), output)


# ---------------------------------------------------------------------------------- parity


def _rmse(pred: np.ndarray, ref: np.ndarray) -> float:
    d = pred - ref
    return float(np.sqrt(np.mean(d * d))) if d.size else math.nan


def parity_figure(
    samples: dict[str, tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
    title: str | None = None,
) -> Any:
    """Predicted against reference values, one panel per quantity, RMSE in the titles.

    Parameters
    ----------
    samples
        ``{"energy": (pred, ref), "force": (pred, ref), "virial": (pred, ref)}``, each a list
        of arrays (concatenated after flattening): energies per atom (eV/atom), force
        components (eV/Å), virial components per atom (eV/atom), as
        :func:`dpa3.train.evaluate.evaluate_system` collects them. Missing or empty
        quantities get no panel.
    title
        Figure title (e.g. the model file).
    """
    from matplotlib.figure import Figure

    spec = (
        ("energy", "energy per atom", "eV/atom"),
        ("force", "force components", "eV/Å"),
        ("virial", "virial components per atom", "eV/atom"),
    )
    panels: list[tuple[str, str, np.ndarray, np.ndarray]] = []
    for key, name, unit in spec:
        if key not in samples:
            continue
        pred_parts, ref_parts = samples[key]
        pred = np.concatenate([np.ravel(a) for a in pred_parts]) if pred_parts else np.empty(0)
        ref = np.concatenate([np.ravel(a) for a in ref_parts]) if ref_parts else np.empty(0)
        if pred.shape != ref.shape:
            raise PlotError(f"{key}: {pred.size} predictions but {ref.size} references")
        if pred.size:
            panels.append((name, unit, pred, ref))
    if not panels:
        raise PlotError("nothing to plot: no labelled energies, forces or virials")

    fig = Figure(figsize=(4.2 * len(panels), 4.6), layout="compressed")  # for equal aspect
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    rng = np.random.default_rng(0)
    for ax, (name, unit, pred, ref) in zip(axes, panels, strict=True):
        rmse = _rmse(pred, ref)
        n = pred.size
        shown = (
            np.sort(rng.choice(n, MAX_PARITY_POINTS, replace=False))
            if n > MAX_PARITY_POINTS
            else slice(None)
        )
        ax.scatter(
            ref[shown],
            pred[shown],
            s=14 if n < 200 else 6 if n < 2000 else 2,
            alpha=0.7 if n < 2000 else 0.3,
            linewidths=0,
            rasterized=True,
        )
        lo = float(min(ref.min(), pred.min()))
        hi = float(max(ref.max(), pred.max()))
        pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.05
        lim = (lo - pad, hi + pad)
        ax.plot(lim, lim, color="0.4", lw=0.8, zorder=0)
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        ax.set_aspect("equal", adjustable="box")
        # absolute energies (-156.04 eV/atom) must not turn into an offset above the title
        ax.ticklabel_format(useOffset=False)
        ax.locator_params(nbins=5)
        if max(abs(lim[0]), abs(lim[1])) > 100 * (lim[1] - lim[0]):  # long labels: -155.9525
            ax.tick_params(axis="x", labelrotation=30)
        ax.set_xlabel(f"reference ({unit})")
        ax.set_ylabel(f"predicted ({unit})")
        note = f", {MAX_PARITY_POINTS} of {n} shown" if n > MAX_PARITY_POINTS else f", n={n}"
        ax.set_title(f"{name}\nRMSE {rmse:.3g} {unit}{note}", fontsize="medium")
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def parity_plot(
    samples: dict[str, tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
    output: str | Path,
    title: str | None = None,
) -> Path:
    """Write :func:`parity_figure` of ``samples`` to ``output`` (format by suffix).

    Returns the path written; raises :class:`dpa3.errors.PlotError` for samples that cannot
    be plotted (none labelled, or predictions and references of different sizes) or an
    ``output`` of a format matplotlib does not write (:func:`image_format`).
    """
    return _save(parity_figure(samples, title), output, bbox_inches="tight", pad_inches=0.1)


__all__ = [
    "LCurve",
    "PlotError",
    "image_format",
    "lcurve_figure",
    "parity_figure",
    "parity_plot",
    "plot_lcurves",
    "read_lcurve",
]
